"""environment.yml (conda) and pyproject.toml (pip) ask for the same packages."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"python-confluent-kafka": "confluent-kafka", "python-duckdb": "duckdb", "matplotlib-base": "matplotlib"}


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!;\[~]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name_of(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {name_of(r) for r in extra}
    listed = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:") :].splitlines():
        match = re.match(r"^\s+-\s+([A-Za-z0-9_.\-]+)", line)
        if match and match.group(1) not in ("pip", "python", "-e"):
            listed.add(CONDA_NAMES.get(match.group(1).lower(), match.group(1).lower()))
    assert listed == wanted


def test_cli_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "eventlab", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "up", "run", "audit", "query"):
        assert command in out.stdout
    assert "EVENTLAB_BOOTSTRAP_SERVERS" in out.stdout
    demo = subprocess.run(
        [sys.executable, "-m", "eventlab", "demo", "--help"], capture_output=True, text=True, check=True
    )
    assert "--payment-failure-rate" in demo.stdout and "--orders" in demo.stdout

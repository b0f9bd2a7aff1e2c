"""The saga and tracing notebooks in a real browser: JupyterLab started by ``eventlab lab`` (what ``make lab`` runs),
headless Debian chromium, driven by playwright-core.

Checks what a reader sees: after *Run All*, the ipywidgets dropdown and the mermaid sequence
diagrams are rendered (not shown as source), and choosing another order redraws the diagram; in
notebook 08 the span waterfall (an inline SVG) is drawn beside the saga. Prints
the time from launching ``eventlab lab`` to the first saga diagram drawn (no timed assertion).

Needs ``chromium`` (Debian: ``apt-get install -y chromium``), Node.js, and ``npm ci`` in
``tests/browser``. It fails, rather than skips, when they are missing. Set
``EVENTLAB_SCREENSHOT=docs/saga-notebook.png`` to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
NOTEBOOK = ROOT / "notebooks" / "03-saga.ipynb"
CHROMIUM = os.environ.get("EVENTLAB_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.integration

SETTINGS = {
    # No news toast over the notebook, and every cell in the DOM (no virtual scrolling).
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _require_tools() -> str:
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("Node.js (apt-get install -y nodejs npm)")
    if not Path(CHROMIUM).is_file():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (cd tests/browser && npm ci)")
    assert not missing, "the browser test needs: " + "; ".join(missing)
    return node  # type: ignore[return-value]


#: The link ``eventlab lab`` prints when JupyterLab answers.
LINK = re.compile(r"^ +(http://127\.0\.0\.1:\d+)/lab/tree/\S+\?token=([0-9a-f]+)$", re.MULTILINE)


@dataclass
class Lab:
    url: str
    token: str
    launched_at: float  # time.time() when `eventlab lab` was started


def _strip_outputs(path: Path) -> None:
    """Drop a notebook's outputs: what the browser shows is then only what it ran. (Once, on a loaded
    machine, JupyterLab showed the notebook as read from disk after Run All: its committed outputs,
    untrusted, so their SVG stripped.)"""
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(notebook, indent=1))


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab started the way ``make lab`` starts it (``eventlab lab``), on a free localhost port,
    serving a copy of the notebooks without their outputs (the browser saves what it runs, so it must
    not touch the committed ones), with its own settings and workspaces."""
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for path in root.glob("*.ipynb"):
        _strip_outputs(path)
    settings_dir = tmp_path / "settings"
    for name, values in SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    log_path = tmp_path / "lab.log"
    log = log_path.open("wb")
    launched_at = time.time()
    server = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "lab", "--no-browser", "--port", str(free_port()), "--notebooks", str(root)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (match := LINK.search(log_path.read_text(errors="replace"))):
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "eventlab lab printed no link in 120 s:\n" + log_path.read_text()
            time.sleep(0.1)
        yield Lab(match.group(1), match.group(2), launched_at)
    finally:
        server.send_signal(signal.SIGTERM)  # eventlab lab stops JupyterLab and its kernels
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _run_in_chromium(lab: Lab, notebook: str, screenshot: Path, **env: str) -> dict:
    """Run ``notebook`` in JupyterLab in headless chromium (tests/browser/run.mjs); what it found."""
    node = _require_tools()
    env = {
        **os.environ,
        "JUPYTER_URL": lab.url,
        "TOKEN": lab.token,
        "NOTEBOOK": notebook,
        "SCREENSHOT": str(screenshot),
        "CHROMIUM": CHROMIUM,
        **env,
    }
    run = subprocess.run(
        [node, "run.mjs"], cwd=BROWSER_DIR, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert run.returncode == 0, f"{run.stderr}\n{run.stdout}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_saga_notebook_renders_widget_and_mermaid_in_chromium(jupyter_lab, tmp_path):
    screenshot = tmp_path / "saga-notebook.png"
    found = _run_in_chromium(jupyter_lab, NOTEBOOK.name, screenshot)
    assert found["mermaid_drawn"] >= 4, found  # three sagas + the widget's diagram, drawn as images
    assert found["widgets"] > 0 and found["stderr_outputs"] == 0, found  # found["stderr_text"] says what
    assert "payment_failed" in found["redrawn_for"], found
    assert screenshot.stat().st_size > 20_000
    # and: how long an attendee waits, from `eventlab lab` (as `make lab` runs it) to the first saga drawn
    seconds = found["first_mermaid_at"] / 1000 - jupyter_lab.launched_at
    print(f"eventlab lab -> notebook 03's first saga diagram drawn: {seconds:.1f} s")
    keep = os.environ.get("EVENTLAB_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, keep)


def test_tracing_notebook_draws_the_waterfall_beside_the_saga_in_chromium(jupyter_lab, tmp_path):
    # given notebook 08 run from a clean slate in the browser
    screenshot = tmp_path / "tracing-notebook.png"
    found = _run_in_chromium(jupyter_lab, "08-tracing.ipynb", screenshot, WIDGET="0", MIN_MERMAID="1")
    # then the span waterfall is drawn (an inline SVG) next to the saga's mermaid diagram, with no error
    assert found["waterfalls"] >= 1 and found["mermaid_drawn"] >= 1, found
    assert found["stderr_outputs"] == 0, found
    assert screenshot.stat().st_size > 20_000

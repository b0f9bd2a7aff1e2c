"""``eventlab lab`` (what ``make lab`` runs) gives an attendee one working link to the first notebook,
and ``make lab`` shows what it installs instead of a silent minute."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from eventlab.cli import main
from eventlab.kafka.broker import free_port
from eventlab.lab import lab_command

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(
    r"^    (http://127\.0\.0\.1:(\d+)/lab/tree/01-quickstart\.ipynb\?token=([0-9a-f]{32}))$", re.MULTILINE
)


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.integration
def test_lab_prints_a_working_link_to_the_first_notebook_and_stops_on_sigterm(tmp_path):
    # given: a copy of the notebooks and a free port, on a machine without a display
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    # when: `eventlab lab` starts
    lab = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "lab", "--notebooks", str(notebooks), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = []
        for line in lab.stdout:  # type: ignore[union-attr]
            printed.append(line)
            if LINK.match(line.rstrip("\n")):
                break
        text = "".join(printed)
        # then: it prints one link, with a token, to the first notebook on the port asked for
        match = LINK.search(text)
        assert match, text
        url, shown_port, token = match.groups()
        assert int(shown_port) == port and "JupyterLab is ready" in text
        # and: the link opens the notebook; the notebook's contents need the token
        assert _get(url) == 200
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/api/contents/01-quickstart.ipynb", token) == 200
        assert _get(f"{base}/api/contents/01-quickstart.ipynb") == 403
    finally:
        # when: it is stopped as a terminal or a supervisor stops it
        lab.send_signal(signal.SIGTERM)
        rest = lab.communicate(timeout=60)[0]
    # then: it stops JupyterLab and exits 0, leaving the port free
    assert lab.returncode == 0, rest
    assert "stopping JupyterLab" in rest
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5)


def test_lab_without_notebooks_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    # given: a folder without the workshop's notebooks
    (tmp_path / "empty").mkdir()
    # when: `eventlab lab` is pointed at it
    status = main(["lab", "--notebooks", str(tmp_path / "empty"), "--no-browser"])
    # then: one line says what is missing and what to do, and nothing was started
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "no 01-quickstart.ipynb in" in err and "--notebooks DIR" in err


@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_a_port_no_server_can_listen_on_is_one_line_and_exit_status_2(port, capsys):
    # when: lab is given a port outside 1-65535 (0 would start JupyterLab on a port nobody can reach)
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "--port", port])
    # then: one line names the option, not an OverflowError from bind() nor a wait for a server at :0
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument --port: not a whole number from 1 to 65535: '{port}'" in err


def test_the_jupyterlab_command_is_local_tokened_and_offline(tmp_path, monkeypatch):
    # given: root, as in a container or CI
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # when: the command line is built
    command = lab_command(tmp_path, 8888, "abc", extra=["--ServerApp.open_browser=False"])
    # then: this Python runs JupyterLab on localhost with our token, as root, with nothing that calls home
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in command and "--IdentityProvider.token=abc" in command
    assert "--allow-root" in command and "--LabApp.news_url=None" in command
    assert "--LabApp.extension_manager=readonly" in command
    assert command[-1] == "--ServerApp.open_browser=False"


@pytest.mark.parametrize("uv_installs", [True, False], ids=["uv", "uv-fails"])
def test_make_lab_shows_what_it_installs_and_then_runs_eventlab_lab(tmp_path, uv_installs):
    # given: a venv whose python, uv and eventlab only note how they are called (uv failing, as it
    # would behind a package mirror that only pip's configuration names)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    for name, status in (("python", 0), ("uv", 0 if uv_installs else 1), ("eventlab", 0)):
        (venv / "bin" / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit {status}\n')
        (venv / "bin" / name).chmod(0o755)
    # when: `make lab` runs
    result = subprocess.run(
        ["make", "--no-print-directory", "lab", "ARGS=", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    # then: a banner says what is installed and how long it takes; uv installs the notebook tools, pip
    # only when uv cannot (showing its progress); the install is stamped done, then eventlab lab runs
    assert result.returncode == 0, result.stderr
    assert "installing eventlab with the notebook tools (about 30 s the first time)" in result.stdout
    pip = "python -m pip --disable-pip-version-check install"
    uv = [f"{pip} --quiet uv>=0.9", f"uv pip install --python {venv}/bin/python --compile-bytecode -e .[notebooks]"]
    fallback = [f"{pip} --progress-bar on --no-compile -e .[notebooks]"]
    assert calls.read_text().splitlines() == uv + ([] if uv_installs else fallback) + ["eventlab lab"]
    said = [line for line in result.stdout.splitlines() if line.startswith("eventlab: uv could not install")]
    assert said == ([] if uv_installs else ["eventlab: uv could not install; pip instead (slower)"])
    assert (venv / ".installed-lab").is_file()

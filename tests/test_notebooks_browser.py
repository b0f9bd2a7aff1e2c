"""The saga notebook in a real browser: JupyterLab, headless Debian chromium, driven by playwright-core.

Checks what a reader sees: after *Run All*, the ipywidgets dropdown and the mermaid sequence
diagrams are rendered (not shown as source), and choosing another order redraws the diagram.

Needs ``chromium`` (Debian: ``apt-get install -y chromium``), Node.js, and ``npm ci`` in
``tests/browser``. It fails, rather than skips, when they are missing. Set
``EVENTLAB_SCREENSHOT=docs/saga-notebook.png`` to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab on a free localhost port, serving a copy of the notebooks (the browser saves
    what it runs, so it must not touch the committed ones), with its own settings and workspaces."""
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings_dir = tmp_path / "settings"
    for name, values in SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    log = (tmp_path / "jupyter.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            "--IdentityProvider.token=", "--ServerApp.password=",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "jupyter.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not answer in 60 s"
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_saga_notebook_renders_widget_and_mermaid_in_chromium(jupyter_lab, tmp_path):
    node = _require_tools()
    screenshot = tmp_path / "saga-notebook.png"
    env = {
        **os.environ,
        "JUPYTER_URL": jupyter_lab,
        "NOTEBOOK": NOTEBOOK.name,
        "SCREENSHOT": str(screenshot),
        "CHROMIUM": CHROMIUM,
    }
    run = subprocess.run(
        [node, "run.mjs"], cwd=BROWSER_DIR, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, f"{run.stderr}\n{run.stdout}"
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["mermaid_drawn"] >= 4, found  # three sagas + the widget's diagram, drawn as images
    assert found["widgets"] > 0 and found["stderr_outputs"] == 0, found
    assert "payment_failed" in found["redrawn_for"], found
    assert screenshot.stat().st_size > 20_000
    keep = os.environ.get("EVENTLAB_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, keep)

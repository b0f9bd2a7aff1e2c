"""``eventlab lab`` (what ``make lab`` runs): JupyterLab on the workshop's notebooks, one link to click.

It starts JupyterLab from this Python (so the kernel sees eventlab), on ``127.0.0.1`` with a fresh
token, waits until the server answers, prints the link to ``01-quickstart.ipynb`` and opens it in a
browser where there is one (a machine without a display, or ``--no-browser``, only prints it).
JupyterLab's calls home (news, update checks, the extension manager's PyPI search) are switched off,
so a room without internet works the same. As root, ``--allow-root`` is added. Ctrl-C (or SIGTERM)
stops the server and its kernels.

Example:
    >>> lab_command(Path("notebooks"), 8888, "t0ken")[:3]  # doctest: +ELLIPSIS
    ['...python...', '-m', 'jupyterlab']
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Sequence
from pathlib import Path

import eventlab
from eventlab.arguments import whole_number
from eventlab.cli import Command
from eventlab.errors import EventlabError
from eventlab.kafka.broker import die_with_parent, free_port
from eventlab.resilience import wait_until
from eventlab.settings import port_free

__all__ = ["COMMAND", "LabError", "find_notebooks", "lab_command", "run_lab"]

log = logging.getLogger(__name__)

FIRST_NOTEBOOK = "01-quickstart.ipynb"
DEFAULT_PORT = 8888
#: JupyterLab starts in 2-5 s here; a first start on a slow laptop builds caches.
START_TIMEOUT_S = 120.0
#: Nothing that needs the internet: no news feed, no update check, no extension search on PyPI.
OFFLINE_OPTIONS = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",
)


class LabError(EventlabError):
    """JupyterLab cannot be started: not installed, no notebooks, or it exited early."""


def find_notebooks(folder: Path | None = None) -> Path:
    """The folder of notebooks to serve: ``folder``, else ``./notebooks``, else the checkout's ``notebooks/``."""
    candidates = [folder] if folder else [Path.cwd() / "notebooks", Path(eventlab.__file__).parents[1] / "notebooks"]
    for candidate in candidates:
        if candidate is not None and (candidate / FIRST_NOTEBOOK).is_file():
            return candidate.resolve()
    where = folder or "./notebooks"
    raise LabError(f"no {FIRST_NOTEBOOK} in {where}: run this in the eventlab folder, or pass --notebooks DIR")


def _port_free(port: int) -> bool:
    """Whether JupyterLab can listen on ``port`` (it binds with ``SO_REUSEADDR`` too); a port this
    user may not bind (a privileged one) is not free either."""
    try:
        return port_free(port)
    except OSError:
        return False


def lab_command(
    notebooks: Path, port: int, token: str, ip: str = "127.0.0.1", verbose: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """The JupyterLab command line: this interpreter, our port and token, no browser, nothing online."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",  # eventlab opens the notebook's own link once the server answers
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
        *(f"--{app}.log_level={'INFO' if verbose else 'WARN'}" for app in ("ServerApp", "LabApp")),
        *OFFLINE_OPTIONS,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return [*command, *extra]


def _has_display() -> bool:
    """False on a Linux machine without a graphical session (a server, a container, CI)."""
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _wait_ready(server: subprocess.Popen[bytes], base: str, token: str, timeout: float) -> None:
    request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})

    def answers() -> bool:
        if server.poll() is not None:
            raise LabError(f"JupyterLab exited with status {server.returncode} before it answered (see above)")
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                status: int = answer.status
                return status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(
        answers,
        timeout,
        interval=0.2,
        timeout_error=lambda _: LabError(f"JupyterLab did not answer on {base} in {timeout:g} s"),
    )


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM: JupyterLab shuts its kernels down and exits; SIGKILL if it has not after 20 s."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _raise_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def run_lab(
    notebooks: Path | None = None,
    port: int | None = None,
    open_browser: bool = True,
    verbose: bool = False,
    extra: Sequence[str] = (),
) -> int:
    """Run JupyterLab until Ctrl-C or SIGTERM (then return 0), or until it exits (its status)."""
    if importlib.util.find_spec("jupyterlab") is None:
        raise LabError(
            f"JupyterLab is not installed for {sys.executable}: run `make lab` in the eventlab folder "
            "(or pip install -e '.[notebooks]')"
        )
    folder = find_notebooks(notebooks)
    if port is None:
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port()
    elif not _port_free(port):
        raise LabError(f"port {port} is in use: choose another with --port, or leave it out for a free one")
    token = secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/lab/tree/{FIRST_NOTEBOOK}?token={token}"
    print(f"eventlab lab: starting JupyterLab on {folder} ...", flush=True)
    started = time.monotonic()
    server = subprocess.Popen(
        lab_command(folder, port, token, verbose=verbose, extra=extra),
        cwd=folder,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches eventlab only; JupyterLab then gets a clean SIGTERM
        preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _wait_ready(server, base, token, START_TIMEOUT_S)
        print(
            f"eventlab lab: JupyterLab is ready after {time.monotonic() - started:.1f} s. Open this link "
            f"(Ctrl-C stops JupyterLab):\n\n    {url}\n",
            flush=True,
        )
        if open_browser and _has_display():
            webbrowser.open(url)
        return server.wait()
    except KeyboardInterrupt:
        print("eventlab lab: stopping JupyterLab", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(server)


def _lab(args: argparse.Namespace) -> int:
    extra = args.jupyter_options
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return run_lab(args.notebooks, args.port, not args.no_browser, args.verbose, extra)


def _options(lab: argparse.ArgumentParser) -> None:
    lab.add_argument("--notebooks", type=Path, metavar="DIR", help="the folder to serve (default ./notebooks)")
    lab.add_argument(
        "--port", type=whole_number(1, 65535), metavar="PORT", help=f"port (default {DEFAULT_PORT}, or a free one)"
    )
    lab.add_argument("--no-browser", action="store_true", help="only print the link (automatic without a display)")
    lab.add_argument(
        "jupyter_options", nargs=argparse.REMAINDER, help="after --: options passed to JupyterLab unchanged"
    )


#: ``eventlab lab``; of the common options it uses ``-v`` (``--data-dir`` is unused).
COMMAND = Command(
    "lab",
    help="open the workshop notebooks in JupyterLab",
    description=f"Start JupyterLab (from this Python) on the notebooks folder, print the link to "
    f"{FIRST_NOTEBOOK} and open it in a browser. Listens on 127.0.0.1 only, with a fresh token, "
    "and makes no calls to the internet. Ctrl-C stops it. 'make lab' installs what it needs and runs it.",
    handler=_lab,
    options=_options,
)

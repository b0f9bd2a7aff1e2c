"""Restarting what dies, visibly: exponential backoff, the supervisor's status file, health problems.

Shared by the process supervisor (:mod:`eventlab.supervisor`, one OS process per service) and the
in-process shop (:class:`eventlab.shop.Shop`, one thread per service): a child or thread that dies is
started again after 0.2 s, doubling up to 30 s while it keeps dying, back to 0.2 s once it has run
for 10 s. Whatever is restarting or crash-looping shows up in ``/health`` as ``problems``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

__all__ = [
    "STATUS_FILE",
    "Backoff",
    "ProcessStatus",
    "SupervisorStatus",
    "read_status",
    "supervision_problems",
    "write_status",
]

#: Written by the process supervisor into the data directory: restarts and backoff per process.
STATUS_FILE = "supervisor.json"


class ProcessStatus(TypedDict):
    """One supervised process in the status file: which replica of which service, its pids,
    restarts, backoff and whether it gave up."""

    service: str
    replica: int
    port: int | None
    pid: int | None
    standby_pid: int | None
    restarts: int
    backoff: float
    crash_looping: bool
    restart_at: float | None
    last_exit: int | None
    gave_up: bool
    reason: str | None


class SupervisorStatus(TypedDict):
    """The status file: the supervisor's pid, when it wrote, and each process by name."""

    pid: int
    updated: float
    processes: dict[str, ProcessStatus]


@dataclass
class Backoff:
    """When to restart one process or thread that keeps dying, and whether it is crash-looping.

    Each death doubles the delay from ``initial`` up to ``maximum``; a run that lasted at least
    ``reset_after`` seconds counts as healthy, so the next death waits ``initial`` again.

    Example:
        >>> b = Backoff()
        >>> [b.died() for _ in range(3)], b.restarts, b.crash_looping
        ([0.2, 0.4, 0.8], 3, True)
    """

    initial: float = 0.2
    maximum: float = 30.0
    reset_after: float = 10.0
    delay: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)
    down: bool = field(default=False, init=False)
    started_at: float = field(default_factory=time.monotonic, init=False)

    def started(self) -> None:
        """Record that it runs again."""
        self.down = False
        self.started_at = time.monotonic()

    def died(self) -> float:
        """Record a death; return how long to wait before the restart."""
        ran_for = time.monotonic() - self.started_at
        self.delay = (
            self.initial if ran_for >= self.reset_after or not self.delay else min(self.delay * 2, self.maximum)
        )
        self.restarts += 1
        self.down = True
        return self.delay

    @property
    def crash_looping(self) -> bool:
        """True while it keeps dying soon after each restart (until a run lasts ``reset_after`` s)."""
        recent = self.down or time.monotonic() - self.started_at < self.reset_after
        return self.delay > self.initial and recent


def write_status(data_dir: Path, status: Mapping[str, object]) -> None:
    """Replace ``<data_dir>/supervisor.json`` atomically (readers never see half a file); on an
    ``OSError`` (a full disk) nothing is left behind but the previous file."""
    path = Path(data_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def read_status(data_dir: Path) -> SupervisorStatus | None:
    """The running supervisor's status, or None (no supervisor, or its process is gone)."""
    try:
        status: SupervisorStatus = json.loads((Path(data_dir) / STATUS_FILE).read_text())
        os.kill(int(status["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status


def supervision_problems(data_dir: Path, *names: str, replicated: Iterable[str] = ()) -> list[str]:
    """What the supervisor reports about processes ``names`` (e.g. a service, or ``inventory.1``) and
    services ``replicated``, for ``/health``.

    The replicas of a ``replicated`` service stand in for each other (the relay: one holds the lease
    and publishes, the others stand by to take over), so it is a problem only while none of them
    runs; then each replica's state is reported (``relay``, ``relay.1``, ...).
    """
    status = read_status(data_dir)
    if status is None:
        return []
    processes, now = status.get("processes", {}), time.time()
    problems = [problem for name in names for problem in _problem(name, processes.get(name), now)]
    for service in replicated:
        replicas = sorted(name for name, state in processes.items() if state.get("service", name) == service)
        down = [problem for name in replicas for problem in _problem(name, processes[name], now)]
        if replicas and len(down) == len(replicas):
            problems += down
    return problems


def _problem(name: str, state: ProcessStatus | None, now: float) -> list[str]:
    """Why process ``name`` is not running as it should (one line), or nothing."""
    if state is None:
        return []
    if state.get("gave_up"):
        return [f"{name} is not running: {state.get('reason', 'gave up')}"]
    if state.get("crash_looping"):
        wait = max(0.0, float(state.get("restart_at") or now) - now)
        return [
            f"{name} is crash-looping: {state['restarts']} restarts, last exit {state.get('last_exit')}, "
            f"backoff {state['backoff']:.1f} s" + (f", next start in {wait:.1f} s" if wait else "")
        ]
    return []

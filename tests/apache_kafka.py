"""Apache Kafka for the integration tests: the official broker (KRaft, one node that is its own
controller) run by ``scripts/kafka.sh`` from the jars on Maven Central, at the version ``compose.yaml`` uses.

The integration tests that matter for a real cluster (the saga end to end, restart, dead letters) run
once on the embedded broker and once here. Nothing is skipped: without Java or Maven the lane fails
and says what is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from eventlab.kafka.broker import die_with_parent, free_port
from eventlab.resilience import wait_until

__all__ = ["BROKERS", "ApacheKafka", "fetch"]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"

#: The brokers an integration test marked for both runs on (pytest ids).
BROKERS = ("embedded", "apache-kafka")


def fetch(timeout: float = 600) -> None:
    """Have the broker's jars in ``.cache/kafka`` (a download of ~45 MB the first time, then offline)."""
    result = subprocess.run([SCRIPT, "fetch"], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/kafka.sh fetch failed (Java 17 and Maven are needed):\n{result.stderr}")


class ApacheKafka:
    """One Apache Kafka broker with its log in ``directory``, on free localhost ports."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Self:
        """Start the broker and wait until it answers a metadata request."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "console.log").open("ab") as console:
            self._process = subprocess.Popen(
                [SCRIPT, "run", self.directory, str(self.port), str(free_port())],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})

        def brokers() -> int:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"Apache Kafka exited; see {self.directory}/console.log and server.log")
            try:
                return len(admin.list_topics(timeout=1).brokers)
            except KafkaException:
                return 0

        wait_until(brokers, timeout, interval=0.1)
        return self

    def stop(self) -> None:
        """Stop the broker (a clean shutdown, killed after 15 s)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

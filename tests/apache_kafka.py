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

from eventlab.kafka.broker import EmbeddedBroker, die_with_parent, free_port
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


class ApacheKafka(EmbeddedBroker):
    """One Apache Kafka broker with its log in ``log_dir``, on free localhost ports.

    Started by ``scripts/kafka.sh run`` instead of Tansu; stopping and the context manager are the
    embedded broker's (a test's broker and its directory are thrown away afterwards).
    """

    def __repr__(self) -> str:
        return f"<ApacheKafka {self.bootstrap_servers} {'running' if self.running else 'stopped'}>"

    def start(self, timeout: float = 180) -> Self:
        """Start the broker and wait until it answers a metadata request (a JVM starting: 5 to 10 s on a
        quiet machine, 50 s seen in CI on a busy one)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "console.log").open("ab") as console:
            self._process = subprocess.Popen(
                [SCRIPT, "run", self.log_dir, str(self.port), str(free_port())],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})

        def brokers() -> int:
            if not self.running:
                raise RuntimeError(f"Apache Kafka exited; see {self.log_dir}/console.log and server.log")
            try:
                return len(admin.list_topics(timeout=1).brokers)
            except KafkaException:
                return 0

        wait_until(brokers, timeout, interval=0.1)
        return self

    def delete_topic(self, topic: str, timeout: float = 30) -> None:
        """Delete ``topic`` (as an operator would, under whatever runs) and return once it is gone."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        admin.delete_topics([topic])[topic].result(timeout)
        wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, timeout, interval=0.1)

"""One frozen settings object, read from ``EVENTLAB_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["Settings", "SERVICE_PORTS", "default_data_dir"]

#: The seed's ports, one per service.
SERVICE_PORTS: dict[str, int] = {
    "user": 8081,
    "product": 8082,
    "order": 8083,
    "payment": 8084,
    "inventory": 8085,
    "notification": 8086,
}

_KAFKA_PREFIX = "EVENTLAB_KAFKA_"
_SECRET_WORDS = ("password", "secret", "key", "token")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/eventlab`` (``~/.local/share/eventlab`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "eventlab"


@dataclass(frozen=True)
class Settings:
    """Where eventlab keeps its data and how it reaches Kafka.

    Every field has an environment variable; explicit arguments win over the environment.

    - ``data_dir`` (``EVENTLAB_DATA_DIR``): the event store and the embedded broker's log.
    - ``bootstrap_servers`` (``EVENTLAB_BOOTSTRAP_SERVERS``): an external Kafka cluster; when
      empty, eventlab starts its embedded broker.
    - ``kafka_config``: extra librdkafka settings for every client, e.g.
      ``EVENTLAB_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes ``security.protocol``.
    - ``partitions`` (``EVENTLAB_PARTITIONS``): partitions per topic created by eventlab.
    - ``http_port_offset`` (``EVENTLAB_HTTP_PORT_OFFSET``): added to the seed's ports 8081-8086.
    - ``session_timeout_ms`` (``EVENTLAB_SESSION_TIMEOUT_MS``): how long a consumer group waits for a
      silent member; Apache Kafka refuses less than 6000 by default, the embedded broker uses 1000.
    - ``group_instance`` (``EVENTLAB_GROUP_INSTANCE``): static group membership (``group.instance.id``)
      for this process's consumers; the supervisor sets it on external brokers.

    Example:
        >>> Settings(data_dir=Path("/tmp/shop")).store_path
        PosixPath('/tmp/shop/events.db')
    """

    data_dir: Path = field(default_factory=default_data_dir)
    bootstrap_servers: str = ""
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    partitions: int = 3
    http_port_offset: int = 0
    session_timeout_ms: int = 6000
    group_instance: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if env.get("EVENTLAB_DATA_DIR"):
            values["data_dir"] = Path(env["EVENTLAB_DATA_DIR"])
        if env.get("EVENTLAB_BOOTSTRAP_SERVERS"):
            values["bootstrap_servers"] = env["EVENTLAB_BOOTSTRAP_SERVERS"]
        if env.get("EVENTLAB_PARTITIONS"):
            values["partitions"] = int(env["EVENTLAB_PARTITIONS"])
        if env.get("EVENTLAB_HTTP_PORT_OFFSET"):
            values["http_port_offset"] = int(env["EVENTLAB_HTTP_PORT_OFFSET"])
        if env.get("EVENTLAB_SESSION_TIMEOUT_MS"):
            values["session_timeout_ms"] = int(env["EVENTLAB_SESSION_TIMEOUT_MS"])
        if env.get("EVENTLAB_GROUP_INSTANCE"):
            values["group_instance"] = env["EVENTLAB_GROUP_INSTANCE"]
        values["kafka_config"] = {
            key[len(_KAFKA_PREFIX) :].lower().replace("_", "."): value
            for key, value in env.items()
            if key.startswith(_KAFKA_PREFIX)
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"]).expanduser()  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        kafka = {k: "***" if any(w in k for w in _SECRET_WORDS) else v for k, v in self.kafka_config.items()}
        return (
            f"Settings(data_dir={str(self.data_dir)!r}, bootstrap_servers={self.bootstrap_servers or 'embedded'!r}, "
            f"kafka_config={kafka!r}, partitions={self.partitions}, http_port_offset={self.http_port_offset})"
        )

    @property
    def store_path(self) -> Path:
        """The SQLite event store file."""
        return self.data_dir / "events.db"

    @property
    def embedded(self) -> bool:
        """True when eventlab runs its own broker (no external cluster configured)."""
        return not self.bootstrap_servers

    def port(self, service: str) -> int:
        """The HTTP port of ``service``."""
        return SERVICE_PORTS[service] + self.http_port_offset

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        """A copy pointing at ``bootstrap_servers``."""
        return replace(self, bootstrap_servers=bootstrap_servers)

    def environ(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        env = {
            "EVENTLAB_DATA_DIR": str(self.data_dir),
            "EVENTLAB_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "EVENTLAB_PARTITIONS": str(self.partitions),
            "EVENTLAB_HTTP_PORT_OFFSET": str(self.http_port_offset),
            "EVENTLAB_SESSION_TIMEOUT_MS": str(self.session_timeout_ms),
        }
        if self.group_instance:
            env["EVENTLAB_GROUP_INSTANCE"] = self.group_instance
        for key, value in self.kafka_config.items():
            env[_KAFKA_PREFIX + key.replace(".", "_").upper()] = value
        return env

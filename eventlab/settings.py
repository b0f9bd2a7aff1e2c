"""One frozen settings object, read from ``EVENTLAB_*`` environment variables and checked once.

Every field that has a variable says so in its metadata (:func:`variable`), with its allowed
range; :meth:`Settings.from_env` parses the text and :meth:`Settings.__post_init__` checks the
ranges, so a bad value is one :class:`SettingsError` naming the variable, whichever way it came in.
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from eventlab.arguments import home_expanded
from eventlab.errors import EventlabError
from eventlab.services import SERVICE_NAMES

__all__ = [
    "DEFAULT_QUERY_MEMORY",
    "QUERY_MEMORY_VARIABLE",
    "REPLICA_PORT_STEP",
    "SERVICE_PORTS",
    "TRACE_SINKS",
    "PortInUse",
    "Settings",
    "SettingsError",
    "StoreBackend",
    "default_data_dir",
    "ensure_ports_free",
    "memory_size",
    "port_free",
    "query_memory",
    "service_store_variable",
    "variable",
]

#: The seed's ports, one per service: 8081 (user) up to 8086 (notification), in start-up order.
SERVICE_PORTS: dict[str, int] = {name: 8081 + index for index, name in enumerate(SERVICE_NAMES)}

#: Replica ``k`` of a service (``eventlab up --processes --replicas inventory=3``) listens on the
#: service's port + ``k`` x this: inventory 8085, 8185, 8285 (replica 0 keeps the seed's port).
REPLICA_PORT_STEP = 100

_KAFKA_PREFIX = "EVENTLAB_KAFKA_"
#: The librdkafka settings eventlab sets itself, which an ``EVENTLAB_KAFKA_*`` variable may not change:
#: the broker's address has its own variable, and the rest carry the delivery guarantees (offsets
#: stored only once an event is handled, idempotent producers, one group per service).
_OWN_KAFKA_SETTINGS = {
    "bootstrap.servers": "eventlab sets it: use EVENTLAB_BOOTSTRAP_SERVERS",
    "session.timeout.ms": "eventlab sets it: use EVENTLAB_SESSION_TIMEOUT_MS",
    "group.instance.id": "eventlab sets it: use EVENTLAB_GROUP_INSTANCE",
    **dict.fromkeys(
        (
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "auto.offset.reset",
            "enable.idempotence",
            "acks",
            "max.in.flight.requests.per.connection",
            "transactional.id",
        ),
        "eventlab sets it: its delivery guarantees depend on it",
    ),
}
#: librdkafka's other names of a setting, by the name eventlab uses: one eventlab sets is refused
#: under either (``metadata.broker.list`` pointed the shop at another cluster), and an error librdkafka
#: reports under its own name names the variable that was set.
KAFKA_ALIASES = {
    "metadata.broker.list": "bootstrap.servers",
    "request.required.acks": "acks",
    "max.in.flight": "max.in.flight.requests.per.connection",
    "queue.buffering.max.ms": "linger.ms",
    "auto.commit.enable": "enable.auto.commit",
}
_SERVICE_STORE = re.compile(r"EVENTLAB_(?!KAFKA_).+_STORE_URL")  # EVENTLAB_<SERVICE>_STORE_URL, typos too
_SECRET_WORDS = ("password", "secret", "key", "token")
_PORTS = (1, 65535)
#: The span sinks ``EVENTLAB_TRACING`` may name (see :mod:`eventlab.tracing`).
TRACE_SINKS = ("file", "otlp", "zipkin")
#: The offsets that keep every service port inside 1-65535.
_OFFSETS = (_PORTS[0] - min(SERVICE_PORTS.values()), _PORTS[1] - max(SERVICE_PORTS.values()))


class SettingsError(EventlabError):
    """An ``EVENTLAB_*`` variable (or the setting it feeds) has a value eventlab cannot use.

    Example:
        >>> str(SettingsError("EVENTLAB_PARTITIONS", "not a whole number: 'abc'"))
        "EVENTLAB_PARTITIONS: not a whole number: 'abc'"
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


#: Settings that name a file, which on Linux may be any bytes; every other one goes to a client
#: library (librdkafka, libpq, a socket) as UTF-8.
_ANY_BYTES = frozenset({"data_dir", "store_url"})


def _utf8(variable: str, value: object) -> None:
    """:class:`SettingsError` if ``value`` is text holding bytes that were not UTF-8 in the environment
    (Python keeps them as lone surrogates, which no client library can encode). The value is not
    shown: it may be a password."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise SettingsError(variable, f"holds bytes that are not UTF-8 (character {exc.start + 1})") from None


class PortInUse(EventlabError):
    """A service's HTTP port is taken by another program."""

    def __init__(self, service: str, port: int, offset: int) -> None:
        hint = offset + 1000 if offset + 1000 <= _OFFSETS[1] else offset - 1000
        super().__init__(
            f"port {port} of the {service} service is already in use; stop what listens there or move "
            f"all six ports with EVENTLAB_HTTP_PORT_OFFSET (now {offset}; e.g. EVENTLAB_HTTP_PORT_OFFSET={hint} "
            f"uses {min(SERVICE_PORTS.values()) + hint}-{max(SERVICE_PORTS.values()) + hint})"
        )
        self.service = service
        self.port = port


#: The kinds of event store ``EVENTLAB_STORE_URL`` can name.
StoreBackend = Literal["sqlite", "postgresql", "memory"]
_STORE_SCHEMES: dict[str, StoreBackend] = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


#: A libpq ``key=value`` connection string (``host=db dbname=shop``), which no file path is.
_CONNINFO = re.compile(r"(?:^|\s)(?:host|hostaddr|dbname|user|password|port|sslmode|service)\s*=", re.ASCII)


def _store_backend(url: str, variable: str = "EVENTLAB_STORE_URL") -> StoreBackend:
    """The kind of store ``url`` names ("" and a plain path: SQLite); raises :class:`SettingsError`
    naming ``variable``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        if _CONNINFO.search(url):  # else a SQLite file named after it, password and all
            raise SettingsError(
                variable,
                "a PostgreSQL key=value string is not a store URL: write it as postgresql://user@host:5432/dbname"
                " (the value is not shown)",
            )
        return "sqlite"  # a plain path (or "": the default file in the data directory)
    if url == "memory://":
        return "memory"
    backend = _STORE_SCHEMES.get(scheme.lower())
    if backend == "sqlite" and not rest.startswith("/"):
        backend = None  # sqlite:// takes an absolute path: sqlite:///srv/shop/events.db
    if backend is None:
        raise SettingsError(
            variable,
            f"{_hide_password(url)!r} is not a store eventlab knows: use sqlite:///absolute/path/events.db "
            "(or a plain file path), postgresql://user@host:5432/dbname, or memory://",
        )
    authority, _, path = rest.partition("/")
    if backend == "postgresql" and "@" not in authority and "@" in path.partition("?")[0]:
        # postgresql://shop:ab/cd@db/shop: libpq would take "ab" for the host and show the rest in its errors
        raise SettingsError(variable, "its user name or password holds a '/': write it as %2F (the URL is not shown)")
    return backend


def _sqlite_file(url: str) -> Path:
    """The file a SQLite store URL names: a plain path, or the path after ``sqlite://`` (in any case,
    as :func:`_store_backend` reads it); ``~`` not yet expanded."""
    _, separator, path = url.partition("://")
    return Path(path if separator else url)


def _home_expanded(path: Path, variable: str) -> Path:
    """:func:`~eventlab.arguments.home_expanded`, its error a :class:`SettingsError` naming ``variable``."""
    try:
        return home_expanded(path)
    except ValueError as exc:
        raise SettingsError(variable, str(exc)) from None


def _check_store_url(url: str, variable: str) -> None:
    """:class:`SettingsError` naming ``variable`` unless ``url`` names a store eventlab can open."""
    backend = _store_backend(url, variable)
    if backend == "postgresql":  # a SQLite file's name may be any bytes; libpq's not
        _utf8(variable, url)
    elif backend == "sqlite" and url:
        _home_expanded(_sqlite_file(url), variable)


def service_store_variable(service: str) -> str:
    """The variable that gives ``service`` a store of its own.

    >>> service_store_variable("order")
    'EVENTLAB_ORDER_STORE_URL'
    """
    return f"EVENTLAB_{service.upper()}_STORE_URL"


def _hide_password(url: str) -> str:
    """``url`` with its password, in the user part or as a ``password=`` parameter, shown as ``***``.

    >>> _hide_password("postgresql://shop@db/shop?sslmode=require&password=secret")
    'postgresql://shop@db/shop?sslmode=require&password=***'
    """
    url = re.sub(r"^([a-z]+://[^:/@]*:)[^@/]*@", r"\1***@", url, flags=re.IGNORECASE)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/eventlab`` (``~/.local/share/eventlab`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "eventlab"


def variable(
    name: str, between: tuple[float, float] | None = None, parse: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Field metadata: the field's environment variable, its allowed range (both ends included) and,
    where the field's type alone does not say how, the function reading the variable's text.

    Example:
        >>> variable("EVENTLAB_PARTITIONS", between=(1, 1000))
        {'variable': 'EVENTLAB_PARTITIONS', 'between': (1, 1000)}
    """
    found: dict[str, Any] = {"variable": name, "between": between}
    if parse is not None:
        found["parse"] = parse
    return found


#: A whole number and a decimal number as a variable holds them: ASCII digits only (Python's own
#: parsers also take ``'٣'``, ``'３'`` and ``'1_000'``), an optional sign, exponent and fraction.
_WHOLE = re.compile(r"\s*[+-]?[0-9]{1,18}\s*", re.ASCII)
_DECIMAL = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*", re.ASCII)


def _whole(text: str) -> int:
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"not a whole number: {_shown(text)}")
    return int(text)


def _number(text: str) -> float:
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a number: {_shown(text)}")
    return value


def _shown(text: str) -> str:
    """``text`` as an error shows it: quoted, cut at 40 characters (a 5,000-digit value is one huge line)."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text):,} characters)"


#: One bootstrap server as librdkafka takes it: an optional security protocol, a host name or an
#: address ([…] for IPv6), an optional port (9092).
_SERVER = re.compile(
    r"((PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE | re.ASCII,
)


def kafka_servers(text: str) -> list[str]:
    """The servers of a bootstrap list (``host:port,host:port``; none when empty): ``ValueError``
    naming the first one that is no ``host[:port]`` with a port from 1 to 65535.

    Example:
        >>> kafka_servers("kafka-1:9092, kafka-2")
        ['kafka-1:9092', 'kafka-2']
    """
    servers = [server.strip() for server in text.split(",")] if text.strip() else []
    for server in servers:
        found = _SERVER.fullmatch(server)
        if found is None or not 1 <= int(found["port"] or 9092) <= 65535:
            within = f" in {_shown(text)}" if len(servers) > 1 else ""
            raise ValueError(f"{_shown(server)} is not host:port (a port from 1 to 65535){within}")
    return servers


#: The variable that sets the memory one ad-hoc query may use (:mod:`eventlab.projections.sandbox`).
QUERY_MEMORY_VARIABLE = "EVENTLAB_QUERY_MEMORY"
#: What it is unless set: room for any query over a shop's log, on a laptop (2 GiB).
DEFAULT_QUERY_MEMORY = 2 * 2**30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_SIZE = re.compile(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*([kmgtp]i?b|b)?\s*", re.IGNORECASE | re.ASCII)  # no '٢GiB'
#: Its bounds: below 64 MiB DuckDB cannot run the projections' own views.
_QUERY_MEMORY_BOUNDS = (64 * 2**20, 2**50)


def memory_size(text: str) -> int:
    """The bytes of ``EVENTLAB_QUERY_MEMORY``'s text (``512MiB``, ``4GiB``, ``8GB``; a bare number is
    bytes): ``ValueError`` unless it is a size from 64 MiB to 1 PiB written in ASCII.

    Example:
        >>> memory_size("512MiB"), memory_size(" 8gb ")
        (536870912, 8000000000)
        >>> memory_size("lots")
        Traceback (most recent call last):
        ValueError: not a size like 4GiB or 512MB: 'lots'
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size like 4GiB or 512MB: {text!r}")
    return memory_within_bounds(int(float(match[1]) * _UNITS[(match[2] or "").lower()]), text)


def memory_within_bounds(size: int, given: object = None) -> int:
    """``size`` (bytes) unless it is outside 64 MiB to 1 PiB, the sizes a query sandbox may have:
    then ``ValueError`` naming ``given`` (what was written, ``size`` when None)."""
    low, high = _QUERY_MEMORY_BOUNDS
    if not low <= size <= high:
        raise ValueError(f"must be from 64MiB to 1PiB, not {size if given is None else given!r}")
    return size


def query_memory(env: Mapping[str, str] | None = None) -> int:
    """:attr:`Settings.query_memory` read from ``env`` (default ``os.environ``) alone, for a sandbox made
    without settings (a notebook's): the variable's size, else :data:`DEFAULT_QUERY_MEMORY`.

    Example:
        >>> query_memory({"EVENTLAB_QUERY_MEMORY": "512MiB"}), query_memory({})
        (536870912, 2147483648)
        >>> query_memory({"EVENTLAB_QUERY_MEMORY": "lots"})
        Traceback (most recent call last):
        eventlab.settings.SettingsError: EVENTLAB_QUERY_MEMORY: not a size like 4GiB or 512MB: 'lots'
    """
    text = _value(os.environ if env is None else env, QUERY_MEMORY_VARIABLE)
    _utf8(QUERY_MEMORY_VARIABLE, text)
    try:
        return memory_size(text) if text else DEFAULT_QUERY_MEMORY
    except ValueError as exc:
        raise SettingsError(QUERY_MEMORY_VARIABLE, str(exc)) from None


#: How the text of a variable becomes a field's value, by the field's type.
_PARSERS: dict[str, Callable[[str], object]] = {"int": _whole, "float": _number, "str": str, "Path": Path}


def _value(env: Mapping[str, str], name: str) -> str:
    """The text of variable ``name`` without the spaces around it ("" when unset or blank): a value
    pasted with a space would otherwise name a path under a directory called " "."""
    return env.get(name, "").strip()


def _check(name: str, kind: str, value: object, between: tuple[float, float] | None) -> None:
    """Raise :class:`SettingsError` unless ``value`` has the field's type and lies in ``between``."""
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise SettingsError(name, f"not a whole number: {value!r}")
    if kind == "float" and not (isinstance(value, int | float) and math.isfinite(value)):
        raise SettingsError(name, f"not a number: {value!r}")
    if between and not between[0] <= value <= between[1]:  # type: ignore[operator]
        raise SettingsError(name, f"must be between {between[0]:g} and {between[1]:g}, not {value}")


def _is_http_url(url: str) -> bool:
    """Whether ``url`` is an http(s) URL with a host, a port that is a number if it has one, and no
    whitespace (what an exporter can send to).

    Example:
        >>> _is_http_url("http://localhost:4318"), _is_http_url("http://[::1"), _is_http_url("http://")
        (True, False, False)
    """
    if any(character.isspace() for character in url):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed "[", or a port that is no number (raised when .port is read)
        return False


@dataclass(frozen=True)
class Settings:
    """Where eventlab keeps its data and how it reaches Kafka.

    Every field has an environment variable; explicit arguments win over the environment.

    - ``data_dir`` (``EVENTLAB_DATA_DIR``): the event store and the embedded broker's log
      (default ``$XDG_DATA_HOME/eventlab``, i.e. ``~/.local/share/eventlab``).
    - ``bootstrap_servers`` (``EVENTLAB_BOOTSTRAP_SERVERS``): an external Kafka cluster; when
      empty, eventlab starts its embedded broker.
    - ``kafka_config``: extra librdkafka settings for every client, e.g.
      ``EVENTLAB_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes ``security.protocol``.
    - ``partitions`` (``EVENTLAB_PARTITIONS``, 1-1000): partitions per topic created by eventlab.
    - ``http_port_offset`` (``EVENTLAB_HTTP_PORT_OFFSET``): added to the seed's ports 8081-8086;
      every port must stay within 1-65535.
    - ``http_host`` (``EVENTLAB_HTTP_HOST``): the address the services' HTTP servers bind
      (default ``127.0.0.1``; ``0.0.0.0`` in a container whose ports are published).
    - ``saga_timeout_s`` (``EVENTLAB_SAGA_TIMEOUT_S``, 0.1-86400): an order waiting longer for its
      reservation is cancelled with reason ``timeout``; the payment step may take twice as long.
    - ``session_timeout_ms`` (``EVENTLAB_SESSION_TIMEOUT_MS``, 100-3600000): how long a consumer group
      waits for a silent member; Apache Kafka refuses less than 6000 by default, the embedded broker
      uses 1000.
    - ``group_instance`` (``EVENTLAB_GROUP_INSTANCE``): static group membership (``group.instance.id``)
      for this process's consumers; the supervisor sets it on external brokers.
    - ``store_url`` (``EVENTLAB_STORE_URL``): the event store. Empty (the default): the SQLite file
      ``events.db`` in the data directory; ``sqlite:///srv/shop/events.db`` or a plain path: that
      SQLite file; ``postgresql://user:password@host:5432/dbname`` (libpq URL; a schema of its own with
      ``?options=-csearch_path%3Dshop``): PostgreSQL; ``memory://``: this process's memory (tests).
    - ``service_store_urls`` (``EVENTLAB_<SERVICE>_STORE_URL``, e.g. ``EVENTLAB_ORDER_STORE_URL``): a
      store of a service's own, in the same forms; the services without one share ``store_url``.
    - ``tracing`` (``EVENTLAB_TRACING``): ``off`` (the default) or the span sinks, comma-separated:
      ``file`` (``<data_dir>/spans.jsonl``), ``otlp``, ``zipkin`` (see :mod:`eventlab.tracing`).
    - ``otlp_endpoint`` (``EVENTLAB_OTLP_ENDPOINT``): an OTLP/HTTP collector, e.g.
      ``http://localhost:4318``; setting it switches tracing on (so do the standard
      ``OTEL_EXPORTER_OTLP_*`` variables).
    - ``zipkin_endpoint`` (``EVENTLAB_ZIPKIN_ENDPOINT``): a Zipkin server's
      ``http://localhost:9411/api/v2/spans``; setting it switches tracing on.
    - ``query_memory`` (``EVENTLAB_QUERY_MEMORY``, 64 MiB to 1 PiB; ``512MiB``, ``4GiB``, ``8GB``): the
      bytes one ad-hoc query may use (``eventlab query`` and ``show``, ``Projections.sql``).
    - ``trace_sample`` (``EVENTLAB_TRACE_SAMPLE``, 0-1): the share of orders traced (whole traces:
      every span follows its order's decision); below 1 where tracing's cost matters.

    A value out of range raises :class:`SettingsError` naming the variable.

    Example:
        >>> Settings(data_dir=Path("/tmp/shop")).store_path
        PosixPath('/tmp/shop/events.db')
        >>> Settings(store_url="postgresql://shop:pw@db:5432/shop").store_backend
        'postgresql'
        >>> Settings(partitions=0)
        Traceback (most recent call last):
        ...
        eventlab.settings.SettingsError: EVENTLAB_PARTITIONS: must be between 1 and 1000, not 0
    """

    data_dir: Path = field(default_factory=default_data_dir, metadata=variable("EVENTLAB_DATA_DIR"))
    bootstrap_servers: str = field(default="", metadata=variable("EVENTLAB_BOOTSTRAP_SERVERS"))
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    partitions: int = field(default=3, metadata=variable("EVENTLAB_PARTITIONS", between=(1, 1000)))
    http_port_offset: int = field(default=0, metadata=variable("EVENTLAB_HTTP_PORT_OFFSET"))
    http_host: str = field(default="127.0.0.1", metadata=variable("EVENTLAB_HTTP_HOST"))
    saga_timeout_s: float = field(default=30.0, metadata=variable("EVENTLAB_SAGA_TIMEOUT_S", between=(0.1, 86400)))
    session_timeout_ms: int = field(
        default=6000, metadata=variable("EVENTLAB_SESSION_TIMEOUT_MS", between=(100, 3_600_000))
    )
    group_instance: str = field(default="", metadata=variable("EVENTLAB_GROUP_INSTANCE"))
    store_url: str = field(default="", metadata=variable("EVENTLAB_STORE_URL"))
    service_store_urls: Mapping[str, str] = field(default_factory=dict)
    tracing: str = field(default="off", metadata=variable("EVENTLAB_TRACING"))
    otlp_endpoint: str = field(default="", metadata=variable("EVENTLAB_OTLP_ENDPOINT"))
    zipkin_endpoint: str = field(default="", metadata=variable("EVENTLAB_ZIPKIN_ENDPOINT"))
    trace_sample: float = field(default=1.0, metadata=variable("EVENTLAB_TRACE_SAMPLE", between=(0, 1)))
    query_memory: int = field(default=DEFAULT_QUERY_MEMORY, metadata=variable(QUERY_MEMORY_VARIABLE, parse=memory_size))

    def __post_init__(self) -> None:
        for f in fields(self):
            if name := f.metadata.get("variable"):
                _check(name, str(f.type), getattr(self, f.name), f.metadata.get("between"))
                if f.name not in _ANY_BYTES:
                    _utf8(name, getattr(self, f.name))
        try:  # a value given as bytes, not read from the variable, has the same bounds
            memory_within_bounds(self.query_memory)
        except ValueError as exc:
            raise SettingsError(QUERY_MEMORY_VARIABLE, str(exc)) from None
        try:
            kafka_servers(self.bootstrap_servers)
        except ValueError as exc:
            raise SettingsError("EVENTLAB_BOOTSTRAP_SERVERS", str(exc)) from None
        for key, value in self.kafka_config.items():
            name = _KAFKA_PREFIX + key.replace(".", "_").upper()
            _utf8(name, key)  # librdkafka crashed (SIGSEGV) on a name that is not UTF-8
            _utf8(name, value)
            if (own := _OWN_KAFKA_SETTINGS.get(KAFKA_ALIASES.get(key, key))) is not None:
                raise SettingsError(name, own)
        _check_store_url(self.store_url, "EVENTLAB_STORE_URL")
        for service, url in self.service_store_urls.items():
            if service not in SERVICE_PORTS:
                raise SettingsError(
                    service_store_variable(service), f"no such service; one of {', '.join(SERVICE_PORTS)}"
                )
            _check_store_url(url, service_store_variable(service))
        unknown = {part.strip() for part in self.tracing.split(",")} - {"off", "", *TRACE_SINKS}
        if unknown:
            raise SettingsError(
                "EVENTLAB_TRACING",
                f"unknown sink {', '.join(sorted(unknown))}; use off or {', '.join(TRACE_SINKS)}, comma-separated",
            )
        for name, url in (
            ("EVENTLAB_OTLP_ENDPOINT", self.otlp_endpoint),
            ("EVENTLAB_ZIPKIN_ENDPOINT", self.zipkin_endpoint),
        ):
            if url and not _is_http_url(url):
                raise SettingsError(name, f"not an http(s) URL with a host: {url!r}")
        if not self.http_host or any(c.isspace() for c in self.http_host):
            raise SettingsError("EVENTLAB_HTTP_HOST", f"not an address to bind: {self.http_host!r}")
        ports = [self.port(service) for service in SERVICE_PORTS]
        if min(ports) < _PORTS[0] or max(ports) > _PORTS[1]:
            raise SettingsError(
                "EVENTLAB_HTTP_PORT_OFFSET",
                f"{self.http_port_offset} puts the service ports at {min(ports)} to {max(ports)}, outside "
                f"{_PORTS[0]} to {_PORTS[1]} (use an offset from {_OFFSETS[0]} to {_OFFSETS[1]})",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` that are not None win.

        Raises :class:`SettingsError` naming the variable when a value cannot be parsed or is out of range.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata.get("variable")
            if name and (text := _value(env, name)):
                if f.name not in _ANY_BYTES:
                    _utf8(name, text)  # before parsing, whose error would show the value
                try:
                    values[f.name] = (f.metadata.get("parse") or _PARSERS[str(f.type)])(text)
                except ValueError as exc:
                    raise SettingsError(name, str(exc)) from None
        values["kafka_config"] = {
            key[len(_KAFKA_PREFIX) :].lower().replace("_", "."): value
            for key, value in env.items()
            if key.startswith(_KAFKA_PREFIX)
        }
        values["service_store_urls"] = {
            service: url for service in SERVICE_PORTS if (url := _value(env, service_store_variable(service)))
        }
        known = {service_store_variable(service) for service in SERVICE_PORTS}
        for name in env:  # a typo in a service's name would share the default store unnoticed
            if _value(env, name) and name not in known and _SERVICE_STORE.fullmatch(name):
                raise SettingsError(
                    name, f"no such service; use EVENTLAB_<SERVICE>_STORE_URL with one of {', '.join(SERVICE_PORTS)}"
                )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = _home_expanded(Path(values["data_dir"]), "EVENTLAB_DATA_DIR")  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["data_dir"] = str(self.data_dir)
        shown["bootstrap_servers"] = self.bootstrap_servers or "embedded"
        shown["store_url"] = self.store_shown
        shown["service_store_urls"] = {service: _hide_password(url) for service, url in self.service_store_urls.items()}
        shown["kafka_config"] = {
            k: "***" if any(w in k for w in _SECRET_WORDS) else v for k, v in self.kafka_config.items()
        }
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    @property
    def store_backend(self) -> StoreBackend:
        """Which kind of event store :attr:`store_url` names (:func:`eventlab.store.open_store` opens it)."""
        return _store_backend(self.store_url)

    @property
    def store_shown(self) -> str:
        """The event store, for messages: the SQLite file, or the URL without its password.

        >>> Settings(store_url="postgresql://shop:secret@db:5432/shop").store_shown
        'postgresql://shop:***@db:5432/shop'
        """
        return str(self.store_path) if self.store_backend == "sqlite" else _hide_password(self.store_url)

    @property
    def store_path(self) -> Path:
        """The SQLite event store file: the one :attr:`store_url` names, else ``events.db`` in the data directory."""
        if self.store_backend == "sqlite" and self.store_url:
            return _sqlite_file(self.store_url).expanduser()  # expandable: checked by __post_init__
        return self.data_dir / "events.db"

    def store_url_of(self, service: str) -> str:
        """The store ``service`` writes to: its own (``EVENTLAB_<SERVICE>_STORE_URL``), else :attr:`store_url`."""
        return self.service_store_urls.get(service, self.store_url)

    def store_of(self, service: str) -> Settings:
        """A copy whose one store, for every service, is the one ``service`` writes to
        (:func:`eventlab.store.open_store` opens it).

        Example:
            >>> split = Settings(data_dir=Path("/tmp/shop"), service_store_urls={"order": "/tmp/order.db"})
            >>> split.store_of("order").store_path, split.store_of("user").store_path
            (PosixPath('/tmp/order.db'), PosixPath('/tmp/shop/events.db'))
        """
        return replace(self, store_url=self.store_url_of(service), service_store_urls={})

    @property
    def embedded(self) -> bool:
        """True when eventlab runs its own broker (no external cluster configured)."""
        return not self.bootstrap_servers

    def port(self, service: str, replica: int = 0) -> int:
        """The HTTP port of ``service`` (of its replica number ``replica``: see :data:`REPLICA_PORT_STEP`).

        Example:
            >>> Settings().port("inventory"), Settings(http_port_offset=1000).port("inventory", replica=2)
            (8085, 9285)
        """
        return SERVICE_PORTS[service] + self.http_port_offset + REPLICA_PORT_STEP * replica

    def url(self, service: str, replica: int = 0) -> str:
        """Where ``service``'s HTTP API answers on this machine: on :attr:`http_host`, or on
        ``127.0.0.1`` when that is the wildcard ``0.0.0.0`` (which binds every address).

        Example:
            >>> Settings().url("order"), Settings(http_host="0.0.0.0").url("order", replica=1)
            ('http://127.0.0.1:8083', 'http://127.0.0.1:8183')
            >>> Settings(http_host="10.0.0.5", http_port_offset=1000).url("user")
            'http://10.0.0.5:9081'
        """
        host = "127.0.0.1" if self.http_host == "0.0.0.0" else self.http_host
        return f"http://{host}:{self.port(service, replica)}"

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        """A copy pointing at ``bootstrap_servers``."""
        return replace(self, bootstrap_servers=bootstrap_servers)

    def environ(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        env = {f.metadata["variable"]: str(getattr(self, f.name)) for f in fields(self) if f.metadata.get("variable")}
        for service, url in self.service_store_urls.items():
            env[service_store_variable(service)] = url
        for key, value in self.kafka_config.items():
            env[_KAFKA_PREFIX + key.replace(".", "_").upper()] = value
        return env


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` on ``host`` (the services' ``http_host``) can be bound the way the HTTP servers
    bind it (``SO_REUSEADDR``: a port in ``TIME_WAIT`` counts as free, a listening one as taken);
    a ``host`` that cannot be bound (no such name or address, or not this machine's) is a
    :class:`SettingsError` naming ``EVENTLAB_HTTP_HOST``; other errors are raised."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                raise SettingsError("EVENTLAB_HTTP_HOST", f"cannot bind {host}: {exc.strerror or exc}") from exc
            raise
    return True


def ensure_ports_free(settings: Settings, services: Iterable[str] = SERVICE_PORTS) -> None:
    """Raise :class:`PortInUse` naming the first of ``services`` whose HTTP port another program holds.

    Call it before starting anything, for an error that names the port instead of a traceback from
    deep inside the start-up.
    """
    for service in services:
        if not port_free(settings.port(service), settings.http_host):
            raise PortInUse(service, settings.port(service), settings.http_port_offset)

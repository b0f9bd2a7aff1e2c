"""confluent-kafka clients configured to work on both Tansu and Apache Kafka (DESIGN.md §1)."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic

from eventlab.errors import BrokerError
from eventlab.events import TOPICS
from eventlab.resilience import wait_until
from eventlab.settings import KAFKA_ALIASES, Settings, SettingsError
from eventlab.store.base import Headers

#: One Kafka header: (name, value or None).
Header = tuple[str, bytes | None]

__all__ = [
    "ALL_TOPICS",
    "MISSING_TOPIC",
    "REPLAY_FOR",
    "STORE_TOPIC",
    "Deliveries",
    "dead_letter_topic",
    "discard",
    "ensure_topics",
    "group_id",
    "make_consumer",
    "make_dead_letter_producer",
    "make_producer",
    "produce_and_wait",
    "reading",
]

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """Where undecodable or unprocessable messages from ``topic`` go."""
    return topic + DEAD_LETTER_SUFFIX


#: The header of a replayed dead letter naming the consumer it is for: the others skip it. They
#: had the original message already (handled it, or dead-lettered it on their own), and a replay
#: still poison to them would otherwise add a dead letter per consumer of the topic at each replay.
REPLAY_FOR = "dlq_replay_for"

#: The source "topic" of stored events the relay could not decode (their offset is the position).
STORE_TOPIC = "store"

#: Every topic eventlab uses: one per event type, a dead-letter topic for each, and the relay's.
ALL_TOPICS: tuple[str, ...] = TOPICS + tuple(dead_letter_topic(t) for t in (*TOPICS, STORE_TOPIC))

#: The largest answer the Kafka protocol can frame (its size is a signed 32-bit integer).
LARGEST_FRAME = 2**31 - 1

#: How long a dead-letter copy may wait for its acknowledgement before its delivery counts as failed.
DEAD_LETTER_TIMEOUT_MS = 10_000

#: How often a consumer reads the metadata of its topics (librdkafka's default: 5 minutes).
METADATA_REFRESH_MS = 5000

#: librdkafka's codes for a topic or partition the broker does not have (deleted under the shop).
MISSING_TOPIC = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART})


def group_id(service: str) -> str:
    """The consumer group of a service: all its instances share its partitions."""
    return f"eventlab.{service}"


#: A librdkafka setting's value.
ConfigValue = str | int | float | bool


def _base(settings: Settings) -> dict[str, ConfigValue]:
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_config}


_Client = TypeVar("_Client")


def _made(kind: Callable[[dict[str, ConfigValue]], _Client], config: dict[str, ConfigValue]) -> _Client:
    """``kind(config)``; a setting librdkafka refuses (an ``EVENTLAB_KAFKA_*`` variable: the others are
    eventlab's own, which it knows) is a :class:`~eventlab.settings.SettingsError` naming the variable."""
    try:
        return kind(config)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.code() != KafkaError._INVALID_ARG:
            raise
        named = re.search(r'property:? "([^"]+)"', error.str())
        key = named.group(1) if named else "*"
        if key not in config:  # librdkafka names its own name of it: the one set is an alias
            key = next(
                (alias for alias in config if KAFKA_ALIASES.get(alias) == key or KAFKA_ALIASES.get(key) == alias), key
            )
        variable = "EVENTLAB_KAFKA_" + key.upper().replace(".", "_")
        raise SettingsError(variable, error.str()) from None


def make_producer(settings: Settings, **overrides: ConfigValue) -> Producer:
    """An idempotent producer (acks=all) with a 1 ms linger that never has the broker create a topic:
    :func:`ensure_topics` creates them, with eventlab's partitions, and a missing one is an error
    (:data:`MISSING_TOPIC`) the relay acts on, not a new empty topic with the broker's defaults."""
    config = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "allow.auto.create.topics": False,
        **_base(settings),
        **overrides,
    }
    return _made(Producer, config)


def make_dead_letter_producer(settings: Settings) -> Producer:
    """A producer whose deliveries fail after 10 s instead of librdkafka's 300 s, so a loop that
    cannot write a dead letter says so soon (and retries) rather than hanging. A topic it does not
    find counts as missing after 5 s (librdkafka waits 30 s for a new topic to show), so a deleted
    ``.dlq`` topic is a :data:`MISSING_TOPIC` error, not a timeout."""
    return make_producer(
        settings,
        **{
            "message.timeout.ms": DEAD_LETTER_TIMEOUT_MS,
            "topic.metadata.propagation.max.ms": DEAD_LETTER_TIMEOUT_MS // 2,
        },
    )


class Deliveries:
    """Messages sent through one producer, each delivery report collected (never raised in a callback).

    :meth:`send` waits while the producer's queue is full; :meth:`confirm` flushes and raises
    :class:`BrokerError` unless every message sent so far was acknowledged. ``flush()`` alone is not
    enough: it returns 0 when a delivery *failed*, too.

    Example:
        >>> out = Deliveries(make_producer(settings))  # doctest: +SKIP
        >>> for topic, key, value, headers in messages:  # doctest: +SKIP
        ...     out.send(topic, value, key, headers)
        >>> out.confirm(30)  # doctest: +SKIP
    """

    def __init__(self, producer: Producer) -> None:
        self._producer: Producer | None = producer
        self.sent = 0
        self.delivered = 0
        #: ``"<topic>: <error>"`` per failed delivery, its librdkafka error code and its topic.
        self.failed: list[str] = []
        self.failed_codes: list[int] = []
        self.failed_topics: list[str] = []
        #: Each partition delivered to, by (topic, partition): its last acknowledged offset + 1 (how
        #: many messages it holds, as far as these deliveries tell).
        self.ends: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Deliveries sent={self.sent} delivered={self.delivered} failed={len(self.failed)}>"

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise BrokerError("the producer was closed")
        return self._producer

    def send(
        self, topic: str, value: bytes | None, key: bytes | str | None, headers: Sequence[Header], **kw: Any
    ) -> None:
        """Produce one message; :class:`BrokerError` when the client refuses it (e.g. too large)."""

        def report(error: KafkaError | None, message: Message) -> None:
            with self._lock:
                if error is None:
                    self.delivered += 1
                    self.ends[(topic, message.partition() or 0)] = (message.offset() or 0) + 1
                else:
                    self.failed.append(f"{topic}: {error.str()}")
                    self.failed_codes.append(error.code())
                    self.failed_topics.append(topic)

        while True:
            try:
                self.producer.produce(topic, value, key, headers=list(headers), on_delivery=report, **kw)
            except BufferError:
                self.producer.poll(0.05)  # the queue is full: serve delivery reports, then try again
                continue
            except KafkaException as exc:
                error = exc.args[0]
                raise BrokerError(f"cannot produce to {topic}: {error.str()}", error.code(), topic) from exc
            self.sent += 1
            return

    def wait(self, timeout: float) -> int:
        """Flush for at most ``timeout`` s; return how many messages are still unacknowledged."""
        return int(self.producer.flush(timeout))

    def confirm(self, timeout: float) -> None:
        """Return once every message sent was acknowledged; else :class:`BrokerError` saying why."""
        remaining = self.wait(timeout)
        with self._lock:
            if self.failed:
                raise BrokerError(f"delivery failed: {self.failed[0]}", self.failed_codes[0], self.failed_topics[0])
        if remaining or self.delivered < self.sent:
            raise BrokerError(f"{remaining or self.sent - self.delivered} messages not acknowledged in {timeout:g} s")

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is left and drop the client now (not after the broker has stopped); return
        how many messages were never acknowledged. The counts stay readable."""
        remaining = self.wait(timeout) if self._producer is not None else 0
        self._producer = None
        return remaining


def discard(producer: Producer) -> None:
    """Drop what ``producer`` still queues, and serve the purged messages' reports: until served, their
    delivery callbacks hold the producer, which then outlives its last reference (a client reconnecting,
    and logging every 50 ms, until the process exits)."""
    producer.purge()
    producer.poll(0)


def produce_and_wait(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | str | None,
    headers: Headers,
    timeout: float = DEAD_LETTER_TIMEOUT_MS / 1000 + 5,
) -> None:
    """Produce one message and return only once the broker acknowledged it (:class:`Deliveries`)."""
    out = Deliveries(producer)
    out.send(topic, value, key, headers)
    out.confirm(timeout)


def make_consumer(settings: Settings, service: str, **overrides: ConfigValue) -> Consumer:
    """A consumer in the service's group that stores offsets only after an event is handled.

    The session (``settings.session_timeout_ms``) is how long the group waits for a member that
    died without leaving: 6000 ms on Apache Kafka (its minimum by default), 1000 ms on the embedded
    broker, where every join also waits about half a session (23 s with librdkafka's default 45 s).
    With ``settings.group_instance`` the member is static (``group.instance.id``): on Apache Kafka a
    restarted process takes its predecessor's partitions at once, without waiting for the session.
    ``fetch.wait.max.ms=10``: Tansu answers a fetch at once when it finds data, else looks again after
    half of what is left of the wait, so a message waits ~2-3 ms at 100/s (20 ms: ~7 ms; 5 ms: no
    faster). Never lower: a fetch that finds data lists every batch of the partition from its first
    and answers empty once the wait is spent, so a consumer stalls for good once a partition holds
    ~2,000 batches per millisecond of wait (10 ms: beyond ~18k one-record batches; DESIGN.md §1).
    ``receive.message.max.bytes`` at its largest: a fetch answer over librdkafka's default 100 MB
    is refused whole, again and again, and stops every partition the consumer reads. The embedded
    broker takes a message of any size (Apache Kafka refuses one over 1 MB by default), so one
    message over 100 MB would stop the service for good instead of becoming a dead letter.
    ``topic.metadata.refresh.interval.ms`` 5 s instead of 5 minutes: a consumer sees a topic deleted
    under it in seconds and lets go of it, so the relay can create it again (:func:`reading`).
    """
    session = settings.session_timeout_ms
    config = {
        "group.id": group_id(service),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 200,
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(100, min(1000, session // 3)),
        "max.poll.interval.ms": 60000,
        "fetch.wait.max.ms": 10,
        "receive.message.max.bytes": LARGEST_FRAME,
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **_base(settings),
        **overrides,
    }
    if settings.group_instance:
        config.setdefault("group.instance.id", f"{group_id(service)}.{settings.group_instance}")
    return _made(Consumer, config)


def reading(settings: Settings, groups: Iterable[str], topics: Collection[str], timeout: float = 10.0) -> list[str]:
    """The consumer groups among ``groups`` with a member assigned a partition of one of ``topics``.

    A consumer lets go of a deleted topic's partitions once it sees the topic gone (a rebalance). Until
    then it fetches at its old offsets, also from a topic of the same name created anew, where it would
    skip every message below them."""
    groups = list(groups)
    if not groups:
        return []
    admin = _made(AdminClient, {"log_level": 2, **_base(settings)})
    found = []
    for group, future in admin.describe_consumer_groups(groups, request_timeout=timeout).items():
        try:
            members = future.result().members
        except KafkaException as exc:
            raise BrokerError(f"cannot describe consumer group {group}: {exc}") from exc
        assigned = {part.topic for member in members for part in member.assignment.topic_partitions or []}
        if assigned & set(topics):
            found.append(group)
    return found


def ensure_topics(settings: Settings, topics: Iterable[str] = ALL_TOPICS, timeout: float = 30.0) -> list[str]:
    """Create ``topics`` that do not exist yet; return the names created. Idempotent.

    A topic that exists with fewer partitions than ``settings.partitions`` gets more (never fewer):
    Apache Kafka keeps topics from an earlier, smaller setup, whose extra consumers would sit idle.
    Safe for eventlab's messages: each event type has its own topic, so no consumer relies on the
    order of two events across topics, and consumers are idempotent and version-checked anyway.
    """
    trouble = _ConnectionTrouble(settings)
    config: dict[str, Any] = {"log_level": 2, **_base(settings), "error_cb": trouble}  # error_cb: not a ConfigValue
    admin = _made(AdminClient, config)
    replication = 1 if settings.embedded else -1  # -1: the cluster's default
    wanted = [NewTopic(name, settings.partitions, replication) for name in topics]
    created, existing = [], []
    futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    deadline = time.monotonic() + timeout
    while not all(future.done() for future in futures.values()) and time.monotonic() < deadline:
        concurrent.futures.wait(futures.values(), timeout=0.1)  # the answers arrive on librdkafka's own thread
        admin.poll(0)  # serves error_cb: the connection's trouble, said once instead of every 50 ms
        if trouble.fatal:
            raise BrokerError(f"cannot create topics on {settings.bootstrap_servers}: {trouble.fatal}")
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _not_created(name, settings, timeout, exc, trouble.last) from exc
            existing.append(name)
        except Exception as exc:
            raise _not_created(name, settings, timeout, exc, trouble.last) from exc
    if created:
        log.info("created %d topics", len(created))
    if existing:
        _grow(admin, settings, existing, timeout)
    return created


class _ConnectionTrouble:
    """An admin client's ``error_cb``: says the first connection error once (librdkafka itself logs
    every retry, 20 lines a second while nothing listens), keeps the last one for the final error,
    and keeps an authentication failure, which no retry mends."""

    def __init__(self, settings: Settings) -> None:
        self.servers = settings.bootstrap_servers
        self.last = ""
        self.fatal = ""

    def __call__(self, error: KafkaError) -> None:
        code = error.code()
        if code == KafkaError._AUTHENTICATION:
            self.fatal = error.str()
        elif code != KafkaError._ALL_BROKERS_DOWN:  # that one says only that the errors before it hit every broker
            if not self.last:
                log.warning("no connection to %s yet (%s); still trying", self.servers, error.str())
            self.last = error.str()


def _not_created(name: str, settings: Settings, timeout: float, exc: Exception, trouble: str = "") -> BrokerError:
    """Why topic ``name`` was not created, naming the servers: "no answer in N s" (with the last
    connection error, if any) when the client's own request timeout or the wait for its answer ran
    out (the two race), else the client's reason."""
    error = exc.args[0] if isinstance(exc, KafkaException) else None
    code = error.code() if isinstance(error, KafkaError) else None
    if isinstance(exc, TimeoutError) or code == KafkaError._TIMED_OUT:
        reason = f"no answer in {timeout:g} s" + (f" (last: {trouble})" if trouble else "")
    else:
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
    return BrokerError(f"cannot create topic {name} on {settings.bootstrap_servers}: {reason}", code)


def _partition_counts(admin: AdminClient, topics: Iterable[str], timeout: float) -> dict[str, int]:
    """How many partitions each of ``topics`` has, by the cluster's metadata (a topic it lacks: left out)."""
    try:
        metadata = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot list topics: {exc.args[0].str()}", exc.args[0].code()) from exc
    return {name: len(metadata[name].partitions) for name in topics if name in metadata}


def _grow(admin: AdminClient, settings: Settings, topics: list[str], timeout: float) -> None:
    """Give each of ``topics`` (which exist) at least ``settings.partitions`` partitions, and wait until
    the cluster's metadata shows them: a consumer group formed before that would be given the old
    partitions only, until its next metadata refresh (minutes)."""
    short = {
        name: count for name, count in _partition_counts(admin, topics, timeout).items() if count < settings.partitions
    }
    if not short:
        return
    wanted = [NewPartitions(name, settings.partitions) for name in short]
    for name, future in admin.create_partitions(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0]
            raise BrokerError(f"cannot add partitions to {name}: {error.str()}", error.code()) from exc
        log.warning("topic %s had %d partitions, now %d (EVENTLAB_PARTITIONS)", name, short[name], settings.partitions)
    wait_until(
        lambda: _partition_counts(admin, short, timeout),
        timeout,
        until=lambda shown: all(shown.get(name, 0) >= settings.partitions for name in short),
        timeout_error=lambda shown: BrokerError(
            f"partitions added, but after {timeout:g} s the cluster's metadata still shows {shown} "
            f"instead of {settings.partitions} each"
        ),
    )

"""confluent-kafka clients configured to work on both Tansu and Apache Kafka (DESIGN.md §1)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from eventlab.errors import BrokerError
from eventlab.events import TOPICS
from eventlab.settings import Settings

__all__ = [
    "ALL_TOPICS",
    "STORE_TOPIC",
    "dead_letter_topic",
    "ensure_topics",
    "group_id",
    "make_consumer",
    "make_dead_letter_producer",
    "make_producer",
    "produce_and_wait",
]

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """Where undecodable or unprocessable messages from ``topic`` go."""
    return topic + DEAD_LETTER_SUFFIX


#: The source "topic" of stored events the relay could not decode (their offset is the position).
STORE_TOPIC = "store"

#: Every topic eventlab uses: one per event type, a dead-letter topic for each, and the relay's.
ALL_TOPICS: tuple[str, ...] = TOPICS + tuple(dead_letter_topic(t) for t in (*TOPICS, STORE_TOPIC))

#: How long a dead-letter copy may wait for its acknowledgement before its delivery counts as failed.
DEAD_LETTER_TIMEOUT_MS = 10_000


def group_id(service: str) -> str:
    """The consumer group of a service: all its instances share its partitions."""
    return f"eventlab.{service}"


def _base(settings: Settings) -> dict[str, object]:
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_config}


def make_producer(settings: Settings, **overrides: object) -> Producer:
    """An idempotent producer (acks=all) with a 1 ms linger."""
    config = {"enable.idempotence": True, "acks": "all", "linger.ms": 1, **_base(settings), **overrides}
    return Producer(config)


def make_dead_letter_producer(settings: Settings) -> Producer:
    """A producer whose deliveries fail after 10 s instead of librdkafka's 300 s, so a loop that
    cannot write a dead letter says so soon (and retries) rather than hanging."""
    return make_producer(settings, **{"message.timeout.ms": DEAD_LETTER_TIMEOUT_MS})


def produce_and_wait(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | str | None,
    headers: list[tuple[str, bytes | None]],
    timeout: float = DEAD_LETTER_TIMEOUT_MS / 1000 + 5,
) -> None:
    """Produce one message and return only once the broker acknowledged it.

    Raises :class:`BrokerError` when ``produce`` refuses it or its delivery report carries an
    error. ``flush()`` alone is not enough: it returns 0 when a delivery *failed*, too.
    """
    reports: list[KafkaError | None] = []
    try:
        producer.produce(topic, value, key, headers=headers, on_delivery=lambda error, _m: reports.append(error))
    except KafkaException as exc:
        error = exc.args[0]
        raise BrokerError(f"cannot produce to {topic}: {error.str()}", error.code()) from exc
    except BufferError as exc:
        raise BrokerError(f"cannot produce to {topic}: {exc}") from exc
    producer.flush(timeout)
    if not reports:
        raise BrokerError(f"no acknowledgement from {topic} in {timeout:.0f} s")
    if reports[0] is not None:
        raise BrokerError(f"delivery to {topic} failed: {reports[0].str()}", reports[0].code())


def make_consumer(settings: Settings, service: str, **overrides: object) -> Consumer:
    """A consumer in the service's group that stores offsets only after an event is handled.

    The session (``settings.session_timeout_ms``) is how long the group waits for a member that
    died without leaving: 6000 ms on Apache Kafka (its minimum by default), 1000 ms on the embedded
    broker, where every join also waits about half a session (23 s with librdkafka's default 45 s).
    With ``settings.group_instance`` the member is static (``group.instance.id``): on Apache Kafka a
    restarted process takes its predecessor's partitions at once, without waiting for the session.
    ``fetch.wait.max.ms=10`` keeps the round trip ~8 ms on Tansu (never below 10: Tansu stalls).
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
        **_base(settings),
        **overrides,
    }
    if settings.group_instance:
        config.setdefault("group.instance.id", f"{group_id(service)}.{settings.group_instance}")
    return Consumer(config)


def ensure_topics(settings: Settings, topics: Iterable[str] = ALL_TOPICS, timeout: float = 30.0) -> list[str]:
    """Create ``topics`` that do not exist yet; return the names created. Idempotent."""
    admin = AdminClient(_base(settings))
    replication = 1 if settings.embedded else -1  # -1: the cluster's default
    wanted = [NewTopic(name, settings.partitions, replication) for name in topics]
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name}: {error.str()}", error.code()) from exc
        except Exception as exc:
            raise BrokerError(f"cannot create topic {name} on {settings.bootstrap_servers}: {exc}") from exc
    if created:
        log.info("created %d topics", len(created))
    return created

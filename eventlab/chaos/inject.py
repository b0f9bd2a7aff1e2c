"""The chaos run's hands: place orders over HTTP, copy real messages, craft poison, read dead letters.

Each injector takes its own ``random.Random`` (derived from the run's seed), so what is chosen
does not depend on how threads interleave.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from eventlab.errors import BrokerError
from eventlab.kafka.clients import DEAD_LETTER_SUFFIX, Deliveries, make_consumer, make_producer
from eventlab.settings import Settings

from .report import DeadLetterSeen, PoisonSent

__all__ = [
    "CHAOS_HEADER",
    "POISON_KINDS",
    "DeadLetterCollector",
    "Duplicator",
    "PoisonMaker",
    "forge",
    "http_json",
    "place_order",
]

log = logging.getLogger(__name__)

#: The header that tags every message the chaos run forges, so its dead letter can be found.
CHAOS_HEADER = "chaos_id"

#: Every kind of poison, in the order they are described in ``eventlab chaos --help``.
POISON_KINDS: tuple[str, ...] = ("garbage", "unknown_type", "missing_headers", "invalid_data", "deep_json", "oversized")

_DEEP = 100_000
_OVERSIZED = 999_000
_RETRYABLE = (ConnectionError, TimeoutError, http.client.RemoteDisconnected, http.client.IncompleteRead)
Headers = list[tuple[str, bytes]]


def http_json(base: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One JSON request to the service at ``base`` (``http://host:port``); (status, decoded body).
    Connection errors raise."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"null")
        except ValueError:
            return exc.code, text.decode("utf-8", "replace")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, OSError):
            raise ConnectionError(str(exc.reason)) from exc
        raise


def place_order(base: str, order: Mapping[str, Any], deadline: float) -> tuple[str | None, str]:
    """POST one order, retrying while the order service is down or answers 503, until ``deadline``.

    Returns (order id, "") for a 202, else (None, why). Only a 202 makes an order *placed*. The
    order carries its own ``order_id``, so a retry of a request cut by a kill after the order was
    stored gets its 202 and places nothing twice; one that never gets an answer by ``deadline`` may
    still be in the store, and then shows as unacknowledged.
    """
    pause = 0.05
    while True:
        try:
            status, body = http_json(base, "POST", "/orders", dict(order))
        except _RETRYABLE as exc:
            why = f"{type(exc).__name__}: {exc}"
        else:
            if status == 202:
                return body["order_id"], ""
            if status != 503:
                return None, f"HTTP {status}: {body}"
            why = f"HTTP 503: {body}"
        if time.monotonic() + pause > deadline:
            return None, why
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def forge(kind: str, event_type: str, rng: random.Random) -> tuple[bytes, Headers]:
    """Value and headers of one poison message of ``kind`` (see :data:`POISON_KINDS`) claiming to
    be an ``event_type``: each must end on the dead-letter topic, none may stop a consumer."""
    envelope: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"chaos-{rng.getrandbits(64):016x}".encode()),
        ("ce_source", b"/eventlab/chaos"),
        ("ce_type", event_type.encode()),
        ("content-type", b"application/json"),
    ]
    if kind == "garbage":
        return b"\xff\xfe" + rng.randbytes(rng.randint(16, 512)), envelope
    if kind == "unknown_type":
        return b'{"order_id": "chaos"}', [(k, b"ChaosUnknownType" if k == "ce_type" else v) for k, v in envelope]
    if kind == "missing_headers":
        return b'{"order_id": "chaos"}', []
    if kind == "invalid_data":
        return json.dumps({"order_id": rng.randint(1, 10**6), "unexpected": True}).encode(), envelope
    if kind == "deep_json":
        return b"[" * _DEEP + b"]" * _DEEP, envelope
    if kind == "oversized":
        return b"x" * _OVERSIZED, envelope
    raise ValueError(f"unknown poison kind {kind!r}")


class PoisonMaker:
    """Forges poison messages of every kind and sends them to topics the shop consumes.

    ``consumers`` maps a topic to the services consuming it (each should dead-letter the message
    once) and ``types`` a topic to the event type published on it.
    """

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        consumers: Mapping[str, Sequence[str]],
        types: Mapping[str, str],
    ) -> None:
        self.rng = rng
        self.consumers = {topic: tuple(names) for topic, names in consumers.items() if names}
        self.types = dict(types)
        self._out = Deliveries(make_producer(settings, **{"message.max.bytes": 4 * _OVERSIZED}))
        self._count = 0
        self._run = uuid.uuid4().hex[:8]  # an external broker keeps the dead letters of earlier runs

    def send(self, kind: str) -> PoisonSent | None:
        """Forge one poison message of ``kind``, send it to a random consumed topic and wait for the ack."""
        topic = self.rng.choice(sorted(self.consumers))
        value, headers = forge(kind, self.types[topic], self.rng)
        self._count += 1
        chaos_id = f"{kind}-{self._count}-{self._run}"
        failures = len(self._out.failed)
        self._out.send(topic, value, f"chaos-{chaos_id}", [*headers, (CHAOS_HEADER, chaos_id.encode())])
        if self._out.wait(30):
            raise BrokerError("chaos producer: messages not acknowledged after 30 s")
        if len(self._out.failed) > failures:
            log.warning("poison %s not delivered: %s", chaos_id, self._out.failed[-1])
            return None
        return PoisonSent(chaos_id, kind, topic, self.consumers[topic])

    def close(self) -> None:
        """Flush and drop the producer while the broker still runs."""
        _close(self._out, "poison")


class _Reader(threading.Thread):
    """A consumer thread with partitions assigned from the beginning (no group join to wait for)."""

    def __init__(self, settings: Settings, name: str, topics: Sequence[str]) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.settings = settings
        self.topics = list(topics)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.consumer = make_consumer(settings, f"chaos-{name}", **{"enable.auto.commit": False})

    def run(self) -> None:
        try:
            metadata = self.consumer.list_topics(timeout=30)
            self.consumer.assign(
                [
                    TopicPartition(topic, partition, OFFSET_BEGINNING)
                    for topic in self.topics
                    for partition in metadata.topics[topic].partitions
                ]
            )
            while not self.stop.is_set():
                for message in self.consumer.consume(500, 0.1):
                    if message.error() is None:
                        self.receive(message)
        except Exception as exc:
            log.exception("%s failed", self.name)
            self.error = exc
        finally:
            self.consumer.close()

    def receive(self, message: Any) -> None:
        raise NotImplementedError


class DeadLetterCollector(_Reader):
    """Reads every ``*.dlq`` topic and keeps the copies of messages the chaos run tagged."""

    def __init__(self, settings: Settings, topics: Sequence[str]) -> None:
        super().__init__(settings, "dead-letters", [t for t in topics if t.endswith(DEAD_LETTER_SUFFIX)])
        self.seen: list[DeadLetterSeen] = []
        self.last_seen = time.monotonic()

    def receive(self, message: Any) -> None:
        headers = {key: (value or b"").decode("utf-8", "replace") for key, value in message.headers() or ()}
        if CHAOS_HEADER in headers:
            consumer = headers.get("dlq_consumer", "?")
            self.seen.append(DeadLetterSeen(headers[CHAOS_HEADER], consumer, headers.get("dlq_id")))
            self.last_seen = time.monotonic()


class Duplicator(_Reader):
    """Reads the service topics and re-sends a ``share`` of real messages produced after ``since``
    (epoch seconds) as exact copies (same partition, key, value and headers): the duplicate
    deliveries an at-least-once broker makes."""

    def __init__(
        self, settings: Settings, topics: Sequence[str], share: float, rng: random.Random, since: float
    ) -> None:
        super().__init__(settings, "duplicator", topics)
        self.since_ms = int(since * 1000)
        self.share = share
        self.rng = rng
        self._out = Deliveries(make_producer(settings, **{"message.max.bytes": 4 * _OVERSIZED}))
        self._copied: set[bytes] = set()

    @property
    def sent(self) -> int:
        return self._out.delivered

    def receive(self, message: Any) -> None:
        headers = message.headers() or []
        ce_id = next((value for key, value in headers if key == "ce_id"), None)
        if ce_id is None or ce_id in self._copied or any(key == CHAOS_HEADER for key, _ in headers):
            return  # forged poison, or a message already copied (maybe the copy itself)
        if message.timestamp()[1] < self.since_ms:
            return  # from before this run (an external broker keeps old topics)
        if self.rng.random() < self.share:
            self._copied.add(ce_id)
            self._out.send(message.topic(), message.value(), message.key(), headers, partition=message.partition())
            self._out.producer.poll(0)

    def run(self) -> None:
        try:
            super().run()
        finally:
            _close(self._out, "duplicate")


def _close(out: Deliveries, what: str) -> None:
    remaining = out.close()
    if remaining:
        log.warning("%d %s messages not acknowledged at close", remaining, what)

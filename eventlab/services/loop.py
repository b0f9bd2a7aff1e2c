"""The one thin loop every consuming service runs:

consume -> decode/validate -> skip if processed -> decide -> append (+ processed marker),
then let the relay publish. Undecodable or unexpected messages, and messages whose handling
keeps failing after retries, go to the topic's dead-letter topic with the reason in headers;
the loop commits past them and keeps running.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Message as KafkaMessage

from eventlab.errors import BrokerError, ConcurrencyError, StoreError
from eventlab.kafka.clients import dead_letter_topic, make_consumer, make_producer
from eventlab.kafka.cloudevents import Message, UndecodableMessage, from_message
from eventlab.metrics import handler_histogram
from eventlab.services.runtime import Service, StreamCache, execute, trace_metadata
from eventlab.settings import Settings
from eventlab.store.base import EventStore

__all__ = ["ServiceLoop", "LoopStats"]

log = logging.getLogger(__name__)

_TRANSIENT = (ConcurrencyError, StoreError, sqlite3.OperationalError)


@dataclass
class LoopStats:
    """Counters a health check or a notebook can show."""

    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class ServiceLoop:
    """Runs one service against Kafka and the event store until ``stop`` is set.

    Example:
        >>> loop = ServiceLoop(order.SERVICE, store, settings)  # doctest: +SKIP
        >>> threading.Thread(target=loop.run, args=(stop,)).start()  # doctest: +SKIP
    """

    def __init__(
        self,
        service: Service,
        store: EventStore,
        settings: Settings,
        *,
        attempts: int = 4,
        backoff: float = 0.05,
    ) -> None:
        self.service = service
        self.store = store
        self.settings = settings
        self.attempts = attempts
        self.backoff = backoff
        self.stats = LoopStats()
        self.assigned = threading.Event()
        self._accepted = {cls.__name__ for cls in service.subscriptions}
        self._dead_letters = None
        self._cache = StreamCache()
        self.handler_seconds = handler_histogram(service.name)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<ServiceLoop {self.service.name} handled={s.handled} duplicates={s.duplicates} "
            f"dead_lettered={s.dead_lettered}>"
        )

    def health(self) -> dict[str, int]:
        """Lag and counters, as ``GET /health`` reports them."""
        s = self.stats
        return {"lag": self.lag(), "handled": s.handled, "duplicates": s.duplicates, "dead_lettered": s.dead_lettered}

    def lag(self) -> int:
        """Stored events of the subscribed types this service has not handled yet."""
        return self.store.unprocessed(self.service.name, self._accepted)

    def run(self, stop: threading.Event, batch: int = 200, timeout: float = 0.005) -> None:
        """Consume and handle until ``stop`` is set; close the consumer cleanly."""
        consumer = make_consumer(self.settings, self.service.name)
        consumer.subscribe(self.service.topics, on_assign=lambda *_: self.assigned.set())
        try:
            while not stop.is_set():
                messages = []
                for message in consumer.consume(batch, timeout):
                    if message.error():
                        log.warning("%s: consumer error %s", self.service.name, message.error())
                    else:
                        messages.append(message)
                if messages:
                    self.process(messages)
                    for message in messages:
                        consumer.store_offsets(message)
        finally:
            consumer.close()
            if self._dead_letters is not None:
                self._dead_letters.flush(5)
                self._dead_letters = None  # destroy it now, not after the broker has stopped

    def process(self, messages: list[KafkaMessage]) -> None:
        """Handle a batch of Kafka messages; never raises for bad input.

        The fast path handles the whole batch in one store transaction (one commit instead of
        one per event). If anything in it fails, the batch is rolled back and each message is
        handled on its own, with retries and, in the end, the dead-letter topic.
        """
        decoded = [(message, found) for message in messages if (found := self.decode(message)) is not None]
        if self.service.batch and len(decoded) > 1:
            try:
                with self.store.transaction():
                    outcomes = [self.handle(found) for _, found in decoded]
            except Exception:  # noqa: BLE001 - fall back to one by one, which reports the culprit
                self._cache.clear()
                log.info("%s: batch of %d failed, handling one by one", self.service.name, len(decoded))
            else:
                self._count(outcomes)
                return
        for message, found in decoded:
            self.process_one(message, found)

    def decode(self, message: KafkaMessage) -> Message | None:
        """The event in ``message``, or None after dead-lettering what cannot be handled."""
        try:
            decoded = from_message(message.value(), message.headers())
        except UndecodableMessage as exc:
            self.dead_letter(message, str(exc))
            return None
        if decoded.event.event_type not in self._accepted:
            self.dead_letter(message, f"unexpected event type {decoded.event.event_type} for {self.service.name}")
            return None
        return decoded

    def process_one(self, message: KafkaMessage, decoded: Message) -> None:
        """Handle one event in its own transaction, retrying with backoff, else dead-letter it."""
        for attempt in range(1, self.attempts + 1):
            try:
                self._count([self.handle(decoded)])
                return
            except _TRANSIENT as exc:
                error: Exception = exc
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the service
                log.exception("%s failed on %s", self.service.name, decoded.event_id)
                error = exc
            self.stats.retries += 1
            time.sleep(self.backoff * 2 ** (attempt - 1))
        self.dead_letter(message, f"handler failed after {self.attempts} attempts: {type(error).__name__}: {error}")

    def handle(self, message: Message) -> bool:
        """Decide on one decoded event and append the outcome with the processed marker.

        Returns False when the event had already been handled (a redelivery).
        """
        started = time.perf_counter()
        name = self.service.name
        if self.store.is_processed(name, message.event_id):
            return False
        event = message.event
        metadata = trace_metadata(name, message.correlation_id, message.event_id, message.traceparent)
        execute(
            self.store,
            self.service.streams(event),
            self.service.evolvers,
            lambda states: self.service.handle(event, states),
            metadata,
            processed=(name, message.event_id),
            cache=self._cache,
        )
        self.handler_seconds.observe(time.perf_counter() - started)
        return True

    def _count(self, outcomes: list[bool]) -> None:
        handled = sum(outcomes)
        self.stats.handled += handled
        self.stats.duplicates += len(outcomes) - handled

    def dead_letter(self, message: KafkaMessage, reason: str) -> None:
        """Copy ``message`` to its dead-letter topic with the reason in headers, and wait for the ack."""
        if self._dead_letters is None:
            self._dead_letters = make_producer(self.settings)
        headers = list(message.headers() or []) + [
            ("dlq_reason", reason.encode()),
            ("dlq_topic", message.topic().encode()),
            ("dlq_partition", str(message.partition()).encode()),
            ("dlq_offset", str(message.offset()).encode()),
            ("dlq_consumer", self.service.name.encode()),
        ]
        self._dead_letters.produce(dead_letter_topic(message.topic()), message.value(), message.key(), headers=headers)
        if self._dead_letters.flush(30):
            raise BrokerError(f"could not dead-letter {message.topic()}@{message.offset()}")
        self.stats.dead_lettered += 1
        log.warning("%s: dead-lettered %s@%d: %s", self.service.name, message.topic(), message.offset(), reason)

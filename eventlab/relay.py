"""The transactional outbox relay: publishes stored events to Kafka in position order.

Services never write to Kafka and the database side by side (the seed's ``saveAndPublishEvent``
can lose or invent events on a crash). They append to the event store; this relay reads the store
after its checkpoint, produces each event (key = aggregate id, CloudEvents headers), waits for the
broker's acknowledgements and only then advances the checkpoint. Delivery is at-least-once;
consumers are idempotent.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError

from eventlab.errors import BrokerError
from eventlab.events import EVENT_TYPES
from eventlab.kafka.clients import make_producer
from eventlab.kafka.cloudevents import to_message
from eventlab.settings import Settings
from eventlab.store.base import EventStore

__all__ = ["Relay", "CHECKPOINT", "rewind", "unpublished"]

log = logging.getLogger(__name__)

#: The checkpoint name under which the relay records the last published position.
CHECKPOINT = "relay"


class Relay:
    """Publishes every stored event exactly in position order, at least once.

    Example:
        >>> relay = Relay(store, settings)  # doctest: +SKIP
        >>> relay.publish_pending()  # doctest: +SKIP
        12
    """

    def __init__(self, store: EventStore, settings: Settings, batch_size: int = 2000) -> None:
        self.store = store
        self.settings = settings
        self.batch_size = batch_size
        self.published = 0
        self._producer = None

    def __repr__(self) -> str:
        return f"<Relay published={self.published} checkpoint={self.store.checkpoint(CHECKPOINT)}>"

    def publish_pending(self) -> int:
        """Publish one batch of unpublished events; return how many were published."""
        after = self.store.checkpoint(CHECKPOINT)
        events = self.store.read_records(after=after, limit=self.batch_size)
        if not events:
            return 0
        if self._producer is None:
            self._producer = make_producer(self.settings)
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                errors.append(error)

        for stored in events:
            key, value, headers = to_message(stored)
            topic = EVENT_TYPES[stored.event_type].topic
            while True:
                try:
                    self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        remaining = self._producer.flush(30)
        if remaining or errors:
            reason = errors[0].str() if errors else f"{remaining} messages not acknowledged"
            raise BrokerError(f"relay could not publish events after position {after}: {reason}")
        self.store.set_checkpoint(CHECKPOINT, events[-1].position)
        self.published += len(events)
        return len(events)

    def run(self, stop: threading.Event, idle_wait: float = 0.005) -> None:
        """Publish until ``stop`` is set, retrying with backoff when the broker fails."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if self.publish_pending() == 0:
                    stop.wait(idle_wait)
                backoff = 0.1
            except BrokerError as exc:
                log.warning("%s; retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


def rewind(store: EventStore) -> None:
    """Publish everything again from the first event (the broker forgot its topics)."""
    store.set_checkpoint(CHECKPOINT, 0)


def unpublished(store: EventStore) -> int:
    """How many stored events the relay has not published yet."""
    return store.head() - store.checkpoint(CHECKPOINT)

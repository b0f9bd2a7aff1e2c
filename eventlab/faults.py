"""The failure lab's levers on a running shop: break the payment gateway, redeliver an event, send
a poison message, and read each service's counters to see what happened.

This is what the control panel (:class:`eventlab.widgets.ControlPanel`) and the notebooks drive,
so neither reaches into the shop's gateway or service loops. Reach it as :attr:`Shop.faults`.

Example:
    >>> shop.faults.gateway_down = True  # doctest: +SKIP
    >>> shop.faults.redeliver(shop.order(order_id).events[0])  # doctest: +SKIP
    'order.lifecycle.created'
    >>> shop.faults.counters()["inventory"]["duplicates"]  # doctest: +SKIP
    1
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypedDict

from confluent_kafka import Producer

from eventlab.events import EVENT_TYPES, OrderCreated
from eventlab.kafka.clients import dead_letter_topic, make_producer, produce_and_wait
from eventlab.kafka.cloudevents import to_message
from eventlab.store.base import StoredEvent

if TYPE_CHECKING:  # pragma: no cover
    from eventlab.shop import Shop

__all__ = ["POISON", "Faults", "ServiceCounters"]

#: What :meth:`Faults.poison` sends by default: bytes that are no event (no CloudEvents headers either).
POISON = b"\x00 this is not an event"


class ServiceCounters(TypedDict):
    """What one consuming service did since the shop started, and what it has yet to do."""

    handled: int
    duplicates: int
    dead_lettered: int
    retries: int
    lag: int


class Faults:
    """Faults to inject into ``shop`` and the counters that show how it copes.

    Messages go through one producer (made when first needed, again if the shop restarted on
    another broker), and each send returns only once the broker acknowledged it.
    """

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self._producer: tuple[str, Producer] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Faults gateway={self.shop.gateway!r}>"

    # --- the payment gateway -----------------------------------------------------------------

    @property
    def gateway_down(self) -> bool:
        """True during a gateway outage: every charge and refund raises ``GatewayUnavailable``."""
        return self.shop.gateway.down

    @gateway_down.setter
    def gateway_down(self, down: bool) -> None:
        if down:
            self.shop.gateway.take_down()
        else:
            self.shop.gateway.bring_up()

    @property
    def failure_rate(self) -> float:
        """The share of orders whose charge the gateway declines (0 to 1, decided by seed and order id)."""
        return self.shop.gateway.failure_rate

    @failure_rate.setter
    def failure_rate(self, rate: float) -> None:
        self.shop.gateway.failure_rate = rate

    @property
    def latency_ms(self) -> float:
        """How long the gateway takes to answer (±50 %, seeded per order)."""
        return self.shop.gateway.latency_ms

    @latency_ms.setter
    def latency_ms(self, latency: float) -> None:
        self.shop.gateway.latency_ms = latency

    # --- Kafka -------------------------------------------------------------------------------

    def send_raw(
        self, topic: str, value: bytes, *, key: str | None = None, headers: Iterable[tuple[str, bytes | None]] = ()
    ) -> None:
        """Produce one message as is (no event store, no CloudEvents checks) and wait for the ack."""
        with self._lock:
            produce_and_wait(self._producer_now(), topic, value, key, list(headers), timeout=10)

    def redeliver(self, stored: StoredEvent) -> str:
        """Publish an already-delivered event again, exactly as the relay did (same ``ce_id``);
        return the topic. This is what at-least-once delivery does after a crash or a rebalance."""
        if not isinstance(stored, StoredEvent):
            raise TypeError(
                f"redeliver takes one stored event, e.g. shop.order(order_id).events[0], not {type(stored).__name__}"
            )
        key, value, headers = to_message(stored)
        topic = EVENT_TYPES[stored.event_type].topic
        self.send_raw(topic, value, key=key, headers=headers)
        return topic

    def poison(self, topic: str = OrderCreated.topic, value: bytes = POISON) -> str:
        """Produce ``value`` (garbage by default) to ``topic``; its consumer dead-letters it.
        Return the dead-letter topic it lands on."""
        self.send_raw(topic, value, key="poison")
        return dead_letter_topic(topic)

    def close(self) -> None:
        """Deliver whatever is still queued and drop the producer."""
        with self._lock:
            if self._producer is not None:
                self._producer[1].flush(10)
                self._producer = None

    def _producer_now(self) -> Producer:
        servers = self.shop.bootstrap_servers
        if self._producer is None or self._producer[0] != servers:
            self._producer = (servers, make_producer(self.shop.kafka_settings))
        return self._producer[1]

    # --- what happened -----------------------------------------------------------------------

    def counters(self) -> dict[str, ServiceCounters]:
        """Each consuming service's counters (this run) and lag (events it has yet to handle)."""
        lag = self.shop.lag()
        return {
            name: ServiceCounters(
                handled=loop.stats.handled,
                duplicates=loop.stats.duplicates,
                dead_lettered=loop.stats.dead_lettered,
                retries=loop.stats.retries,
                lag=lag.get(name, 0),
            )
            for name, loop in self.shop.loops.items()
        }

"""Helpers for the workshop notebooks: deterministic ids, running one order to the end, peeking
at Kafka, every order's outcome, and the check that nothing was lost.

The live widgets are in :mod:`eventlab.widgets`, the failure lab's levers in :mod:`eventlab.faults`.

Example:
    >>> from eventlab.workshop import sequential_ids
    >>> ids = sequential_ids("order")
    >>> ids(), ids()
    ('order-001', 'order-002')
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from confluent_kafka import Message

from eventlab.adapters.mailer import MAILBOX
from eventlab.errors import NotFound
from eventlab.events import OrderCreated
from eventlab.kafka.clients import make_consumer
from eventlab.projections.audit import audit
from eventlab.services import order
from eventlab.services.order import Order
from eventlab.store.base import StoredEvent

if TYPE_CHECKING:  # pragma: no cover
    from eventlab.application import OrderView
    from eventlab.shop import Shop

__all__ = [
    "NOTHING_LOST_CHECKS",
    "Record",
    "nothing_lost",
    "order_outcomes",
    "order_states",
    "quiet",
    "read_topic",
    "run_order",
    "sequential_ids",
]

_groups = itertools.count(1)


def sequential_ids(prefix: str = "order", width: int = 3) -> Callable[[], str]:
    """An id factory giving ``prefix-001``, ``prefix-002``, ... (for ``Shop(id_factory=...)``).

    It counts from 1 in every process, so give it a new data directory each time (as the notebooks
    do): on one that already holds ``prefix-001``, placing an order raises
    :class:`~eventlab.errors.AlreadyExists` naming ``order_id``.
    """
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):0{width}d}"


def quiet(level: int = logging.ERROR) -> None:
    """Keep eventlab's expected warnings (dead-lettered messages, retries) out of cell outputs.

    They come from background threads, so they would land in whichever cell happens to run;
    the notebooks show the same facts through counters instead.
    """
    logging.getLogger("eventlab").setLevel(level)


def run_order(shop: Shop, user_id: str, lines: Mapping[str, int], timeout: float = 30.0) -> OrderView:
    """Place an order, wait for its saga to end *and* for every follow-up (stock sold or
    released, emails sent), and return it. Orders run this way one after another give the
    same events on every run."""
    order_id = shop.place_order(user_id, lines)
    shop.wait(order_id, timeout)
    shop.wait_idle(timeout)
    return shop.order(order_id)


@dataclass(frozen=True)
class Record:
    """A Kafka message as read from a topic."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]

    def __repr__(self) -> str:
        return f"<Record {self.topic}[{self.partition}]@{self.offset} key={self.key!r} {len(self.value)} bytes>"


def read_topic(
    shop: Shop,
    topic: str | Iterable[str],
    *,
    max_messages: int = 1,
    timeout: float = 20.0,
    group: str | None = None,
) -> list[Record]:
    """Read up to ``max_messages`` from the start of ``topic`` (one name or several) with a fresh
    consumer group, giving up after ``timeout`` seconds; sorted by topic, partition and offset.

    A new group has no committed offsets, so it starts at the earliest offset
    (``auto.offset.reset=earliest``) and does not disturb the services' groups.
    """
    name = group or f"workshop-{next(_groups)}"
    consumer = make_consumer(shop.kafka_settings, name, **{"enable.auto.commit": False})
    records: list[Record] = []
    try:
        consumer.subscribe([topic] if isinstance(topic, str) else list(topic))
        deadline = time.monotonic() + timeout
        while len(records) < max_messages and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            records.append(_record(message))
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def _text(value: str | bytes | None) -> str:
    return value if isinstance(value, str) else (value or b"").decode("utf-8", "replace")


def _record(message: Message) -> Record:
    """A consumed message as a :class:`Record` (librdkafka leaves its fields unset only on errors)."""
    key = message.key()
    headers = message.headers() or []
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=None if key is None else _text(key),
        value=message.value() or b"",
        headers={k: _text(v) for k, v in (headers.items() if isinstance(headers, dict) else headers)},
    )


def order_states(events: Iterable[StoredEvent], into: dict[str, Order] | None = None) -> dict[str, Order]:
    """Fold the order events among ``events`` into each order's state with :func:`eventlab.services.order.evolve`
    (pure; incremental when given the previous result as ``into``, which it updates)."""
    orders = {} if into is None else into
    for stored in events:
        if stored.aggregate_type == OrderCreated.aggregate_type:
            state = order.evolve(orders.get(stored.aggregate_id), stored.event)
            if state is not None:
                orders[stored.aggregate_id] = state
    return orders


def order_outcomes(events: Iterable[StoredEvent]) -> dict[str, dict[str, str]]:
    """Every order among ``events`` as ``{order_id: {"status": ..., "reason": ...}}``."""
    return {order_id: {"status": o.status, "reason": o.reason} for order_id, o in order_states(events).items()}


#: What :func:`nothing_lost` reports, and the checks of :func:`eventlab.projections.audit.audit` behind each.
NOTHING_LOST_CHECKS: dict[str, tuple[str, ...]] = {
    "every_order_ended": ("orders_terminal",),
    "one_outcome_per_order": ("one_terminal_event_per_order", "no_double_charge"),
    "stock_conserved": ("stock_never_negative", "stock_conserved"),
}


def nothing_lost(shop: Shop, placed: Iterable[str] = ()) -> dict[str, bool]:
    """Checks that the shop lost nothing and applied nothing twice, once it is idle:

    - ``idle``: every stored event was published and handled by every service;
    - ``every_order_ended``: every order (and every id in ``placed``) is completed or cancelled;
    - ``one_outcome_per_order``: no order has two terminal events, none was charged twice;
    - ``stock_conserved``: for every product, available + reserved + sold = stock added,
      and nothing is left reserved once every saga ended.

    All but ``idle`` are the invariant audit's checks (:data:`NOTHING_LOST_CHECKS`), run with no grace
    period: the shop is idle, so nothing is in flight.
    """
    shop.wait_idle()
    report = audit(shop.stores, grace=timedelta(0), mailbox=shop.settings.data_dir / MAILBOX)
    checks = {"idle": shop.idle()}
    checks.update({name: all(report[c].ok for c in audited) for name, audited in NOTHING_LOST_CHECKS.items()})
    checks["every_order_ended"] &= all(_ended(shop, order_id) for order_id in placed)
    return checks


def _ended(shop: Shop, order_id: str) -> bool:
    try:
        return shop.order(order_id).terminal
    except NotFound:
        return False

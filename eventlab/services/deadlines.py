"""Saga deadlines: an order that waits too long at a step is cancelled with reason ``timeout``.

Every saga then ends, also when the message that should have moved it on was dead-lettered or a
service is down: Inventory releases what it had reserved (or voids the reservation, so a late
``OrderCreated`` reserves nothing) and Payment refunds or voids, as for any cancellation.

- :class:`Deadlines`: how long each step may take. ``EVENTLAB_SAGA_TIMEOUT_S`` (default 30 s)
  is the reservation step's (``created`` → Inventory's answer); the payment step (``confirmed`` →
  the gateway's answer, retries included) gets twice as long.
- :func:`advance` and :func:`overdue`: the pure core — which step each order waits at since when,
  and which are past their deadline at ``now``.

The driver that follows the store and cancels overdue orders is :class:`eventlab.sweeper.DeadlineSweeper`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from eventlab.events import OrderCancelled, OrderCompleted, OrderConfirmed, OrderCreated
from eventlab.services.order import OrderStatus
from eventlab.store.base import StoredEvent

__all__ = ["Deadlines", "Waiting", "advance", "overdue", "timeout_detail"]

_WAITS_AFTER: dict[str, OrderStatus] = {OrderCreated.__name__: "created", OrderConfirmed.__name__: "confirmed"}
_ENDS = {OrderCompleted.__name__, OrderCancelled.__name__}
_WAITING_FOR = {"created": "Inventory's reservation", "confirmed": "Payment's answer"}


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long an order may wait at each step.

    Example:
        >>> Deadlines.scaled(30).payment.total_seconds()
        60.0
    """

    reservation: timedelta = timedelta(seconds=30)
    payment: timedelta = timedelta(seconds=60)

    @classmethod
    def scaled(cls, seconds: float) -> Deadlines:
        """``seconds`` for the reservation step, twice that for the payment step."""
        return cls(timedelta(seconds=seconds), timedelta(seconds=2 * seconds))

    def of(self, status: str) -> timedelta:
        return self.reservation if status == "created" else self.payment

    @property
    def shortest(self) -> timedelta:
        return min(self.reservation, self.payment)


@dataclass(frozen=True, slots=True)
class Waiting:
    """An order waiting at ``status`` since ``since`` (the step's event, for the trace)."""

    status: OrderStatus
    since: datetime
    event_id: str
    correlation_id: str
    traceparent: str = ""


def advance(current: Waiting | None, stored: StoredEvent) -> Waiting | None:
    """Where an order waits after ``stored`` (one of its events); None once it is over.

    Example:
        >>> from eventlab.store import SqliteEventStore
        >>> created = SqliteEventStore(store_path).read_stream("order", "O1")[0]  # OrderCreated
        >>> advance(None, created).status
        'created'
    """
    if stored.event_type in _ENDS:
        return None
    status = _WAITS_AFTER.get(stored.event_type)
    expected = None if status == "created" else "created"
    if status is None or (current.status if current else None) != expected:
        return current  # not a step, or out of order (a duplicate): the step already known stands
    metadata = stored.metadata
    return Waiting(
        status, stored.recorded_at, stored.event_id, metadata.get("correlation_id", ""), metadata.get("traceparent", "")
    )


def overdue(waiting: Mapping[str, Waiting], now: datetime, deadlines: Deadlines) -> list[str]:
    """The orders waiting longer than their step's deadline at ``now``, oldest first."""
    late = [(w.since, order_id) for order_id, w in waiting.items() if now - w.since > deadlines.of(w.status)]
    return [order_id for _, order_id in sorted(late)]


def timeout_detail(waiting: Waiting, deadlines: Deadlines, now: datetime) -> str:
    """Why an order waiting at ``waiting`` is cancelled at ``now`` (the cancellation's ``detail``)."""
    limit = deadlines.of(waiting.status)
    return (
        f"no {_WAITING_FOR[waiting.status]} within {limit.total_seconds():g} s "
        f"(waited {(now - waiting.since).total_seconds():.1f} s)"
    )

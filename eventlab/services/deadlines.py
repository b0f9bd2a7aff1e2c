"""Saga deadlines: an order that waits too long at a step is cancelled with reason ``timeout``.

Every saga then ends, also when the message that should have moved it on was dead-lettered or a
service is down: Inventory releases what it had reserved (or voids the reservation, so a late
``OrderCreated`` reserves nothing) and Payment refunds or voids, as for any cancellation.

- :class:`Deadlines`: how long each step may take. ``EVENTLAB_SAGA_TIMEOUT_S`` (default 30 s)
  is the reservation step's (``created`` → Inventory's answer); the payment step (``confirmed`` →
  the gateway's answer, retries included) gets twice as long.
- :func:`advance` and :func:`overdue`: the pure core — which step each order waits at since when,
  and which are past their deadline at ``now``.
- :class:`DeadlineSweeper`: follows the store by position (a sweep reads only the new events) and
  cancels overdue orders through :func:`~eventlab.services.runtime.execute`, version-checked on
  the order's stream, so a real answer racing the timeout wins or loses cleanly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eventlab.events import Event, OrderCancelled, OrderCompleted, OrderConfirmed, OrderCreated
from eventlab.services import order
from eventlab.services.runtime import States, execute, trace_metadata
from eventlab.store.base import EventStore, StoredEvent

__all__ = ["DeadlineSweeper", "Deadlines", "Waiting", "advance", "overdue"]

log = logging.getLogger(__name__)

_WAITS_AFTER = {OrderCreated.__name__: "created", OrderConfirmed.__name__: "confirmed"}
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

    status: str
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


class DeadlineSweeper:
    """Cancels overdue orders; run it in one thread of the order service (or the shop).

    Several sweepers on one store are safe (the cancellation is version-checked), just wasteful.
    """

    def __init__(
        self,
        store: EventStore,
        deadlines: Deadlines,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 5_000,
    ) -> None:
        self.store = store
        self.deadlines = deadlines
        self.clock = clock
        self.batch = batch
        self.position = 0
        self.waiting: dict[str, Waiting] = {}
        self.timed_out = 0

    def __repr__(self) -> str:
        return f"<DeadlineSweeper at {self.position} waiting={len(self.waiting)} timed_out={self.timed_out}>"

    def follow(self) -> None:
        """Read the events stored since the last look and update where each order waits."""
        while True:
            events = self.store.read_all(after=self.position, limit=self.batch)
            self._advance_all(events)
            if len(events) < self.batch:
                return

    def _advance_all(self, events: Iterable[StoredEvent]) -> None:
        for stored in events:
            self.position = stored.position
            if stored.aggregate_type != "order":
                continue
            step = advance(self.waiting.get(stored.aggregate_id), stored)
            if step is None:
                self.waiting.pop(stored.aggregate_id, None)
            else:
                self.waiting[stored.aggregate_id] = step

    def sweep(self) -> list[str]:
        """Follow the store, then cancel every overdue order; return the ids cancelled now."""
        self.follow()
        now = self.clock()
        cancelled = []
        for order_id in overdue(self.waiting, now, self.deadlines):
            if self._time_out(order_id, self.waiting[order_id], now):
                cancelled.append(order_id)
        return cancelled

    def _time_out(self, order_id: str, waiting: Waiting, now: datetime) -> bool:
        limit = self.deadlines.of(waiting.status)
        detail = (
            f"no {_WAITING_FOR[waiting.status]} within {limit.total_seconds():g} s "
            f"(waited {(now - waiting.since).total_seconds():.1f} s)"
        )
        metadata = trace_metadata("order", waiting.correlation_id or order_id, waiting.event_id, waiting.traceparent)
        key = ("order", order_id)
        seen: list[order.Order | None] = []

        def decide(states: States) -> list[Event]:
            current: order.Order | None = states[key]
            seen.append(current)
            return order.time_out(current, waiting.status, detail)  # type: ignore[arg-type]

        stored = execute(self.store, [key], {"order": order.evolve}, decide, metadata)
        if stored:
            self.timed_out += 1
            log.warning("order %s cancelled: %s", order_id, detail)
        elif seen and (seen[-1] is None or seen[-1].terminal):
            self.waiting.pop(order_id, None)  # over already (its end is on the way), or not an order
        # else it moved on to its next step meanwhile: the next follow() reads that step
        return bool(stored)

    def run(self, stop: threading.Event) -> None:
        """Sweep a few times per shortest deadline until ``stop`` is set; survive store errors."""
        interval = min(1.0, max(0.05, self.deadlines.shortest.total_seconds() / 4))
        while not stop.wait(interval):
            try:
                self.sweep()
            except Exception:
                log.exception("deadline sweep failed; trying again in %.2f s", interval)

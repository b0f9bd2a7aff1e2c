"""The deadline sweeper: the driver around the pure saga deadlines of :mod:`eventlab.services.deadlines`.

It follows the store by position (a sweep reads only the new events) and cancels overdue orders
through :func:`~eventlab.services.runtime.execute`, version-checked on the order's stream, so a real
answer racing the timeout wins or loses cleanly. It reads a clock and runs in a thread, which is
why it lives outside ``services/`` (the pure cores).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from eventlab.errors import StoreError
from eventlab.events import Event
from eventlab.services import order
from eventlab.services.deadlines import Deadlines, Waiting, advance, overdue, timeout_detail
from eventlab.services.runtime import States, StreamKey, execute, state_of, trace_metadata
from eventlab.store.base import EventRecord, EventStore

__all__ = ["DeadlineSweeper"]

log = logging.getLogger(__name__)


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
            records = self.store.read_records(after=self.position, limit=self.batch)
            self._advance_all(records)
            if len(records) < self.batch:
                return

    def _advance_all(self, records: Iterable[EventRecord]) -> None:
        for record in records:
            self.position = record.position
            if record.aggregate_type != "order":
                continue  # not decoded: most events are not the order's
            stored = record.decoded()
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
        detail = timeout_detail(waiting, self.deadlines, now)
        metadata = trace_metadata("order", waiting.correlation_id or order_id, waiting.event_id, waiting.traceparent)
        key = ("order", order_id)
        seen: list[order.Order | None] = []

        def decide(states: States) -> list[Event]:
            current = state_of(states, key, order.Order)
            seen.append(current)
            return order.time_out(current, waiting.status, detail, states)

        def customer(states: States) -> list[StreamKey]:
            return order.customer_of(state_of(states, key, order.Order))

        stored = execute(self.store, [key], order.SERVICE.evolvers, decide, metadata, follow=customer)
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
            except StoreError as exc:  # the store is away for a while (a restart): one line, not a traceback
                log.warning("deadline sweep failed: %s; trying again in %.2f s", exc, interval)
            except Exception:
                log.exception("deadline sweep failed; trying again in %.2f s", interval)

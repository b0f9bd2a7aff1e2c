"""A card processor stand-in with the idempotency of a real one, durable across restarts.

Its answers live in its own journal in the data directory (``gateway.jsonl``; the gateway stands
for an external system, so not in the event store), keyed by order id: charging an order again
returns the first answer and moves no money, from any process, after any restart. A refund is
keyed the same way, and an order refunded (or voided) before any charge can no longer be charged.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from eventlab.adapters.journal import Journal, Record
from eventlab.arguments import is_number
from eventlab.services.payment import ChargeResult, GatewayUnavailable, RefundResult

__all__ = ["MAX_LATENCY_MS", "SimulatedGateway"]

#: The longest simulated latency, in milliseconds: a minute already holds Payment's consumer past a saga's timeout.
MAX_LATENCY_MS = 60_000


class SimulatedGateway:
    """Seeded declines and latency, an outage switch, durable idempotency (with ``path``).

    Whether an order is declined depends only on ``seed`` and the order id, so a run is
    reproducible whatever the thread timing. Without ``path`` the answers are kept in memory.

    Example:
        >>> gateway = SimulatedGateway(failure_rate=0.0, latency_ms=0)
        >>> gateway.charge("order-1", 1999)
        ChargeResult(approved=True, reason='')
        >>> gateway.refund("order-1")
        RefundResult(refunded_cents=1999)
    """

    def __init__(
        self, failure_rate: float = 0.0, latency_ms: float = 0.0, seed: int = 0, path: Path | str | None = None
    ) -> None:
        #: Notified when ``latency_ms`` changes or :meth:`wake` is called, so a call waiting out its latency
        #: works it out again or stops waiting.
        self._changed = threading.Condition()
        self._wakes = 0
        self.failure_rate = failure_rate
        self.latency_ms = latency_ms
        self.seed = seed
        #: Set while the gateway is up; :meth:`take_down` clears it, :meth:`bring_up` sets it again.
        self.available = threading.Event()
        self.available.set()
        self.journal = Journal(path)

    @property
    def failure_rate(self) -> float:
        """The share of orders declined (0 to 1); which ones depends only on the seed and the order id."""
        return self._failure_rate

    @failure_rate.setter
    def failure_rate(self, rate: float) -> None:
        if not is_number(rate) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"failure_rate must be a number between 0 and 1, not {rate!r:.40}")
        self._failure_rate = rate

    @property
    def latency_ms(self) -> float:
        """How long a call takes (±50 %, seeded per order), from 0 to :data:`MAX_LATENCY_MS`; a call
        waiting when it changes waits for the new latency instead."""
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, latency: float) -> None:
        if not is_number(latency) or not 0 <= latency <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms must be a number from 0 to {MAX_LATENCY_MS:,}, not {latency!r:.40}")
        with self._changed:
            self._latency_ms = latency
            self._changed.notify_all()

    def wake(self) -> None:
        """End every call's wait for its latency now (the shop is stopping)."""
        with self._changed:
            self._wakes += 1
            self._changed.notify_all()

    @property
    def down(self) -> bool:
        """True during an outage: every call raises :class:`GatewayUnavailable`."""
        return not self.available.is_set()

    def take_down(self) -> None:
        """Start an outage: every call from now on raises :class:`GatewayUnavailable`."""
        self.available.clear()

    def bring_up(self) -> None:
        """End an outage."""
        self.available.set()

    @property
    def charges(self) -> int:
        """How many orders were charged (declines included)."""
        return sum(key.startswith("charge:") for key in self.journal.written_keys())

    def __repr__(self) -> str:
        state = "DOWN" if self.down else "up"
        return (
            f"<SimulatedGateway {state} failure_rate={self.failure_rate} "
            f"latency_ms={self.latency_ms} charges={self.charges}>"
        )

    def charge(self, order_id: str, amount_cents: int) -> ChargeResult:
        """Charge ``amount_cents`` for ``order_id`` once; raise :class:`GatewayUnavailable` during an outage."""
        self._call(order_id)

        def answer(records: Mapping[str, Record]) -> Record:
            if f"refund:{order_id}" in records:
                approved, reason = False, "order refunded or voided"
            else:
                approved = random.Random(f"{self.seed}:{order_id}").random() >= self.failure_rate
                reason = "" if approved else "card declined"
            return {"key": f"charge:{order_id}", "approved": approved, "reason": reason, "amount_cents": amount_cents}

        record, _ = self.journal.record_once(f"charge:{order_id}", answer)
        return ChargeResult(bool(record["approved"]), str(record["reason"]))

    def refund(self, order_id: str) -> RefundResult:
        """Give back what was taken for ``order_id`` (once); an order not charged yet can no longer be."""
        self._call(order_id)

        def answer(records: Mapping[str, Record]) -> Record:
            charged = records.get(f"charge:{order_id}")
            amount = int(charged["amount_cents"]) if charged and charged["approved"] else 0
            return {"key": f"refund:{order_id}", "refunded_cents": amount}

        record, _ = self.journal.record_once(f"refund:{order_id}", answer)
        return RefundResult(int(record["refunded_cents"]))

    def _call(self, order_id: str) -> None:
        jitter = random.Random(f"{self.seed}:{order_id}:latency").uniform(0.5, 1.5)
        started = time.monotonic()
        with self._changed:
            wakes = self._wakes
            while self._wakes == wakes and (left := started + jitter * self.latency_ms / 1000 - time.monotonic()) > 0:
                self._changed.wait(left)
        if self.down:
            raise GatewayUnavailable("payment gateway unavailable")

"""``eventlab demo``: seed the catalogue, place orders, wait for every saga, report and audit."""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from eventlab.catalogue import load_products, load_users
from eventlab.errors import SagaTimeout
from eventlab.projections.audit import audit
from eventlab.shop import Shop

__all__ = ["DemoReport", "ProgressPrinter", "invariants", "run_demo", "percentile"]

#: Demo invariant -> the audit check that proves it.
INVARIANTS = {
    "no_oversell": "stock_never_negative",
    "stock_conserved": "stock_conserved",
    "no_double_charge": "no_double_charge",
    "failed_payments_compensated": "failed_payments_compensated",
    "all_events_published": "all_events_published",
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class DemoReport:
    """What a demo run did; ``ok`` when no saga is stuck and every invariant holds."""

    orders: int = 0
    completed: int = 0
    cancelled: int = 0
    cancelled_by_reason: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    events: int = 0
    elapsed_s: float = 0.0
    orders_per_s: float = 0.0
    saga_latency_ms: dict[str, float] = field(default_factory=dict)
    invariants: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stuck == 0 and all(self.invariants.values())

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def table(self) -> str:
        """A plain-text summary."""
        rows = [
            ("orders", self.orders),
            ("completed", self.completed),
            ("cancelled", self.cancelled),
            *((f"  {reason}", n) for reason, n in sorted(self.cancelled_by_reason.items())),
            ("stuck", self.stuck),
            ("events written", self.events),
            ("elapsed", f"{self.elapsed_s:.2f} s"),
            ("throughput", f"{self.orders_per_s:.1f} orders/s"),
            ("saga latency p50", f"{self.saga_latency_ms.get('p50', 0):.1f} ms"),
            ("saga latency p99", f"{self.saga_latency_ms.get('p99', 0):.1f} ms"),
            *((f"invariant {name}", "ok" if held else "VIOLATED") for name, held in self.invariants.items()),
        ]
        width = max(len(str(name)) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _timestamp(recorded_at: str) -> float:
    return datetime.fromisoformat(recorded_at).replace(tzinfo=UTC).timestamp()


class ProgressPrinter:
    """Demo progress on stderr: one line rewritten in place on a terminal (at most 10 times a
    second), otherwise a line at every tenth of the sagas finished."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._last_print = 0.0
        self._tenths = -1

    def __call__(self, placed: int, done: int, total: int) -> None:
        line = f"placed {placed}/{total}  terminal {done}/{total}"
        if self.live:
            now = time.monotonic()
            if done == total or now - self._last_print >= 0.1:
                self._last_print = now
                print(f"\r{line}", end="\n" if done == total else "", file=self.stream, flush=True)
        elif (tenths := 10 * done // max(total, 1)) > self._tenths:
            self._tenths = tenths
            print(line, file=self.stream, flush=True)


def run_demo(
    shop: Shop,
    orders: int = 100,
    *,
    seed: int = 0,
    rate: float | None = None,
    timeout: float = 120.0,
    progress: Callable[[int, int, int], None] | None = None,
    catalogue: Path | None = None,
) -> DemoReport:
    """Place ``orders`` random orders (``rate`` per second, or as fast as possible) on a running
    shop, wait until every saga is terminal (or ``timeout``), and report (without
    :attr:`DemoReport.invariants`, which :func:`invariants` fills in once the shop has stopped).

    Users and products come from ``catalogue`` (default: the CSV files in ``data/``).
    """
    shop.seed_catalogue(catalogue)
    rng = random.Random(seed)
    users = [row["user_id"] for row in load_users(catalogue)]
    products = [row["product_id"] for row in load_products(catalogue)]
    store = shop.store
    first_position = store.head()
    placed: set[str] = set()
    finished: dict[str, tuple[float, str]] = {}
    seen = first_position
    started = time.monotonic()

    def collect() -> None:
        nonlocal seen
        for record in store.read_records(after=seen):
            seen = record.position
            if record.aggregate_id in placed and record.event_type in ("OrderCompleted", "OrderCancelled"):
                reason = json.loads(record.data)["reason"] if record.event_type == "OrderCancelled" else ""
                finished[record.aggregate_id] = (_timestamp(record.recorded_at), reason)

    created_at: dict[str, float] = {}
    for index in range(orders):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        lines = {pid: rng.randint(1, 3) for pid in rng.sample(products, rng.choice((1, 1, 2, 2, 3)))}
        order_id = shop.place_order(rng.choice(users), lines)
        placed.add(order_id)
        if progress and index % 25 == 0:
            collect()
            progress(index + 1, len(finished), orders)
    deadline = time.monotonic() + timeout
    while len(finished) < orders and time.monotonic() < deadline:
        collect()
        if progress:
            progress(orders, len(finished), orders)
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    try:
        shop.wait_idle(timeout=max(1.0, deadline - time.monotonic()))
    except SagaTimeout:
        pass
    for record in store.read_records(after=first_position):
        if record.event_type == "OrderCreated" and record.aggregate_id in placed:
            created_at[record.aggregate_id] = _timestamp(record.recorded_at)
    latencies = [(finished[o][0] - created_at[o]) * 1000 for o in finished if o in created_at]
    reasons = Counter(reason for _, reason in finished.values() if reason)
    return DemoReport(
        orders=orders,
        completed=sum(1 for _, reason in finished.values() if not reason),
        cancelled=sum(reasons.values()),
        cancelled_by_reason=dict(reasons),
        stuck=orders - len(finished),
        events=store.head() - first_position,
        elapsed_s=round(elapsed, 3),
        orders_per_s=round(orders / elapsed, 1) if elapsed else 0.0,
        saga_latency_ms={"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1)},
    )


def invariants(store_path: Path) -> dict[str, bool]:
    """The demo's invariants, proven by the audit of the event store.

    Run it once the shop has stopped: the audit then sees the final log, and DuckDB can attach
    the store directly (the fast path, see :class:`eventlab.projections.engine.StoreMirror`).
    """
    checks = audit(store_path)
    return {name: checks[check].ok for name, check in INVARIANTS.items()}

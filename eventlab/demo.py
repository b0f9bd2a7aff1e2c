"""``eventlab demo``: seed the catalogue, place orders, wait for every saga, report and audit.

**The same seed gives the same counts** (completed, cancelled by reason), although the orders run
concurrently through the six services. Three things used to make runs differ:

1. *Which payments are declined.* The simulated gateway decides from the seed and the order id,
   and order ids were time-based. The demo names its orders ``demo-s<seed>-r<run>-<n>`` instead;
   ``run`` counts the earlier demo runs with this seed in the same store (and those running in
   this process), so ids never collide.
2. *Which orders get scarce stock.* Inventory serves orders in the order it consumes them, which
   (across partitions, and with stock given back by declined payments) depends on thread timing.
   The demo reads each product's stock before the first order and keeps two bounds per product
   (:class:`StockBounds`): units surely still there, as if every order placed so far keeps its
   stock, and units possibly there, as if every one of them gave it back. An order within the
   first bound is surely reserved and one beyond the second surely rejected, whatever the
   timing: both are placed at once. Any other order first waits until the shop is idle (every
   earlier saga and its compensation done), when the stock is known exactly, so Inventory
   decides it on the same stock in every run. With the demo's catalogue these pauses are rare
   (``pauses`` in the report: none for 100 orders).
3. *What earlier runs left behind.* Stock sold by one run is gone for the next. So ``eventlab
   demo`` starts from an empty store of its own (:func:`fresh_data_dir`) unless it is given a
   data directory; on a given store a run is reproducible from that store's state.

Every wait (catalogue stocked, a pause, the sagas at the end) is bounded by ``timeout``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from eventlab.application import Commands
from eventlab.catalogue import load_products, load_users
from eventlab.errors import SagaTimeout, StoreError
from eventlab.events import OrderCancelled, OrderCompleted, OrderCreated
from eventlab.projections.audit import audit
from eventlab.projections.sandbox import ProjectionError
from eventlab.projections.sources import PostgresUrl, describe, store_locations
from eventlab.services.inventory import evolve_stock
from eventlab.services.runtime import load
from eventlab.settings import SERVICE_PORTS, Settings, default_data_dir
from eventlab.shop import Shop
from eventlab.store import ShopStores, open_store
from eventlab.store.base import EventStore
from eventlab.store.sqlite import FileLease
from eventlab.tables import text_rows

__all__ = [
    "DemoReport",
    "ProgressPrinter",
    "StockBounds",
    "fresh_data_dir",
    "invariants",
    "order_ids",
    "percentile",
    "recorded_seconds",
    "refuse_earlier_runs",
    "run_demo",
    "store_name",
]

log = logging.getLogger(__name__)

#: The events that end an order's saga.
_TERMINAL = frozenset({OrderCompleted.__name__, OrderCancelled.__name__})


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


#: The demo directories this process holds, each by a lease (``demo.lease`` beside it) kept until it exits.
_HELD: dict[Path, FileLease] = {}


def fresh_data_dir() -> Path:
    """The demo's own data directory, ``$XDG_DATA_HOME/eventlab/demo``, emptied for a new run.

    Only demo runs write there, and each keeps its store until the next one, for
    ``eventlab audit --data-dir ...`` and friends. A demo holds it until its process exits, so a
    second demo started meanwhile is refused instead of emptying the directory under the first;
    so is a demo whose stores outside it hold an earlier run's events (:func:`refuse_earlier_runs`),
    before anything is removed.
    """
    directory = default_data_dir() / "demo"
    lease = _HELD.get(directory) or FileLease("demo", directory.parent / "demo.lease")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the demo's directory {directory}: {exc}") from exc
    if not lease.acquire():
        raise StoreError(f"another eventlab demo is using {directory}: wait for it to end, or give this one --data-dir")
    _HELD[directory] = lease
    refuse_earlier_runs(Settings.from_env(data_dir=directory))
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot empty the demo's directory {directory}: {exc}") from exc
    return directory


def refuse_earlier_runs(settings: Settings) -> None:
    """Refuse a store outside the demo's directory ``settings.data_dir`` that holds an earlier run's
    events when a store inside it is about to be emptied (:func:`fresh_data_dir`): that run's orders
    would meet this run's empty stock and payments in the audit. A shop whose stores all lie outside
    (e.g. on PostgreSQL) loses nothing and adds to them, as with ``--data-dir``."""
    inside, outside = False, {}
    for service in SERVICE_PORTS:
        own = settings.store_of(service)
        if own.store_backend == "sqlite" and own.store_path.resolve().is_relative_to(settings.data_dir.resolve()):
            inside = True
        elif own.store_backend != "memory":
            outside[own.store_shown] = own
    used = []
    for shown, own in outside.items() if inside else ():
        try:
            store = open_store(own, create=False)
        except StoreError:  # not there yet: nothing of an earlier run
            continue
        try:
            if store.head():
                used.append(shown)
        finally:
            store.close()
    if used:
        raise StoreError(
            f"the demo starts from empty stores, but {', '.join(used)} holds an earlier run's events: give"
            " --data-dir to add to them, or empty them"
        )


#: The runs (seed, run) each store's demos in this process have taken: a run started a moment
#: ago may have no order in the store yet.
_taken_runs: weakref.WeakKeyDictionary[EventStore, set[tuple[int, int]]] = weakref.WeakKeyDictionary()
_taking_runs = threading.Lock()


def order_ids(store: EventStore, seed: int) -> Callable[[], str]:
    """An id factory naming the orders of this run ``demo-s<seed>-r<run>-<n>`` (n from 1), where
    ``run`` is the first run number with no order in ``store`` and not taken by another run in
    this process.

    Example:
        >>> from eventlab.store import SqliteEventStore
        >>> next_id = order_ids(SqliteEventStore(store_path), seed=7)
        >>> next_id(), next_id()
        ('demo-s7-r1-00001', 'demo-s7-r1-00002')
    """
    with _taking_runs:
        taken = _taken_runs.setdefault(store, set())
        run = 1
        while (seed, run) in taken or store.read_stream("order", _order_id(seed, run, 1)):
            run += 1
        taken.add((seed, run))
    numbers = itertools.count(1)
    return lambda: _order_id(seed, run, next(numbers))


def _order_id(seed: int, run: int, number: int) -> str:
    return f"demo-s{seed}-r{run}-{number:05d}"


class StockBounds:
    """What the next order can count on, per product, while earlier orders are still in flight.

    ``low``: units available even if every order placed so far keeps what it reserved;
    ``high``: units available if every one of them gives it back. Inventory reserves an order
    all-or-nothing, so its outcome is known in advance unless a line falls between the bounds.

    Example:
        >>> bounds = StockBounds({"P1": 3})
        >>> bounds.outcome({"P1": 2}), bounds.place({"P1": 2}), bounds.outcome({"P1": 2})
        (True, None, None)
        >>> bounds.outcome({"P1": 4})
        False
    """

    def __init__(self, available: Mapping[str, int]) -> None:
        self.low = dict(available)
        self.high = dict(available)

    def outcome(self, lines: Mapping[str, int]) -> bool | None:
        """True: surely reserved; False: surely rejected; None: it depends on what happens first."""
        if all(qty <= self.low.get(pid, 0) for pid, qty in lines.items()):
            return True
        if any(qty > self.high.get(pid, 0) for pid, qty in lines.items()):
            return False
        return None

    def place(self, lines: Mapping[str, int]) -> None:
        """Account for an order placed now (its outcome must be known)."""
        if self.outcome(lines):
            for pid, qty in lines.items():
                self.low[pid] -= qty


def _available(store: EventStore, products: list[str]) -> dict[str, int]:
    """Inventory's available units per product, from the store."""
    stocks = {pid: load(store, ("stock", pid), evolve_stock).state for pid in products}
    return {pid: stock.available if stock else 0 for pid, stock in stocks.items()}


@dataclass
class DemoReport:
    """What a demo run did; ``ok`` when no saga is stuck and every invariant holds."""

    orders: int = 0
    completed: int = 0
    cancelled: int = 0
    cancelled_by_reason: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    pauses: int = 0
    events: int = 0
    elapsed_s: float = 0.0
    orders_per_s: float = 0.0
    saga_latency_ms: dict[str, float] = field(default_factory=dict)
    store: str = ""
    invariants: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stuck == 0 and all(self.invariants.values())

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def table(self) -> str:
        """A plain-text summary."""
        rows: list[tuple[str, object]] = [
            ("orders", self.orders),
            ("completed", self.completed),
            ("cancelled", self.cancelled),
            *((f"  {reason}", n) for reason, n in sorted(self.cancelled_by_reason.items())),
            ("stuck", self.stuck),
            ("paused for earlier orders", self.pauses),
            ("events written", self.events),
            ("elapsed", f"{self.elapsed_s:.2f} s"),
            ("throughput", f"{self.orders_per_s:.1f} orders/s"),
            ("saga latency p50", f"{self.saga_latency_ms.get('p50', 0):.1f} ms"),
            ("saga latency p99", f"{self.saga_latency_ms.get('p99', 0):.1f} ms"),
            ("store", self.store),
            *((f"invariant {name}", "ok" if held else "VIOLATED") for name, held in self.invariants.items()),
        ]
        return text_rows(rows)


def recorded_seconds(recorded_at: str) -> float:
    """A stored event's ``recorded_at`` text (UTC) as seconds since the epoch."""
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
    shop, wait until every saga is terminal, and report (without :attr:`DemoReport.invariants`,
    which :func:`invariants` fills in once the shop has stopped). See the module docstring for
    why the same ``seed`` gives the same counts.

    Users and products come from ``catalogue`` (default: the CSV files in ``data/``). Each wait
    for the shop lasts at most ``timeout`` seconds: the catalogue's and a pause's raise
    :class:`~eventlab.errors.SagaTimeout`; the last one reports what is still running as ``stuck``.
    """
    stores = shop.stores
    store, stock = stores.of("order"), stores.of("inventory")  # the same one unless services have their own
    shop.seed_catalogue(catalogue, timeout)
    ids = order_ids(store, seed)
    # with tracing on, each order's trace starts at its ``place order`` span
    commands = Commands(stores, ids) if shop.tracing is None else shop.tracing.commands(stores, ids)
    rng = random.Random(seed)
    users = [row["user_id"] for row in load_users(catalogue)]
    products = [row["product_id"] for row in load_products(catalogue)]
    bounds = StockBounds(_available(stock, products))
    first_position = store.head()
    events_before = sum(each.head() for each in stores)
    placed: set[str] = set()
    created_at: dict[str, float] = {}
    finished: dict[str, tuple[float, str]] = {}
    seen = first_position
    pauses = 0
    started = time.monotonic()

    def collect() -> None:
        nonlocal seen
        for record in store.read_records(after=seen):
            seen = record.position
            if record.aggregate_id not in placed:
                continue
            if record.event_type == OrderCreated.__name__:
                created_at[record.aggregate_id] = recorded_seconds(record.recorded_at)
            elif record.event_type in _TERMINAL:
                reason = json.loads(record.data)["reason"] if record.event_type == OrderCancelled.__name__ else ""
                finished[record.aggregate_id] = (recorded_seconds(record.recorded_at), reason)

    for index in range(orders):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        lines = {pid: rng.randint(1, 3) for pid in rng.sample(products, rng.choice((1, 1, 2, 2, 3)))}
        user_id = rng.choice(users)
        if bounds.outcome(lines) is None:
            pauses += 1
            shop.wait_idle(timeout)
            bounds = StockBounds(_available(stock, products))
        bounds.place(lines)
        order_id = commands.place_order(
            user_id=user_id, lines=[{"product_id": pid, "quantity": qty} for pid, qty in lines.items()]
        )
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
        shop.wait_idle(timeout=max(0.0, deadline - time.monotonic()))
    except SagaTimeout as exc:
        log.warning("the demo's orders are not all settled: %s", exc)
    latencies = [(finished[o][0] - created_at[o]) * 1000 for o in finished if o in created_at]
    reasons = Counter(reason for _, reason in finished.values() if reason)
    return DemoReport(
        orders=orders,
        completed=sum(1 for _, reason in finished.values() if not reason),
        cancelled=sum(reasons.values()),
        cancelled_by_reason=dict(reasons),
        stuck=orders - len(finished),
        pauses=pauses,
        events=sum(each.head() for each in stores) - events_before,
        elapsed_s=round(elapsed, 3),
        orders_per_s=round(orders / elapsed, 1) if elapsed else 0.0,
        saga_latency_ms={"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1)},
        store=store_name(shop.settings),
    )


def store_name(settings: Settings) -> str:
    """The stores ``settings`` name, for the report: each SQLite file, or PostgreSQL URL without its
    password (see :func:`~eventlab.projections.sources.store_locations`), or ``memory://``."""
    try:
        return ", ".join(describe(location) for location in store_locations(settings))
    except ProjectionError:  # a store in this process's memory: nothing else can read it
        return "memory://"


def invariants(
    store: Path | PostgresUrl | EventStore | ShopStores | Sequence[Path | PostgresUrl], mailbox: Path | None = None
) -> dict[str, bool]:
    """Every check of :func:`eventlab.projections.audit.audit`, by the audit's names: holds or not.

    ``store``: a SQLite file, a PostgreSQL URL, or an open store; or the shop's several stores
    (:func:`~eventlab.projections.sources.store_locations` of its settings, or its open
    :class:`~eventlab.store.ShopStores`), audited as one log; ``mailbox``: the mailer's file (by
    default the one beside the (first) SQLite file). Run it once the shop has stopped (a ``memory://`` store
    before it is closed): the audit then sees the final log. Nothing is in flight any more, so
    there is no grace period: a step that has not happened by now is missing.
    """
    return {name: result.ok for name, result in audit(store, grace=timedelta(0), mailbox=mailbox).items()}

"""Benchmark the DuckDB projections against a pure-Python fold, on a synthetic store.

The store is written with the real event models and :class:`~eventlab.store.SqliteEventStore`:
waves of 50 orders run the services' saga (reservations, out-of-stock rejections, 10 % declined
payments with released stock, emails), one ``append`` per saga step of a wave (10-150 events).
It is cached in the temp directory, keyed by size and seed, so re-runs only pay for the
measurements; each run works on a copy.

Measured in one run (best of ``--repeat``):

- ``full_rebuild_s``: :meth:`Projections.rebuild` — copy every event from SQLite into DuckDB,
  parse its JSON once into typed columns, build the tables (``orders``, ``notifications``);
  the views are computed when read, and ``read_all_relations_s`` is reading every relation once
  (to Arrow, in its documented order); ``rebuild_and_read_all_s`` is their sum;
- ``incremental_1k_s``: :meth:`Projections.refresh` after 1,000 more saga events are appended;
- ``python_fold_s``: ``sqlite3``, ``json.loads`` per row and dict folds to the same twelve
  relations and columns (row counts, order statuses, the funnel's counts and the saga steps'
  details checked against DuckDB's); it leaves out what a plain fold would not make: the rows in
  each relation's documented order, and the ``DECIMAL`` twin of each cents column;
- ``speedup_vs_python``: ``python_fold_s / rebuild_and_read_all_s`` (both end with every relation
  in hand); ``speedup_rebuild_only``: ``python_fold_s / full_rebuild_s``;
- ``cpu_s``: the same measurements in CPU seconds of the process (DuckDB's threads summed; best of
  the runs), steady where other work shares the machine; ``speedup_vs_python_cpu`` is the speedup in
  those terms (below the wall-clock one on an idle machine, where DuckDB's threads overlap);
- ``median_s``: the median of the runs of each measurement (wall clock), next to the best.

``--profile`` also says where a rebuild and a read of every relation spend their time: the same
statements :meth:`Projections.rebuild` and :meth:`Projections.relation` run, on a connection of
its own with DuckDB's profiler on (the engine's configuration is locked), per statement: wall and
process CPU seconds, the CPU split over phases in proportion to the time DuckDB's profiler gives
each operator (summed over its threads; it counts time a thread waits for a core too, so only
the proportions are used): ``sqlite_scan`` (DuckDB's ``sqlite`` extension reading the file),
``json`` (the typed columns parsed out of each document), ``compute`` (aggregates, windows,
joins, filters), ``sort`` (``ORDER BY`` into the documented order) and ``materialise`` (writing a
DuckDB table). Handing a result to Python as Arrow happens in the result collector, which the
profiler does not show as an operator: it is spread over the others.

Usage::

    python benchmarks/projections.py --events 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extensions

from eventlab.events import (
    EmailRequested,
    EmailSent,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    StockAdded,
    StockReleased,
    StockReserved,
    StockSold,
    UserCreated,
)
from eventlab.projections import RELATIONS, Projections
from eventlab.projections.sources import MONEY
from eventlab.projections.typed import create_typed_events
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.tables import text_rows

WAVE = 50  # orders whose saga steps share one append each
MAX_EVENTS_PER_ORDER = 15  # three lines: created, 3 reserved, confirmed x2, 2 emails, paid, completed, 3 sold, 2 emails


_SOURCES = {
    "user": "user",
    "product": "product",
    "order": "order",
    "stock": "inventory",
    "reservation": "inventory",
    "payment": "payment",
    "notification": "notification",
}


class _Shop:
    """A deterministic, in-process imitation of the six services writing to a real store."""

    def __init__(self, store_path: Path, seed: int, state: dict[str, Any] | None = None) -> None:
        """A new shop, or one continuing from ``state`` (see :meth:`state`) on a copy of its store."""
        state = state or {}
        self.rng = random.Random(f"{seed}:{state.get('orders', 0)}")
        self.now = datetime.fromisoformat(state.get("now", "2025-01-01T00:00:00+00:00"))
        self.store = SqliteEventStore(store_path, clock=lambda: self.now)
        self.versions = {("stock", p): v for p, v in state.get("stock_versions", {}).items()}
        self.available: dict[str, int] = state.get("available", {})
        self.prices: dict[str, int] = state.get("prices", {})
        self.users = [f"user-{i:06d}" for i in range(state.get("users", 0))]
        self.orders: int = state.get("orders", 0)

    def state(self) -> dict[str, Any]:
        """What a later run needs to go on writing consistent events to a copy of the store."""
        return {
            "now": self.now.isoformat(),
            "orders": self.orders,
            "users": len(self.users),
            "prices": self.prices,
            "available": self.available,
            "stock_versions": {p: v for (kind, p), v in self.versions.items() if kind == "stock"},
        }

    def _new(self, event: Event) -> NewEvent:
        key = (event.aggregate_type, event.aggregate_id)
        version = self.versions[key] = self.versions.get(key, 0) + 1
        trace = f"00-{self.rng.getrandbits(128):032x}-{self.rng.getrandbits(64):016x}-01"
        correlation = getattr(event, "order_id", event.aggregate_id)
        meta = {"source": _SOURCES[event.aggregate_type], "correlation_id": correlation, "traceparent": trace}
        return NewEvent(event, version, meta)

    def _append(self, events: list[Event], step_ms: float) -> int:
        """One service decision: ``events`` in one transaction, ``step_ms`` after the previous one."""
        self.now += timedelta(milliseconds=step_ms)
        if events:
            self.store.append([self._new(event) for event in events])
        return len(events)

    def setup(self, users: int, products: int, stock: int) -> int:
        """Users, products and their initial stock; returns the number of events written."""
        written = 0
        for start in range(0, users, 500):
            written += self.filler(min(users, start + 500) - start)
        for i in range(products):
            product_id = f"sku-{i:04d}"
            self.prices[product_id] = self.rng.randrange(199, 20_000)
            self.available[product_id] = stock
            created = ProductCreated(
                product_id=product_id, name=f"Product {i}", price_cents=self.prices[product_id], initial_stock=stock
            )
            written += self._append([created], 1)
            written += self._append([StockAdded(product_id=product_id, quantity=stock)], 2)
        return written

    def filler(self, count: int) -> int:
        """``count`` more registrations (in one append)."""
        users = []
        for _ in range(count):
            user_id = f"user-{len(self.users):06d}"
            self.users.append(user_id)
            users.append(UserCreated(user_id=user_id, name=f"User {user_id}", email=f"{user_id}@example.com"))
        return self._append(users, 1)

    def _order(self) -> OrderCreated:
        self.orders += 1
        picked = self.rng.sample(list(self.prices), self.rng.randint(1, 3))
        lines = [
            OrderLine(product_id=p, quantity=self.rng.randint(1, 3), unit_price_cents=self.prices[p]) for p in picked
        ]
        if self.rng.random() < 0.04:  # a greedy customer: more than the shop will ever have
            lines[-1] = lines[-1].model_copy(update={"quantity": 1_000_000})
        return OrderCreated(
            order_id=f"order-{self.orders:07d}",
            user_id=self.rng.choice(self.users),
            lines=tuple(lines),
            total_cents=sum(line.amount_cents for line in lines),
        )

    def _reserve(self, order: OrderCreated) -> tuple[list[Event], Event]:
        """Inventory's all-or-nothing answer, then Order's."""
        ids = {"order_id": order.order_id, "user_id": order.user_id}
        short = next((ln for ln in order.lines if self.available[ln.product_id] < ln.quantity), None)
        if short:
            available = self.available[short.product_id]
            rejected = ReservationRejected(
                order_id=order.order_id, product_id=short.product_id, requested=short.quantity, available=available
            )
            detail = f"{short.product_id}: {short.quantity} requested, {available} available"
            return [rejected], OrderCancelled(**ids, reason="out_of_stock", detail=detail, lines=order.lines)
        reserved: list[Event] = []
        for ln in order.lines:
            self.available[ln.product_id] -= ln.quantity
            reserved.append(StockReserved(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity))
        reserved.append(ReservationConfirmed(order_id=order.order_id, lines=order.lines))
        return reserved, OrderConfirmed(**ids, total_cents=order.total_cents)

    def _settle(self, order: OrderCreated, paid: bool) -> tuple[Event, list[Event]]:
        """Order's answer to the payment, then Inventory's."""
        ids = {"order_id": order.order_id, "user_id": order.user_id}
        if paid:
            return OrderCompleted(**ids, total_cents=order.total_cents, lines=order.lines), [
                StockSold(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity) for ln in order.lines
            ]
        for ln in order.lines:
            self.available[ln.product_id] += ln.quantity
        return OrderCancelled(**ids, reason="payment_failed", detail="card declined", lines=order.lines), [
            StockReleased(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity) for ln in order.lines
        ]

    def _emails(self, orders: list[tuple[OrderCreated, str]]) -> tuple[list[Event], list[Event]]:
        requested: list[Event] = []
        sent: list[Event] = []
        for order, kind in orders:
            to = f"{order.user_id}@example.com"
            subject = f"{kind} {order.order_id}"
            requested.append(EmailRequested(order_id=order.order_id, kind=kind, to=to, subject=subject))  # type: ignore[arg-type]
            sent.append(EmailSent(order_id=order.order_id, kind=kind, to=to))  # type: ignore[arg-type]
        return requested, sent

    def wave(self, size: int) -> int:
        """Run the sagas of ``size`` orders to the end, one append per step; returns events written."""
        rng = self.rng
        orders = [self._order() for _ in range(size)]
        written = self._append(list(orders), 20 * rng.random())

        inventory: list[Event] = []
        answers: list[Event] = []
        confirmed = []
        for order in orders:
            reservation, answer = self._reserve(order)
            inventory += reservation
            answers.append(answer)
            if isinstance(answer, OrderConfirmed):
                confirmed.append(order)
        written += self._append(inventory, 5 + 10 * rng.random())
        written += self._append(answers, 5 + 10 * rng.random())
        kinds = {o.order_id: "order_confirmed" for o in confirmed}
        requested, sent = self._emails([(o, kinds.get(o.order_id, "order_cancelled")) for o in orders])
        written += self._append(requested, 3 + 5 * rng.random())

        paid = {o.order_id: rng.random() >= 0.1 for o in confirmed}
        payments: list[Event] = [
            PaymentCompleted(
                order_id=o.order_id,
                amount_cents=o.total_cents,
                status="COMPLETED" if paid[o.order_id] else "FAILED",
                reason="" if paid[o.order_id] else "card declined",
            )
            for o in confirmed
        ]
        written += self._append(payments, 50 + 200 * rng.random())
        written += self._append(sent, 30 + 60 * rng.random())

        outcomes: list[Event] = []
        stock: list[Event] = []
        for order in confirmed:
            outcome, follow_up = self._settle(order, paid[order.order_id])
            outcomes.append(outcome)
            stock += follow_up
        written += self._append(outcomes, 5 + 10 * rng.random())
        requested, sent = self._emails(
            [(o, "order_completed" if paid[o.order_id] else "order_cancelled") for o in confirmed]
        )
        written += self._append(stock + requested, 5 + 10 * rng.random())
        written += self._append(sent, 30 + 60 * rng.random())
        self.now += timedelta(seconds=rng.randint(60, 3600))
        return written

    def write(self, events: int) -> int:
        """Write saga waves (smaller towards the end), then registrations, until exactly ``events`` more
        are stored."""
        written = 0
        while (size := min(WAVE, (events - written) // MAX_EVENTS_PER_ORDER)) > 0:
            written += self.wave(size)
        written += self.filler(events - written)
        self.store.set_checkpoint("relay", self.store.head())
        return written


def cached_store(events: int, seed: int, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The synthetic store of ``events`` events and its shop state, built once per size and seed."""
    path = cache_dir / f"store-{events}-seed{seed}.db"
    state_path = path.with_suffix(".json")
    if not state_path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        for leftover in cache_dir.glob(partial.name + "*"):
            leftover.unlink()
        started = time.perf_counter()
        shop = _Shop(partial, seed)
        setup = shop.setup(users=max(10, events // 500), products=100, stock=10_000 + events // 40)
        shop.write(events - setup)
        shop.store.close()
        partial.rename(path)
        state_path.write_text(json.dumps(shop.state()))
        print(f"built {path} ({events} events) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path, json.loads(state_path.read_text())


_STEPS = {
    "ReservationConfirmed": "reserved_at",
    "ReservationRejected": "rejected_at",
    "OrderConfirmed": "confirmed_at",
    "OrderCompleted": "completed_at",
    "OrderCancelled": "cancelled_at",
}
_LAST_STEPS = {"StockReleased": "stock_released_at", "StockSold": "stock_sold_at"}
_STATUSES = {"OrderConfirmed": "confirmed", "OrderCompleted": "completed", "OrderCancelled": "cancelled"}
_STOCK = {  # event type -> (available, reserved, sold) per unit
    "StockAdded": (1, 0, 0),
    "StockReserved": (-1, 1, 0),
    "StockReleased": (1, -1, 0),
    "StockSold": (0, -1, 1),
}
_STAGES = ("created", "reserved", "confirmed", "paid", "completed")


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds() * 1000


def _detail(event_type: str, event: dict[str, Any]) -> str | None:
    """``saga_timeline.detail``: what a step was about."""
    if event_type == "PaymentCompleted":
        return event["status"] + (f": {event['reason']}" if event.get("reason") else "")
    if event_type == "OrderCancelled":
        return event["reason"]
    if (kind := event.get("kind")) is not None:
        return kind
    if (quantity := event.get("quantity")) is not None:
        return f"{event['product_id']} x{quantity}"
    return event.get("product_id")


def python_fold(path: Path) -> dict[str, list[Any]]:
    """Every relation :meth:`Projections.rebuild` builds, the classic way: ``sqlite3``, ``json.loads``
    of each row's data and metadata, and dict folds (rows as dicts or tuples, in no particular order)."""
    orders: dict[str, dict[str, Any]] = {}
    emails: dict[str, dict[str, Any]] = {}
    lines_out: list[tuple[Any, ...]] = []
    timeline: list[tuple[Any, ...]] = []
    previous: dict[str, tuple[int, datetime, datetime]] = {}  # order -> (step, previous time, first time)
    history: list[tuple[Any, ...]] = []
    stock: dict[str, list[int]] = {}  # product -> [available, reserved, sold, last position]
    products: dict[str, dict[str, Any]] = {}
    attempts: list[tuple[Any, ...]] = []
    attempt_no: dict[str, int] = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT position, event_type, data, metadata, recorded_at FROM events ORDER BY position")
        for position, event_type, data, metadata, recorded_at in rows:
            event = json.loads(data)
            source = json.loads(metadata).get("source")
            at = datetime.fromisoformat(recorded_at)
            order_id = event.get("order_id")
            product_id = event.get("product_id")
            if event_type in _STOCK:
                units = event["quantity"]
                a, r, s = _STOCK[event_type]
                level = stock.setdefault(product_id, [0, 0, 0, 0])
                level[0] += a * units
                level[1] += r * units
                level[2] += s * units
                level[3] = position
                history.append((position, at, product_id, event_type, order_id, units, *level[:3]))
            elif event_type == "ProductCreated":
                product = products.setdefault(product_id, {"name": event["name"], "price_cents": event["price_cents"]})
                product["initial_stock"] = product.get("initial_stock", 0) + event["initial_stock"]
                product.setdefault("created_at", at)
            if order_id is None:
                continue
            step, before, first = previous.get(order_id, (0, at, at))
            previous[order_id] = (step + 1, at, first)
            detail = _detail(event_type, event)
            timeline.append(
                (order_id, step + 1, position, at, event_type, source, detail, _ms(before, at), _ms(first, at))
            )
            if event_type in ("EmailRequested", "EmailSent"):
                mail = emails.setdefault(order_id, {"requested": [], "sent": [], "first": None, "last": None})
                if event_type == "EmailRequested":
                    mail["requested"].append(event["kind"])
                    mail["first"] = mail["first"] or at
                else:
                    mail["sent"].append(event["kind"])
                    mail["last"] = at
                continue
            if event_type == "OrderCreated":
                lines = event["lines"]
                orders[order_id] = {
                    "user_id": event["user_id"],
                    "status": "created",
                    "total_cents": event["total_cents"],
                    "line_count": len(lines),
                    "units": sum(line["quantity"] for line in lines),
                    "created_at": at,
                }
                for no, line in enumerate(lines, 1):
                    quantity, price = line["quantity"], line["unit_price_cents"]
                    lines_out.append(
                        (
                            order_id,
                            event["user_id"],
                            position,
                            at,
                            no,
                            line["product_id"],
                            quantity,
                            price,
                            quantity * price,
                        )
                    )
            elif event_type == "PaymentCompleted":
                attempt_no[order_id] = attempt_no.get(order_id, 0) + 1
                attempts.append(
                    (position, at, order_id, attempt_no[order_id], event["status"], event["reason"] or None,
                     event["amount_cents"])
                )  # fmt: skip
            order = orders.get(order_id)
            if order is None:
                continue
            order["last_position"] = position
            order["updated_at"] = at
            if event_type in _STEPS:
                order.setdefault(_STEPS[event_type], at)
            if event_type in _LAST_STEPS:
                order[_LAST_STEPS[event_type]] = at
            if event_type == "PaymentCompleted":
                order.setdefault("paid_at" if event["status"] == "COMPLETED" else "payment_failed_at", at)
            if event_type in _STATUSES and order["status"] not in ("completed", "cancelled"):
                order["status"] = _STATUSES[event_type]
            if event_type == "OrderCancelled":
                order.setdefault("cancel_reason", event["reason"])
                order.setdefault("cancel_detail", event["detail"])
    for order in orders.values():
        order["duration_ms"] = _ms(order["created_at"], order.get("completed_at") or order.get("cancelled_at"))
    notifications = [
        (o, len(m["requested"]), len(m["sent"]), sorted(m["requested"]), sorted(m["sent"]),
         [k for k in m["requested"] if k not in m["sent"]], m["first"], m["last"])
        for o, m in emails.items()
    ]  # fmt: skip
    inventory = [(p, products.get(p), stock.get(p)) for p in products.keys() | stock.keys()]
    completed = {o: order for o, order in orders.items() if order["status"] == "completed"}
    revenue: dict[Any, list[int]] = {}
    by_user: dict[str, list[Any]] = {}
    for order in completed.values():
        day = revenue.setdefault(order["completed_at"].date(), [0, 0])
        day[0] += 1
        day[1] += order["total_cents"]
        user = by_user.setdefault(order["user_id"], [0, 0, order["completed_at"], order["completed_at"]])
        user[0] += 1
        user[1] += order["total_cents"]
        user[2], user[3] = min(user[2], order["completed_at"]), max(user[3], order["completed_at"])
    by_product: dict[str, list[Any]] = {}
    for order_id, _, _, _, _, product_id, quantity, _, amount in lines_out:
        if order_id in completed:
            product = by_product.setdefault(product_id, [set(), 0, 0])
            product[0].add(order_id)
            product[1] += quantity
            product[2] += amount
    reached = [0] * (len(_STAGES) + 1)
    stopped = [[0, 0, {}] for _ in reached]  # per last stage reached: [dropped, in flight, {reason: count}]
    for order in orders.values():
        stage = next(
            (5 - i for i, k in enumerate(("completed_at", "paid_at", "confirmed_at", "reserved_at")) if k in order), 1
        )
        reached[stage] += 1
        there = stopped[stage]
        if order["status"] in ("completed", "cancelled"):
            there[0] += 1
            if (reason := order.get("cancel_reason")) is not None:
                there[2][reason] = there[2].get(reason, 0) + 1
        else:
            there[1] += 1
    funnel = []
    for i, stage in enumerate(_STAGES):
        count = sum(reached[i + 1 :])
        before = stopped[i]  # the orders that reached the stage before this one and went no further
        previous, first = (funnel[-1][2] if funnel else None), (funnel[0][2] if funnel else count)
        conversion = round(count / previous, 4) if previous else None
        funnel.append((i + 1, stage, count, *before, conversion, round(count / first, 4) if first else None))
    minutes: dict[datetime, list[int]] = {}
    for _, at, _, _, status, _, amount in attempts:
        minute = minutes.setdefault(at.replace(second=0, microsecond=0), [0, 0, 0])
        minute[0] += 1
        minute[1] += status == "FAILED"
        minute[2] += amount if status == "COMPLETED" else 0
    payments, total = [], [0, 0]
    for minute_at, (tried, failed, charged) in sorted(minutes.items()):
        total[0], total[1] = total[0] + tried, total[1] + failed
        payments.append((minute_at, tried, failed, failed / tried, charged, *total, total[1] / total[0]))
    return {
        "orders": list(orders.items()),
        "notifications": notifications,
        "order_lines": lines_out,
        "saga_timeline": timeline,
        "inventory_history": history,
        "inventory": inventory,
        "revenue": list(revenue.items()),
        "revenue_by_product": list(by_product.items()),
        "revenue_by_user": list(by_user.items()),
        "funnel": funnel,
        "payment_attempts": attempts,
        "payments": payments,
    }


#: CPU seconds of this process (every DuckDB thread included) per measurement, by name: on a shared
#: machine other work stretches the wall-clock figures but not these.
_CPU: dict[str, list[float]] = {}


def _timed(action: Callable[[], object], name: str = "") -> tuple[float, object]:
    """Run ``action``: its wall-clock seconds and its result; its CPU seconds go to ``_CPU[name]``."""
    cpu = time.process_time()
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    if name:
        _CPU.setdefault(name, []).append(time.process_time() - cpu)
    return seconds, result


#: Which phase of :func:`profile` an operator's time counts to, by operator type (the rest is ``compute``).
_PHASES = {"ORDER_BY": "sort", "CREATE_TABLE_AS": "materialise", "INSERT": "materialise"}


def _operator_times(node: dict[str, Any], phases: dict[str, float], copy: bool) -> None:
    """Add each operator's time under ``node`` (a DuckDB JSON profile) to its phase in ``phases``;
    in the copy from the store, the scan is ``sqlite_scan`` and the projections are ``json``."""
    kind = node.get("operator_type") or ""
    if kind:
        phase = _PHASES.get(kind, "compute")
        if copy and kind == "TABLE_SCAN":
            phase = "sqlite_scan"
        elif copy and kind == "PROJECTION":
            phase = "json"
        phases[phase] = phases.get(phase, 0.0) + float(node.get("operator_timing") or 0.0)
    for child in node.get("children", []):
        _operator_times(child, phases, copy)


def profile(path: Path, work_dir: Path) -> dict[str, dict[str, float]]:
    """Where a rebuild and a read of every relation spend their time (see the module docstring):
    ``{statement: {"wall": s, "cpu": s, <phase>: s, …}}``, with ``rebuild``, ``read_all`` and
    ``total`` summed over the statements and phases."""
    output = work_dir / "profile.json"
    con = duckdb.connect(
        config={
            "extension_directory": str(work_dir / "extensions"),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "preserve_insertion_order": False,
        }
    )
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{output}'")
    duckdb_extensions.import_extension("sqlite", con=con)
    con.execute("LOAD sqlite")
    con.execute(f"ATTACH '{path}' AS store (TYPE sqlite, READ_ONLY)")
    con.execute(MONEY)
    statements = [
        ("copy", statement) for statement in create_typed_events("main.events", "(SELECT * FROM store.events)")
    ]
    statements += [
        (r.name, f"CREATE TABLE main.{r.name} AS {r.render({'events': 'main.events'})}")
        for r in RELATIONS.values()
        if r.key
    ]
    inputs = {name: f"main.{name}" for name in ("events", *RELATIONS)}
    views = [f"CREATE VIEW main.{r.name} AS {r.render(inputs)}" for r in RELATIONS.values() if not r.key]
    found: dict[str, dict[str, float]] = {}

    def measure(name: str, action: Callable[[], object], copy: bool = False) -> None:
        cpu, started = time.process_time(), time.perf_counter()
        action()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        entry = found.setdefault(name, {})
        entry["wall"] = entry.get("wall", 0.0) + wall
        entry["cpu"] = entry.get("cpu", 0.0) + cpu
        phases: dict[str, float] = {}
        _operator_times(json.loads(output.read_text()), phases, copy)
        share = cpu / (sum(phases.values()) or 1.0)
        for phase, seconds in phases.items():
            entry[phase] = entry.get(phase, 0.0) + seconds * share

    for name, statement in statements:
        measure(f"rebuild:{name}", lambda statement=statement: con.execute(statement), copy=name == "copy")
    for view in views:
        con.execute(view)
    for name in ("events", *RELATIONS):
        order_by = RELATIONS[name].order_by if name in RELATIONS else "position"
        measure(
            f"read:{name}",
            lambda name=name, order_by=order_by: con.sql(
                f"SELECT * FROM main.{name} ORDER BY {order_by}"
            ).to_arrow_table(),
        )
    con.close()
    totals: dict[str, dict[str, float]] = {"rebuild": {}, "read_all": {}, "total": {}}
    for name, entry in found.items():
        for part in ("rebuild" if name.startswith("rebuild:") else "read_all", "total"):
            for key, seconds in entry.items():
                totals[part][key] = totals[part].get(key, 0.0) + seconds
    return {name: {k: round(v, 3) for k, v in entry.items()} for name, entry in {**found, **totals}.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the store (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best counts (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic shop (default 7)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "eventlab-bench",
        help="where generated stores are kept between runs",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--profile", action="store_true", help="also profile a rebuild and a read of every relation, per phase"
    )
    args = parser.parse_args(argv)
    if args.events < 1_000:
        parser.error("--events must be at least 1000")

    load = os.getloadavg()[0]
    cached, state = cached_store(args.events, args.seed, args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="eventlab-bench-") as tmp:
        work = Path(tmp) / "events.db"
        shutil.copyfile(cached, work)

        rebuilds = []
        open_s, projections = _timed(lambda: Projections(work, attach=True))
        assert isinstance(projections, Projections)
        with projections:
            for _ in range(args.repeat):
                rebuilds.append(_timed(projections.rebuild, "full_rebuild")[0])
            reads = [
                _timed(
                    lambda: [projections.relation(n).to_arrow_table() for n in projections.names], "read_all_relations"
                )[0]
                for _ in range(args.repeat)
            ]

            shop = _Shop(work, args.seed, state)
            incrementals = []
            for _ in range(args.repeat):
                shop.write(1_000)
                seconds, applied = _timed(projections.refresh, "incremental_1k")
                assert applied == 1_000, applied
                incrementals.append(seconds)
            shop.store.close()

            folds = []
            for _ in range(args.repeat):
                seconds, folded = _timed(lambda: python_fold(work), "python_fold")
                folds.append(seconds)
            assert isinstance(folded, dict)
            counts = {n: projections.relation(n).count("*").fetchone()[0] for n in RELATIONS}  # type: ignore[index]
            folded_counts = {n: len(rows) for n, rows in folded.items()}
            assert folded_counts == counts, {n: (c, counts[n]) for n, c in folded_counts.items() if c != counts[n]}
            duck = dict(projections.sql("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
            python: dict[str, int] = {}
            for _, order in folded["orders"]:
                python[order["status"]] = python.get(order["status"], 0) + 1
            assert duck == python, (duck, python)
            funnel = projections.sql("SELECT step, orders, dropped, in_flight FROM funnel ORDER BY step").fetchall()
            assert funnel == [row[:1] + row[2:5] for row in folded["funnel"]], (funnel, folded["funnel"])
            details = dict(projections.sql("SELECT detail, count(*) FROM saga_timeline GROUP BY detail").fetchall())
            assert details == Counter(row[6] for row in folded["saga_timeline"]), "saga_timeline.detail differs"
        profiled = profile(work, Path(tmp)) if args.profile else None

    result = {
        "events": args.events,
        "full_rebuild_s": round(min(rebuilds), 3),
        "incremental_1k_s": round(min(incrementals), 4),
        "python_fold_s": round(min(folds), 3),
        "read_all_relations_s": round(min(reads), 3),
        "rebuild_and_read_all_s": round(min(rebuilds) + min(reads), 3),
        "speedup_vs_python": round(min(folds) / (min(rebuilds) + min(reads)), 1),
        "speedup_rebuild_only": round(min(folds) / min(rebuilds), 1),
        "open_s": round(open_s, 3),
        "cpu_s": {name: round(min(seconds), 3) for name, seconds in _CPU.items()},
        "speedup_vs_python_cpu": round(
            min(_CPU["python_fold"]) / (min(_CPU["full_rebuild"]) + min(_CPU["read_all_relations"])), 1
        ),
        "median_s": {
            "full_rebuild_s": round(statistics.median(rebuilds), 3),
            "read_all_relations_s": round(statistics.median(reads), 3),
            "python_fold_s": round(statistics.median(folds), 3),
            "incremental_1k_s": round(statistics.median(incrementals), 4),
        },
        "runs": {
            "full_rebuild_s": [round(x, 3) for x in rebuilds],
            "incremental_1k_s": [round(x, 4) for x in incrementals],
            "read_all_relations_s": [round(x, 3) for x in reads],
            "python_fold_s": [round(x, 3) for x in folds],
        },
        "store_mb": round(cached.stat().st_size / 2**20, 1),
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "duckdb": duckdb.__version__,
    }
    if profiled is not None:
        result["profile_s"] = profiled
    if args.json:
        print(json.dumps(result))
        return 0
    print(text_rows((k, v) for k, v in result.items() if k != "profile_s"))
    if profiled is not None:
        print(text_rows((name, " ".join(f"{k} {v}" for k, v in entry.items())) for name, entry in profiled.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

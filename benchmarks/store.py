"""eventlab's event store next to the ``eventsourcing`` library (9.5, its SQLite persistence), doing
the same work in the same run at the same durability (WAL, ``synchronous=NORMAL``):

- append one event per transaction (a new stream each, as a command creating an aggregate);
- append batches of 100 events per transaction;
- replay aggregates of 5 events each (read the stream, fold it; no cache, no snapshots), one by one:
  eventlab's ``load`` against eventsourcing's ``repository.get``, the like-for-like figure;
- replay the same aggregates the way eventlab's services load many at once (``load_many``, 100 streams
  per call, one query each), against the same one-by-one eventsourcing figure: eventsourcing has no
  batched read of several aggregates, so this ratio compares eventlab's batched path with its only one.

Ratios are given by wall-clock time (``ratio_*``) and by CPU time of the process (``cpu_ratio_*``;
both sides run in one thread, and their SQLite writes' system time counts too), the steadier
measure where other work shares the machine. With ``--runs N`` every figure is the median of N runs
(each in new files), and the load average is printed before each run.

    pip install -e '.[bench]'
    python benchmarks/store.py            # a table
    python benchmarks/store.py --runs 3   # medians of three runs
    python benchmarks/store.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool

from eventlab.events import StockAdded
from eventlab.services import inventory
from eventlab.services.runtime import load, load_many
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.tables import text_rows


class Stock(Aggregate):
    """The eventsourcing twin of eventlab's stock stream: units added."""

    @event("Created")
    def __init__(self, product_id: str, quantity: int) -> None:
        self.product_id = product_id
        self.available = quantity

    @event("Added")
    def add(self, quantity: int) -> None:
        self.available += quantity


def _normal_sync(create: Callable[[SQLiteConnectionPool], SQLiteConnection]) -> Any:
    """eventsourcing opens its connections with SQLite's default ``synchronous=FULL``; eventlab uses NORMAL."""

    def create_normal(pool: SQLiteConnectionPool) -> SQLiteConnection:
        connection = create(pool)
        connection._sqlite_conn.execute("PRAGMA synchronous=NORMAL")
        return connection

    return create_normal


#: Per measurement, ``count`` / CPU seconds of this process: both sides run in one thread, so on a
#: shared machine these ratios hold steady while the wall-clock ones move with the other work.
CPU_RATES: dict[str, float] = {}


def rate(count: int, work: Callable[[], object], name: str = "") -> float:
    """``count`` / seconds ``work`` took; ``count`` / its CPU seconds goes to ``CPU_RATES[name]``."""
    cpu = time.process_time()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    if name:
        CPU_RATES[name] = count / max(time.process_time() - cpu, 1e-9)
    return count / seconds


def bench_eventlab(path: Path, singles: int, batches: int, replays: int) -> dict[str, float]:
    store = SqliteEventStore(path)
    ids = [f"P-{uuid.uuid4().hex[:12]}" for _ in range(max(singles, replays))]

    def one_per_transaction() -> None:
        for product_id in ids[:singles]:
            store.append([NewEvent(StockAdded(product_id=product_id, quantity=1), 1)])

    def in_batches() -> None:
        for _ in range(batches):
            store.append(
                [NewEvent(StockAdded(product_id=f"B-{uuid.uuid4().hex[:12]}", quantity=1), 1) for _ in range(100)]
            )

    replayed = [f"R-{product_id}" for product_id in ids[:replays]]
    for start in range(0, len(replayed), 100):
        store.append(
            [
                NewEvent(StockAdded(product_id=p, quantity=1), v)
                for p in replayed[start : start + 100]
                for v in range(1, 6)
            ]
        )

    def replay() -> None:
        for product_id in replayed:
            stream = load(store, ("stock", product_id), inventory.evolve_stock)
            assert stream.state is not None and stream.state.available == 5

    evolvers = {"stock": inventory.evolve_stock}
    keys = [("stock", product_id) for product_id in replayed]

    def replay_batched() -> None:
        for start in range(0, len(keys), 100):
            for stream in load_many(store, keys[start : start + 100], evolvers).values():
                assert isinstance(stream.state, inventory.Stock) and stream.state.available == 5

    result = {
        "append_1_events_per_s": rate(singles, one_per_transaction, "eventlab_append_1"),
        "append_100_events_per_s": rate(batches * 100, in_batches, "eventlab_append_100"),
        "replay_5_aggregates_per_s": rate(replays, replay, "eventlab_replay_5"),
        "replay_5_batched_100_aggregates_per_s": rate(replays, replay_batched, "eventlab_replay_5_batched_100"),
    }
    store.close()
    return result


_create_connection = SQLiteConnectionPool._create_connection


def bench_eventsourcing(path: Path, singles: int, batches: int, replays: int) -> dict[str, float]:
    SQLiteConnectionPool._create_connection = _normal_sync(_create_connection)  # type: ignore[method-assign]
    app: Application = Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})

    def one_per_transaction() -> None:
        for _ in range(singles):
            app.save(Stock("P", 1))

    def in_batches() -> None:
        for _ in range(batches):
            app.save(*[Stock("B", 1) for _ in range(100)])

    replayed = []
    for _ in range(0, replays, 100):
        stocks = [Stock("R", 1) for _ in range(min(100, replays - len(replayed)))]
        for stock in stocks:
            for _ in range(4):
                stock.add(1)
        app.save(*stocks)
        replayed += [stock.id for stock in stocks]

    def replay() -> None:
        for stock_id in replayed:
            stock = app.repository.get(stock_id)
            assert stock.available == 5

    result = {
        "append_1_events_per_s": rate(singles, one_per_transaction, "eventsourcing_append_1"),
        "append_100_events_per_s": rate(batches * 100, in_batches, "eventsourcing_append_100"),
        "replay_5_aggregates_per_s": rate(replays, replay, "eventsourcing_replay_5"),
    }
    # eventsourcing has no batched read of several aggregates: the batched figure is set against this one.
    result["replay_5_batched_100_aggregates_per_s"] = result["replay_5_aggregates_per_s"]
    CPU_RATES["eventsourcing_replay_5_batched_100"] = CPU_RATES["eventsourcing_replay_5"]
    return result


#: The measurements, by name: the one-by-one replay is the like-for-like headline; the batched one is
#: eventlab's ``load_many`` (100 streams a call) against eventsourcing's ``repository.get`` one by one.
MEASURES = ("append_1", "append_100", "replay_5", "replay_5_batched_100")
UNITS = {"append_1": "events", "append_100": "events", "replay_5": "aggregates", "replay_5_batched_100": "aggregates"}


def run_once(singles: int, batches: int, replays: int) -> dict[str, float]:
    """One run of both libraries in new files: events (or aggregates) per second, wall and CPU, and ratios."""
    CPU_RATES.clear()
    with tempfile.TemporaryDirectory(prefix="eventlab-store-bench-") as tmp:
        ours = bench_eventlab(Path(tmp) / "eventlab.db", singles, batches, replays)
        theirs = bench_eventsourcing(Path(tmp) / "eventsourcing.db", singles, batches, replays)
    result: dict[str, float] = {}
    for name in MEASURES:
        key = f"{name}_{UNITS[name]}_per_s"
        result[f"eventlab_{key}"] = ours[key]
        result[f"eventsourcing_{key}"] = theirs[key]
        result[f"eventlab_cpu_{key}"] = CPU_RATES[f"eventlab_{name}"]
        result[f"eventsourcing_cpu_{key}"] = CPU_RATES[f"eventsourcing_{name}"]
        result[f"ratio_{name}"] = ours[key] / theirs[key]
        result[f"cpu_ratio_{name}"] = CPU_RATES[f"eventlab_{name}"] / CPU_RATES[f"eventsourcing_{name}"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=20_000, help="one-event transactions (default 20k)")
    parser.add_argument("--batches", type=int, default=500, help="100-event transactions (default 500)")
    parser.add_argument("--replays", type=int, default=10_000, help="5-event aggregates replayed (default 10k)")
    parser.add_argument("--runs", type=int, default=1, help="runs; every figure is their median (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    loads, runs = [], []
    for _ in range(args.runs):
        loads.append(round(os.getloadavg()[0], 2))  # two cores shared with other work: say how busy they were
        runs.append(run_once(args.singles, args.batches, args.replays))
    result: dict[str, object] = {
        "runs": args.runs,
        "load_1m": loads if args.runs > 1 else loads[0],
        "note": "replay_5_batched_100: eventlab load_many 100 streams a call vs eventsourcing repository.get "
        "one by one (it has no batched read); replay_5 is the like-for-like figure",
    }
    for key in runs[0]:
        median = statistics.median(run[key] for run in runs)
        result[key] = round(median, 2) if "ratio" in key else round(median)
    print(json.dumps(result) if args.json else text_rows(result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

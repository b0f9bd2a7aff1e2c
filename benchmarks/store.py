"""eventlab's event store next to the ``eventsourcing`` library (9.5, its SQLite persistence), doing
the same work in the same run at the same durability (WAL, ``synchronous=NORMAL``):

- append one event per transaction (a new stream each, as a command creating an aggregate);
- append batches of 100 events per transaction;
- replay aggregates of 5 events each (read the stream, fold it; no cache, no snapshots), one by one:
  eventlab's ``load`` against eventsourcing's ``repository.get``, the like-for-like figure;
- the floor under the first: plain ``sqlite3`` (no eventlab code) committing the same rows the way
  eventlab commits a one-event append (one INSERT outside a transaction: a transaction of its own) into
  a store of eventlab's current schema, so ``cpu_ratio_ceiling_append_1`` is the most any Python on top
  could reach against eventsourcing;
- the WAL pages each one-event commit writes (``wal_pages_per_commit_*``: 2,000 commits into new files
  with automatic checkpoints off, so the WAL only grows): eventlab's table and its keys, indexes and lag
  counts, against eventsourcing's one table with one key;
- replay the same aggregates the way eventlab's services load many at once (``load_many``, 100 streams
  per call, one query each), against the same one-by-one eventsourcing figure: eventsourcing has no
  batched read of several aggregates, so this ratio compares eventlab's batched path with its only one;
- where an aggregate of the one-by-one replay goes (``eventlab_cpu_us_replay_5_*``, CPU µs): the SQLite
  fetch (the same query from plain ``sqlite3``), decoding (the store's ``read_stream_events`` less the
  fetch) and the fold (``load`` less ``read_stream_events``).

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
import contextlib
import json
import os
import sqlite3
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
from eventlab.ids import new_id
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


def _normal_sync(create: Callable[[SQLiteConnectionPool], SQLiteConnection], *pragmas: str) -> Any:
    """eventsourcing opens its connections with SQLite's default ``synchronous=FULL``; eventlab uses NORMAL.
    ``pragmas``: more to run on each connection it opens."""

    def create_normal(pool: SQLiteConnectionPool) -> SQLiteConnection:
        connection = create(pool)
        for pragma in ("PRAGMA synchronous=NORMAL", *pragmas):
            connection._sqlite_conn.execute(pragma)
        return connection

    return create_normal


#: A measurement's work: how many events (or aggregates) it handles, and the function that does it.
Work = tuple[int, Callable[[], object]]


def measure(count: int, work: Callable[[], object]) -> tuple[float, float]:
    """(``count`` / wall seconds, ``count`` / CPU seconds of this process) of one call of ``work``.

    Both libraries run in this one thread, so on a shared machine the CPU figures hold steadier than
    the wall-clock ones, which move with the other work.
    """
    cpu = time.process_time()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return count / seconds, count / max(time.process_time() - cpu, 1e-9)


def eventlab_work(path: Path, singles: int, batches: int, replays: int) -> tuple[dict[str, Work], SqliteEventStore]:
    """eventlab's measurements, on a new store at ``path`` already holding the aggregates to replay."""
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

    def read_only() -> None:  # replay_5 without the fold: the store's share of an aggregate's cost
        for product_id in replayed:
            store.read_stream_events("stock", product_id)

    fetch = (
        "SELECT version, event_type, data FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND version > ?"
        " ORDER BY version"
    )

    def fetch_only() -> None:  # read_only's rows from plain sqlite3, not decoded: the floor under it
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
            for product_id in replayed:
                raw.execute(fetch, ("stock", product_id, 0)).fetchall()

    evolvers = {"stock": inventory.evolve_stock}
    keys = [("stock", product_id) for product_id in replayed]

    def replay_batched() -> None:
        for start in range(0, len(keys), 100):
            for stream in load_many(store, keys[start : start + 100], evolvers).values():
                assert isinstance(stream.state, inventory.Stock) and stream.state.available == 5

    work: dict[str, Work] = {
        "append_1": (singles, one_per_transaction),
        "append_100": (batches * 100, in_batches),
        "replay_5": (replays, replay),
        "replay_5_batched_100": (replays, replay_batched),
        "read_5": (replays, read_only),
        "fetch_5": (replays, fetch_only),
    }
    return work, store


def sqlite_floor_work(path: Path, singles: int) -> tuple[Work, sqlite3.Connection]:
    """Plain ``sqlite3``: rows made beforehand, committed one per transaction into a new eventlab store at
    the same settings (WAL, ``synchronous=NORMAL``): the floor under eventlab's one-event appends, each an
    INSERT on its own as eventlab runs it (no ``BEGIN IMMEDIATE`` … ``COMMIT`` round it)."""
    SqliteEventStore(path).close()  # the schema, its indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    data = StockAdded(product_id="P", quantity=1).model_dump_json()
    rows = [
        (new_id(), "stock", f"F-{uuid.uuid4().hex[:12]}", 1, "StockAdded", 1, data, "{}", "2026-01-01 00:00:00.000000")
        for _ in range(singles)
    ]
    insert = (
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,"
        " metadata, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)"
    )

    def one_per_transaction() -> None:
        for row in rows:
            conn.execute(insert, row)

    return (singles, one_per_transaction), conn


#: SQLite's default page size, which both libraries' files have.
PAGE_SIZE = 4096


def _wal_pages(wal: Path, commits: int, commit: Callable[[], object]) -> float:
    """The pages ``commits`` calls of ``commit`` add to the WAL file ``wal`` (its writer checkpoints never),
    per call: each frame is a page and a 24-byte header, after the file's 32-byte header."""
    before = wal.stat().st_size if wal.exists() else 0
    for _ in range(commits):
        commit()
    return (wal.stat().st_size - max(before, 32)) / (PAGE_SIZE + 24) / commits


def wal_pages_per_commit(tmp: Path, commits: int = 2000) -> dict[str, float]:
    """WAL pages written per one-event commit by eventlab, by eventsourcing and by the plain-``sqlite3``
    floor, each into a new file whose writer never checkpoints."""
    no_checkpoints = "PRAGMA wal_autocheckpoint=0"
    store = SqliteEventStore(tmp / "wal-eventlab.db")
    store._conn().execute(no_checkpoints)  # this thread's connection: the one the appends use
    ids = iter([f"W-{uuid.uuid4().hex[:12]}" for _ in range(commits)])
    wal = Path(f"{store.path}-wal")
    ours = _wal_pages(wal, commits, lambda: store.append([NewEvent(StockAdded(product_id=next(ids), quantity=1), 1)]))
    store.close()
    floor, conn = sqlite_floor_work(tmp / "wal-floor.db", commits)
    conn.execute(no_checkpoints)
    floor_pages = _wal_pages(tmp / "wal-floor.db-wal", 1, floor[1]) / commits
    conn.close()
    SQLiteConnectionPool._create_connection = _normal_sync(_create_connection, no_checkpoints)  # type: ignore[method-assign]
    path = tmp / "wal-eventsourcing.db"
    app: Application = Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})
    app.save(Stock("P", 1))  # the tables exist before the count starts
    theirs = _wal_pages(Path(f"{path}-wal"), commits, lambda: app.save(Stock("P", 1)))
    app.close()
    return {
        "eventlab_wal_pages_per_commit_append_1": ours,
        "eventsourcing_wal_pages_per_commit_append_1": theirs,
        "sqlite_floor_wal_pages_per_commit_append_1": floor_pages,
    }


_create_connection = SQLiteConnectionPool._create_connection


def eventsourcing_work(path: Path, singles: int, batches: int, replays: int) -> dict[str, Work]:
    """eventsourcing's measurements, on a new database at ``path`` already holding the aggregates to replay.

    It has no batched read of several aggregates: ``replay_5_batched_100`` is its one-by-one
    ``repository.get`` again, measured next to eventlab's batched loads.
    """
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

    return {
        "append_1": (singles, one_per_transaction),
        "append_100": (batches * 100, in_batches),
        "replay_5": (replays, replay),
        "replay_5_batched_100": (replays, replay),
    }


#: The measurements, by name: the one-by-one replay is the like-for-like headline; the batched one is
#: eventlab's ``load_many`` (100 streams a call) against eventsourcing's ``repository.get`` one by one.
MEASURES = ("append_1", "append_100", "replay_5", "replay_5_batched_100")
UNITS = {"append_1": "events", "append_100": "events", "replay_5": "aggregates", "replay_5_batched_100": "aggregates"}


def run_once(singles: int, batches: int, replays: int) -> dict[str, float]:
    """One run of both libraries in new files: per measurement, events (or aggregates) per second, wall
    and CPU, and the ratios. The two libraries' runs of a measurement follow each other, so the load of
    the machine changes as little as it can between the figures a ratio compares."""
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="eventlab-store-bench-") as tmp:
        ours, store = eventlab_work(Path(tmp) / "eventlab.db", singles, batches, replays)
        theirs = eventsourcing_work(Path(tmp) / "eventsourcing.db", singles, batches, replays)
        floor, conn = sqlite_floor_work(Path(tmp) / "floor.db", singles)
        try:
            for name in MEASURES:
                key = f"{name}_{UNITS[name]}_per_s"
                wall, cpu = measure(*ours[name])
                their_wall, their_cpu = measure(*theirs[name])
                result |= {f"eventlab_{key}": wall, f"eventsourcing_{key}": their_wall}
                result |= {f"eventlab_cpu_{key}": cpu, f"eventsourcing_cpu_{key}": their_cpu}
                result |= {f"ratio_{name}": wall / their_wall, f"cpu_ratio_{name}": cpu / their_cpu}
                if name == "append_1":
                    floor_cpu = measure(*floor)[1]
                    result["sqlite_floor_cpu_append_1_events_per_s"] = floor_cpu
                    result["cpu_ratio_ceiling_append_1"] = floor_cpu / their_cpu
                if name == "replay_5":  # an aggregate's CPU µs: the SQLite fetch, decoding, and the rest (the fold)
                    fetch_us, read_us = (1e6 / measure(*ours[part])[1] for part in ("fetch_5", "read_5"))
                    result["eventlab_cpu_us_replay_5_fetch"] = fetch_us
                    result["eventlab_cpu_us_replay_5_decode"] = read_us - fetch_us
                    result["eventlab_cpu_us_replay_5_fold"] = 1e6 / cpu - read_us
        finally:
            store.close()
            conn.close()
        result |= wal_pages_per_commit(Path(tmp))
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
        result[key] = round(median, 2) if "ratio" in key or "_us_" in key or "pages" in key else round(median)
    print(json.dumps(result) if args.json else text_rows(result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

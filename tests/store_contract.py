"""The event store contract's backends: each gives a fresh store and what the contract needs around it.

``tests/test_store_contract.py`` runs one suite against every backend through the ``store_backend``
fixture (memory, SQLite, PostgreSQL) and the multi-process tests through ``shared_store_backend``
(SQLite, PostgreSQL: the memory store lives in one process). A :class:`Backend` gives

- ``store``: a store that waits for another writer's lock well under a second;
- ``reopen``: a picklable factory of another store on the same database (for writer processes);
- ``hold_write_lock``: a context manager factory: while entered, another writer holds the write lock.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eventlab.errors import ConcurrencyError
from eventlab.events import StockAdded
from eventlab.store import EventStore, MemoryEventStore, NewEvent, SqliteEventStore

BUSY_TIMEOUT = 0.1


@dataclass
class Backend:
    name: str
    store: EventStore
    reopen: Callable[[], EventStore]
    hold_write_lock: Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def backend(name: str, tmp_path: Path, request) -> Iterator[Backend]:
    """A fresh store of backend ``name``, closed afterwards."""
    if name == "memory":
        store: EventStore = MemoryEventStore(busy_timeout=BUSY_TIMEOUT)
        opened = Backend(name, store, lambda: store, functools.partial(_hold_memory_lock, store))
    elif name == "sqlite":
        path = tmp_path / "events.db"
        opened = Backend(
            name,
            SqliteEventStore(path, busy_timeout=BUSY_TIMEOUT),
            functools.partial(SqliteEventStore, path),
            functools.partial(_hold_sqlite_lock, path),
        )
    else:
        from eventlab.store.postgres import PostgresEventStore

        url = request.getfixturevalue("postgres_store_url")
        store = PostgresEventStore(url, busy_timeout=BUSY_TIMEOUT)
        opened = Backend(
            name, store, functools.partial(PostgresEventStore, url), functools.partial(_hold_postgres_lock, store)
        )
    try:
        yield opened
    finally:
        opened.store.close()


@contextlib.contextmanager
def held_in_another_thread(resource: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    """While entered, another thread holds ``resource`` (a lock, a store's transaction)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with resource:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


def _hold_memory_lock(store: MemoryEventStore) -> contextlib.AbstractContextManager[None]:
    """Another thread holds the memory store's lock."""
    return held_in_another_thread(store.lock)


@contextlib.contextmanager
def _hold_sqlite_lock(path: Path) -> Iterator[None]:
    """Another connection holds SQLite's write lock (``BEGIN IMMEDIATE``)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@contextlib.contextmanager
def _hold_postgres_lock(store) -> Iterator[None]:
    """Another session holds the store's advisory write lock."""
    import psycopg

    with psycopg.connect(store._conninfo, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (store.write_lock,))
        try:
            yield
        finally:
            other.execute("SELECT pg_advisory_unlock(%s)", (store.write_lock,))


# --- what writer processes run (module level, so that "spawn" can import them) --------------------------


def added(product_id="P001", quantity=1):
    return StockAdded(product_id=product_id, quantity=quantity)


def append_many(store_factory, writer, count):
    """Append ``count`` events to one shared stream, retrying conflicts (a separate process)."""
    store = store_factory()
    written = 0
    while written < count:
        version = len(store.read_stream("stock", "P-shared")) + 1
        try:
            store.append([NewEvent(added("P-shared"), version, {"writer": str(writer)})])
            written += 1
        except ConcurrencyError:
            continue
    store.close()


def append_own_streams(store_factory, writer, appends, batch, start):
    """Append ``appends`` batches of ``batch`` events, each event to a new stream of this writer: no
    conflicts, so the writers really run side by side. Starts when every writer is ready (``start``)."""
    store = store_factory()
    start.wait(60)
    for n in range(appends):
        store.append([NewEvent(added(f"W{writer}-{n}-{i}"), 1) for i in range(batch)])
    store.close()


def hold_lease(store_factory, name, holding):
    """Take the lease ``name``, say so (``holding``) and hold it until killed (a separate process)."""
    store = store_factory()
    lease = store.lease(name)
    assert lease.acquire()
    holding.set()
    threading.Event().wait(120)

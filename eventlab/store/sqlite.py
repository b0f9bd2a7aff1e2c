"""The embedded event store: one SQLite file in WAL mode."""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from eventlab.errors import ConcurrencyError, StoreError
from eventlab.ids import new_id
from eventlab.store.base import EventRecord, EventStore, NewEvent, StoredEvent

__all__ = ["SqliteEventStore", "SCHEMA", "open_in_this_process", "verify_event_store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (event_type, position);
CREATE INDEX IF NOT EXISTS events_by_correlation ON events (json_extract(metadata, '$.correlation_id'));
CREATE TABLE IF NOT EXISTS processed (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS eventlab (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO eventlab VALUES ('schema_version', '1');
"""

_COLUMNS = (
    "position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata, recorded_at"
)

Clock = Callable[[], datetime]

# (begin, commit, rollback) for an append on its own, and for one inside transaction().
_TOP_LEVEL = (("BEGIN IMMEDIATE",), ("COMMIT",), ("ROLLBACK",))
_NESTED = (("SAVEPOINT append",), ("RELEASE append",), ("ROLLBACK TO append", "RELEASE append"))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _row_to_event(row: tuple) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        event_id=row[1],
        aggregate_type=row[2],
        aggregate_id=row[3],
        version=row[4],
        event_type=row[5],
        schema_version=row[6],
        data=json.loads(row[7]),
        metadata=json.loads(row[8]),
        recorded_at=datetime.fromisoformat(row[9]).replace(tzinfo=UTC),
    )


_stores: weakref.WeakSet[SqliteEventStore] = weakref.WeakSet()


def open_in_this_process(path: str | Path) -> bool:
    """Whether this process holds a ``sqlite3`` connection to the store at ``path``.

    Another copy of the SQLite library in the same process (DuckDB's ``sqlite`` extension) must
    not open such a file: POSIX locks are per process, so the two copies cannot see each other's
    locks, and the second one resets the WAL index the first has mapped (a SIGBUS, or worse).
    """
    target = Path(path).resolve()
    return any(store._connections and store.path.resolve() == target for store in list(_stores))


def verify_event_store(path: Path) -> None:
    """Raise unless ``path`` is an eventlab store; opens it read-only, so nothing is written."""
    if not path.is_file():
        raise StoreError(f"no event store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("SELECT value FROM eventlab WHERE key = 'schema_version'").fetchone()
    finally:
        conn.close()


class SqliteEventStore(EventStore):
    """Events in one SQLite file; safe for many threads and processes.

    Every write runs in ``BEGIN IMMEDIATE``: SQLite has one writer at a time, so positions are in
    commit order. Each thread gets its own connection.

    Example:
        >>> store = SqliteEventStore("/tmp/doc-shop/events.db")
        >>> store.head() >= 0
        True
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        clock: Clock = _utcnow,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._new_id = id_factory
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Threads of one process queue here instead of in SQLite's busy handler, which sleeps
        # up to 100 ms between tries; other processes still wait on SQLite's lock.
        self._write_lock = threading.Lock()
        _stores.add(self)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn().executescript(SCHEMA)
            else:
                verify_event_store(self.path)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{self.path} is not an eventlab event store: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteEventStore({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def append(self, events: Sequence[NewEvent], *, processed: tuple[str, str] | None = None) -> list[StoredEvent]:
        conn = self._conn()
        recorded_at = self._clock().astimezone(UTC)
        now = recorded_at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        rows = [
            (
                self._new_id(),
                new.event.aggregate_type,
                new.event.aggregate_id,
                new.version,
                new.event.event_type,
                new.event.schema_version,
                new.event.model_dump_json(),
                json.dumps(new.metadata, separators=(",", ":")),
                now,
            )
            for new in events
        ]
        if getattr(self._local, "in_transaction", False):
            positions = self._insert(conn, rows, processed, _NESTED)
        else:
            with self._write_lock:
                positions = self._insert(conn, rows, processed, _TOP_LEVEL)
        return [
            StoredEvent(position, row[0], *row[1:6], new.event.model_dump(mode="json"), new.metadata, recorded_at)
            for position, row, new in zip(positions, rows, events, strict=False)
        ]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            self._local.in_transaction = True
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._local.in_transaction = False

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        rows: list[tuple],
        processed: tuple[str, str] | None,
        statements: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    ) -> list[int]:
        """Insert ``rows`` (and the marker); return their positions, or [] for a redelivery."""
        begin, commit, rollback = statements

        def run(sql: tuple[str, ...]) -> None:
            for statement in sql:
                conn.execute(statement)

        run(begin)
        try:
            if processed is not None:
                cur = conn.execute("INSERT OR IGNORE INTO processed VALUES (?, ?)", processed)
                if cur.rowcount == 0:
                    run(rollback)
                    return []
            stored = []
            for row in rows:
                cur = conn.execute(
                    "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,"
                    " schema_version, data, metadata, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    row,
                )
                stored.append(cur.lastrowid)
            run(commit)
        except sqlite3.IntegrityError as exc:
            run(rollback)
            raise ConcurrencyError(f"stream version already taken: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                run(rollback)
            raise
        return stored

    def read_stream(self, aggregate_type: str, aggregate_id: str, after_version: int = 0) -> list[StoredEvent]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND version > ?"
            " ORDER BY version",
            (aggregate_type, aggregate_id, after_version),
        )
        return [_row_to_event(row) for row in rows]

    def read_all(self, after: int = 0, limit: int | None = None) -> list[StoredEvent]:
        return [_row_to_event(row) for row in self.read_records(after, limit)]

    def read_records(self, after: int = 0, limit: int | None = None) -> list[EventRecord]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        return [EventRecord._make(row) for row in rows]

    def read_correlated(self, correlation_id: str) -> list[StoredEvent]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE json_extract(metadata, '$.correlation_id') = ? ORDER BY position",
            (correlation_id,),
        )
        return [_row_to_event(row) for row in rows]

    def head(self) -> int:
        return self._conn().execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]

    def is_processed(self, consumer: str, event_id: str) -> bool:
        row = (
            self._conn()
            .execute("SELECT 1 FROM processed WHERE consumer = ? AND event_id = ?", (consumer, event_id))
            .fetchone()
        )
        return row is not None

    def unprocessed(self, consumer: str, event_types: Iterable[str]) -> int:
        types = list(event_types)
        if not types:
            return 0
        marks = ",".join("?" * len(types))
        return (
            self._conn()
            .execute(
                f"SELECT count(*) FROM events e WHERE e.event_type IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM processed p WHERE p.consumer = ? AND p.event_id = e.event_id)",
                (*types, consumer),
            )
            .fetchone()[0]
        )

    def processed_count(self, consumer: str) -> int:
        query = "SELECT count(*) FROM processed WHERE consumer = ?"  # a range of the primary key
        return self._conn().execute(query, (consumer,)).fetchone()[0]

    def stream_ages(
        self, event_types: Sequence[str], after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, float]]:
        marks = ",".join("?" * len(event_types))
        rows = self._conn().execute(
            f"SELECT e.position, e.event_type, first.recorded_at, e.recorded_at FROM events e JOIN events first"
            " ON first.aggregate_type = e.aggregate_type AND first.aggregate_id = e.aggregate_id AND first.version = 1"
            f" WHERE e.event_type IN ({marks}) AND e.position > ? ORDER BY e.position LIMIT ?",
            (*event_types, after, limit),
        )
        iso = datetime.fromisoformat
        return [(position, kind, (iso(end) - iso(start)).total_seconds()) for position, kind, start, end in rows]

    def checkpoint(self, name: str) -> int:
        row = self._conn().execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else row[0]

    def set_checkpoint(self, name: str, position: int) -> None:
        self._conn().execute(
            "INSERT INTO checkpoints VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (name, position),
        )

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

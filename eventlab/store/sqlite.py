"""The embedded event store: one SQLite file in WAL mode."""

from __future__ import annotations

import base64
import hashlib
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
from eventlab.store.base import DeadLetter, EventRecord, EventStore, Headers, NewEvent, StoredEvent

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
CREATE TABLE IF NOT EXISTS dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer         TEXT    NOT NULL,
    source_topic     TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    digest           TEXT    NOT NULL,
    key              BLOB,
    value            BLOB,
    headers          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    event_id         TEXT,
    recorded_at      TEXT    NOT NULL,
    published_at     TEXT,
    replayed_at      TEXT,
    replays          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (consumer, source_topic, source_partition, source_offset, digest)
);
CREATE INDEX IF NOT EXISTS dead_letters_by_event ON dead_letters (event_id, consumer);
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

    # --- dead letters ----------------------------------------------------------------------

    @contextmanager
    def _dead_letter_access(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            if not write or getattr(self._local, "in_transaction", False):
                yield conn
                return
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"dead letters in {self.path}: {exc}") from exc

    def record_dead_letter(
        self,
        consumer: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        reason: str,
        event_id: str | None = None,
    ) -> DeadLetter:
        digest = _message_digest(key, value, headers)
        source = (consumer, topic, partition, offset, digest)
        now = self._clock().astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        with self._dead_letter_access(write=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dead_letters (consumer, source_topic, source_partition, source_offset, digest,"
                " key, value, headers, reason, event_id, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*source, key, value, _headers_to_json(headers), reason, event_id, now),
            )
            row = conn.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = ? AND source_topic = ?"
                " AND source_partition = ? AND source_offset = ? AND digest = ?",
                source,
            ).fetchone()
        return _row_to_dead_letter(row)

    def dead_letters(
        self,
        *,
        ids: Iterable[int] | None = None,
        topic: str | None = None,
        consumer: str | None = None,
        unpublished: bool = False,
    ) -> list[DeadLetter]:
        where, params = ["1 = 1"], []
        if ids is not None:
            wanted = [int(i) for i in ids]
            where.append(f"id IN ({','.join('?' * len(wanted)) or 'NULL'})")
            params.extend(wanted)
        if topic is not None:
            where.append("source_topic = ?")
            params.append(topic)
        if consumer is not None:
            where.append("consumer = ?")
            params.append(consumer)
        if unpublished:
            where.append("published_at IS NULL")
        with self._dead_letter_access() as conn:
            rows = conn.execute(
                f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} ORDER BY id", params
            ).fetchall()
        return [_row_to_dead_letter(row) for row in rows]

    def mark_dead_letter_published(self, dead_letter_id: int) -> None:
        now = self._clock().astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        with self._dead_letter_access(write=True) as conn:
            conn.execute(
                "UPDATE dead_letters SET published_at = ? WHERE id = ? AND published_at IS NULL", (now, dead_letter_id)
            )

    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        now = self._clock().astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        with self._dead_letter_access(write=True) as conn:
            conn.execute(
                "UPDATE dead_letters SET replayed_at = ?, replays = replays + 1 WHERE id = ?", (now, dead_letter_id)
            )

    def dead_letter_counts(self) -> dict[str, int]:
        with self._dead_letter_access() as conn:
            rows = conn.execute("SELECT consumer, count(*) FROM dead_letters GROUP BY consumer ORDER BY consumer")
            return dict(rows.fetchall())

    def pending(self, consumer: str, event_types: Iterable[str]) -> int:
        # 'relay' is eventlab.dlq.RELAY_CONSUMER: what it dead-lettered was never published
        types = list(event_types)
        if not types:
            return 0
        marks = ",".join("?" * len(types))
        with self._dead_letter_access() as conn:
            return conn.execute(
                f"SELECT count(*) FROM events e WHERE e.event_type IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM processed p WHERE p.consumer = ? AND p.event_id = e.event_id) AND NOT EXISTS "
                "(SELECT 1 FROM dead_letters d WHERE d.event_id = e.event_id AND d.consumer IN (?, 'relay'))",
                (*types, consumer, consumer),
            ).fetchone()[0]


_DEAD_LETTER_COLUMNS = (
    "id, consumer, source_topic, source_partition, source_offset, key, value, headers, reason, event_id,"
    " recorded_at, published_at, replayed_at, replays"
)


def _headers_to_json(headers: Headers) -> str:
    """Headers as JSON a person can read in SQL: text where it is UTF-8, else ``{"base64": ...}``."""
    rows: list[list[object]] = []
    for name, raw in headers:
        if raw is None:
            rows.append([name, None])
            continue
        try:
            rows.append([name, raw.decode("utf-8")])
        except UnicodeDecodeError:
            rows.append([name, {"base64": base64.b64encode(raw).decode("ascii")}])
    return json.dumps(rows, separators=(",", ":"))


def _headers_from_json(text: str) -> Headers:
    headers: Headers = []
    for name, raw in json.loads(text):
        if raw is None or isinstance(raw, str):
            headers.append((name, None if raw is None else raw.encode("utf-8")))
        else:
            headers.append((name, base64.b64decode(raw["base64"])))
    return headers


def _message_digest(key: bytes | None, value: bytes | None, headers: Headers) -> str:
    """Tells apart two messages at the same offset: the embedded broker keeps its log in memory,
    so after a restart an offset can name another message."""
    digest = hashlib.sha256()
    for part in (key, value, *(item for header in headers for item in (header[0].encode(), header[1]))):
        digest.update(b"-" if part is None else b"+%d:" % len(part))
        digest.update(part or b"")
    return digest.hexdigest()


def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _row_to_dead_letter(row: tuple) -> DeadLetter:
    return DeadLetter(
        id=row[0],
        consumer=row[1],
        topic=row[2],
        partition=row[3],
        offset=row[4],
        key=row[5],
        value=row[6],
        headers=_headers_from_json(row[7]),
        reason=row[8],
        event_id=row[9],
        recorded_at=_utc(row[10]),
        published_at=_utc(row[11]),
        replayed_at=_utc(row[12]),
        replays=row[13],
    )

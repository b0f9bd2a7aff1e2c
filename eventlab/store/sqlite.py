"""The embedded event store: one SQLite file in WAL mode.

Opening a store checks its layout before it writes anything: an empty file becomes a new store,
a store of an older schema version is migrated in one transaction, and anything else — a newer
version, a missing or reshaped table, a file that is not SQLite — is refused with a
:class:`~eventlab.errors.StoreError` naming the file and what is wrong. Tables are never
created over an existing store (an ``events`` table dropped by accident must not come back
empty). Every ``sqlite3`` error leaves this module as an eventlab error.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import pydantic_core

from eventlab.errors import ConcurrencyError, StoreError
from eventlab.ids import new_id
from eventlab.store.base import (
    DEAD_LETTER_COLUMNS,
    RELAY_CONSUMER,
    Append,
    DeadLetter,
    DeadLetterQuery,
    EventRecord,
    EventStore,
    Lease,
    Metadata,
    NewEvent,
    SourceMessage,
    StoreBusy,
    StoredEvent,
    StreamTail,
    dead_letter_from_row,
    events_from_json,
    from_stored_time,
    headers_to_json,
    iter_tails_from_json,
    json_loads,
)

__all__ = [
    "BASE_SCHEMA",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "FileLease",
    "SqliteEventStore",
    "check_schema",
    "make_directory",
    "open_in_this_process",
    "read_only_uri",
    "store_tables",
    "verify_event_store",
]

log = logging.getLogger(__name__)

#: The layout of schema version 1, the first released one. Never edit it: append a migration.
BASE_SCHEMA = """
CREATE TABLE events (
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
CREATE INDEX events_by_type ON events (event_type, position);
CREATE INDEX events_by_correlation ON events (json_extract(metadata, '$.correlation_id'));
CREATE TABLE processed (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE eventlab (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: ``MIGRATIONS[n - 1]`` takes a store from schema version ``n`` to ``n + 1``: a script of DDL
#: (and data) statements, run in the same transaction as the version bump, so a store is at one
#: version or the next, never in between. A new table or column is one more entry; never edit a
#: released entry. A new store runs :data:`BASE_SCHEMA` and then every entry.
MIGRATIONS: tuple[str, ...] = (
    # 1 -> 2: dead letters, recorded whole before their copy goes to <topic>.dlq (see eventlab.dlq).
    """
CREATE TABLE dead_letters (
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
CREATE INDEX dead_letters_by_event ON dead_letters (event_id, consumer);
""",
    # 2 -> 3: counts kept by triggers in the same transaction as the rows they count, so a consumer's
    # lag is a few lookups instead of a scan of every event of its types; and each consumer's
    # tracking position (every event of its types up to it handled), so a restart republishes
    # only what some consumer has not handled yet.
    """
CREATE TABLE event_counts (
    event_type TEXT    PRIMARY KEY,
    events     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO event_counts SELECT event_type, count(*) FROM events GROUP BY event_type;
CREATE TRIGGER events_counted AFTER INSERT ON events BEGIN
    INSERT INTO event_counts VALUES (NEW.event_type, 1)
        ON CONFLICT (event_type) DO UPDATE SET events = events + 1;
END;
CREATE TABLE handled_counts (
    consumer   TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    events     INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_type)
) WITHOUT ROWID;
INSERT INTO handled_counts
    SELECT p.consumer, coalesce(e.event_type, ''), count(*) FROM processed p LEFT JOIN events e USING (event_id)
    GROUP BY 1, 2;
CREATE TRIGGER processed_counted AFTER INSERT ON processed BEGIN
    INSERT INTO handled_counts
        VALUES (NEW.consumer, coalesce((SELECT event_type FROM events WHERE event_id = NEW.event_id), ''), 1)
        ON CONFLICT (consumer, event_type) DO UPDATE SET events = events + 1;
END;
CREATE TABLE tracking (
    consumer TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
""",
    # 3 -> 4: lighter appends (a one-event commit wrote ~7.8 pages to the WAL: now ~4.5 without a correlation
    # id, ~5.5 with one). 1.9 s on a store of 1M events (the correlation index is built again), the rest O(1):
    # - ``events_by_type`` goes: its readers (stream_ages, tracking_position) scan positions from where they
    #   start, stopping once they have their limit of events of the types (through the index they sorted
    #   every later event of the types: a metrics catch-up of a 1M-event store took 9.6 s, 0.4 s now); where
    #   there are fewer, the scan reads to the head, so the metrics move their start past it, and the counts
    #   answer "none at all" without a scan;
    # - AUTOINCREMENT goes (no ``sqlite_sequence`` row to rewrite per commit): it only differs from a plain
    #   rowid when the highest event is deleted, and events are never deleted. Same b-tree on disk, so the
    #   table's definition is edited in place, the way SQLite's ALTER TABLE page describes for changes that
    #   leave the stored content alone; RESET makes this connection read it again, the index changes below
    #   make the others read it;
    # - ``events_by_correlation`` keeps only the events that have a correlation id: the one query by it
    #   (read_correlated, ``= ?``) never matches the others, which no longer write an index page each.
    """
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql, 'INTEGER PRIMARY KEY AUTOINCREMENT', 'INTEGER PRIMARY KEY')
    WHERE type = 'table' AND name = 'events';
PRAGMA writable_schema = RESET;
DELETE FROM sqlite_sequence WHERE name = 'events';
DROP INDEX IF EXISTS events_by_type;
DROP INDEX IF EXISTS events_by_correlation;
CREATE INDEX events_by_correlation ON events (json_extract(metadata, '$.correlation_id'))
    WHERE json_extract(metadata, '$.correlation_id') IS NOT NULL;
""",
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = 1 + len(MIGRATIONS)

_COLUMNS = (
    "position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata, recorded_at"
)

_INSERT_EVENT = (
    "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata,"
    " recorded_at) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_MARKER = "INSERT OR IGNORE INTO processed VALUES (?, ?)"

Clock = Callable[[], datetime]
#: A row as ``sqlite3`` returns it (its values are typed by the table, not by the driver).
_Row = tuple[Any, ...]
#: An event as inserted: event id, aggregate type and id, version, event type, schema version, data, metadata, time.
_NewRow = tuple[str, str, str, int, str, int, str, str, str]
_P = ParamSpec("_P")
_R = TypeVar("_R")

# (begin, commit, rollback) for an append on its own, and for one inside transaction().
_TOP_LEVEL = (("BEGIN IMMEDIATE",), ("COMMIT",), ("ROLLBACK",))
_NESTED = (("SAVEPOINT append",), ("RELEASE append",), ("ROLLBACK TO append", "RELEASE append"))

# SQLite's primary result codes for "someone else holds the lock" (extended codes keep them in the low byte).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_CONFLICTS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stored_time(time: datetime) -> str:
    """``time`` as the store keeps it: UTC, without a zone, to the microsecond, as ``isoformat(" ",
    "microseconds")`` writes it without the "+00:00" (formatted from its fields: two thirds of the time of
    the aware ``isoformat``, paid on every append)."""
    t = time.astimezone(UTC)
    fields = (t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % fields  # noqa: UP031 - an f-string of these takes twice as long


def _row_to_event(row: _Row) -> StoredEvent:
    """A row of :data:`_COLUMNS`, decoded (as :meth:`EventRecord.decoded`, without making the record first:
    replaying a stream decodes every row it reads)."""
    position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata, at = row
    return StoredEvent(
        position,
        event_id,
        aggregate_type,
        aggregate_id,
        version,
        event_type,
        schema_version,
        json_loads(data),
        json_loads(metadata),
        from_stored_time(at),
    )


def _stored(
    positions: range, rows: list[_NewRow], events: Sequence[NewEvent], recorded_at: datetime
) -> list[StoredEvent]:
    """The stored events of ``rows`` (made from ``events``), at ``positions`` (none for a redelivery)."""
    if len(positions) == 1:  # most appends: one event, without the comprehension and its zip (~0.7 µs)
        (row,), at = rows, positions[0]
        return [
            StoredEvent(
                at, row[0], row[1], row[2], row[3], row[4], row[5], json_loads(row[6]), events[0].metadata, recorded_at
            )
        ]
    return [
        StoredEvent(
            position, row[0], row[1], row[2], row[3], row[4], row[5], json_loads(row[6]), new.metadata, recorded_at
        )
        for position, row, new in zip(positions, rows, events, strict=False)
    ]


def _position(last: int | None) -> int:
    """The position of the row an INSERT just appended (its ``lastrowid``)."""
    if last is None:  # SQLite gives every row of a rowid table its rowid
        raise StoreError("SQLite returned no position for an appended event")
    return last


def _translate_error(path: Path, doing: str, exc: sqlite3.Error) -> StoreError | ConcurrencyError:
    """The eventlab error for a driver error raised while ``doing`` something with the store at ``path``."""
    if isinstance(exc, sqlite3.IntegrityError) and getattr(exc, "sqlite_errorname", "") in _CONFLICTS:
        return ConcurrencyError(f"stream version already taken: {exc}")
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreBusy(f"{path}: {doing} failed, the store is locked by another writer ({exc}); retry later")
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        return StoreError(f"{path} is not an SQLite database ({exc})")
    shared_memory = Path(f"{path}-shm")
    # a directory that may not be written says "readonly database"; a read-only file system, "unable to open"
    cannot_write = "readonly database" in str(exc) or "unable to open database file" in str(exc)
    if cannot_write and path.is_file() and not shared_memory.exists() and not os.access(path.parent, os.W_OK):
        return StoreError(
            f"{path}: {doing} failed: even a read of a store in WAL mode needs {shared_memory.name} beside it, "
            f"and {path.parent} may not be written: copy the store (with any {path.name}-wal) where it may"
        )
    return StoreError(f"{path}: {doing} failed: {exc}")


class _AtPath(Protocol):
    path: Path


_S = TypeVar("_S", bound=_AtPath)


def _translated(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run a store method; a ``sqlite3`` error leaves it as :class:`StoreError` or :class:`ConcurrencyError`."""

    @functools.wraps(method)
    def translated(store: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, *args, **kwargs)
        except sqlite3.Error as exc:
            name = method.__name__
            doing = {"_connect": "connecting", "_open": "opening"}.get(name, name.lstrip("_"))  # the port's name
            raise _translate_error(store.path, doing, exc) from exc

    return translated


# --- the layout of a store file -------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """What a store file holds: every table's columns, its unique keys, the recorded schema version."""

    columns: Mapping[str, tuple[str, ...]]
    keys: Mapping[str, frozenset[tuple[str, ...]]]
    version: str | None


def _read_layout(conn: sqlite3.Connection) -> _Layout:
    """Read the tables, columns, unique keys (primary keys included) and schema version; writes nothing."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    ]
    columns: dict[str, tuple[str, ...]] = {}
    keys: dict[str, frozenset[tuple[str, ...]]] = {}
    for table in tables:
        info = conn.execute("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (table,)).fetchall()
        columns[table] = tuple(name for name, _ in info)
        unique = {tuple(name for name, pk in sorted(info, key=lambda c: c[1]) if pk)} - {()}
        for (index,) in conn.execute('SELECT name FROM pragma_index_list(?) WHERE "unique"', (table,)):
            indexed = conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,)).fetchall()
            unique.add(tuple(name for (name,) in indexed))
        keys[table] = frozenset(unique)
    version = None
    if "eventlab" in columns and columns["eventlab"] == ("key", "value"):
        row = conn.execute("SELECT value FROM eventlab WHERE key = 'schema_version'").fetchone()
        version = None if row is None else str(row[0])
    return _Layout(columns, keys, version)


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one (``executescript`` would commit the open transaction)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\n;"):
        raise ValueError(f"incomplete SQL statement: {current.strip()!r}")
    return statements


def _scripts(version: int) -> tuple[str, ...]:
    """The scripts that build a store of ``version`` from an empty file."""
    return (BASE_SCHEMA, *MIGRATIONS[: version - 1])


@functools.cache
def _expected_layout(scripts: tuple[str, ...]) -> _Layout:
    """The layout a store built by ``scripts`` has (built in memory, so it cannot drift from the DDL)."""
    conn = sqlite3.connect(":memory:")
    try:
        for script in scripts:
            for statement in _statements(script):
                conn.execute(statement)
        return _read_layout(conn)
    finally:
        conn.close()


def check_schema(
    path: str | Path,
    columns: Mapping[str, Sequence[str]],
    version: str | None,
    keys: Mapping[str, Iterable[Sequence[str]]] | None = None,
    newest: int | None = None,
) -> int:
    """The schema version of the store at ``path``, given its tables' ``columns``, the ``version``
    recorded in its ``eventlab`` table and (when known) its tables' unique ``keys``; 0 for a file
    with no tables at all (a new store). ``newest``: the newest version this code writes to such a
    store (default: a SQLite file's; a PostgreSQL store's versions are the first of those).

    Raises :class:`~eventlab.errors.StoreError` naming the file and what is wrong when it is not an
    eventlab store, is of a newer version than this code, or lacks or reshaped a table its version
    has. Usable with any reader of the file's catalogue (``sqlite3`` here, DuckDB in the audit).
    """
    if "eventlab" not in columns:
        if not columns:
            return 0
        names = sorted(columns)
        found = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise StoreError(f"{path} is not an eventlab event store: it has tables ({found}) but no 'eventlab' table")
    broken = f"{path} is a broken eventlab event store"
    if tuple(columns["eventlab"]) != ("key", "value"):
        raise StoreError(f"{broken}: its 'eventlab' table has columns ({', '.join(columns['eventlab'])})")
    if version is None:
        raise StoreError(f"{broken}: its 'eventlab' table records no schema_version")
    try:
        number = int(version)
    except ValueError:
        raise StoreError(f"{broken}: schema_version {version!r} is not a number") from None
    newest = SCHEMA_VERSION if newest is None else newest
    if number > newest:
        raise StoreError(
            f"{path} has event store schema version {number}, newer than this eventlab understands "
            f"({newest}): upgrade eventlab to open it"
        )
    if number < 1:
        raise StoreError(f"{broken}: schema_version {number} does not exist")
    expected = _expected_layout(_scripts(number))
    problems = []
    for table, wanted in expected.columns.items():
        if table not in columns:
            problems.append(f"table '{table}' is missing")
        elif tuple(columns[table]) != wanted:
            problems.append(f"table '{table}' has columns ({', '.join(columns[table])}), not ({', '.join(wanted)})")
        elif keys is not None:
            have = {tuple(key) for key in keys.get(table, ())}
            problems += [
                f"table '{table}' lacks its unique key ({', '.join(key)})"
                for key in sorted(expected.keys[table] - have)
            ]
    if problems:
        raise StoreError(
            f"{broken} (schema version {number}): {'; '.join(problems)}. Nothing was changed: restore it from a "
            "backup, or move it away to start a new store"
        )
    return number


def store_tables(version: int = SCHEMA_VERSION) -> frozenset[str]:
    """The tables an event store of schema ``version`` has (the ones :func:`check_schema` checks):
    the store's own, as opposed to whatever else shares its file or PostgreSQL schema.

    Example:
        >>> sorted(store_tables(1))
        ['checkpoints', 'eventlab', 'events', 'processed']
    """
    if not 1 <= version <= SCHEMA_VERSION:
        raise StoreError(f"event store schema version {version} does not exist here (1 … {SCHEMA_VERSION})")
    return frozenset(_expected_layout(_scripts(version)).columns)


def _check_file(path: Path, conn: sqlite3.Connection) -> int:
    layout = _read_layout(conn)
    return check_schema(path, layout.columns, layout.version, layout.keys)


def make_directory(directory: Path, what: str = "the event store's directory") -> None:
    """Create ``directory``, or raise StoreError naming it as ``what`` (a file in its place, no permission)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file of that name is in the way" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise StoreError(f"cannot create {what} {directory}: {reason}") from exc


_stores: weakref.WeakSet[SqliteEventStore] = weakref.WeakSet()


def open_in_this_process(path: str | Path) -> bool:
    """Whether this process holds a ``sqlite3`` connection to the store at ``path``.

    Another copy of the SQLite library in the same process (DuckDB's ``sqlite`` extension) must
    not open such a file: POSIX locks are per process, so the two copies cannot see each other's
    locks, and the second one resets the WAL index the first has mapped (a SIGBUS, or worse).
    """
    target = Path(path).resolve()
    return any(store._connections and store.path.resolve() == target for store in list(_stores))


def read_only_uri(path: Path) -> str:
    """A ``file:`` URI that opens ``path`` read-only: its name percent-encoded, since SQLite decodes
    ``%41`` to ``A`` (another file) and takes a ``?`` or ``#`` in it for the query or fragment."""
    return f"{path.resolve().as_uri()}?mode=ro"


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file; :class:`StoreError` naming it when that cannot even be asked (a
    directory on the way it may not enter, a name too long): ``Path.is_file`` raises for those."""
    try:
        return path.is_file()
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def verify_event_store(path: Path) -> int:
    """Raise :class:`StoreError` unless ``path`` is an eventlab store this code can read; return its
    schema version. Opens it read-only, so nothing is written."""
    if not is_file(path):
        raise StoreError(f"no event store at {path}")
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            version = _check_file(path, conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _translate_error(path, "reading the schema", exc) from exc
    if version == 0:
        raise StoreError(f"{path} is not an eventlab event store: it has no tables")
    return version


_IDLE = 16  # connections kept for new threads: more than the shop's threads that come and go at once


class _Handback:
    """Held only by a thread's local state, so it goes when the thread ends: then it hands that thread's
    connection back to its store (the store is not kept alive by it).

    Not in a child of ``fork``: Python clears the parent's other threads there, but their connections
    are the parent's, in use, and the store's lock may have been held at the fork."""

    __slots__ = ("_conn", "_pid", "_store")

    def __init__(self, store: SqliteEventStore, conn: sqlite3.Connection) -> None:
        self._store = weakref.ref(store)
        self._conn = conn
        self._pid = os.getpid()

    def __del__(self) -> None:
        store = self._store()
        if store is not None and os.getpid() == self._pid:
            store._hand_back(self._conn)


class SqliteEventStore(EventStore):
    """Events in one SQLite file; safe for many threads and processes.

    Every write transaction takes the write lock first (``BEGIN IMMEDIATE``, or a lone INSERT, which is a
    transaction of its own): SQLite has one writer at a time, so positions are in commit order. Each
    thread gets its own connection. A writer waits up to ``busy_timeout`` seconds for another process's
    lock before :class:`~eventlab.store.base.StoreBusy`.

    Example:
        >>> store = SqliteEventStore(store_path)
        >>> [e.event_type for e in store.read_stream("order", "O1")][:2]
        ['OrderCreated', 'OrderConfirmed']
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        clock: Clock = _utcnow,
        id_factory: Callable[[], str] = new_id,
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._clock = clock
        self._new_id = id_factory
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: set[sqlite3.Connection] = set()
        self._idle: list[sqlite3.Connection] = []  # of threads that ended, for the next new thread
        self._closed = False  # then a thread that ends closes its connection
        self._lock = threading.RLock()  # re-entrant: _Handback.__del__ takes it, whenever its thread's state goes
        # Threads of one process queue here instead of in SQLite's busy handler, which sleeps
        # up to 100 ms between tries; other processes still wait on SQLite's lock.
        self._write_lock = threading.Lock()
        _stores.add(self)
        try:
            if not create and not is_file(self.path):
                raise StoreError(f"no event store at {self.path}")
            if create:
                make_directory(self.path.parent)
            self._open(create)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteEventStore({str(self.path)!r})"

    @_translated
    def _open(self, create: bool) -> None:
        """Check the file's layout, then create or migrate it (one transaction) or refuse it."""
        conn = self._conn()
        version = _check_file(self.path, conn)  # reads only: a refused file is left exactly as it was
        if version == 0 and not create:
            raise StoreError(f"{self.path} is not an eventlab event store: it has no tables")
        if version == SCHEMA_VERSION:
            return
        self._switch_to_wal(conn)
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = _check_file(self.path, conn)  # again: another process may have been first
                for script in _scripts(SCHEMA_VERSION)[version:]:
                    for statement in _statements(script):
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO eventlab VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT (a full disk) may have rolled back already
                    conn.execute("ROLLBACK")
                raise
        if version == 0:
            log.info("created event store %s (schema version %d)", self.path, SCHEMA_VERSION)
        elif version < SCHEMA_VERSION:
            log.info("migrated event store %s from schema version %d to %d", self.path, version, SCHEMA_VERSION)

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """``journal_mode=WAL`` (persistent in the file: every later connection uses it).

        Changing the journal mode answers "database is locked" at once, without SQLite's busy
        handler, while another opener holds the file; so it is retried here for the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (on every call of every method: kept to one attribute read)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        return conn if conn is not None else self._connect()

    @_translated
    def _connect(self) -> sqlite3.Connection:
        """Give this thread a connection: one a thread that ended handed back, else a new one (where a
        missing directory or a permission fails). A thread per HTTP connection would otherwise open, and
        keep, a connection per request: two file descriptors, a page cache and its prepared statements."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
                # Room for the statements built per batch size (read_streams, processed_among) besides the hot
                # ones (the default is 128), so the append's INSERT stays prepared however varied the batches.
                cached_statements=512,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            # Sub-journals in memory: a consumer batch's savepoint journals every page the batch changes (about
            # 140, 0.6 MB), which past 64 KiB SQLite spills to a new temporary file: ~100 pwrite calls and a file
            # created and deleted per batch, ~6 % of the shop's CPU. Temporary tables and sorts stay in memory.
            conn.execute("PRAGMA temp_store=MEMORY")
            with self._lock:
                self._connections.add(conn)
        self._local.conn = conn
        self._local.in_transaction = False  # set here, so every later read of it finds it (a miss costs 0.5 µs)
        self._local.handback = _Handback(self, conn)
        return conn

    def _hand_back(self, conn: sqlite3.Connection) -> None:
        """Keep the connection of a thread that ended for the next new thread (up to ``_IDLE`` of them);
        close it when there are enough, when the store was closed, or when it ended inside a transaction
        (closing rolls that back)."""
        with self._lock:
            if conn not in self._connections:  # closed with the store meanwhile
                return
            if not self._closed and not conn.in_transaction and len(self._idle) < _IDLE:
                self._idle.append(conn)
                return
            self._connections.discard(conn)
        conn.close()

    def _new_rows(self, events: Sequence[NewEvent], now: str) -> list[_NewRow]:
        """``events`` as rows to insert, recorded at ``now`` (a stored time).

        The event's serializer is called directly (``model_dump_json`` is a Python wrapper round it), and
        the metadata dict a decision shares between its events is serialized once.
        """
        new_id = self._new_id
        rows: list[_NewRow] = []
        metadata: Metadata | None = None
        metadata_json = ""
        for new in events:
            event = new.event
            if new.metadata is not metadata:
                metadata = new.metadata
                # compact, like json.dumps with separators; most events have none
                metadata_json = pydantic_core.to_json(metadata).decode() if metadata else "{}"
            rows.append(
                (
                    new_id(),
                    event.aggregate_type,
                    event.aggregate_id,
                    new.version,
                    event.event_type,
                    event.schema_version,
                    event.__pydantic_serializer__.to_json(event).decode(),
                    metadata_json,
                    now,
                )
            )
        return rows

    def append(self, events: Sequence[NewEvent], *, processed: tuple[str, str] | None = None) -> list[StoredEvent]:
        """See :meth:`EventStore.append`. Its errors are translated here rather than by :func:`_translated`
        (whose call through ``*args`` costs ~0.3 µs an append), and it inserts through this thread's own
        cursor (:meth:`_new_cursor`)."""
        try:
            cursor: sqlite3.Cursor = getattr(self._local, "cursor", None) or self._new_cursor()
            recorded_at = self._clock().astimezone(UTC)
            rows = self._new_rows(events, _stored_time(recorded_at))
            if self._local.in_transaction:
                positions = self._insert(cursor.connection, rows, processed, _NESTED)
            elif processed is None and len(rows) == 1:
                # One statement outside a transaction is a transaction of its own, the INSERT and its trigger
                # together, and it takes the write lock first (waiting in the busy handler like BEGIN IMMEDIATE):
                # no BEGIN and COMMIT to run, and no statement journal for the conflict check to undo.
                with self._write_lock:
                    cursor.execute(_INSERT_EVENT, rows[0])
                position = _position(cursor.lastrowid)
                positions = range(position, position + 1)
                self._committed()
            else:
                with self._write_lock:
                    positions = self._insert(cursor.connection, rows, processed, _TOP_LEVEL)
                if positions:
                    self._committed()
        except sqlite3.Error as exc:
            raise _translate_error(self.path, "append", exc) from exc
        return _stored(positions, rows, events, recorded_at)

    def _new_cursor(self) -> sqlite3.Cursor:
        """This thread's cursor for :meth:`append` and :meth:`read_stream_events`, kept for the next call
        (``execute`` on the connection makes a new cursor every time: 0.15-0.3 µs of each). Each call is done
        with it before it returns, so the two never share it at once."""
        cursor: sqlite3.Cursor = self._conn().cursor()
        self._local.cursor = cursor
        return cursor

    @_translated
    def append_batch(self, appends: Sequence[Append]) -> list[list[StoredEvent] | None]:
        """See :meth:`EventStore.append_batch`: every marker with one ``executemany`` and every event
        with another, in one savepoint, instead of a savepoint, a marker and the events per input. A
        marker already there or a conflict undoes the savepoint; then the batch goes one by one."""
        recorded_at = self._clock().astimezone(UTC)
        now = _stored_time(recorded_at)
        rows = [self._new_rows(item.events, now) for item in appends]
        markers = [item.processed for item in appends if item.processed is not None]
        with self.transaction():
            conn = self._conn()
            conn.execute("SAVEPOINT batch")
            try:
                last = self._insert_batch(conn, markers, [row for group in rows for row in group])
            except BaseException:
                if conn.in_transaction:  # an I/O error may have rolled the whole transaction back already
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                raise
            if last is None:
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                log.debug("a batch of %d appends was refused as a whole: appending one by one", len(appends))
                return self._append_each(appends)
            conn.execute("RELEASE batch")
        results: list[list[StoredEvent] | None] = []
        position = last - sum(map(len, rows))  # one writer: the batch's positions follow each other
        for item, group in zip(appends, rows, strict=True):
            results.append(_stored(range(position + 1, position + 1 + len(group)), group, item.events, recorded_at))
            position += len(group)
        return results

    @staticmethod
    def _insert_batch(conn: sqlite3.Connection, markers: list[tuple[str, str]], rows: list[_NewRow]) -> int | None:
        """Insert every marker and every row; the last position then, or None when a marker was already
        there or a row conflicts (the caller undoes the inserts)."""
        try:
            if markers and conn.executemany(_INSERT_MARKER, markers).rowcount != len(markers):
                return None
            if rows:
                conn.executemany(_INSERT_EVENT, rows)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorname", "") in _CONFLICTS:
                return None
            raise
        (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()  # the trigger's inserts do not change it
        return int(last)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "in_transaction", False):  # nested: part of the outer transaction
            yield
            return
        conn = self._conn()
        with self._write_lock:
            self._execute(conn, "BEGIN IMMEDIATE")
            self._local.in_transaction = True
            try:
                yield
                self._execute(conn, "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    self._execute(conn, "ROLLBACK")
                raise
            finally:
                self._local.in_transaction = False
        self._committed()

    def _execute(self, conn: sqlite3.Connection, statement: str) -> None:
        try:
            conn.execute(statement)
        except sqlite3.Error as exc:
            raise _translate_error(self.path, statement, exc) from exc

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        rows: list[_NewRow],
        processed: tuple[str, str] | None,
        statements: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    ) -> range:
        """Insert ``rows`` (and the marker); return their positions, or none for a redelivery.

        One statement for the events (``executemany`` for several): they hold the write lock, so their
        positions follow each other and the last one gives them all. A conflict raises from the INSERT
        (``UNIQUE (aggregate_type, aggregate_id, version)``): no read of the stream's version first.
        """
        begin, commit, rollback = statements
        for statement in begin:
            conn.execute(statement)
        try:
            if processed is not None and conn.execute(_INSERT_MARKER, processed).rowcount == 0:
                for statement in rollback:
                    conn.execute(statement)
                return range(0)
            last = 0
            if len(rows) == 1:
                last = _position(conn.execute(_INSERT_EVENT, rows[0]).lastrowid)
            elif rows:
                conn.executemany(_INSERT_EVENT, rows)
                (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()  # the trigger's inserts keep it
            for statement in commit:
                conn.execute(statement)
        except BaseException:
            if conn.in_transaction:
                for statement in rollback:
                    conn.execute(statement)
            raise
        return range(last - len(rows) + 1, last + 1)

    @_translated
    def read_stream(self, aggregate_type: str, aggregate_id: str, after_version: int = 0) -> list[StoredEvent]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND version > ?"
            " ORDER BY version",
            (aggregate_type, aggregate_id, after_version),
        )
        return [_row_to_event(row) for row in rows]

    def read_stream_events(self, aggregate_type: str, aggregate_id: str, after_version: int = 0) -> StreamTail:
        """See :meth:`EventStore.read_stream_events`: three columns, the data validated straight from its JSON.

        Its errors are translated here rather than by :func:`_translated`, whose call through ``*args`` costs
        ~0.2 µs on every aggregate loaded."""
        try:
            cursor: sqlite3.Cursor = getattr(self._local, "cursor", None) or self._new_cursor()
            rows = cursor.execute(
                "SELECT version, event_type, data FROM events WHERE aggregate_type = ? AND aggregate_id = ?"
                " AND version > ? ORDER BY version",
                (aggregate_type, aggregate_id, after_version),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _translate_error(self.path, "read_stream_events", exc) from exc
        return events_from_json(rows, after_version)

    @_translated
    def read_streams(self, after_versions: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], list[StoredEvent]]:
        found: list[list[StoredEvent]] = [[] for _ in after_versions]
        for row in self._rows_of_streams(after_versions, _COLUMNS):
            found[row[0]].append(_row_to_event(row[2:]))
        return dict(zip(after_versions, found, strict=True))

    @_translated
    def iter_streams_events(
        self, after_versions: Mapping[tuple[str, str], int]
    ) -> Iterator[tuple[tuple[str, str], StreamTail]]:
        """See :meth:`EventStore.iter_streams_events`: every row of every stream read by the call, each
        stream's validated straight from its JSON when it is reached."""
        return iter_tails_from_json(self._rows_of_streams(after_versions, "event_type, data"), after_versions)

    def _rows_of_streams(self, after_versions: Mapping[tuple[str, str], int], columns: str) -> list[_Row]:
        """(place, version, ``columns``) of each stream's events after its version, the place being the
        stream's in ``after_versions``, in (place, version) order: one query per 200 streams (no key texts
        read back). The order is made by Python's sort, which takes the order the join gives (already that
        one) in one pass, where the query's ``ORDER BY`` built a temporary B-tree of every row (0.8 of
        ~6 µs per stream)."""
        keys = list(after_versions)
        found: list[_Row] = []
        conn = self._conn()
        for start in range(0, len(keys), 200):  # 4 parameters each, below SQLite's limit
            chunk = keys[start : start + 200]
            rows = conn.execute(
                f"WITH wanted (n, t, i, v) AS (VALUES {','.join(['(?,?,?,?)'] * len(chunk))})"
                f" SELECT n, version, {columns} FROM wanted"
                " JOIN events ON aggregate_type = t AND aggregate_id = i AND version > v",
                [value for n, key in enumerate(chunk, start) for value in (n, *key, after_versions[key])],
            ).fetchall()
            rows.sort()  # by (place, version): unique, so no further column is ever compared
            found += rows
        return found

    def read_all(self, after: int = 0, limit: int | None = None) -> list[StoredEvent]:
        return [record.decoded() for record in self.read_records(after, limit)]

    @_translated
    def read_records(self, after: int = 0, limit: int | None = None) -> list[EventRecord]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        return [EventRecord._make(row) for row in rows]

    @_translated
    def read_correlated(self, correlation_id: str) -> list[StoredEvent]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM events WHERE json_extract(metadata, '$.correlation_id') = ? ORDER BY position",
            (correlation_id,),
        )
        return [_row_to_event(row) for row in rows]

    @_translated
    def head(self) -> int:
        return self._count("SELECT coalesce(max(position), 0) FROM events")

    @_translated
    def is_processed(self, consumer: str, event_id: str) -> bool:
        row = (
            self._conn()
            .execute("SELECT 1 FROM processed WHERE consumer = ? AND event_id = ?", (consumer, event_id))
            .fetchone()
        )
        return row is not None

    @_translated
    def processed_among(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        wanted = list(event_ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):  # below SQLite's limit on parameters
            chunk = wanted[start : start + 500]
            rows = self._conn().execute(
                f"SELECT event_id FROM processed WHERE consumer = ? AND event_id IN ({','.join('?' * len(chunk))})",
                (consumer, *chunk),
            )
            found.update(event_id for (event_id,) in rows)
        return found

    @_translated
    def unprocessed(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, skip_dead_letters=False)

    @_translated
    def processed_count(self, consumer: str) -> int:
        query = "SELECT coalesce(sum(events), 0) FROM handled_counts WHERE consumer = ?"  # one row per event type
        return self._count(query, (consumer,))

    @_translated
    def tracking_position(self, consumer: str, event_types: Iterable[str]) -> int:
        """See :meth:`EventStore.tracking_position`: one read snapshot; the counts answer at once when
        nothing is pending, else the scan covers only the events after the recorded position."""
        types = sorted(set(event_types))
        conn = self._conn()
        nested = getattr(self._local, "in_transaction", False)
        if not nested:
            conn.execute("BEGIN")  # deferred: a read snapshot, no write lock
        try:
            start = self._count("SELECT coalesce(max(position), 0) FROM tracking WHERE consumer = ?", (consumer,))
            position = head = self._count("SELECT coalesce(max(position), 0) FROM events")
            if types and self._unhandled(consumer, types, skip_dead_letters=True):
                marks = ",".join("?" * len(types))
                (first,) = conn.execute(
                    f"SELECT min(e.position) FROM events e WHERE e.event_type IN ({marks}) AND e.position > ?"
                    " AND NOT EXISTS (SELECT 1 FROM processed p WHERE p.consumer = ? AND p.event_id = e.event_id)"
                    " AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = e.event_id"
                    " AND d.consumer IN (?, ?))",
                    (*types, start, consumer, consumer, RELAY_CONSUMER),
                ).fetchone()
                position = head if first is None else first - 1
        finally:
            if not nested:
                conn.execute("COMMIT")
        if position > start:
            with self._writing(conn):
                conn.execute(
                    "INSERT INTO tracking VALUES (?, ?)"
                    " ON CONFLICT (consumer) DO UPDATE SET position = max(position, excluded.position)",
                    (consumer, position),
                )
        return max(position, start)

    @_translated
    def forget_tracking(self, consumer: str) -> None:
        conn = self._conn()
        with self._writing(conn):
            conn.execute("DELETE FROM tracking WHERE consumer = ?", (consumer,))

    @_translated
    def stream_ages(
        self, event_types: Sequence[str], after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, float]]:
        """See :meth:`EventStore.stream_ages`: a scan by position from ``after`` that stops once it has ``limit``
        rows, else at the head (no index by type since schema version 4: callers move ``after`` on, see
        :class:`~eventlab.metrics.SagaDurations`); with no event of the types at all, the counts answer alone."""
        marks = ",".join("?" * len(event_types))
        if not self._count(f"SELECT count(*) FROM event_counts WHERE event_type IN ({marks})", event_types):
            return []
        rows = self._conn().execute(
            f"SELECT e.position, e.event_type, first.recorded_at, e.recorded_at FROM events e JOIN events first"
            " ON first.aggregate_type = e.aggregate_type AND first.aggregate_id = e.aggregate_id AND first.version = 1"
            f" WHERE e.event_type IN ({marks}) AND e.position > ? ORDER BY e.position LIMIT ?",
            (*event_types, after, limit),
        )
        iso = datetime.fromisoformat
        return [(position, kind, (iso(end) - iso(start)).total_seconds()) for position, kind, start, end in rows]

    @_translated
    def checkpoint(self, name: str) -> int:
        row = self._conn().execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else row[0]

    @_translated
    def set_checkpoint(self, name: str, position: int) -> None:
        conn = self._conn()
        with self._writing(conn):
            conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

    @_translated
    def advance_checkpoint(self, name: str, position: int) -> int:
        conn = self._conn()
        with self._writing(conn):
            row = conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position) RETURNING position",
                (name, position),
            ).fetchone()
        return int(row[0])

    @contextmanager
    def _writing(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One autocommitted write: queued on this process's write lock (not in SQLite's busy handler,
        which sleeps), or part of the open transaction."""
        if getattr(self._local, "in_transaction", False):
            yield
        else:
            with self._write_lock:
                yield

    def lease(self, name: str) -> Lease:
        """A lease held as an OS lock (``flock``) on the file ``<store>.<name>.lease`` beside the store
        (beside the real file: every path to one store, symlinks included, names one lease)."""
        store = self.path.resolve()
        return FileLease(name, store.with_name(f"{store.name}.{name}.lease"))

    def close(self) -> None:
        """Close this thread's connection and the idle ones. A connection another thread is using is
        closed when that thread ends: closing it under a running statement would crash the process."""
        with self._lock:
            self._closed = True
            mine = getattr(self._local, "conn", None)
            for conn in [*self._idle, *([] if mine is None else [mine])]:
                self._connections.discard(conn)
                conn.close()
            self._idle.clear()
        self._local.__dict__.clear()  # this thread's next call opens a new connection

    # --- dead letters ----------------------------------------------------------------------

    @_translated
    def _record_dead_letter(self, message: SourceMessage, reason: str, event_id: str | None) -> DeadLetter:
        source = (message.consumer, message.topic, message.partition, message.offset, message.digest)
        now = _stored_time(self._clock())
        conn = self._conn()
        with self.transaction():
            conn.execute(
                "INSERT OR IGNORE INTO dead_letters (consumer, source_topic, source_partition, source_offset, digest,"
                " key, value, headers, reason, event_id, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*source, message.key, message.value, headers_to_json(message.headers), reason, event_id, now),
            )
            row = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = ? AND source_topic = ?"
                " AND source_partition = ? AND source_offset = ? AND digest = ?",
                source,
            ).fetchone()
        return _row_to_dead_letter(row)

    @_translated
    def _dead_letters(self, query: DeadLetterQuery) -> list[DeadLetter]:
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if query.ids is not None:
            where.append(f"id IN ({','.join('?' * len(query.ids)) or 'NULL'})")
            params.extend(query.ids)
        for column, wanted in (("source_topic", query.topic), ("consumer", query.consumer)):
            if wanted is not None:
                where.append(f"{column} = ?")
                params.append(wanted)
        if query.unpublished:
            where.append("published_at IS NULL")
        rows = self._conn().execute(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [_row_to_dead_letter(row) for row in rows]

    @_translated
    def mark_dead_letter_published(self, dead_letter_id: int) -> None:
        self._stamp_dead_letter("published_at = ? WHERE id = ? AND published_at IS NULL", dead_letter_id)

    @_translated
    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        self._stamp_dead_letter("replayed_at = ?, replays = replays + 1 WHERE id = ?", dead_letter_id)

    def _stamp_dead_letter(self, assignment: str, dead_letter_id: int) -> None:
        """``UPDATE dead_letters SET <assignment>`` with the time now and ``dead_letter_id`` as parameters."""
        conn = self._conn()
        with self.transaction():
            conn.execute(f"UPDATE dead_letters SET {assignment}", (_stored_time(self._clock()), dead_letter_id))

    @_translated
    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT consumer, count(*) FROM dead_letters GROUP BY consumer ORDER BY consumer")
        return dict(rows.fetchall())

    @_translated
    def pending(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, skip_dead_letters=True)

    def _unhandled(self, consumer: str, event_types: Iterable[str], *, skip_dead_letters: bool) -> int:
        """Stored events of ``event_types`` without ``consumer``'s processed marker; with
        ``skip_dead_letters``, not those it or the relay dead-lettered (the relay never published them)."""
        types = sorted(set(event_types))
        if not types:
            return 0
        # O(event types + dead letters), whatever the size of the store: the counts are kept by triggers
        # in the transactions that insert the events and the markers (schema version 3).
        marks = ",".join("?" * len(types))
        sql = (
            f"SELECT (SELECT coalesce(sum(events), 0) FROM event_counts WHERE event_type IN ({marks}))"
            " - (SELECT coalesce(sum(events), 0) FROM handled_counts WHERE consumer = ?"
            f" AND event_type IN ({marks}))"
        )
        params: list[object] = [*types, consumer, *types]
        if skip_dead_letters:
            sql += (
                " - (SELECT count(*) FROM events e WHERE e.event_id IN (SELECT event_id FROM dead_letters"
                f" WHERE consumer IN (?, ?)) AND e.event_type IN ({marks}) AND NOT EXISTS"
                " (SELECT 1 FROM processed p WHERE p.consumer = ? AND p.event_id = e.event_id))"
            )
            params += [consumer, RELAY_CONSUMER, *types, consumer]
        return self._count(sql, params)

    def _count(self, sql: str, params: Sequence[object] = ()) -> int:
        """The one number ``sql`` answers."""
        (number,) = self._conn().execute(sql, params).fetchone()
        return int(number)


def _row_to_dead_letter(row: _Row) -> DeadLetter:
    return dead_letter_from_row(row, from_stored_time)


class FileLease(Lease):
    """A lease that is an exclusive ``flock`` on a file: the kernel frees it when the holder's file is
    closed, which a killed process's always is, so a standby takes over at its next try.

    Chosen over a lease row with a heartbeat and an expiry: no clock, no interval to tune, no
    takeover delay, and no write to the store every second. ``flock`` (not ``fcntl``'s POSIX locks,
    which belong to a process) excludes two holders in one process too. Like SQLite's WAL, it needs
    the store on a local file system. The file holds the holder's pid, for people.

    A lock belongs to a file, not to its name: were the file deleted or replaced (a clean-up, a
    restored backup), a second holder could lock the new file while the first still locks the old
    one. So the lease is held only while ``path`` still names the locked file (same device and
    inode), checked by :meth:`acquire` and :meth:`held`: the first holder sees it lost.
    """

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path.resolve()
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl  # POSIX only, like the embedded broker; imported where a lease is taken

        if self._fd is not None:
            if self.held():
                return True
            self.release()  # its file was replaced: try the one the path names now
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the {self.name} lease: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.path}: cannot lock the {self.name} lease: {exc}") from exc
        if not self._names(fd):  # replaced between the open and the lock: a lock on an orphan file
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # closing it frees the lock: a failed holder must not keep the lease
            os.close(fd)
            raise StoreError(f"{self.path}: cannot write the {self.name} lease: {exc}") from exc
        self._fd = fd
        return True

    def held(self) -> bool:
        """Whether the file this holder locked is still the one ``path`` names (a ``stat``, no lock call)."""
        if self._fd is None:
            return False
        if self._names(self._fd):
            return True
        log.warning("%s lease lost: %s was deleted or replaced", self.name, self.path)
        self.release()
        return False

    def _names(self, fd: int) -> bool:
        """Whether ``path`` names the file open as ``fd``."""
        try:
            now = os.stat(self.path)
        except OSError:  # gone (or unreadable): the lock no longer excludes anyone who opens the path
            return False
        locked = os.fstat(fd)
        return (locked.st_dev, locked.st_ino) == (now.st_dev, now.st_ino)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the lock

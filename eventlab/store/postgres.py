"""The event store on PostgreSQL (psycopg 3, pooled): the store for several machines.

Same guarantees as the SQLite store, and one more problem to solve: **positions must follow commit
order**. A sequence hands out numbers when rows are inserted, not when they commit, so a reader
following ``position > last_seen`` could read 11 while 10 is still in flight and skip 10 forever.
Here every write transaction first takes a transaction-scoped advisory lock on the store
(:attr:`PostgresEventStore.write_lock`), then numbers its events ``max(position) + 1, …``: writers
commit one at a time, exactly like SQLite's one writer, so positions are in commit order and without
gaps. The lock is released by the commit, after the rows became visible.

Why a lock and not "read only below the oldest in-flight transaction"
(``pg_snapshot_xmin(pg_current_snapshot())``): a transaction's id and its sequence value are taken
at different moments, so a transaction newer than the snapshot's xmin can still hold a *smaller*
position than a row already visible; the filter is only safe if followers track (transaction id,
position) pairs, which would change the port and every follower (relay, projections). It would also
let one long transaction anywhere in the database stall every follower. The lock costs write
parallelism: measured here (2 cores shared with other jobs, so roughly; local server, one INSERT per
transaction, ``synchronous_commit=off``) 1 writer ≈ 1,480 transactions/s with the lock and 1,630 with
a bare sequence, 4 writers ≈ 1,370 and 4,370; with ``synchronous_commit=on`` 1 writer ≈ 480 and 890,
4 writers ≈ 960 and 1,330. Should writes ever need to run in parallel, the way out is
(xid, position) tracking, not a filter.

The schema is created and versioned by eventlab, as in SQLite: an ``eventlab`` table records the
schema version, a new schema gets every table in one transaction, an older one is migrated, and a
newer or reshaped one is refused without a change. Tables live in the connection's current schema,
so ``?options=-csearch_path%3Dorders`` gives a service a store of its own in one database (the
schema too is created when missing). Every
psycopg error leaves this module as an eventlab error.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import select
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

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
    NewEvent,
    SourceMessage,
    StoreBusy,
    StoredEvent,
    dead_letter_from_row,
    headers_to_json,
)
from eventlab.store.sqlite import check_schema

__all__ = ["LEASE_SESSION", "MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "AdvisoryLease", "PostgresEventStore", "identity"]

log = logging.getLogger(__name__)

#: Schema version 1, the same tables and columns as the SQLite store's. Never edit it: append a migration.
SCHEMA = """
CREATE TABLE events (
    position       BIGINT       PRIMARY KEY,
    event_id       TEXT         NOT NULL UNIQUE,
    aggregate_type TEXT         NOT NULL,
    aggregate_id   TEXT         NOT NULL,
    version        INTEGER      NOT NULL,
    event_type     TEXT         NOT NULL,
    schema_version INTEGER      NOT NULL,
    data           TEXT         NOT NULL,
    metadata       TEXT         NOT NULL,
    recorded_at    TIMESTAMP(6) NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX events_by_type ON events (event_type, position);
CREATE INDEX events_by_correlation ON events (((metadata::jsonb) ->> 'correlation_id'));
CREATE TABLE processed (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE checkpoints (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE TABLE eventlab (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: ``MIGRATIONS[n - 1]`` takes a store from version ``n`` to ``n + 1``, in one transaction with the
#: version bump; the same steps as :data:`eventlab.store.sqlite.MIGRATIONS`, in PostgreSQL's dialect.
MIGRATIONS: tuple[str, ...] = (
    # 1 -> 2: dead letters, recorded whole before their copy goes to <topic>.dlq (see eventlab.dlq).
    """
CREATE TABLE dead_letters (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         TEXT    NOT NULL,
    source_topic     TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT  NOT NULL,
    digest           TEXT    NOT NULL,
    key              BYTEA,
    value            BYTEA,
    headers          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    event_id         TEXT,
    recorded_at      TIMESTAMP(6) NOT NULL,
    published_at     TIMESTAMP(6),
    replayed_at      TIMESTAMP(6),
    replays          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (consumer, source_topic, source_partition, source_offset, digest)
);
CREATE INDEX dead_letters_by_event ON dead_letters (event_id, consumer);
""",
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = 1 + len(MIGRATIONS)

#: The first half of every advisory lock key eventlab takes ("evlb"); the second half is a table's oid.
_LOCK_SPACE = 0x65766C62
#: Creating or migrating the schema: one opener at a time in the whole database.
_SCHEMA_LOCK = _LOCK_SPACE << 32

_COLUMNS = (
    "position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata,"
    " to_char(recorded_at, 'YYYY-MM-DD HH24:MI:SS.US')"
)


#: One statement for a whole batch, whatever its size (so it is prepared once): the rows come as one
#: array per column and are numbered after the last position, which the write lock keeps still.
_INSERT = b"""
INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,
                    metadata, recorded_at)
SELECT (SELECT coalesce(max(position), 0) FROM events) + n, event_id, aggregate_type, aggregate_id, version,
       event_type, schema_version, data, metadata, recorded_at
FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::int[], %s::text[], %s::text[],
            %s::timestamp[]) WITH ORDINALITY
     AS rows(event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data, metadata,
             recorded_at, n)
ORDER BY n
RETURNING position
"""
#: Every processed marker of a batch at once; one row back per marker that was not there yet.
_MARK = b"INSERT INTO processed SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING RETURNING true"
_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="PostgresEventStore")
Clock = Callable[[], datetime]
#: An event as inserted: event id, aggregate type and id, version, event type, schema version, data, metadata, time.
_NewRow = tuple[str, str, str, int, str, int, str, str, datetime]
_UNIQUE_STREAM_VERSION = "events_aggregate_type_aggregate_id_version_key"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _naive_utc(time: datetime) -> datetime:
    """``time`` as the store keeps it: UTC without a zone (``TIMESTAMP``)."""
    return time.astimezone(UTC).replace(tzinfo=None)


def _stored(
    positions: Sequence[int], rows: list[_NewRow], events: Sequence[NewEvent], recorded_at: datetime
) -> list[StoredEvent]:
    """The stored events of ``rows`` (made from ``events``), at ``positions``."""
    return [
        StoredEvent(position, row[0], *row[1:6], new.event.model_dump(mode="json"), new.metadata, recorded_at)
        for position, row, new in zip(positions, rows, events, strict=True)
    ]


def _translate_error(name: str, doing: str, exc: psycopg.Error) -> StoreError | ConcurrencyError:
    """The eventlab error for a psycopg error raised while ``doing`` something with the store ``name``."""
    if isinstance(exc, pg_errors.UniqueViolation) and exc.diag.constraint_name == _UNIQUE_STREAM_VERSION:
        return ConcurrencyError(f"stream version already taken: {exc.diag.message_detail or exc}")
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.DeadlockDetected | pg_errors.SerializationFailure):
        return StoreBusy(f"{name}: {doing} failed, the store is locked by another writer ({exc}); retry later")
    if isinstance(exc, PoolTimeout):
        return StoreBusy(f"{name}: {doing} failed, no free connection in the pool ({exc}); retry later")
    return StoreError(f"{name}: {doing} failed: {exc}")


def _translated(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run a store method; a psycopg error leaves it as :class:`StoreError` or :class:`ConcurrencyError`."""

    @functools.wraps(method)
    def translated(store: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, *args, **kwargs)
        except PoolTimeout as exc:  # every connection busy, or none to be had: the server is away
            doing = method.__name__.lstrip("_")
            raise store._unreachable(doing) or _translate_error(store.name, doing, exc) from exc
        except psycopg.Error as exc:
            raise _translate_error(store.name, method.__name__.lstrip("_"), exc) from exc

    return translated


def _describe(conninfo: str) -> str:
    """``postgresql://user@host:port/dbname``: where the store is, without a password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"not a PostgreSQL connection string: {exc}") from exc
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"


#: One entry of a search path: a quoted name (which may hold commas and doubled quotes) or a bare one.
_SEARCH_PATH_ENTRY = re.compile(r'\s*("(?:[^"]|"")*"|[^,]+)')


def _first_schema(conn: psycopg.Connection[Any]) -> str | None:
    """The first schema the session's search path names, other than ``$user`` (None: it names none),
    as PostgreSQL reads it: an unquoted name folded to lower case."""
    path = conn.execute("SELECT current_setting('search_path')").fetchone()
    names: list[str] = [name.strip() for name in _SEARCH_PATH_ENTRY.findall(path[0] if path else "")]
    first = next((name for name in names if name and name != '"$user"' and name != "$user"), None)
    if first is None:
        return None
    return first[1:-1].replace('""', '"') if first.startswith('"') and first.endswith('"') else first.lower()


def identity(conninfo: str, connect_timeout: float = 10.0) -> str:
    """Where the events of a store at ``conninfo`` live: ``postgresql://host:port/dbname schema X``
    as the server reads the URL (its schema, existing or to be created), so two URLs that name one
    schema two ways (``public`` by default and ``search_path=public``) have one identity."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as conn:
            found = conn.execute("SELECT current_schema()").fetchone()
            schema = found[0] if found is not None and found[0] is not None else _first_schema(conn)
            info = conn.info
            return f"postgresql://{info.host}:{info.port}/{info.dbname} schema {schema}"
    except psycopg.Error as exc:
        raise _translate_error(_describe(conninfo), "opening", exc) from exc


def _create_schema(conn: psycopg.Connection[Any]) -> str | None:
    """Create the first schema the search path names (``?options=-csearch_path%3Dorders``: a service's
    store of its own) when none of them exists yet; return it (None: the path names none).

    Under the schema lock, as the tables are: every process of a shop opens every store at once, and
    ``CREATE SCHEMA IF NOT EXISTS`` alone fails in all but one of concurrent sessions. An unquoted
    name is folded to lower case, as PostgreSQL reads the search path.
    """
    first = _first_schema(conn)
    if first is None:
        return None
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(first)))
    log.info("event store schema %s (created if it was missing)", first)
    return first


class PostgresEventStore(EventStore):
    """Events in a PostgreSQL schema; safe for many threads, processes and machines.

    ``conninfo`` is a libpq URL or ``key=value`` string (``postgresql://user@host:5432/shop``); the
    tables live in its current schema. Connections come from a pool of at most ``pool_size``. A
    writer waits up to ``busy_timeout`` seconds for the write lock before
    :class:`~eventlab.store.base.StoreBusy`.

    Example:
        >>> store = PostgresEventStore("postgresql://postgres@127.0.0.1:5432/postgres")  # doctest: +SKIP
        >>> store.head()  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        conninfo: str,
        *,
        create: bool = True,
        clock: Clock = _utcnow,
        id_factory: Callable[[], str] = new_id,
        busy_timeout: float = 30.0,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.name = _describe(conninfo)
        self._conninfo = conninfo
        self._clock = clock
        self._new_id = id_factory
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        try:
            # One plain connection first: an unreachable server fails here at once (a pool would retry).
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as conn:
                schema = conn.execute("SELECT current_schema()").fetchone()
                if (schema is None or schema[0] is None) and create:
                    schema = (_create_schema(conn),)
                if schema is None or schema[0] is None:
                    raise StoreError(f"{self.name}: no schema to keep the events in (check search_path)")
                self.name += f" schema {schema[0]}"
                self.write_lock = self._open(conn, create)
        except psycopg.Error as exc:
            raise _translate_error(self.name, "opening", exc) from exc
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=ConnectionPool.check_connection,  # a connection the server dropped (a restart) is replaced
            timeout=max(busy_timeout, connect_timeout),
            name=self.name,
            open=False,
        )
        self._pool.open(wait=True, timeout=connect_timeout)
        # Commits of events are announced on a channel of this store; each store object tells its own
        # announcements (already signalled) from other processes' by the payload.
        self._channel = f"eventlab_{self.write_lock}"
        self._token = uuid.uuid4().hex
        self._notify = f"NOTIFY {self._channel}, '{self._token}'".encode()
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._closing = threading.Event()
        self._listener_lock = threading.Lock()
        self._connect_timeout = connect_timeout

    wakes_across_processes = True

    def __repr__(self) -> str:
        return f"PostgresEventStore({self.name!r})"

    def _unreachable(self, doing: str) -> StoreError | None:
        """A :class:`StoreError` saying the server cannot be reached while ``doing`` something, when
        one new connection fails now (the pool had none to give); else None (its connections were busy)."""
        try:
            psycopg.connect(self._conninfo, connect_timeout=max(1, round(self._connect_timeout))).close()
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # libpq's hint lines after it
            return StoreError(f"{self.name}: {doing} failed: cannot connect to the server ({reason}); retry later")
        return None

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Every pooled connection waits at most the busy timeout for a lock, and runs its transactions
        at read committed whatever the URL's options say: a write takes its positions after the write
        lock is granted, which an older snapshot (repeatable read, serializable) would not see."""
        conn.execute(f"SET lock_timeout = {max(1, round(self._busy_timeout * 1000))}".encode())
        conn.execute(b"SET default_transaction_isolation = 'read committed'")

    # --- the schema ------------------------------------------------------------------------

    def _open(self, conn: psycopg.Connection[Any], create: bool) -> int:
        """Check the schema, then create or migrate it (one transaction) or refuse it; return the
        advisory lock key of the store's writes."""
        version = self._check(conn)
        if version == 0 and not create:
            raise StoreError(f"{self.name} is not an eventlab event store: it has no tables")
        if version != SCHEMA_VERSION:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                version = self._check(conn)  # again: another opener may have been first
                for script in (SCHEMA, *MIGRATIONS)[version:]:
                    conn.execute(script.encode())  # no parameters: one round trip, several statements
                conn.execute(
                    "INSERT INTO eventlab VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            if version == 0:
                log.info("created event store %s (schema version %d)", self.name, SCHEMA_VERSION)
            elif version < SCHEMA_VERSION:
                log.info("migrated event store %s from schema version %d to %d", self.name, version, SCHEMA_VERSION)
        row = conn.execute("SELECT 'events'::regclass::oid::bigint").fetchone()
        assert row is not None
        return int((_LOCK_SPACE << 32) | row[0])

    def _check(self, conn: psycopg.Connection[Any]) -> int:
        """The schema version of the current schema (0: no tables); refuses what is not a store this code reads."""
        columns: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY table_name, ordinal_position"
        ):
            columns.setdefault(table, []).append(column)
        keys: dict[str, list[list[str]]] = {}
        for table, key in conn.execute(
            "SELECT c.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
            " WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
            " AND i.indisunique"
            " GROUP BY i.indexrelid, c.relname"
        ):
            keys.setdefault(table, []).append(key)
        version = None
        if columns.get("eventlab") == ["key", "value"]:
            row = conn.execute("SELECT value FROM eventlab WHERE key = 'schema_version'").fetchone()
            version = None if row is None else str(row[0])
        return check_schema(self.name, columns, version, keys, newest=SCHEMA_VERSION)

    # --- connections and the write lock ---------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection of this thread's open transaction, else one from the pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
        else:
            with self._pool.connection() as conn:
                yield conn

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[Any]]:
        """A write: its own transaction (a savepoint inside :meth:`transaction`), holding the write lock.

        In pipeline mode: the begin, the lock and the statements up to the first result go to the
        server in one round trip (an append is two round trips instead of four).
        """
        with self._connection() as conn, conn.pipeline(), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.write_lock,))
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:  # nested: part of the outer transaction
            yield
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None
        except psycopg.Error as exc:
            raise _translate_error(self.name, "transaction", exc) from exc
        self._committed()

    # --- events ----------------------------------------------------------------------------

    def _new_rows(self, events: Sequence[NewEvent], stored_at: datetime) -> list[_NewRow]:
        """``events`` as rows to insert, recorded at ``stored_at``."""
        return [
            (
                self._new_id(),
                new.event.aggregate_type,
                new.event.aggregate_id,
                new.version,
                new.event.event_type,
                new.event.schema_version,
                new.event.model_dump_json(),
                json.dumps(new.metadata, separators=(",", ":")),
                stored_at,
            )
            for new in events
        ]

    @_translated
    def append_batch(self, appends: Sequence[Append]) -> list[list[StoredEvent] | None]:
        """See :meth:`EventStore.append_batch`: every marker with one statement and every event with
        another, in one savepoint, instead of a savepoint, a marker and the events per input. A marker
        already there or a conflict undoes the savepoint; then the batch goes one by one."""
        recorded_at = self._clock().astimezone(UTC)
        rows = [self._new_rows(item.events, _naive_utc(recorded_at)) for item in appends]
        markers = [item.processed for item in appends if item.processed is not None]
        flat = [row for group in rows for row in group]
        with self.transaction():
            try:
                with self._writing() as conn:
                    conn.execute(self._notify)
                    if markers:
                        found = conn.execute(_MARK, [list(column) for column in zip(*markers, strict=True)])
                        if len(found.fetchall()) != len(markers):
                            raise _Redelivered  # undoes the savepoint
                    positions: list[int] = []
                    if flat:
                        columns = [list(column) for column in zip(*flat, strict=True)]
                        positions = sorted(position for (position,) in conn.execute(_INSERT, columns))
            except _Redelivered:
                return self._append_each(appends)
            except pg_errors.UniqueViolation as exc:
                if exc.diag.constraint_name != _UNIQUE_STREAM_VERSION:
                    raise
                log.debug("a batch of %d appends conflicts: appending one by one", len(appends))
                return self._append_each(appends)
        results: list[list[StoredEvent] | None] = []
        start = 0
        for item, group in zip(appends, rows, strict=True):
            results.append(_stored(positions[start : start + len(group)], group, item.events, recorded_at))
            start += len(group)
        return results

    @_translated
    def append(self, events: Sequence[NewEvent], *, processed: tuple[str, str] | None = None) -> list[StoredEvent]:
        recorded_at = self._clock().astimezone(UTC)
        rows = self._new_rows(events, _naive_utc(recorded_at))
        try:
            with self._writing() as conn:
                conn.execute(self._notify)  # delivered when the transaction commits, if it does
                if processed is not None:
                    marked = conn.execute(
                        "INSERT INTO processed VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING true", processed
                    )
                    if marked.fetchone() is None:
                        raise _Redelivered  # undoes this append's transaction (or savepoint)
                positions: list[int] = []
                if rows:  # positions follow the rows' order; RETURNING's order is not promised, so sorted
                    columns = [list(column) for column in zip(*rows, strict=True)]
                    positions = sorted(position for (position,) in conn.execute(_INSERT, columns))
        except _Redelivered:
            return []
        except psycopg.OperationalError:
            # The connection broke: if that was after the commit reached the server, the events are
            # stored, and saying the append failed would have its caller append them again.
            found = self._stored_after_all(rows)
            if found is None:
                raise
            positions = found
        if positions and getattr(self._local, "conn", None) is None:  # not inside a transaction: committed now
            self._committed()
        return _stored(positions, rows, events, recorded_at)

    def _stored_after_all(self, rows: Sequence[_NewRow]) -> list[int] | None:
        """The positions of ``rows`` if the append whose connection broke committed them after all, read
        on a new connection; None if it did not, or if that cannot be told (then it stays a failure)."""
        if not rows or getattr(self._local, "conn", None) is not None:  # inside a transaction: not committed
            return None
        try:
            with psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
            ) as conn:
                found = conn.execute(
                    "SELECT position FROM events WHERE event_id = ANY(%s)", ([row[0] for row in rows],)
                ).fetchall()
        except psycopg.Error:
            return None
        return sorted(position for (position,) in found) if len(found) == len(rows) else None

    @_translated
    def read_stream(self, aggregate_type: str, aggregate_id: str, after_version: int = 0) -> list[StoredEvent]:
        return [
            EventRecord._make(row).decoded()
            for row in self._rows(
                f"SELECT {_COLUMNS} FROM events WHERE aggregate_type = %s AND aggregate_id = %s AND version > %s"
                " ORDER BY version",
                (aggregate_type, aggregate_id, after_version),
            )
        ]

    def read_all(self, after: int = 0, limit: int | None = None) -> list[StoredEvent]:
        return [record.decoded() for record in self.read_records(after, limit)]

    @_translated
    def read_records(self, after: int = 0, limit: int | None = None) -> list[EventRecord]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s", (after, limit)
        )
        return [EventRecord._make(row) for row in rows]

    @_translated
    def read_correlated(self, correlation_id: str) -> list[StoredEvent]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM events WHERE ((metadata::jsonb) ->> 'correlation_id') = %s ORDER BY position",
            (correlation_id,),
        )
        return [EventRecord._make(row).decoded() for row in rows]

    @_translated
    def head(self) -> int:
        with self._connection() as conn:
            return self._count(conn, "SELECT coalesce(max(position), 0) FROM events")

    @_translated
    def stream_ages(
        self, event_types: Sequence[str], after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, float]]:
        rows = self._rows(
            "SELECT e.position, e.event_type, extract(epoch FROM e.recorded_at - first.recorded_at)::float8"
            " FROM events e JOIN events first ON first.aggregate_type = e.aggregate_type"
            " AND first.aggregate_id = e.aggregate_id AND first.version = 1"
            " WHERE e.event_type = ANY(%s) AND e.position > %s ORDER BY e.position LIMIT %s",
            (list(event_types), after, limit),
        )
        return [(position, kind, seconds) for position, kind, seconds in rows]

    # --- consumers: processed markers and checkpoints ---------------------------------------------

    @_translated
    def is_processed(self, consumer: str, event_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM processed WHERE consumer = %s AND event_id = %s", (consumer, event_id)))

    @_translated
    def unprocessed(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, skip_dead_letters=False)

    @_translated
    def pending(self, consumer: str, event_types: Iterable[str]) -> int:
        return self._unhandled(consumer, event_types, skip_dead_letters=True)

    @_translated
    def processed_count(self, consumer: str) -> int:
        with self._connection() as conn:
            return self._count(conn, "SELECT count(*) FROM processed WHERE consumer = %s", (consumer,))

    @_translated
    def checkpoint(self, name: str) -> int:
        rows = self._rows("SELECT position FROM checkpoints WHERE name = %s", (name,))
        return 0 if not rows else int(rows[0][0])

    @_translated
    def set_checkpoint(self, name: str, position: int) -> None:
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO checkpoints VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

    @_translated
    def advance_checkpoint(self, name: str, position: int) -> int:
        with self._writing() as conn:
            row = conn.execute(
                "INSERT INTO checkpoints VALUES (%s, %s) ON CONFLICT (name)"
                " DO UPDATE SET position = greatest(checkpoints.position, excluded.position) RETURNING position",
                (name, position),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def _unhandled(self, consumer: str, event_types: Iterable[str], *, skip_dead_letters: bool) -> int:
        """Stored events of ``event_types`` without ``consumer``'s processed marker; with
        ``skip_dead_letters``, not those it or the relay dead-lettered."""
        sql = (
            "SELECT count(*) FROM events e WHERE e.event_type = ANY(%s) AND NOT EXISTS"
            " (SELECT 1 FROM processed p WHERE p.consumer = %s AND p.event_id = e.event_id)"
        )
        params: list[object] = [list(event_types), consumer]
        if skip_dead_letters:
            sql += " AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = e.event_id AND d.consumer IN (%s, %s))"
            params += [consumer, RELAY_CONSUMER]
        with self._connection() as conn:
            return self._count(conn, sql, params)

    # --- dead letters ----------------------------------------------------------------------

    @_translated
    def _record_dead_letter(self, message: SourceMessage, reason: str, event_id: str | None) -> DeadLetter:
        source = (message.consumer, message.topic, message.partition, message.offset, message.digest)
        now = _naive_utc(self._clock())
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO dead_letters (consumer, source_topic, source_partition, source_offset, digest, key,"
                " value, headers, reason, event_id, recorded_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT DO NOTHING",
                (*source, message.key, message.value, headers_to_json(message.headers), reason, event_id, now),
            )
            row = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = %s AND source_topic = %s"
                " AND source_partition = %s AND source_offset = %s AND digest = %s".encode(),
                source,
            ).fetchone()
        assert row is not None  # inserted or already there, inside the same transaction
        return _row_to_dead_letter(row)

    @_translated
    def _dead_letters(self, query: DeadLetterQuery) -> list[DeadLetter]:
        where, params = ["true"], list[object]()
        if query.ids is not None:
            where.append("id = ANY(%s)")
            params.append(list(query.ids))
        for column, wanted in (("source_topic", query.topic), ("consumer", query.consumer)):
            if wanted is not None:
                where.append(f"{column} = %s")
                params.append(wanted)
        if query.unpublished:
            where.append("published_at IS NULL")
        rows = self._rows(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [_row_to_dead_letter(row) for row in rows]

    @_translated
    def mark_dead_letter_published(self, dead_letter_id: int) -> None:
        self._stamp_dead_letter("published_at = %s WHERE id = %s AND published_at IS NULL", dead_letter_id)

    @_translated
    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        self._stamp_dead_letter("replayed_at = %s, replays = replays + 1 WHERE id = %s", dead_letter_id)

    def _stamp_dead_letter(self, assignment: str, dead_letter_id: int) -> None:
        """``UPDATE dead_letters SET <assignment>`` with the time now and ``dead_letter_id`` as parameters."""
        with self._writing() as conn:
            conn.execute(f"UPDATE dead_letters SET {assignment}".encode(), (_naive_utc(self._clock()), dead_letter_id))

    @_translated
    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT consumer, count(*) FROM dead_letters GROUP BY consumer ORDER BY consumer")
        return {consumer: int(count) for consumer, count in rows}

    # --- plumbing --------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql.encode(), params).fetchall()

    @staticmethod
    def _count(conn: psycopg.Connection[Any], sql: str, params: Sequence[object] = ()) -> int:
        """The one number ``sql`` answers."""
        row = conn.execute(sql.encode(), params).fetchone()
        assert row is not None
        return int(row[0])

    def lease(self, name: str) -> Lease:
        """A lease held as a session-level advisory lock on a connection of its own (not pooled)."""
        return AdvisoryLease(
            name, self._conninfo, self.name, (_int4(self.write_lock & 0xFFFFFFFF), _int4(zlib.crc32(name.encode())))
        )

    def wait_for_commit(self, seen: int, timeout: float) -> int:
        """See :meth:`EventStore.wait_for_commit`; here commits of events by other processes wake it
        too (``LISTEN``/``NOTIFY``, listened to from the first call on)."""
        self._listen()
        return super().wait_for_commit(seen, timeout)

    def _listen(self) -> None:
        """Start, once, the thread that turns other processes' announcements into wake-ups; wait
        (at most the connect timeout) until it listens."""
        with self._listener_lock:
            if self._listener is None and not self._closing.is_set():
                self._listening.clear()
                self._listener = threading.Thread(target=self._forward, name="eventlab-pg-listener", daemon=True)
                self._listener.start()
        self._listening.wait(self._connect_timeout)

    def _forward(self) -> None:
        """Listen on the store's channel until closed; a lost connection ends this thread (the next
        wait starts another; waiters meanwhile wake on their timeout)."""
        try:
            with psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
            ) as conn:
                conn.execute(f"LISTEN {self._channel}".encode())
                self._listening.set()
                while not self._closing.is_set():
                    for note in conn.notifies(timeout=0.5):
                        if note.payload != self._token:
                            self._committed()
        except psycopg.Error as exc:
            log.warning("%s: not woken by other processes' commits (%s); waiters poll", self.name, exc)
        finally:
            self._listening.set()  # never leave a waiter waiting for it
            with self._listener_lock:
                self._listener = None

    def close(self) -> None:
        self._closing.set()
        listener = self._listener
        if listener is not None:
            listener.join(5)
        self._pool.close()
        self._local = threading.local()


def _int4(value: int) -> int:
    """An unsigned 32-bit number as the signed ``int4`` PostgreSQL takes."""
    return value - (1 << 32) if value >= 1 << 31 else value


#: Server settings of a lease's session: the *server* probes an idle holder (5 s idle, then every
#: 2 s, 3 misses: ~11 s) and gives up on unacknowledged data after 10 s, so a holder whose host or
#: network died loses its session, and the lock, within seconds instead of the kernel's default
#: of hours; a query that hangs (a lock check on a stuck server) ends after 5 s.
LEASE_SESSION = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "statement_timeout": 5_000,
}


#: How long releasing a lease waits for the server to confirm its unlock before closing the session anyway.
RELEASE_WAIT = 1.0


class AdvisoryLease(Lease):
    """A lease that is a session-level advisory lock held on a dedicated connection: when the holder
    dies, its connection drops and the server frees the lock at once.

    The key is two ``int4`` (the ``events`` table's oid, so each store, i.e. schema, has its own
    leases; and a hash of ``name``), a key space apart from the single-``bigint`` locks of writes
    and schema changes. A process killed on a live host closes its connection at once; a host or
    network that dies closes nothing, so both ends watch the connection: the server's keepalives and
    user timeout (:data:`LEASE_SESSION`) end the silent holder's session, freeing the lock for a
    standby within ~11 s, and the client's (libpq keepalives, ``tcp_user_timeout``) make a holder
    cut off from the server see :meth:`held` turn False. Its ``application_name`` names the
    holder's pid (see ``pg_locks`` joined with ``pg_stat_activity``).
    """

    def __init__(self, name: str, conninfo: str, store_name: str, key: tuple[int, int]) -> None:
        super().__init__(name)
        self._conninfo = conninfo
        self._store_name = store_name
        self._key = key
        self._conn: psycopg.Connection[Any] | None = None
        self._locked = False  # this session took the lock (a standby's session never did: nothing to unlock)

    def acquire(self) -> bool:
        if self._conn is not None and self.held():
            return True
        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=f"eventlab {self.name} lease, pid {os.getpid()}"[-63:],
                    options=self._options(),
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                    tcp_user_timeout=10_000,
                )
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self._key).fetchone()
        except psycopg.Error as exc:
            self._drop()
            raise _translate_error(self._store_name, f"taking the {self.name} lease", exc) from exc
        taken = bool(row and row[0])
        self._locked = self._locked or taken
        return taken

    def _options(self) -> str:
        """The URL's ``options`` (e.g. a ``search_path``) and :data:`LEASE_SESSION`'s settings."""
        given = str(conninfo_to_dict(self._conninfo).get("options") or "")
        return " ".join([given, *(f"-c {name}={value}" for name, value in LEASE_SESSION.items())]).strip()

    def held(self) -> bool:
        """Asks the server (one round trip, at most ``statement_timeout``): the lock lives as long as the session."""
        if self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND classid::bigint = %s::bigint & 4294967295 AND objid::bigint = %s::bigint & 4294967295"
                " AND objsubid = 2 AND granted",
                self._key,
            ).fetchone()
        except psycopg.Error as exc:
            log.warning("%s lease on %s lost with its connection: %s", self.name, self._store_name, exc)
            self._drop()
            return False
        return bool(row and row[0])

    def release(self) -> None:
        """Unlock, then end the session: ending it alone frees the lock only once the server has processed
        the disconnect, a moment after ``close()`` returns, so a standby trying at once could miss it. The
        unlock waits at most :data:`RELEASE_WAIT` s for the server's answer: a silent server or network
        must not hold up a stop (closing frees the lock anyway, when the server notices)."""
        if self._conn is not None and self._locked:
            pgconn = self._conn.pgconn
            try:
                pgconn.send_query_params(b"SELECT pg_advisory_unlock($1, $2)", [str(k).encode() for k in self._key])
                pgconn.flush()
                select.select([pgconn.socket], [], [], RELEASE_WAIT)  # readable: the server has answered
            except (psycopg.Error, OSError) as exc:  # a lost connection: its end frees the lock anyway
                log.debug("%s lease on %s: unlock failed (%s); closing frees it", self.name, self._store_name, exc)
        self._drop()

    def _drop(self) -> None:
        conn, self._conn, self._locked = self._conn, None, False
        if conn is not None:
            conn.close()


class _Redelivered(Exception):
    """Raised inside an append's transaction to undo it: its input was already processed."""


def _row_to_dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    return dead_letter_from_row(row, lambda time: time.replace(tzinfo=UTC))

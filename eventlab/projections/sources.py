"""Where the projections read the log from: the caller picks one of three log sources.

- :class:`AttachedLog`: DuckDB's ``sqlite`` extension attaches the store read-only (SQLite itself
  opens the file read-only) and scans it on every core; ~1.6x faster to open at 200k events than
  the other, up to ~4x on big stores. Only for a process that has no ``sqlite3`` connection to
  the file: two SQLite libraries on one WAL file do not see each other's POSIX locks, and the
  second resets the WAL index under the first (a SIGBUS).
- :class:`MirroredLog`: the log read through Python's ``sqlite3``
  (:class:`~eventlab.store.sqlite_log.SqliteLog`) and copied into DuckDB; safe next to a shop
  that has the store open in this process.
- :class:`AttachedLog` over PostgreSQL: DuckDB's ``postgres`` extension (from its wheel, offline)
  attaches the schema a ``postgresql://`` URL searches, read-only twice over: DuckDB's ``READ_ONLY`` attach and a session with
  ``default_transaction_read_only`` on. The password goes into a temporary DuckDB secret (shown
  redacted), never into the attached database's path. No hazard like SQLite's: the default for a
  ``postgresql://`` URL.

All are a :class:`LogSource`: they answer ``head(checkpoint)`` and ``rows(after, upto)`` (a
relation over the store's columns) on the building connection made by :func:`connect`. Which
store a text names is :func:`store_location`'s answer: a SQLite file, or a PostgreSQL URL; which
stores a shop's settings name (``EVENTLAB_STORE_URL`` and every ``EVENTLAB_<SERVICE>_STORE_URL``)
is :func:`store_locations`'. A shop split over several stores is read with one source per store,
each under its own name on one connection (:func:`connect_stores`); :mod:`.engine` merges them.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import duckdb
import duckdb_extensions
import pyarrow as pa

from eventlab.errors import StoreError
from eventlab.projections.sandbox import ProjectionError
from eventlab.settings import SERVICE_PORTS, Settings, service_store_variable
from eventlab.store import check_stores_named, libpq, store_identity
from eventlab.store.base import EventStore
from eventlab.store.log import StoreLog
from eventlab.store.sqlite import check_schema, is_file
from eventlab.store.sqlite_log import SqliteLog

__all__ = [
    "MONEY",
    "AttachedLog",
    "LogSource",
    "MirroredLog",
    "PostgresUrl",
    "cancel_reads",
    "connect",
    "connect_stores",
    "describe",
    "sql_literal",
    "store_location",
    "store_locations",
]


class PostgresUrl(str):
    """A ``postgresql://`` URL (or libpq connection string) naming a PostgreSQL event store."""

    __slots__ = ()


def store_location(store: str | Path) -> Path | PostgresUrl:
    """The store that ``store`` names, as ``EVENTLAB_STORE_URL`` would: a SQLite file (a plain path
    or ``sqlite:///abs/path``) or a PostgreSQL URL (``postgresql://…``, ``postgres://…``).

    A :class:`~pathlib.Path` is always a file. Raises :class:`~eventlab.settings.SettingsError` for
    a URL of another kind and :class:`ProjectionError` for ``memory://`` (a store in another
    process's memory cannot be read from here).

    Example:
        >>> store_location("sqlite:///srv/shop/events.db")
        PosixPath('/srv/shop/events.db')
        >>> type(store_location("postgresql://shop@db:5432/shop")).__name__
        'PostgresUrl'
    """
    if isinstance(store, PostgresUrl):
        return store
    if isinstance(store, Path):
        return store.expanduser()
    settings = Settings(data_dir=Path("."), store_url=store)
    if settings.store_backend == "postgresql":
        return PostgresUrl(store)
    if settings.store_backend == "memory":
        raise ProjectionError("memory:// is a store in one process's memory: give that EventStore itself")
    return settings.store_path


def store_locations(settings: Settings) -> list[Path | PostgresUrl]:
    """Every distinct store a shop run with ``settings`` writes to, for the read side: each service's
    (``EVENTLAB_<SERVICE>_STORE_URL``, else ``EVENTLAB_STORE_URL``), in service order, each store
    once; a default store no service writes to is left out. Raises :class:`ProjectionError` naming
    the variable for ``memory://`` (a store in another process's memory cannot be read from here),
    and naming the variables the shop ran with when the shared store records a service's store of
    its own that ``settings`` leave out (the shop would be read without that service's events).

    Example:
        >>> split = Settings(data_dir=Path("/srv/shop"), service_store_urls={"order": "/srv/order.db"})
        >>> [str(location) for location in store_locations(split)]
        ['/srv/shop/events.db', '/srv/order.db']
    """
    found: dict[str, Path | PostgresUrl] = {}
    for service in SERVICE_PORTS:
        own = settings.store_of(service)
        if own.store_backend == "memory":
            named = service_store_variable(service) if service in settings.service_store_urls else "EVENTLAB_STORE_URL"
            raise ProjectionError(
                f"{named} is memory://, a store in one process's memory: give --store with a SQLite file "
                "or a postgresql:// URL"
            )
        location = PostgresUrl(own.store_url) if own.store_backend == "postgresql" else own.store_path
        found.setdefault(store_identity(own), location)
    try:
        check_stores_named(settings)
    except StoreError as exc:
        raise ProjectionError(f"{exc}, or give every store with --store") from None
    return list(found.values())


def describe(store: Path | PostgresUrl) -> str:
    """``store`` for messages and as its name: a SQLite file's path, or ``postgresql://user@host:port/dbname``
    (no password) with its ``options`` (a service's schema: ``?options=-csearch_path%3Dorders``).

    >>> describe(PostgresUrl("postgresql://shop:secret@db:5432/shop?options=-csearch_path%3Dorders"))
    'postgresql://shop@db:5432/shop?options=-csearch_path%3Dorders'
    """
    if not isinstance(store, PostgresUrl):
        return str(store)
    parts = libpq.conninfo_parts(store)
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    options = f"?options={quote(parts['options'], safe='-_.')}" if parts.get("options") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}{options}"


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled), for the few statements without parameters."""
    if "\x00" in value:
        raise ValueError("NUL character in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


@functools.cache
def _extension_directory() -> Path:
    """This user's private directory (mode 0700, in the temp directory) for DuckDB extensions.

    The sqlite extension is copied into it from its wheel by the first process that needs it
    (DuckDB installs through a temporary file, so concurrent processes are safe) and reused by
    the next ones: one copy of 34 MB per user, none in ``~/.duckdb``, nothing left per process.
    """
    owner = str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()
    path = Path(tempfile.gettempdir()) / f"eventlab-duckdb-{owner}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    foreign = hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077)
    if foreign or not stat.S_ISDIR(info.st_mode):
        raise ProjectionError(f"{path} is not a private directory of this user; remove it")
    return path


def connect(store: Path | PostgresUrl | None = None, *, session: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for building the projections, with the event store ``store`` (a SQLite
    file, or a PostgreSQL URL) attached read-only as ``store``: DuckDB's ``sqlite`` or ``postgres``
    extension, copied from its wheel.

    Without ``store``, nothing is attached: ``store`` is an empty schema that :class:`MirroredLog`
    fills through the store's own reader. Raises :class:`~eventlab.errors.StoreError` if ``store``
    is missing, unreachable or not an event store. The connection can read no other file and its
    configuration is locked; user SQL still never runs on it (an extension's table functions
    ignore those settings, see :mod:`.sandbox`).

    ``session`` names the connections to a PostgreSQL store (their ``application_name``), so that
    :func:`cancel_reads` can stop what they wait for on the server.
    """
    return connect_stores({"store": store}, session=session)


def connect_stores(
    stores: Mapping[str, Path | PostgresUrl | None], *, session: str | None = None
) -> duckdb.DuckDBPyConnection:
    """As :func:`connect`, with each of ``stores`` attached (or, for ``None``, an empty schema for a
    :class:`MirroredLog`) under its key: the several stores of a split shop on one connection."""
    con = duckdb.connect(
        config={
            "extension_directory": str(_extension_directory()),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_persistent_secrets": False,
            "preserve_insertion_order": False,  # every read orders explicitly; copies run ~2x faster
        }
    )
    try:
        for alias, store in stores.items():
            if not alias.isidentifier():
                raise ValueError(f"not a name to attach a store as: {alias!r}")
            if store is None:
                con.execute(f"CREATE SCHEMA {alias}; {_MIRROR_TABLES.format(alias=alias)}")
            elif isinstance(store, PostgresUrl):
                _attach_postgres(con, store, session, alias)
            else:
                _attach_sqlite(con, store, alias)
        con.execute(MONEY)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _attach_sqlite(con: duckdb.DuckDBPyConnection, path: Path, alias: str = "store") -> None:
    path = path.expanduser()
    if not is_file(path):
        raise StoreError(f"no event store at {path}")
    try:
        duckdb_extensions.import_extension("sqlite", con=con)
        con.execute("LOAD sqlite")
        con.execute(f"ATTACH {sql_literal(str(path.resolve()))} AS {alias} (TYPE sqlite, READ_ONLY)")
        con.execute(
            f"SELECT * FROM sqlite_query('{alias}', 'SELECT"
            " (SELECT value FROM eventlab WHERE key = ''schema_version''),"
            " (SELECT count(*) FROM (SELECT position, event_id, aggregate_type, aggregate_id, version, event_type,"
            " schema_version, data, metadata, recorded_at FROM events LIMIT 0))')"
        ).fetchall()
    except duckdb.Error as exc:
        raise StoreError(f"{path} is not an eventlab event store: {exc}") from exc


def _attach_postgres(
    con: duckdb.DuckDBPyConnection, url: PostgresUrl, session: str | None = None, alias: str = "store"
) -> None:
    """Attach the schema ``url`` puts first on the search path as ``alias``, read-only, and check
    it is an event store this eventlab reads (as :class:`~eventlab.store.postgres.PostgresEventStore`
    would, without ever creating or migrating anything)."""
    name = describe(url)
    parts = libpq.conninfo_parts(url)
    password = parts.pop("password", None)
    parts["options"] = f"{parts.get('options', '')} -c default_transaction_read_only=on".strip()
    parts.setdefault("connect_timeout", "10")  # libpq waits forever for a host that never answers
    if session is not None:
        parts["application_name"] = session
    login = libpq.conninfo(parts)  # the password stays out of it: duckdb_databases() shows this text
    try:
        duckdb_extensions.import_extension("postgres", con=con)
        con.execute("LOAD postgres")
        # A secret named outright: DuckDB shows its password redacted, and looks for no stored secrets.
        given = "" if password is None else f", PASSWORD {sql_literal(password)}"
        con.execute(f"CREATE TEMPORARY SECRET {alias}_login (TYPE postgres{given})")
        secret = f", SECRET {alias}_login"
        con.execute(f"ATTACH {sql_literal(login)} AS {alias}_probe (TYPE postgres, READ_ONLY{secret})")
        rows = con.execute(f"SELECT * FROM postgres_query('{alias}_probe', {sql_literal(_CATALOGUE)})").fetchall()
        schema = rows[0][0] if rows else None
        columns: dict[str, list[str]] = {}
        for _, table, column in rows:
            if table is not None:
                columns.setdefault(table, []).append(column)
        version = None
        if columns.get("eventlab") == ["key", "value"]:
            query = "SELECT value FROM eventlab WHERE key = 'schema_version'"
            found = con.execute(f"SELECT * FROM postgres_query('{alias}_probe', {sql_literal(query)})").fetchall()
            version = str(found[0][0]) if found else None
        con.execute(f"DETACH {alias}_probe")
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the event store {name}: {server_reason(exc)}") from exc
    if schema is None:
        raise StoreError(f"{name}: no schema to read the events from (check search_path)")
    name += f" schema {schema}"
    from eventlab.store.postgres import SCHEMA_VERSION  # the postgres extra, as the extension this reads with

    if check_schema(name, columns, version, newest=SCHEMA_VERSION) == 0:
        raise StoreError(f"{name} is not an eventlab event store: it has no tables")
    try:
        con.execute(
            f"ATTACH {sql_literal(login)} AS {alias} (TYPE postgres, READ_ONLY, SCHEMA {sql_literal(schema)}{secret})"
        )
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the event store {name}: {server_reason(exc)}") from exc


def server_reason(error: duckdb.Error) -> str:
    """What DuckDB's error over a PostgreSQL read says, in one line: the server's own message when
    it has one (not the query DuckDB prepared, over several lines).

    Example:
        >>> server_reason(duckdb.BinderException('Failed to prepare query "\\nSELECT 1": ERROR:  permission denied\\n'))
        'permission denied'
    """
    text = str(error)
    found = re.search(r"ERROR:\s+(.+)", text)
    if found is None:
        return text.strip().splitlines()[0] if text.strip() else type(error).__name__
    reason = found[1].strip()
    if "statement timeout" in reason:
        reason += " (the server's statement_timeout, from the URL's options or the role's settings: raise it)"
    return reason


def cancel_reads(url: PostgresUrl, session: str) -> None:
    """Cancel the statements that the connections named ``session`` (see :func:`connect`) run on the
    PostgreSQL server ``url``: DuckDB's interrupt stops a postgres scan between chunks only, never
    one waiting on the server (a table locked by a migration or a ``VACUUM FULL``).

    A failure is logged, not raised: the caller is already stopping a query.
    """
    libpq.cancel_sessions(url, session)


#: The current schema's tables and columns, in order (one row at least, for the schema's name).
_CATALOGUE = """
SELECT current_schema(), c.table_name::text, c.column_name::text
FROM (SELECT 1) one
LEFT JOIN information_schema.columns c ON c.table_schema = current_schema()
ORDER BY c.table_name, c.ordinal_position
"""


#: The ``money(cents)`` macro every connection that runs projection SQL needs.
MONEY = "CREATE MACRO money(cents) AS (cents * 0.01::DECIMAL(3, 2))::DECIMAL(18, 2)"
_MIRROR_TABLES = """
CREATE TABLE {alias}.events (position BIGINT, event_id VARCHAR, aggregate_type VARCHAR, aggregate_id VARCHAR,
    version BIGINT, event_type VARCHAR, schema_version BIGINT, data VARCHAR, metadata VARCHAR, recorded_at VARCHAR);
CREATE TABLE {alias}.checkpoints (name VARCHAR, position BIGINT);
"""


class LogSource(Protocol):
    """Where the projections read the log from: the store's rows after a checkpoint, as a relation
    on the building connection."""

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """The store's last position, its event id, and the event id now at ``checkpoint``."""

    def rows(self, after: int, upto: int) -> str:
        """A relation (SQL text) over the store's rows with ``after < position <= upto``, store columns."""

    def close(self) -> None:
        """Release what the source holds (the building connection is closed by its owner)."""


class MirroredLog:
    """The store's ``events`` and ``checkpoints`` copied into DuckDB from a :class:`SqliteLog`.

    The way to read a store this process has open through :class:`~eventlab.store.SqliteEventStore`
    (a running shop in a notebook): DuckDB's ``sqlite`` extension is a second SQLite library, and
    two SQLite libraries in one process cannot see each other's POSIX locks — the second one to
    open a WAL database resets the shared WAL index under the first (a SIGBUS). Slower than the
    attached scan on big stores; a shop in a notebook has thousands of events, not millions.
    """

    def __init__(self, source: Path | EventStore, con: duckdb.DuckDBPyConnection, alias: str = "store") -> None:
        # a store other than a SQLite file is read through its port (PostgreSQL, memory)
        self._log: SqliteLog | StoreLog = StoreLog(source) if isinstance(source, EventStore) else SqliteLog(source)
        self._con = con
        self._alias = alias  # the schema its tables are copied into (see connect_stores)

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """As :meth:`AttachedLog.head`, from the store itself; also copies its checkpoints."""
        head = self._log.head(checkpoint)
        checkpoints = self._log.checkpoints()
        self._con.execute(f"DELETE FROM {self._alias}.checkpoints")
        with self._registered(checkpoints):
            self._con.execute(f"INSERT INTO {self._alias}.checkpoints SELECT * FROM _store_rows")
        return head

    def rows(self, after: int, upto: int) -> str:
        """Copy the store's new rows up to ``upto``; the relation of those with ``after < position <= upto``."""
        # read from DuckDB, so a rolled-back refresh leaves nothing to skip
        [(copied,)] = self._con.execute(f"SELECT coalesce(max(position), 0) FROM {self._alias}.events").fetchall()
        if after == 0 or upto < copied:  # a rebuild copies everything again
            self._con.execute(f"DELETE FROM {self._alias}.events")
            copied = 0
        rows = self._log.rows(copied, upto)
        if rows.num_rows:
            with self._registered(rows):
                self._con.execute(f"INSERT INTO {self._alias}.events SELECT * FROM _store_rows")
        return f"(SELECT * FROM {self._alias}.events WHERE position > {int(after)} AND position <= {int(upto)})"

    @contextmanager
    def _registered(self, rows: pa.Table) -> Iterator[None]:
        """``rows`` readable as ``_store_rows`` inside (replacing one an interrupted copy left behind)."""
        self._con.unregister("_store_rows")
        self._con.register("_store_rows", rows)
        try:
            yield
        finally:
            self._con.unregister("_store_rows")

    def close(self) -> None:
        """Close the ``sqlite3`` connection (a store read through its port stays open)."""
        self._log.close()


class AttachedLog:
    """The store attached to the building connection as ``store`` by :func:`connect`: a parallel
    scan for a rebuild, a primary-key range query run by the store's own database for a refresh
    (``query_function``: ``sqlite_query`` or ``postgres_query``).

    SQLite (DuckDB's ``sqlite`` extension): only for a process with no ``sqlite3`` connection to
    the file. PostgreSQL (its ``postgres`` extension, read-only; the scan runs by page ranges):
    positions follow commit order there (see :mod:`eventlab.store.postgres`), so a row below the
    head is never committed later.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, query_function: str = "sqlite_query", alias: str = "store"
    ) -> None:
        if query_function not in ("sqlite_query", "postgres_query"):
            raise ValueError(f"not a query function of a store extension: {query_function!r}")
        self._con = con
        self._query = query_function
        self._alias = alias  # what the store is attached as (see connect_stores)

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """The store's last position and its event id, and the event id now at ``checkpoint``: one
        query, answered by the store's database from the primary key."""
        query = (
            "SELECT coalesce(max(position), 0) AS head,"
            " (SELECT event_id FROM events ORDER BY position DESC LIMIT 1) AS head_id,"
            f" (SELECT event_id FROM events WHERE position = {int(checkpoint)}) AS checkpoint_id FROM events"
        )
        ((head, head_id, checkpoint_id),) = self._con.execute(
            f"SELECT * FROM {self._query}('{self._alias}', {sql_literal(query)})"
        ).fetchall()
        return int(head), head_id, checkpoint_id

    def rows(self, after: int, upto: int) -> str:
        """The store's rows with ``after < position <= upto``: a parallel scan from the start, else
        a primary-key range query run by the store's database."""
        after, upto = int(after), int(upto)
        if after == 0:
            return f"(SELECT * FROM {self._alias}.events WHERE position <= {upto})"
        query = f"SELECT * FROM events WHERE position > {after} AND position <= {upto}"
        return f"{self._query}('{self._alias}', {sql_literal(query)})"

    def close(self) -> None:
        """Nothing to close: the attachment ends with the connection."""

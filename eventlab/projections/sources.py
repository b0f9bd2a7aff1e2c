"""Where the projections read the log from: the caller picks one of two log sources.

- :class:`AttachedLog`: DuckDB's ``sqlite`` extension attaches the store read-only (SQLite itself
  opens the file read-only) and scans it on every core; ~1.6x faster to open at 200k events than
  the other, up to ~4x on big stores. Only for a process that has no ``sqlite3`` connection to
  the file: two SQLite libraries on one WAL file do not see each other's POSIX locks, and the
  second resets the WAL index under the first (a SIGBUS).
- :class:`MirroredLog`: the log read through Python's ``sqlite3``
  (:class:`~eventlab.store.sqlite_log.SqliteLog`) and copied into DuckDB; safe next to a shop
  that has the store open in this process.

Both are a :class:`LogSource`: they answer ``head(checkpoint)`` and ``rows(after, upto)`` (a
relation over the store's columns) on the building connection made by :func:`connect`.
"""

from __future__ import annotations

import functools
import getpass
import os
import stat
import tempfile
from pathlib import Path
from typing import Protocol

import duckdb
import duckdb_extensions

from eventlab.errors import StoreError
from eventlab.projections.sandbox import ProjectionError
from eventlab.store.base import EventStore
from eventlab.store.log import StoreLog
from eventlab.store.sqlite_log import SqliteLog

__all__ = ["MONEY", "AttachedLog", "LogSource", "MirroredLog", "connect", "sql_literal"]


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


def connect(store_path: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for building the projections, with the event store at ``store_path``
    attached read-only as ``store`` through DuckDB's ``sqlite`` extension.

    Without ``store_path``, nothing is attached: ``store`` is an empty schema that
    :class:`MirroredLog` fills through Python's ``sqlite3``. Raises
    :class:`~eventlab.errors.StoreError` if ``store_path`` is missing or not an event store. The
    connection can read no other file and its configuration is locked; user SQL still never runs
    on it (an extension's table functions ignore those settings, see :mod:`.sandbox`).
    """
    con = duckdb.connect(
        config={
            "extension_directory": str(_extension_directory()),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "preserve_insertion_order": False,  # every read orders explicitly; copies run ~2x faster
        }
    )
    if store_path is None:
        con.execute(f"CREATE SCHEMA store; {_MIRROR_TABLES}")
    else:
        path = Path(store_path).expanduser()
        if not path.is_file():
            con.close()
            raise StoreError(f"no event store at {path}")
        try:
            duckdb_extensions.import_extension("sqlite", con=con)
            con.execute("LOAD sqlite")
            con.execute(f"ATTACH {sql_literal(str(path.resolve()))} AS store (TYPE sqlite, READ_ONLY)")
            con.execute(
                "SELECT * FROM sqlite_query('store', 'SELECT"
                " (SELECT value FROM eventlab WHERE key = ''schema_version''),"
                " (SELECT count(*) FROM (SELECT position, event_id, aggregate_type, aggregate_id, version, event_type,"
                " schema_version, data, metadata, recorded_at FROM events LIMIT 0))')"
            ).fetchall()
        except duckdb.Error as exc:
            con.close()
            raise StoreError(f"{path} is not an eventlab event store: {exc}") from exc
    con.execute(MONEY)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


#: The ``money(cents)`` macro every connection that runs projection SQL needs.
MONEY = "CREATE MACRO money(cents) AS (cents * 0.01::DECIMAL(3, 2))::DECIMAL(18, 2)"
_MIRROR_TABLES = """
CREATE TABLE store.events (position BIGINT, event_id VARCHAR, aggregate_type VARCHAR, aggregate_id VARCHAR,
    version BIGINT, event_type VARCHAR, schema_version BIGINT, data VARCHAR, metadata VARCHAR, recorded_at VARCHAR);
CREATE TABLE store.checkpoints (name VARCHAR, position BIGINT);
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

    def __init__(self, source: Path | EventStore, con: duckdb.DuckDBPyConnection) -> None:
        # a store other than a SQLite file is read through its port (PostgreSQL, memory)
        self._log: SqliteLog | StoreLog = StoreLog(source) if isinstance(source, EventStore) else SqliteLog(source)
        self._con = con

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """As :meth:`AttachedLog.head`, from the store itself; also copies its checkpoints."""
        head = self._log.head(checkpoint)
        checkpoints = self._log.checkpoints()
        self._con.execute("DELETE FROM store.checkpoints")
        self._con.register("_store_rows", checkpoints)
        try:
            self._con.execute("INSERT INTO store.checkpoints SELECT * FROM _store_rows")
        finally:
            self._con.unregister("_store_rows")
        return head

    def rows(self, after: int, upto: int) -> str:
        """Copy the store's new rows up to ``upto``; the relation of those with ``after < position <= upto``."""
        # read from DuckDB, so a rolled-back refresh leaves nothing to skip
        [(copied,)] = self._con.execute("SELECT coalesce(max(position), 0) FROM store.events").fetchall()
        if after == 0 or upto < copied:  # a rebuild copies everything again
            self._con.execute("DELETE FROM store.events")
            copied = 0
        rows = self._log.rows(copied, upto)
        if rows.num_rows:
            self._con.register("_store_rows", rows)
            try:
                self._con.execute("INSERT INTO store.events SELECT * FROM _store_rows")
            finally:
                self._con.unregister("_store_rows")
        return f"(SELECT * FROM store.events WHERE position > {int(after)} AND position <= {int(upto)})"

    def close(self) -> None:
        """Close the ``sqlite3`` connection (a store read through its port stays open)."""
        self._log.close()


class AttachedLog:
    """The store attached to the building connection as ``store`` by :func:`connect` (DuckDB's
    ``sqlite`` extension): a parallel scan for a rebuild, a primary-key range query run by SQLite
    for a refresh. Only for a process with no ``sqlite3`` connection to the file."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """The store's last position and its event id, and the event id now at ``checkpoint``: one
        query, answered by SQLite from the primary key."""
        query = (
            "SELECT coalesce(max(position), 0), (SELECT event_id FROM events ORDER BY position DESC LIMIT 1),"
            f" (SELECT event_id FROM events WHERE position = {int(checkpoint)}) FROM events"
        )
        ((head, head_id, checkpoint_id),) = self._con.execute(
            f"SELECT * FROM sqlite_query('store', {sql_literal(query)})"
        ).fetchall()
        return int(head), head_id, checkpoint_id

    def rows(self, after: int, upto: int) -> str:
        """The store's rows with ``after < position <= upto``: a parallel scan from the start, else
        a primary-key range query run by SQLite."""
        after, upto = int(after), int(upto)
        if after == 0:
            return f"(SELECT * FROM store.events WHERE position <= {upto})"
        query = f"SELECT * FROM events WHERE position > {after} AND position <= {upto}"
        return f"sqlite_query('store', {sql_literal(query)})"

    def close(self) -> None:
        """Nothing to close: the attachment ends with the connection."""

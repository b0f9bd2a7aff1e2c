"""The event log of a SQLite store read through Python's ``sqlite3``, as Arrow tables.

This is the way to read a store that this process may also have open for writing (a running shop
in a notebook, a test's store): Python's ``sqlite3`` is the library that store uses, so both see
each other's locks. A second SQLite library in the process (DuckDB's ``sqlite`` extension) must
never open the same WAL file: POSIX locks are per process, and the second library resets the WAL
index under the first (a SIGBUS). Nothing here writes: the file is opened ``mode=ro``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa

from eventlab.errors import StoreError
from eventlab.store.sqlite import read_only_uri, verify_event_store

__all__ = ["CHECKPOINTS_SCHEMA", "EVENTS_SCHEMA", "SqliteLog", "arrow_table"]

#: The store's ``events`` table, column by column, as Arrow types.
EVENTS_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("event_id", pa.string()),
        ("aggregate_type", pa.string()),
        ("aggregate_id", pa.string()),
        ("version", pa.int64()),
        ("event_type", pa.string()),
        ("schema_version", pa.int64()),
        ("data", pa.string()),
        ("metadata", pa.string()),
        ("recorded_at", pa.string()),
    ]
)
#: The store's ``checkpoints`` table as Arrow types.
CHECKPOINTS_SCHEMA = pa.schema([("name", pa.string()), ("position", pa.int64())])


def arrow_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """``rows`` (tuples in ``schema``'s column order) as an Arrow table of ``schema``."""
    if not rows:
        return schema.empty_table()
    columns = zip(*rows, strict=True)
    return pa.table(dict(zip(schema.names, columns, strict=True)), schema=schema)


class SqliteLog:
    """A read-only ``sqlite3`` connection to the store at ``path``, answering what projections ask.

    Example:
        >>> log = SqliteLog(store_path)
        >>> head, head_event_id, _ = log.head(0)
        >>> log.rows(0, head).num_rows == head
        True
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            verify_event_store(self.path)
            self._sqlite = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} is not an eventlab event store: {exc}") from exc

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """The last position, its event id, and the event id now at ``checkpoint`` (primary-key lookups)."""
        try:
            head, head_id = self._sqlite.execute(
                "SELECT coalesce(max(position), 0),"
                " (SELECT event_id FROM events ORDER BY position DESC LIMIT 1) FROM events"
            ).fetchone()
            at = self._sqlite.execute("SELECT event_id FROM events WHERE position = ?", (int(checkpoint),)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return int(head), head_id, at[0] if at else None

    def rows(self, after: int, upto: int) -> pa.Table:
        """The store's events with ``after < position <= upto``, in order, every column as stored."""
        try:
            rows = self._sqlite.execute(
                "SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,"
                " metadata, recorded_at FROM events WHERE position > ? AND position <= ? ORDER BY position",
                (int(after), int(upto)),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return arrow_table(rows, EVENTS_SCHEMA)

    def checkpoints(self) -> pa.Table:
        """The store's consumer checkpoints (name, position)."""
        try:
            rows = self._sqlite.execute("SELECT name, position FROM checkpoints").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return arrow_table(rows, CHECKPOINTS_SCHEMA)

    def close(self) -> None:
        """Close the read-only connection."""
        self._sqlite.close()

    def __repr__(self) -> str:
        return f"<SqliteLog {str(self.path)!r}>"

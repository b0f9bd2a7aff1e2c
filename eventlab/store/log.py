"""The event log of any store read through the port, as Arrow tables: what
:class:`~eventlab.store.sqlite_log.SqliteLog` gives for a SQLite file, for every backend
(PostgreSQL, memory, SQLite through its open store).

The projections mirror the log into DuckDB from a reader of this shape (``head``, ``rows``,
``checkpoints``); reading through the port needs no second database library in the process and
no extension, at the cost of a copy through Python (fine for thousands of events, slower than an
attached scan for millions).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from eventlab.store.base import RELAY_CONSUMER, EventStore
from eventlab.store.sqlite_log import CHECKPOINTS_SCHEMA, EVENTS_SCHEMA, arrow_table

__all__ = ["StoreLog"]

#: Events read per call to the store.
_PAGE = 10_000


class StoreLog:
    """Read-only answers about ``store``'s log for the projections; never closes the store.

    ``checkpoints`` names the checkpoints to copy (the port reads them by name).

    Example:
        >>> from eventlab.store import SqliteEventStore
        >>> log = StoreLog(SqliteEventStore(store_path))
        >>> head, head_event_id, _ = log.head(0)
        >>> log.rows(0, head).num_rows == head
        True
    """

    def __init__(self, store: EventStore, checkpoints: Sequence[str] = (RELAY_CONSUMER,)) -> None:
        self.store = store
        self._checkpoints = tuple(checkpoints)

    def head(self, checkpoint: int) -> tuple[int, str | None, str | None]:
        """The last position, its event id, and the event id now at ``checkpoint``."""
        head = self.store.head()
        last = self.store.read_records(after=head - 1, limit=1) if head else []
        at = self.store.read_records(after=checkpoint - 1, limit=1) if checkpoint > 0 else []
        return (
            head,
            last[0].event_id if last else None,
            at[0].event_id if at and at[0].position == checkpoint else None,
        )

    def rows(self, after: int, upto: int) -> pa.Table:
        """The store's events with ``after < position <= upto``, in order, every column as stored."""
        rows: list[tuple[object, ...]] = []
        while after < upto and (page := self.store.read_records(after=after, limit=_PAGE)):
            rows += [tuple(record) for record in page if record.position <= upto]
            after = page[-1].position
        return arrow_table(rows, EVENTS_SCHEMA)

    def checkpoints(self) -> pa.Table:
        """The named checkpoints that are set (name, position)."""
        rows = [(name, self.store.checkpoint(name)) for name in self._checkpoints]
        return arrow_table([row for row in rows if row[1]], CHECKPOINTS_SCHEMA)

    def close(self) -> None:
        """Nothing to release: the store belongs to its opener."""

    def __repr__(self) -> str:
        return f"<StoreLog {self.store!r}>"

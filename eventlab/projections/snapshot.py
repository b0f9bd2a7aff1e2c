"""Reading the relations of one DuckDB schema, and "as of" snapshots: the same SQL over a cut log.

The live relations live in schema ``main``; a snapshot at position ``n`` is schema ``as_of_<n>``:
a view of ``events`` cut at ``n`` and every relation rendered over it, computed when read. Both
read through :class:`SchemaRelations`, so a snapshot answers exactly as the live projections do.
"""

from __future__ import annotations

import operator
import threading
from datetime import datetime
from typing import TYPE_CHECKING, SupportsIndex

import duckdb
import polars as pl

from eventlab.projections.definitions import RELATIONS
from eventlab.projections.render import snapshot_html
from eventlab.projections.sandbox import ProjectionError, bounded, time_limit

if TYPE_CHECKING:
    from eventlab.projections.engine import Projections

__all__ = ["SchemaRelations", "Snapshot", "snapshot_views"]


class SchemaRelations:
    """The relations of the DuckDB schema :attr:`schema` on one connection, read in their documented order.

    Each relation is read through a cursor of its own (a connection to the same database), so threads
    can read relations while another refreshes them: a reader sees the last committed refresh.
    """

    schema: str
    _con: duckdb.DuckDBPyConnection
    _turn: threading.RLock  # held while the connection is used, here only to open a cursor

    def relation(self, name: str) -> duckdb.DuckDBPyRelation:
        """The relation ``name`` (``events`` or one of :data:`~eventlab.projections.RELATIONS`) as a
        lazy DuckDB relation, in its documented order."""
        return self._relation(self._cursor(), name)

    def select(self, name: str) -> str:
        """The ``SELECT`` of the relation ``name`` in its documented order: the same in the query sandbox,
        which holds this schema too (``eventlab show`` reads it there, within ``EVENTLAB_QUERY_MEMORY``)."""
        if name == "events":
            order_by = "position"
        elif name in RELATIONS:
            order_by = RELATIONS[name].order_by
        else:
            raise ProjectionError(f"unknown relation {name!r}; known: events, {', '.join(RELATIONS)}")
        return f"SELECT * FROM {self.schema}.{name} ORDER BY {order_by}"

    def _relation(self, con: duckdb.DuckDBPyConnection, name: str) -> duckdb.DuckDBPyRelation:
        return con.sql(self.select(name))

    def pl(self, name: str, *, limit: int | None = None, timeout: float | None = None) -> pl.DataFrame:
        """The relation ``name`` as a polars DataFrame (handed over through Arrow): its first
        ``limit`` rows (default all), computed in at most ``timeout`` seconds (default no limit)."""
        whole = isinstance(limit, SupportsIndex) and not isinstance(limit, bool)
        if limit is not None and (not whole or operator.index(limit) < 0):
            raise ProjectionError(f"limit must be a whole number of rows, at least 0 (None: all), not {limit!r:.40}")
        seconds = time_limit(timeout)
        con = self._cursor()
        relation = self._relation(con, name)
        if limit is not None:
            relation = relation.limit(operator.index(limit))
        try:
            return bounded([con], relation.pl, seconds)
        except duckdb.Error as exc:
            raise ProjectionError(f"cannot read the relation: {exc}") from exc

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._turn:
            return self._con.cursor()


def snapshot_views(position: int) -> list[str]:
    """The statements creating schema ``as_of_<position>``: every relation over ``events`` cut there."""
    schema = f"as_of_{int(position)}"
    inputs = {name: f"{schema}.{name}" for name in ("events", *RELATIONS)}
    statements = [
        f"CREATE SCHEMA {schema}",
        f"CREATE VIEW {schema}.events AS SELECT * FROM main.events WHERE position <= {int(position)}",
    ]
    return statements + [f"CREATE VIEW {schema}.{r.name} AS {r.render(inputs)}" for r in RELATIONS.values()]


class Snapshot(SchemaRelations):
    """The projections as of one position of the log: views in the DuckDB schema ``as_of_<position>``
    (usable in :meth:`Projections.sql`), made by :meth:`Projections.as_of`.

    The same SQL as the live relations, over ``events`` cut at ``position``; computed when read.

    Example:
        >>> from eventlab.projections import Projections
        >>> snapshot = Projections(store_path).as_of(position=20)
        >>> snapshot.pl("inventory")["sold"].to_list()  # stock as it was after event 20
        [2, 1]
    """

    def __init__(
        self, projections: Projections, con: duckdb.DuckDBPyConnection, position: int, recorded_at: datetime | None
    ) -> None:
        self.projections = projections
        self._con = con
        self._turn = projections._turn
        self.position = position
        self.recorded_at = recorded_at
        self.schema = f"as_of_{position}"

    def __repr__(self) -> str:
        where = self.projections.source
        return f"<Snapshot of {where!r} as of position {self.position} ({self.recorded_at} UTC)>"

    def _repr_html_(self) -> str:
        return snapshot_html(self.position, self.recorded_at, self.schema)

"""Ad-hoc, read-only SQL over an event store and its projections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from eventlab.projections.engine import ProjectionError, Projections

__all__ = ["query"]


def query(store_path: str | Path, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Run one ``SELECT`` over the projections of the store at ``store_path``; return its rows.

    The query sees every relation of :attr:`Projections.names` and the store's own tables as
    ``store.events``, ``store.checkpoints``, … Nothing can reach the store: it is attached
    read-only, the DuckDB connection cannot open other files, and anything but a single read is
    refused with :class:`~eventlab.projections.ProjectionError`. Values go in ``params``
    (``?`` or ``$name``), never into the SQL text.

    Example:
        >>> by_status = query("/tmp/doc-shop/events.db", "SELECT status, count(*) AS n FROM orders GROUP BY status")
        >>> query("/tmp/doc-shop/events.db", "SELECT * FROM orders WHERE user_id = ?", ["U001"]).height
        3
    """
    with Projections(store_path) as projections:
        relation = projections.sql(sql, params)
        try:
            return relation.pl()
        except duckdb.Error as exc:
            raise ProjectionError(f"query failed: {exc}") from exc

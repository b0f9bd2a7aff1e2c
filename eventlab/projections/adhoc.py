"""Ad-hoc, read-only SQL over an event store and its projections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import polars as pl

from eventlab.projections.engine import Projections, Source
from eventlab.projections.sandbox import DEFAULT_TIMEOUT, ProjectionError
from eventlab.store import ShopStores

__all__ = ["query"]


def query(
    store_path: Source | ShopStores | Sequence[Source],
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    attach: bool = False,
) -> pl.DataFrame:
    """Run one ``SELECT`` over the projections of the store at ``store_path`` (a SQLite file, a
    ``postgresql://`` URL, or an open store; or a shop's several stores, seen as one log); return its rows.

    The query sees every relation of :attr:`Projections.names` and the store's own tables as
    ``store.events``, ``store.checkpoints``, … It runs in a sandbox that holds those and can open
    no file, URL or extension (:class:`~eventlab.projections.QueryRefused`), for at most
    ``timeout`` seconds (:class:`~eventlab.projections.QueryTimeout`; ``None``/``0``: no limit);
    anything but a single read is refused with :class:`~eventlab.projections.ProjectionError`.
    Values go in ``params`` (``?`` or ``$name``), never into the SQL text. ``attach`` reads the
    store with DuckDB's scan (see :class:`Projections`), for a process that does not have it open.

    Example:
        >>> by_status = query(store_path, "SELECT status, count(*) AS n FROM orders GROUP BY status")
        >>> query(store_path, "SELECT * FROM orders WHERE user_id = ?", ["U1"]).height
        3
    """
    with Projections(store_path, attach=attach) as projections:
        relation = projections.sql(sql, params, timeout=timeout)
        try:
            return relation.pl()
        except duckdb.Error as exc:
            raise ProjectionError(f"query failed: {exc}") from exc

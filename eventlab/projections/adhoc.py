"""Ad-hoc, read-only SQL over an event store and its projections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import polars as pl
from duckdb.sqltypes import DuckDBPyType

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
    memory: int | str | None = None,
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
    ``memory``: what the query may use, in bytes or a size like ``"512MiB"`` (default
    ``EVENTLAB_QUERY_MEMORY``, else 2 GiB).

    Example:
        >>> by_status = query(store_path, "SELECT status, count(*) AS n FROM orders GROUP BY status")
        >>> query(store_path, "SELECT * FROM orders WHERE user_id = ?", ["U1"]).height
        3
    """
    with Projections(store_path, attach=attach, memory=memory) as projections:
        relation = projections.sql(sql, params, timeout=timeout)
        try:
            return _as_text_where_polars_cannot(relation).pl()
        except duckdb.Error as exc:
            raise ProjectionError(f"query failed: {exc}") from exc


#: DuckDB types polars cannot take from Arrow: ``INTERVAL`` (what subtracting two times gives) and ``UNION``.
_NOT_IN_POLARS = frozenset({"interval", "union"})


def _holds(column: DuckDBPyType) -> bool:
    """Whether ``column`` is, or holds (in a struct, list, map or array), a type polars cannot take."""
    if column.id in _NOT_IN_POLARS:
        return True
    if column.id not in ("struct", "list", "map", "array"):
        return False
    return any(isinstance(child, DuckDBPyType) and _holds(child) for _, child in column.children)


#: Python's first and last instant: DuckDB's dates reach 5 million years and ``infinity``, which polars
#: cannot show (it panics: "out-of-range date") and reads wrongly (``-infinity`` as 1970-01-01).
_FIRST, _LAST = "'0001-01-01 00:00:00'", "'9999-12-31 23:59:59.999999'"
_TIMESTAMP_BEYOND = (
    f"NOT isfinite({{c}}) OR {{c}}::TIMESTAMP < TIMESTAMP {_FIRST} OR {{c}}::TIMESTAMP > TIMESTAMP {_LAST}"
)
#: How a column of each DuckDB time type is told to hold a value Python has no object for.
_BEYOND = {
    "date": "NOT isfinite({c}) OR {c} < DATE '0001-01-01' OR {c} > DATE '9999-12-31'",
    "time": "{c} = TIME '24:00:00'",  # read as None
    **dict.fromkeys(("timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns"), _TIMESTAMP_BEYOND),
    "timestamp with time zone": "NOT isfinite({c}) OR {c} < TIMESTAMPTZ '0001-01-01 00:00:00+00'"
    " OR {c} > TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'",
}


def _beyond(column: DuckDBPyType, value: str, depth: int = 0) -> str | None:
    """SQL telling whether ``value`` (of type ``column``) is, or holds in a struct, list, array or map, a
    date or time Python has no object for; None when its type holds no date or time."""
    if column.id in _BEYOND:
        return f"coalesce({_BEYOND[column.id].format(c=value)}, false)"
    if column.id not in ("struct", "list", "array", "map"):
        return None
    children = {name: child for name, child in column.children if isinstance(child, DuckDBPyType)}
    if column.id == "struct":
        parts = [(f"struct_extract({value}, {_literal(name)})", child, False) for name, child in children.items()]
    elif column.id == "map":
        parts = [(f"map_keys({value})", children["key"], True), (f"map_values({value})", children["value"], True)]
    else:
        parts = [(value, children["child"], True)]
    item = f"_x{depth}"  # a lambda's parameter, one name per level
    checks = []
    for part, child, listed in parts:
        check = _beyond(child, item if listed else part, depth + 1)
        if check is not None and listed:
            check = f"coalesce(list_bool_or(list_transform({part}, lambda {item}: {check})), false)"
        if check is not None:
            checks.append(f"({check})")
    return " OR ".join(checks) or None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _beyond_python(relation: duckdb.DuckDBPyRelation, quoted: list[str]) -> set[str]:
    """The columns of ``relation`` holding, at the top or nested in a struct, list, array or map, a date or
    time Python has no object for (``infinity``, year 0 or 10000): polars panics on those even nested."""
    checks = {
        name: check
        for name, column in zip(quoted, relation.types, strict=True)
        if (check := _beyond(column, name)) is not None
    }
    if not checks:
        return set()
    row = relation.aggregate(", ".join(f"coalesce(bool_or({check}), false)" for check in checks.values())).fetchone()
    return {name for name, beyond in zip(checks, row or (), strict=True) if beyond}


def _as_text_where_polars_cannot(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """``relation`` with each column polars cannot take as DuckDB's text for it (``1 day 02:00:00``,
    ``infinity``)."""
    quoted = ['"' + name.replace('"', '""') + '"' for name in relation.columns]
    beyond = _beyond_python(relation, quoted)
    if not beyond and not any(_holds(column) for column in relation.types):
        return relation
    return relation.project(
        ", ".join(
            f"CAST({name} AS VARCHAR) AS {name}" if name in beyond or _holds(column) else name
            for name, column in zip(quoted, relation.types, strict=True)
        )
    )

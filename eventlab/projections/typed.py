"""The typed ``events`` relation: each stored JSON document parsed once into the columns projections use.

Materialising strings is most of the cost of a copy (every envelope column costs ~20 % more at 1M
rows), so only the columns the projections read are kept; the full rows, JSON included, stay in
``store.events``.
"""

from __future__ import annotations

import json

from eventlab.projections.sources import sql_literal

__all__ = ["EVENTS_DOC", "create_typed_events", "typed_events"]

#: What the typed ``events`` table holds.
EVENTS_DOC = (
    "The event log, typed: position, event_type, recorded_at (UTC), the writing service "
    "(metadata.source) and the data fields the projections use as columns (order_id, user_id, "
    "product_id, quantity, total_cents, amount_cents, status, reason, detail, kind, name, price_cents, "
    "initial_stock; lines of OrderCreated). The full rows, JSON included, stay in store.events. "
    "Over several stores (a service with a store of its own), position is the place in the merged "
    "log and store and store_position say where the event is stored."
)

#: Data fields lifted into columns of ``events`` (missing ones are NULL), as a ``json_transform`` shape.
_DATA_SHAPE = {
    "order_id": "VARCHAR",
    "user_id": "VARCHAR",
    "product_id": "VARCHAR",
    "quantity": "BIGINT",
    "total_cents": "BIGINT",
    "amount_cents": "BIGINT",
    "status": "VARCHAR",
    "reason": "VARCHAR",
    "detail": "VARCHAR",
    "kind": "VARCHAR",
    "name": "VARCHAR",
    "price_cents": "BIGINT",
    "initial_stock": "BIGINT",
    "lines": [{"product_id": "VARCHAR", "quantity": "BIGINT", "unit_price_cents": "BIGINT"}],
}


def typed_events(rows: str, *, split: bool = False) -> str:
    """The ``SELECT`` of the typed ``events`` relation over ``rows`` (a relation with the store's columns).

    A document that is not JSON (or is JSON ``null``) is left out instead of stopping every
    projection; the audit's ``event_data_valid`` names its position. ``split``: ``rows`` come from
    several stores and also have ``store`` and ``store_position``, kept after ``position`` (one
    store's ``events`` goes without them, so the default stays as fast as ever).
    """
    return f"SELECT * EXCLUDE ({_UNPARSED}) FROM ({_parsed(rows, split)}) WHERE NOT {_UNPARSED}"


def create_typed_events(table: str, rows: str, *, split: bool = False) -> list[str]:
    """The statements that fill the new table ``table`` with :func:`typed_events` of ``rows``, each
    document parsed once.

    As one ``SELECT``, DuckDB pushes the filter on the parsed document below the projection and so
    parses every document twice (measured at 1M events: ~0.35 s of CPU, a third of the copy). Here
    the copy keeps a flag of the documents that did not parse, deletes those rows (none, normally)
    and drops the flag, which costs next to nothing.
    """
    return [
        f"CREATE OR REPLACE TABLE {table} AS {_parsed(rows, split)}",
        f"DELETE FROM {table} WHERE {_UNPARSED}",
        f"ALTER TABLE {table} DROP COLUMN {_UNPARSED}",
    ]


#: The column that flags a document :func:`typed_events` leaves out, while a copy is being made.
_UNPARSED = "_unparsed"


def _parsed(rows: str, split: bool) -> str:
    """Every row of ``rows`` typed, flagged in :data:`_UNPARSED` when its document did not parse."""
    fields = ", ".join(f"d.{name} AS {name}" for name in _DATA_SHAPE if name != "lines")
    where, stored = (
        (
            "store, store_position, ",
            "CAST(store AS VARCHAR) AS store, CAST(store_position AS BIGINT) AS store_position,",
        )
        if split
        else ("", "")
    )
    return f"""
    SELECT position, {where}event_type, recorded_at, source, {fields},
           CASE WHEN event_type = 'OrderCreated' THEN d.lines END AS lines,
           d IS NULL AS {_UNPARSED}
    FROM (
        SELECT CAST(position AS BIGINT) AS position, {stored}
               CAST(event_type AS VARCHAR) AS event_type,
               CAST(recorded_at AS TIMESTAMP) AS recorded_at,
               try(json_extract_string(metadata, '$.source')) AS source,
               try(json_transform(data, {sql_literal(json.dumps(_DATA_SHAPE))})) AS d
        FROM {rows}
    )
    """

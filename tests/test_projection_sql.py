"""The projections' faster SQL says what the plain SQL says: edge cases a shop's store rarely holds.

Plain DuckDB over hand-made rows (no store, no broker): the rewritten forms are checked against
the straightforward definition they replace, row for row, NULLs included.
"""

from __future__ import annotations

import random

import duckdb
import pytest

from eventlab.projections import RELATIONS
from eventlab.projections.definitions import _STOCK_DELTAS
from eventlab.projections.typed import create_typed_events, typed_events

#: inventory_history as the textbook window: a running sum per product, partitioned by product,
#: over the same deltas (how each event moves stock is not what is checked here).
PARTITIONED_HISTORY = f"""
SELECT position, recorded_at, product_id, event_type, order_id, quantity,
       CAST(sum(d_available) OVER w AS BIGINT) AS available,
       CAST(sum(d_reserved) OVER w AS BIGINT) AS reserved,
       CAST(sum(d_sold) OVER w AS BIGINT) AS sold
FROM ({_STOCK_DELTAS})
WINDOW w AS (PARTITION BY product_id ORDER BY position ROWS UNBOUNDED PRECEDING)
"""


@pytest.mark.parametrize("seed", range(8))
def test_inventory_history_matches_a_running_sum_per_product_nulls_included(seed: int) -> None:
    # given stock events of a few products, some without a product or a quantity (a broken writer),
    # mixed with events of other types
    rng = random.Random(seed)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE events (position BIGINT, recorded_at TIMESTAMP, product_id VARCHAR, event_type VARCHAR,"
        " order_id VARCHAR, quantity BIGINT)"
    )
    types = ["StockAdded", "StockReserved", "StockReleased", "StockSold", "OrderCreated"]
    rows = [
        (
            position,
            f"2025-01-01 09:00:{position % 60:02d}",
            rng.choice(["sku-1", "sku-2", "sku-3", None]),
            rng.choice(types),
            f"order-{position % 7}",
            rng.choice([1, 2, 5, 100, None]),
        )
        for position in range(1, rng.choice([6, 60, 400]))
    ]
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
    for upto in (0, 1, 3, len(rows) // 2, len(rows)):
        cut = {"events": f"(SELECT * FROM events WHERE position <= {upto})"}
        # when inventory_history is read, then it is the partitioned running sum, row for row and type for type
        ours = con.sql(RELATIONS["inventory_history"].render(cut) + " ORDER BY position")
        plain = con.sql(PARTITIONED_HISTORY.format(**cut) + " ORDER BY position")
        assert ours.types == plain.types
        assert ours.fetchall() == plain.fetchall()


def test_a_document_that_does_not_parse_is_left_out_of_a_rebuild_as_of_a_refresh() -> None:
    # given stored rows whose data is JSON, text that is not JSON, JSON null, and a JSON array
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE raw AS SELECT * FROM (VALUES"
        ' (1, \'OrderCreated\', \'2025-01-01 09:00:00\', \'{"order_id": "O1", "lines": []}\', \'{"source": "order"}\'),'
        " (2, 'StockAdded', '2025-01-01 09:00:01', '{not json', '{}'),"
        " (3, 'StockAdded', '2025-01-01 09:00:02', 'null', '{}'),"
        " (4, 'StockAdded', '2025-01-01 09:00:03', '[]', 'not json either'),"
        ' (5, \'StockSold\', \'2025-01-01 09:00:04\', \'{"product_id": "P1", "quantity": 2}\', \'{"source": "inventory"}\')'
        ") t(position, event_type, recorded_at, data, metadata)"
    )
    # when the typed events are built by a rebuild (a copy that deletes what did not parse) and by a refresh
    for statement in create_typed_events("rebuilt", "raw"):
        con.execute(statement)
    refreshed = con.sql(f"{typed_events('raw')} ORDER BY position")
    rebuilt = con.sql("SELECT * FROM rebuilt ORDER BY position")
    # then both leave out the rows that did not parse (not JSON, JSON null) and keep the same columns
    assert rebuilt.columns == refreshed.columns and "_unparsed" not in rebuilt.columns
    assert rebuilt.fetchall() == refreshed.fetchall()
    assert [row[0] for row in con.sql("SELECT position FROM rebuilt ORDER BY position").fetchall()] == [1, 4, 5]
    assert con.sql("SELECT source, product_id, quantity FROM rebuilt WHERE position = 5").fetchall() == [
        ("inventory", "P1", 2)
    ]

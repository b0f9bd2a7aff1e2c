"""Projections: hand-computed read models of a small shop, incremental = rebuild, as-of, read-only, Parquet.

The story (see ``projection_story.standard_story``) has 51 events, one saga step every 10 ms:
O1 completed, O2 out of stock, O3 payment declined and released, O4 completed a day later, O5
confirmed and waiting for payment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from projection_story import START, ShopStory, standard_story

from eventlab.errors import EventlabError, StoreError
from eventlab.events import StockAdded
from eventlab.projections import (
    PROJECTIONS,
    RELATIONS,
    ProjectionError,
    Projections,
    export_parquet,
    query,
)
from eventlab.projections.cli import add_commands
from eventlab.projections.sources import MirroredLog, _extension_directory
from eventlab.store.base import NewEvent


def at(ms: int, day: int = 0) -> datetime:
    """The story's clock: ``ms`` milliseconds after 09:00 on day ``day`` (naive UTC, as DuckDB returns)."""
    return (START + timedelta(days=day, milliseconds=ms)).replace(tzinfo=None)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard story, shared: every test here only reads it (and checks that it stays so)."""
    path = tmp_path_factory.mktemp("story") / "events.db"
    standard_story(path).store.close()
    return path


@pytest.fixture(scope="module")
def projections(store_path: Path):
    with Projections(store_path, attach=True) as opened:  # nothing has it open: DuckDB's scan
        yield opened


# -- the read models, by hand ---------------------------------------------------------------------


def test_orders_have_status_totals_and_every_saga_step(projections):
    orders = projections.pl("orders")
    assert orders.select("order_id", "user_id", "status", "total_cents", "line_count", "units").rows() == [
        ("O1", "U1", "completed", 2250, 2, 3),
        ("O2", "U2", "cancelled", 2500, 1, 10),
        ("O3", "U2", "cancelled", 3000, 1, 3),
        ("O4", "U1", "completed", 1000, 1, 1),
        ("O5", "U1", "confirmed", 250, 1, 1),
    ]
    assert orders["total"].to_list() == [
        Decimal("22.50"),
        Decimal("25.00"),
        Decimal("30.00"),
        Decimal("10.00"),
        Decimal("2.50"),
    ]
    o1, o2, o3, o4, o5 = orders.iter_rows(named=True)
    assert (
        o1["created_at"],
        o1["reserved_at"],
        o1["confirmed_at"],
        o1["paid_at"],
        o1["completed_at"],
        o1["stock_sold_at"],
    ) == (at(70), at(80), at(90), at(120), at(130), at(140))
    assert o1["duration_ms"] == 60.0 and o1["cancel_reason"] is None and o1["last_position"] == 17
    assert (o2["rejected_at"], o2["cancelled_at"], o2["reserved_at"]) == (at(180), at(190), None)
    assert (o2["cancel_reason"], o2["cancel_detail"]) == ("out_of_stock", "P2: 10 requested, 4 available")
    assert (o3["payment_failed_at"], o3["cancelled_at"], o3["stock_released_at"]) == (at(270), at(280), at(290))
    assert (o3["cancel_reason"], o3["cancel_detail"], o3["paid_at"]) == ("payment_failed", "card declined", None)
    assert o4["created_at"] == at(320, day=1) and o4["duration_ms"] == 60.0
    assert o5["paid_at"] is None and o5["duration_ms"] is None


def test_order_lines_are_priced_as_placed(projections):
    lines = projections.pl("order_lines").filter(pl.col("order_id") == "O1")
    assert lines.select("line_no", "product_id", "quantity", "unit_price_cents", "amount_cents").rows() == [
        (1, "P1", 2, 1000, 2000),
        (2, "P2", 1, 250, 250),
    ]


def test_saga_timeline_names_each_step_its_service_and_its_duration(projections):
    o1 = projections.sql("SELECT * FROM saga_timeline WHERE order_id = ? ORDER BY step", ["O1"]).pl()
    assert o1.select("step", "position", "event_type", "service", "detail", "since_previous_ms").rows() == [
        (1, 7, "OrderCreated", "order", None, None),
        (2, 8, "StockReserved", "inventory", "P1 x2", 10.0),
        (3, 9, "StockReserved", "inventory", "P2 x1", 0.0),
        (4, 10, "ReservationConfirmed", "inventory", None, 0.0),
        (5, 11, "OrderConfirmed", "order", None, 10.0),
        (6, 12, "EmailRequested", "notification", "order_confirmed", 10.0),
        (7, 13, "EmailSent", "notification", "order_confirmed", 10.0),
        (8, 14, "PaymentCompleted", "payment", "COMPLETED", 10.0),
        (9, 15, "OrderCompleted", "order", None, 10.0),
        (10, 16, "StockSold", "inventory", "P1 x2", 10.0),
        (11, 17, "StockSold", "inventory", "P2 x1", 0.0),
        (12, 18, "EmailRequested", "notification", "order_completed", 10.0),
        (13, 19, "EmailSent", "notification", "order_completed", 10.0),
    ]
    assert o1["since_start_ms"].to_list()[-1] == 90.0
    payment = "SELECT detail FROM saga_timeline WHERE event_type = 'PaymentCompleted' AND order_id = ?"
    assert projections.sql(payment, ["O3"]).fetchall() == [("FAILED: card declined",)]


def test_inventory_now_and_after_every_stock_event(projections):
    stock = projections.pl("inventory").select("product_id", "initial_stock", "available", "reserved", "sold")
    assert stock.rows() == [("P1", 10, 7, 0, 3), ("P2", 5, 3, 1, 1)]
    history = projections.pl("inventory_history")
    assert history.filter(pl.col("product_id") == "P1").select(
        "position", "event_type", "available", "reserved", "sold"
    ).rows() == [
        (4, "StockAdded", 10, 0, 0),
        (8, "StockReserved", 8, 2, 0),
        (16, "StockSold", 8, 0, 2),
        (26, "StockReserved", 5, 3, 2),
        (33, "StockReleased", 8, 0, 2),
        (37, "StockReserved", 7, 1, 2),
        (44, "StockSold", 7, 0, 3),
    ]
    assert history.filter(pl.col("product_id") == "P2")["available"].to_list() == [5, 4, 4, 3]


def test_revenue_counts_completed_orders_only_in_exact_money(projections):
    revenue = projections.pl("revenue")
    assert revenue.rows() == [
        (date(2025, 3, 3), 1, 2250, Decimal("22.50")),
        (date(2025, 3, 4), 1, 1000, Decimal("10.00")),
    ]
    assert revenue.schema["revenue"] == pl.Decimal(18, 2) and revenue.schema["revenue_cents"] == pl.Int64
    assert projections.pl("revenue_by_product").rows() == [
        ("P1", 2, 3, 3000, Decimal("30.00")),
        ("P2", 1, 1, 250, Decimal("2.50")),
    ]
    assert projections.pl("revenue_by_user").select("user_id", "orders", "revenue_cents", "revenue").rows() == [
        ("U1", 2, 3250, Decimal("32.50")),
    ]


def test_funnel_shows_where_orders_drop_out_and_why(projections):
    funnel = projections.pl("funnel")
    assert funnel.select("stage", "orders", "dropped", "in_flight").rows() == [
        ("created", 5, 0, 0),
        ("reserved", 4, 1, 0),
        ("confirmed", 4, 0, 0),
        ("paid", 2, 1, 1),
        ("completed", 2, 0, 0),
    ]
    reasons = projections.sql("SELECT stage, drop_reasons FROM funnel WHERE dropped > 0 ORDER BY step").fetchall()
    assert reasons == [("reserved", {"out_of_stock": 1}), ("paid", {"payment_failed": 1})]
    assert funnel["conversion"].to_list() == [None, 0.8, 1.0, 0.5, 1.0]


def test_payments_attempts_failures_and_failure_rate_over_time(projections):
    attempts = projections.pl("payment_attempts")
    assert attempts.select("position", "order_id", "attempt", "status", "reason", "amount_cents").rows() == [
        (14, "O1", 1, "COMPLETED", None, 2250),
        (31, "O3", 1, "FAILED", "card declined", 3000),
        (42, "O4", 1, "COMPLETED", None, 1000),
    ]
    assert projections.pl("payments").select(
        "minute", "attempts", "failures", "failure_rate", "charged_cents", "cumulative_failure_rate"
    ).rows() == [
        (datetime(2025, 3, 3, 9, 0), 2, 1, 0.5, 2250, 0.5),
        (datetime(2025, 3, 4, 9, 0), 1, 0, 0.0, 1000, 0.3333),
    ]


def test_notifications_per_order_with_what_is_still_unsent(projections):
    assert projections.pl("notifications").select(
        "order_id", "requested", "sent", "kinds_requested", "unsent"
    ).rows() == [
        ("O1", 2, 2, ["order_completed", "order_confirmed"], []),
        ("O2", 1, 1, ["order_cancelled"], []),
        ("O3", 2, 2, ["order_cancelled", "order_confirmed"], []),
        ("O4", 2, 2, ["order_completed", "order_confirmed"], []),
        ("O5", 1, 0, ["order_confirmed"], ["order_confirmed"]),
    ]


def test_every_relation_is_documented_and_readable(projections):
    assert set(projections.names) == {"events", *RELATIONS}
    assert {r.name for p in PROJECTIONS.values() for r in p.relations} == set(RELATIONS)
    for name in projections.names:
        frame = projections.pl(name)
        assert isinstance(frame, pl.DataFrame) and frame.height > 0, name
        assert isinstance(projections.relation(name), duckdb.DuckDBPyRelation)
    assert all(r.doc and r.order_by for r in RELATIONS.values())
    assert projections.pl("events").height == 51 and projections.checkpoint == 51
    assert "orders" in projections._repr_html_() and "position 51" in repr(projections)


# -- incremental, rebuild, as of ------------------------------------------------------------------


def test_incremental_refresh_gives_exactly_what_a_rebuild_gives(tmp_path):
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=500, stock=3)
    story.completed_order("O1", "U1", {"P1": 1})
    with Projections(story.store.path) as incremental:
        assert incremental.checkpoint == 14 and incremental.refresh() == 0
        story.declined_order("O2", "U1", {"P1": 2})
        o3 = story.place("O3", "U1", {"P1": 1})  # its saga goes on after the first refresh
        assert incremental.refresh() == 12
        story.reserve(o3)
        story.pay(o3)
        story.complete(o3)
        story.out_of_stock_order("O4", "U1", {"P1": 9}, available=1)
        assert incremental.refresh() == 15
        with Projections(story.store.path) as rebuilt:
            assert incremental.checkpoint == rebuilt.checkpoint == story.store.head() == 41
            for name in incremental.names:
                assert incremental.pl(name).equals(rebuilt.pl(name)), name
            assert incremental.pl("orders")["status"].to_list() == ["completed", "cancelled", "completed", "cancelled"]
            assert incremental.rebuild() == 41
            assert incremental.pl("orders").equals(rebuilt.pl("orders"))


class StruckByCtrlC:
    """A DuckDB connection on which Ctrl-C's interrupts strike, in turn, the first call of each of
    ``strikes`` (a statement's opening words, or ``unregister``) after the one before: DuckDB's
    interrupt is sent until the interrupted call ends, so the clean-up after the first can be hit too."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *strikes: str) -> None:
        self._con, self._strikes = con, list(strikes)

    def _strike(self, call: str) -> None:
        if self._strikes and call.startswith(self._strikes[0]):
            self._strikes.pop(0)
            raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")

    def execute(self, query: str, *args: object) -> duckdb.DuckDBPyConnection:
        self._strike(query)
        return self._con.execute(query, *args)

    def unregister(self, name: str) -> duckdb.DuckDBPyConnection:
        self._strike("unregister")
        return self._con.unregister(name)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_a_refresh_interrupted_with_its_clean_up_leaves_the_projections_usable(tmp_path):
    # given projections of a store open in this process, and new events to refresh
    story = standard_story(tmp_path / "events.db")
    with Projections(story.store) as projections:
        assert isinstance(projections._log, MirroredLog)
        story.completed_order("O6", "U2", {"P1": 1})
        # when Ctrl-C interrupts the copy of the new events, then the copy's clean-up and the ROLLBACK too
        struck = StruckByCtrlC(projections._con, "INSERT INTO store.events", "unregister", "ROLLBACK")
        projections._con = projections._log._con = struck  # type: ignore[assignment]
        with pytest.raises(StoreError, match="Interrupted"):
            projections.refresh()
        assert not struck._strikes
        # then the next refresh works, and gives what a rebuild gives
        story.declined_order("O7", "U1", {"P2": 1})
        assert projections.refresh() > 0
        with Projections(story.store) as rebuilt:
            assert projections.checkpoint == rebuilt.checkpoint == story.store.head()
            for name in projections.names:
                assert projections.pl(name).equals(rebuilt.pl(name)), name
        assert projections.rebuild() == story.store.head()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"timeout": -1}, "timeout"), ({"timeout": float("nan")}, "timeout"), ({"timeout": "5"}, "timeout")]
    + [({"limit": bad}, "limit") for bad in (float("nan"), -1, 2.5, True, "3")],
)
def test_a_relation_read_with_a_bad_limit_or_timeout_is_refused_naming_it(projections, arguments, named):
    with pytest.raises(ProjectionError, match=named):
        projections.pl("orders", **arguments)


def test_a_relation_read_within_a_limit_and_a_timeout(projections):
    assert projections.pl("orders", limit=2, timeout=30).height == 2
    assert projections.pl("orders", limit=0, timeout=None).height == 0


def test_projections_once_closed_say_so(tmp_path):
    projections = Projections(standard_story(tmp_path / "events.db").store.path)
    projections.close()
    projections.close()  # closing again does nothing
    assert repr(projections).endswith(", closed>")
    for use in (
        projections.refresh,
        lambda: projections.sql("SELECT 1"),
        lambda: projections.relation("orders"),
        lambda: projections.pl("orders"),
        lambda: projections.as_of(position=1),
    ):
        with pytest.raises(ProjectionError, match="closed"):
            use()


def test_a_store_that_lost_events_is_rebuilt_not_patched(tmp_path):
    story = standard_story(tmp_path / "events.db")
    with Projections(story.store.path) as projections:
        with sqlite3.connect(story.store.path) as con:  # e.g. restored from an older backup
            con.execute("DELETE FROM events WHERE position > 19")
        assert projections.refresh() == 19
        assert projections.pl("orders")["order_id"].to_list() == ["O1"]


def garble_events_root(path: Path) -> None:
    """Garble the root page of the events table so that it names one child page where it had many: SQLite
    then reads the rows under the first and the last child, and no error, though most rows are lost."""
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        [(root, size)] = con.execute(
            "SELECT rootpage, (SELECT page_size FROM pragma_page_size()) FROM sqlite_master WHERE name = 'events'"
        ).fetchall()
    data = bytearray(path.read_bytes())
    at = (root - 1) * size
    assert data[at] == 0x05  # an interior page of a table: bytes 3-4 count its cells
    data[at + 3 : at + 5] = (1).to_bytes(2, "big")
    path.write_bytes(data)


@pytest.mark.parametrize("attach", [False, True])
def test_a_store_with_a_garbled_page_is_an_error_not_an_answer_from_part_of_the_log(tmp_path, attach):
    # given a store of 2,051 events whose events table's root page was garbled (SQLite reads some rows, no error)
    story = standard_story(tmp_path / "events.db")
    story.store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 99 + n) for n in range(2_000)])
    story.store.close()
    garble_events_root(story.store.path)
    # then projecting it says it is damaged, instead of counting the events before that page
    with pytest.raises(
        StoreError, match="read [0-9]+ events where positions 1 to 2051 hold 2051: the store lost events"
    ):
        Projections(story.store.path, attach=attach)


def test_new_events_on_a_garbled_page_fail_the_refresh_and_leave_the_projections_as_they_were(tmp_path):
    story = standard_story(tmp_path / "events.db")
    with Projections(story.store.path) as projections:
        before = projections.pl("events")
        # when 2,000 events are added and the events table's root page is garbled
        story.store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 99 + n) for n in range(2_000)])
        garble_events_root(story.store.path)
        # then the update is refused (its event at the checkpoint is lost too: a rebuild), and nothing of it is projected
        with pytest.raises(
            StoreError, match="events where positions [0-9]+ to 2051 hold [0-9]+: the store lost events"
        ):
            projections.refresh()
        assert projections.checkpoint == 51 and projections.pl("events").equals(before)


def test_an_event_whose_data_is_not_json_is_left_out_and_the_rest_is_projected(tmp_path):
    story = standard_story(tmp_path / "events.db")
    with Projections(story.store.path) as projections:
        before = projections.pl("orders")
        with sqlite3.connect(story.store.path) as con:
            con.execute(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version,"
                " data, metadata, recorded_at) VALUES ('bad-1', 'order', 'O9', 1, 'OrderCreated', 1,"
                " '{not json', '{}', '2025-03-05 09:00:00.000000')"
            )
        story.store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 99)])
        # the update goes through: the bad event is not projected, the one after it is
        assert projections.refresh() == 2 and projections.checkpoint == 53
        assert 52 not in projections.pl("events")["position"].to_list()
        assert projections.pl("events")["position"].to_list()[-1] == 53
        assert projections.pl("orders").equals(before)


def test_an_event_that_cannot_be_projected_fails_the_update_and_leaves_the_projections_as_they_were(tmp_path):
    story = standard_story(tmp_path / "events.db")
    with Projections(story.store.path) as projections:
        before = {name: projections.pl(name) for name in ("events", "orders", "notifications")}
        with sqlite3.connect(story.store.path) as con:
            con.execute(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version,"
                " data, metadata, recorded_at) VALUES ('bad-1', 'order', 'O9', 1, 'OrderCreated', 1,"
                " '{}', '{}', 'not a time')"
            )
        for update in (projections.refresh, projections.rebuild):
            with pytest.raises(StoreError, match="cannot project"):
                update()
            assert projections.checkpoint == 51
            assert all(projections.pl(name).equals(frame) for name, frame in before.items())
        leftovers = "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '%_next'"
        assert projections._con.execute(leftovers).fetchone() == (0,)


def test_as_of_a_position_replays_the_log_up_to_it(store_path, projections):
    o3_reserved = 27  # StockReserved P1 x3 and ReservationConfirmed for O3, before OrderConfirmed
    snapshot = projections.as_of(position=o3_reserved)
    assert snapshot.position == o3_reserved and snapshot.recorded_at == at(230)
    assert snapshot.pl("orders").select("order_id", "status").rows() == [
        ("O1", "completed"),
        ("O2", "cancelled"),
        ("O3", "created"),
    ]
    assert snapshot.pl("inventory").select("product_id", "available", "reserved", "sold").rows() == [
        ("P1", 5, 3, 2),
        ("P2", 4, 0, 1),
    ]
    assert snapshot.pl("events")["position"].max() == o3_reserved
    assert snapshot.relation("revenue").fetchall() == [(date(2025, 3, 3), 1, 2250, Decimal("22.50"))]
    whole = projections.as_of(position=projections.checkpoint)
    for name in projections.names:
        assert whole.pl(name).equals(projections.pl(name)), name
    assert projections.sql(f"SELECT count(*) FROM {snapshot.schema}.orders").fetchone() == (3,)


def test_as_of_a_time_takes_the_last_event_recorded_by_then(projections):
    snapshot = projections.as_of(time=START + timedelta(milliseconds=235))
    assert snapshot.position == 27
    naive = projections.as_of(time=at(230))
    assert naive.position == 27
    assert projections.as_of(time=at(445, day=1)).position == 50
    assert projections.as_of(time=at(450, day=1)).position == 51


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"position": 0}, "outside the projected log"),
        ({"position": 52}, "outside the projected log"),
        ({"position": "7"}, "must be an integer"),
        ({"time": START - timedelta(seconds=1)}, "outside the projected log"),
        ({"time": START + timedelta(days=2)}, "outside the projected log"),
        ({"time": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14)))}, "outside the years 1 to 9999"),
        ({"time": datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=14)))}, "outside the years 1 to 9999"),
        ({}, "exactly one"),
        ({"position": 3, "time": START}, "exactly one"),
    ],
)
def test_as_of_outside_the_log_is_a_clear_error(projections, kwargs, message):
    with pytest.raises(ProjectionError, match=message):
        projections.as_of(**kwargs)


def test_unknown_relation_names_are_errors_not_sql(projections):
    for name in ("nope", "orders; DROP TABLE orders", "store.events"):
        with pytest.raises(ProjectionError, match="unknown relation"):
            projections.relation(name)
    with pytest.raises(ProjectionError, match="unknown relation"):
        projections.as_of(position=3).pl("orders --")
    assert projections.pl("orders").height == 5


# -- the store is only ever read -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO store.events (event_id) VALUES ('x')",
        "DELETE FROM store.events",
        "DELETE FROM orders",
        "UPDATE store.checkpoints SET position = 0",
        "DROP TABLE orders",
        "CREATE TABLE stolen AS SELECT * FROM store.events",
        "ATTACH '/tmp/eventlab-other.db' AS other",
        "COPY orders TO '/tmp/eventlab-orders.csv'",
        "COPY (SELECT 1) TO '/tmp/eventlab-one.parquet' (FORMAT parquet)",
        "DETACH store",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "SELECT 1; DELETE FROM store.events",
        "EXPLAIN ANALYZE DELETE FROM orders",
        "PRAGMA enable_profiling",
        "CALL pragma_version()",
        "SELECT * FROM sqlite_query('store', 'DELETE FROM events RETURNING *')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM 'some-file.parquet'",
        "NOT SQL AT ALL",
    ],
)
def test_nothing_but_a_read_gets_through(store_path, projections, sql):
    before = digest(store_path)
    with pytest.raises((ProjectionError, duckdb.Error)):  # refused, or failing when DuckDB runs it
        projections.sql(sql).fetchall()
    assert digest(store_path) == before
    assert projections.pl("orders").height == 5 and projections.pl("events").height == 51
    assert not Path("/tmp/eventlab-orders.csv").exists() and not Path("/tmp/eventlab-one.parquet").exists()


def test_query_refuses_writes_with_a_projection_error(store_path):
    before = digest(store_path)
    for sql in (
        "DELETE FROM store.events",
        "ATTACH 'x.db' AS x",
        "COPY orders TO 'orders.csv'",
        "SELECT * FROM sqlite_query('store', 'DELETE FROM events RETURNING *')",
    ):
        with pytest.raises(ProjectionError):
            query(store_path, sql)
    assert digest(store_path) == before and not Path("orders.csv").exists()


def test_query_reads_projections_and_the_raw_store_with_parameters(store_path):
    by_status = query(store_path, "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY status")
    assert by_status.rows() == [("cancelled", 2), ("completed", 2), ("confirmed", 1)]
    assert query(store_path, "SELECT count(*) AS n FROM store.events").item() == 51
    sneaky = "O1' OR '1'='1"
    assert query(store_path, "SELECT * FROM orders WHERE order_id = ?", [sneaky]).height == 0
    assert query(store_path, "SELECT order_id FROM orders WHERE user_id = $user ORDER BY 1", {"user": "U2"}).rows() == [
        ("O2",),
        ("O3",),
    ]
    assert query(store_path, "FROM orders SELECT count(*)").item() == 5
    assert query(store_path, "DESCRIBE orders").height > 10


def test_a_store_path_with_quotes_is_a_value_not_sql(tmp_path):
    odd = tmp_path / "it's'; DROP TABLE events; --"
    odd.mkdir()
    standard_story(odd / "events.db").store.close()
    with Projections(odd / "events.db") as projections:
        assert projections.checkpoint == 51


def test_missing_or_foreign_files_are_store_errors_and_nothing_is_written(tmp_path):
    missing = tmp_path / "nowhere" / "events.db"
    with pytest.raises(StoreError, match="no event store"):
        Projections(missing)
    assert not missing.parent.exists()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Projections(garbage)

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    before = digest(other)
    with pytest.raises(StoreError, match="not an eventlab event store"):
        query(other, "SELECT 1")
    assert digest(other) == before
    assert issubclass(ProjectionError, EventlabError) and issubclass(StoreError, EventlabError)


def test_the_sqlite_extension_comes_from_the_wheel_not_from_home(tmp_path, monkeypatch, store_path):
    """A broken extension under ~/.duckdb would fail to load if DuckDB looked there (or downloaded)."""
    with duckdb.connect() as scratch:
        platform = scratch.execute("PRAGMA platform").fetchone()[0]
    home = tmp_path / "home"
    cached = home / ".duckdb" / "extensions" / f"v{duckdb.__version__}" / platform
    cached.mkdir(parents=True)
    for name in ("sqlite_scanner", "sqlite"):
        (cached / f"{name}.duckdb_extension").write_bytes(b"not an extension")
    before = sorted(home.rglob("*"))
    monkeypatch.setenv("HOME", str(home))
    with Projections(store_path, attach=True) as projections:
        assert projections.checkpoint == 51 and projections.pl("orders").height == 5
        setting = projections._con.execute("SELECT current_setting('extension_directory')").fetchone()[0]
    private = _extension_directory()
    assert setting == str(private) and not private.is_relative_to(home)
    assert private.stat().st_mode & 0o777 == 0o700
    assert (private / f"v{duckdb.__version__}" / platform / "sqlite_scanner.duckdb_extension").stat().st_size > 1e6
    assert sorted(home.rglob("*")) == before


# -- Parquet ------------------------------------------------------------------------------------


def test_parquet_export_round_trips_the_log_and_every_relation(store_path, projections, tmp_path):
    written = export_parquet(projections, tmp_path / "out")
    assert set(written) == set(projections.names)
    for name in projections.names:
        if name != "events":
            assert pl.read_parquet(written[name]).equals(projections.pl(name)), name
    events = pl.read_parquet(written["events"])
    with sqlite3.connect(store_path) as con:
        stored = con.execute(
            "SELECT position, event_id, event_type, data, metadata, recorded_at FROM events ORDER BY position"
        ).fetchall()
    assert events.select("position", "event_id", "event_type", "data", "metadata").rows() == [row[:5] for row in stored]
    assert events["recorded_at"].to_list() == [datetime.fromisoformat(row[5]) for row in stored]
    assert json.loads(events["data"][6])["order_id"] == "O1"

    only = export_parquet(store_path, tmp_path / "some", ["revenue"])
    assert list(only) == ["revenue"] and [p.name for p in (tmp_path / "some").iterdir()] == ["revenue.parquet"]
    with pytest.raises(ProjectionError, match="unknown relation"):
        export_parquet(projections, tmp_path / "bad", ["../escape"])
    assert not (tmp_path / "bad").exists()


def test_a_failed_export_leaves_the_previous_one_whole(projections, tmp_path, monkeypatch):
    # given an earlier export of orders
    [path] = export_parquet(projections, tmp_path, ["orders"]).values()
    before = digest(path)
    # when the next export fails part way (a full disk)
    import pyarrow.parquet as pq

    def full_disk(self, batch):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", full_disk)
    with pytest.raises(ProjectionError, match="No space left on device"):
        export_parquet(projections, tmp_path, ["orders"])
    # then the earlier file is as it was, and nothing half-written is left beside it
    assert digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["orders.parquet"]


def test_an_export_to_a_name_too_long_for_the_file_system_is_a_projection_error(projections, tmp_path):
    with pytest.raises(ProjectionError, match="cannot write to .*: File name too long"):
        export_parquet(projections, tmp_path / ("b" * 300), ["orders"])


# -- command line ---------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eventlab")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path)
    add_commands(parser.add_subparsers(dest="command", required=True), [common])
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_query_show_export_and_projections(store_path, tmp_path, capsys):
    data_dir = str(store_path.parent)
    first_two = "SELECT order_id, total FROM orders ORDER BY 1 LIMIT 2"
    assert run_cli(["query", "--data-dir", data_dir, "--json", first_two]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"order_id": "O1", "total": "22.50"},
        {"order_id": "O2", "total": "25.00"},
    ]
    emails = "SELECT order_id, kinds_requested FROM notifications ORDER BY 1"
    assert run_cli(["query", "--data-dir", data_dir, "--csv", emails]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "order_id,kinds_requested",
        'O1,"[""order_completed"", ""order_confirmed""]"',
    ]
    assert run_cli(["show", "--data-dir", data_dir, "inventory", "--as-of-position", "27"]) == 0
    table = capsys.readouterr().out
    assert "P1" in table and "available" in table
    assert (
        run_cli(["show", "--data-dir", data_dir, "orders", "--as-of-time", "2025-03-03T09:00:00.235+00:00", "--json"])
        == 0
    )
    assert [row["status"] for row in json.loads(capsys.readouterr().out)] == ["completed", "cancelled", "created"]
    assert run_cli(["export", "--data-dir", data_dir, str(tmp_path / "pq"), "orders", "events"]) == 0
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["events.parquet", "orders.parquet"]
    assert run_cli(["projections"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in RELATIONS)


def test_cli_bad_input_is_an_eventlab_error(store_path, tmp_path):
    data_dir = str(store_path.parent)
    with pytest.raises(StoreError):
        run_cli(["query", "--data-dir", str(tmp_path / "empty"), "SELECT 1"])
    with pytest.raises(ProjectionError, match="unknown relation"):
        run_cli(["show", "--data-dir", data_dir, "nope"])
    with pytest.raises(ProjectionError, match="outside"):
        run_cli(["show", "--data-dir", data_dir, "orders", "--as-of-position", "999"])
    with pytest.raises(ProjectionError, match="only reads"):
        run_cli(["query", "--data-dir", data_dir, "DELETE FROM store.events"])
    for when in ("yesterday", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):  # the last two: no UTC
        with pytest.raises(SystemExit):
            run_cli(["show", "--data-dir", data_dir, "orders", "--as-of-time", when])
    assert not (tmp_path / "empty").exists()
    (tmp_path / "a-file").write_text("not a directory")
    for where in (tmp_path / "a-file" / "parquet", Path("/proc/eventlab-export")):
        with pytest.raises(ProjectionError, match=f"^cannot write to {where}: "):
            run_cli(["export", "--data-dir", data_dir, str(where), "orders"])
    (tmp_path / "pq" / "orders.parquet").mkdir(parents=True)  # in the way of the file
    with pytest.raises(ProjectionError, match=f"^cannot write to {tmp_path / 'pq'}: "):
        run_cli(["export", "--data-dir", data_dir, str(tmp_path / "pq"), "orders"])


def test_the_caller_chooses_how_the_log_is_read_and_attaching_an_open_store_is_refused(tmp_path):
    """Two SQLite libraries in one process must not open the same WAL file (SIGBUS): given the
    open SqliteEventStore, the projections read the log through Python's sqlite3; asking DuckDB to
    attach that file while it is open here is refused; once it is closed, attaching works."""
    from datetime import timedelta

    from eventlab.events import StockAdded
    from eventlab.projections import Projections, audit
    from eventlab.store import NewEvent, SqliteEventStore

    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        store.append([NewEvent(StockAdded(product_id="P1", quantity=5), 1, {"source": "inventory"})])
        store.set_checkpoint("relay", 1)
        with pytest.raises(ProjectionError, match="open in this process"):
            Projections(path, attach=True)
        with Projections(store) as projections:
            assert isinstance(projections._log, MirroredLog)
            assert projections.sql("SELECT available FROM inventory WHERE product_id = 'P1'").fetchone() == (5,)
            store.append([NewEvent(StockAdded(product_id="P1", quantity=2), 2, {"source": "inventory"})])
            assert projections.refresh() == 1
            assert projections.sql("SELECT available FROM inventory WHERE product_id = 'P1'").fetchone() == (7,)
            assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (2,)
            report = audit(projections, grace=timedelta(0))
            assert not report["all_events_published"].ok  # event 2 is stored but not yet relayed
    with Projections(path, attach=True) as projections:
        assert not isinstance(projections._log, MirroredLog)  # the fast attached scan
        assert projections.sql("SELECT available FROM inventory WHERE product_id = 'P1'").fetchone() == (7,)
        assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (2,)

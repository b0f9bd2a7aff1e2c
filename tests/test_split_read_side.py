"""The read side over a split shop: each service's events in a store of its own
(``EVENTLAB_<SERVICE>_STORE_URL``), and projections, query, audit and export still see the whole
shop as one log.

The stores are written directly (no running shop): user and product events in ``catalogue.db``,
order events in ``order.db``, payment, inventory and notification events in ``events.db``, each
step marking the previous step's event processed in the writer's store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from projection_story import (
    SPLIT,
    SPLIT_REST,
    START,
    SplitShopStory,
    standard_story,
    tell_healthy_story,
    tell_standard_story,
)

from eventlab.adapters.mailer import MAILBOX
from eventlab.errors import StoreError
from eventlab.events import StockReserved
from eventlab.projections import ProjectionError, Projections, QueryRefused, audit, export_parquet, query
from eventlab.projections.sources import store_locations
from eventlab.settings import SERVICE_PORTS, Settings
from eventlab.store import SqliteEventStore, open_stores, own_store_checkpoint

LATER = START + timedelta(days=3)


@pytest.fixture(scope="module")
def one_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("one") / "events.db"
    standard_story(path).store.close()
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    story = SplitShopStory(tmp_path_factory.mktemp("split"))
    tell_standard_story(story)
    story.close()
    return story.paths


def split_env(directory: Path) -> dict[str, str]:
    """The settings of a shop whose order, user and product services have stores of their own."""
    env = {"EVENTLAB_DATA_DIR": str(directory)}
    env |= {f"EVENTLAB_{service.upper()}_STORE_URL": str(directory / name) for service, name in SPLIT.items()}
    return env


def test_the_settings_name_each_store_a_service_writes_to_once(tmp_path):
    # given: every service with a store of its own, two of them sharing one
    own = {service: tmp_path / f"{service}.db" for service in SERVICE_PORTS} | {"product": tmp_path / "user.db"}
    settings = Settings(data_dir=tmp_path, service_store_urls={s: str(path) for s, path in own.items()})
    # then: the default store, which no service writes to, is not read; the shared one is read once
    assert store_locations(settings) == [own[s] for s in SERVICE_PORTS if s != "product"]
    with pytest.raises(ProjectionError, match="EVENTLAB_ORDER_STORE_URL is memory://"):
        store_locations(Settings(data_dir=tmp_path, service_store_urls={"order": "memory://"}))


def without_store_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop([c for c in ("store", "store_position") if c in frame.columns])


def test_every_relation_over_the_split_stores_equals_the_same_story_in_one_store(one_store, split):
    # given: the story in one store, and the same story with each service's events in its own store
    with Projections(one_store) as whole, Projections(split) as merged:
        # then: one log of the same events in the same order (a shared clock), every relation the same
        assert merged.split and len(merged.stores) == 3 and merged.checkpoint == whole.checkpoint == 51
        for name in whole.names:
            assert without_store_columns(merged.pl(name)).equals(whole.pl(name)), name
        # and each event says where it is stored
        stored = merged.sql("SELECT store, count(*) AS n FROM events GROUP BY store ORDER BY store").fetchall()
        assert [(Path(store).name, n) for store, n in stored] == [
            ("catalogue.db", 4),
            ("events.db", 34),
            ("order.db", 13),
        ]


def test_the_store_order_given_does_not_matter_and_attaching_reads_the_same(split):
    with Projections(split) as given, Projections(list(reversed(split)), attach=True) as attached:
        for name in given.names:
            assert attached.pl(name).equals(given.pl(name)), name


def test_shop_stores_opened_from_split_settings_are_read_as_one_log(split, one_store):
    settings = Settings.from_env(split_env(split[0].parent))
    stores = open_stores(settings, create=False)
    try:
        with Projections(stores) as merged, Projections(one_store) as whole:
            assert without_store_columns(merged.pl("orders")).equals(whole.pl("orders"))
    finally:
        stores.close()


def test_a_refresh_merges_late_commits_and_equals_a_rebuild(tmp_path):
    # given: projections of a split shop
    story = SplitShopStory(tmp_path)
    tell_standard_story(story)
    with Projections(story.paths) as projections:
        head = projections.checkpoint
        # when: order O6 is placed (order store), and an inventory event recorded 5 ms *before* it
        # (another process's clock, its commit slower) is stored in another store, then a new user
        placed = story.place("O6", "U2", {"P1": 1})
        story.now -= timedelta(milliseconds=15)
        story.write(StockReserved(product_id="P1", order_id="O6", quantity=1))
        story.now += timedelta(seconds=1)
        story.user("U3")
        applied = projections.refresh()
        refreshed = {name: projections.pl(name) for name in projections.names}
        # then: all three applied, in the order of their times, and a rebuild agrees
        assert applied == 3 and projections.checkpoint == head + 3
        projections.rebuild()
        for name in projections.names:
            assert refreshed[name].equals(projections.pl(name)), name
        last = projections.pl("events").tail(3)
        assert last["event_type"].to_list() == ["StockReserved", "OrderCreated", "UserCreated"]
        # when: a commit lands after them that sorts before events already projected (recorded before
        # the order it reserves for): the events after it move up one position, and their keys follow
        story.now = story.now - timedelta(seconds=2)
        story.write(StockReserved(product_id="P2", order_id=placed.order_id, quantity=1))
        assert projections.refresh() == 1
        moved = {name: projections.pl(name) for name in projections.names}
        projections.rebuild()
        for name in projections.names:
            assert moved[name].equals(projections.pl(name)), name
        events = projections.pl("events")
        assert events["position"].to_list() == list(range(1, head + 5))
        assert events.tail(4)["event_type"].to_list() == [
            "StockReserved",
            "StockReserved",
            "OrderCreated",
            "UserCreated",
        ]
        assert projections.pl("orders").filter(pl.col("order_id") == "O6")["last_position"].item() == head + 3
    story.close()


def eventlab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "eventlab", *args], env={**clean, **env}, capture_output=True, text=True, check=False
    )


def test_the_commands_read_every_store_the_settings_or_the_store_options_name(split, tmp_path):
    sql = "SELECT count(*) AS n, count(DISTINCT store) AS stores FROM events"
    from_settings = eventlab("query", "--json", sql, **split_env(split[0].parent))
    options = [arg for path in split for arg in ("--store", str(path))]
    from_options = eventlab("query", "--json", *options, sql)
    assert from_settings.returncode == from_options.returncode == 0, from_settings.stderr + from_options.stderr
    assert json.loads(from_settings.stdout) == json.loads(from_options.stdout) == [{"n": 51, "stores": 3}]
    # a store named twice (by option and settings alike) is read once
    twice = eventlab("query", "--json", *options, "--store", str(split[0]), "SELECT count(*) AS n FROM store.events")
    assert json.loads(twice.stdout) == [{"n": 51}], twice.stderr
    # export and show too
    exported = eventlab("export", str(tmp_path / "out"), "events", "orders", **split_env(split[0].parent))
    assert exported.returncode == 0, exported.stderr
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    assert events.height == 51 and events["position"].to_list() == list(range(1, 52))
    assert events.select("store", "store_position").unique().height == 51
    assert pl.read_parquet(tmp_path / "out" / "orders.parquet").height == 5
    shown = eventlab("show", "--json", "orders", "--columns", "order_id,status", **split_env(split[0].parent))
    assert [row["order_id"] for row in json.loads(shown.stdout)] == ["O1", "O2", "O3", "O4", "O5"], shown.stderr


def test_export_writes_every_event_of_every_store(split, tmp_path):
    written = export_parquet(split, tmp_path / "parquet", ["events"])
    events = pl.read_parquet(written["events"])
    assert events.height == 51 and set(
        events["store"].map_elements(lambda s: Path(s).name, return_dtype=pl.String)
    ) == {
        "catalogue.db",
        "order.db",
        "events.db",
    }


def healthy_split(directory: Path) -> SplitShopStory:
    story = SplitShopStory(directory)
    tell_healthy_story(story)
    return story


def violated(report) -> set[str]:
    return {name for name, result in report.items() if result.count}


def test_the_audit_of_a_consistent_split_shop_is_green_and_its_markers_sit_with_their_consumers(tmp_path):
    story = healthy_split(tmp_path)
    report = audit(story.paths, now=LATER)
    assert report.ok, report.table()
    story.close()
    # the markers of a consumer are in its own store, naming events stored elsewhere (an attached store
    # shows every table of its own; one read through sqlite3 only its events and checkpoints)
    with Projections(story.paths, attach=True) as projections:
        elsewhere = projections.sql(
            "SELECT count(*) FROM store.processed AS p JOIN store.events AS e USING (event_id)"
            " WHERE p.store <> e.store AND p.consumer = 'order'"
        ).fetchone()
    assert elsewhere is not None and elsewhere[0] > 0


def test_a_store_left_out_is_named_by_the_check_it_breaks_and_one_that_lost_an_event_by_name(tmp_path):
    # given: a consistent split shop audited without the order store: the saga's own events are missing,
    # and a paid order without its OrderCancelled is named by the check it breaks
    story = healthy_split(tmp_path)
    story.close()
    partial = audit([p for p in story.paths if p.name != "order.db"], now=LATER)
    assert "failed_payments_compensated" in violated(partial)
    # when the inventory store loses a StockSold (a bad restore, a row deleted by hand)
    with closing(sqlite3.connect(tmp_path / SPLIT_REST)) as con, con:
        con.execute(
            "DELETE FROM events WHERE position = (SELECT max(position) FROM events WHERE event_type = 'StockSold')"
        )
    # then the union is not projected from part of that store's log: the store is named
    with pytest.raises(StoreError, match=f"{SPLIT_REST}: read [0-9]+ events where .* the store lost events"):
        audit(story.paths, now=LATER)


def test_the_relay_checks_run_per_store_and_name_the_store(tmp_path):
    story = healthy_split(tmp_path)
    order_store = story.stores["order.db"]
    order_store.set_checkpoint("relay", order_store.head() - 2)
    report = audit(story.paths, now=LATER)
    assert violated(report) == {"all_events_published"}
    (behind,) = report["all_events_published"].violations
    assert Path(behind["store"]).name == "order.db"
    assert (behind["relay_checkpoint"], behind["last_position"], behind["unpublished"]) == (
        order_store.head() - 2,
        order_store.head(),
        2,
    )
    order_store.set_checkpoint("relay", order_store.head() + 3)
    report = audit(story.paths, now=LATER)
    assert violated(report) == {"relay_checkpoint_within_log"}
    (beyond,) = report["relay_checkpoint_within_log"].violations
    assert Path(beyond["store"]).name == "order.db" and beyond["relay_checkpoint"] == order_store.head() + 3
    story.close()


def test_raw_event_checks_name_the_store_and_its_position(tmp_path):
    story = healthy_split(tmp_path)
    story.close()
    with closing(sqlite3.connect(tmp_path / "catalogue.db")) as con, con:
        con.execute("UPDATE events SET schema_version = 7 WHERE position = 1")
    with closing(sqlite3.connect(tmp_path / "order.db")) as con, con:
        con.execute("UPDATE events SET data = json_set(data, '$.admin', json('true')) WHERE position = 1")
    report = audit(story.paths, now=LATER)
    assert violated(report) == {"known_schema_versions", "event_data_valid"}
    (version,) = report["known_schema_versions"].violations
    assert (Path(version["store"]).name, version["event_type"], version["positions"]) == (
        "catalogue.db",
        "UserCreated",
        [1],
    )
    (invalid,) = report["event_data_valid"].violations
    assert (Path(invalid["store"]).name, invalid["position"], invalid["event_type"]) == ("order.db", 1, "OrderCreated")


ESCAPES = [
    "SELECT * FROM sqlite_scan('{path}', 'events')",
    "SELECT * FROM sqlite_attach('{path}')",
    "SELECT * FROM sqlite_query('store_1', 'SELECT * FROM events')",
    "SELECT * FROM store_1.events",
    "SELECT * FROM read_text('{path}')",
    "ATTACH '{path}' AS other",
]


@pytest.mark.parametrize("attach", [True, False])
@pytest.mark.parametrize("sql", ESCAPES)
def test_the_sandbox_over_a_split_shop_reads_nothing_but_the_stores_own_tables(split, attach, sql):
    with Projections(split, attach=attach) as projections:
        with pytest.raises(ProjectionError):
            projections.sql(sql.format(path=split[0])).fetchall()
        assert projections.sql("SELECT count(*) FROM store.events").fetchone() == (51,)


def test_writes_and_other_applications_tables_stay_out_of_reach_on_every_store(split, tmp_path):
    # given: a copy of the split shop where one store's file also holds another application's table
    copies = []
    for path in split:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    with closing(sqlite3.connect(copies[-1])) as other, other:
        other.execute("CREATE TABLE app_users (name TEXT, secret TEXT)")
        other.execute("INSERT INTO app_users VALUES ('alice', 'not-for-eventlab')")
    before = [copy.read_bytes() for copy in copies]
    for attach in (True, False):
        with Projections(copies, attach=attach) as projections:
            with pytest.raises(ProjectionError, match="app_users"):
                projections.sql("SELECT * FROM store.app_users").fetchall()
            for write in ("DELETE FROM store.events", "INSERT INTO store.checkpoints VALUES ('x', 'relay', 1)"):
                with pytest.raises(ProjectionError, match="only reads"):
                    projections.sql(write)
            with pytest.raises(QueryRefused):
                projections.sql("SELECT * FROM read_csv('/etc/passwd')").fetchall()
            tables = projections.sql("SELECT table_name FROM duckdb_tables()").fetchall()
            assert ("app_users",) not in tables
    assert [copy.read_bytes() for copy in copies] == before
    assert query(copies, "SELECT count(*) AS n FROM orders")["n"].to_list() == [5]


def test_the_audit_of_a_split_shop_reads_the_mailbox_in_the_data_directory(tmp_path):
    # given a shop whose user service keeps its store elsewhere, and a mailbox with an email sent twice
    data, elsewhere = tmp_path / "data", tmp_path / "users"
    data.mkdir(), elsewhere.mkdir()
    SqliteEventStore(data / "events.db").close()
    SqliteEventStore(elsewhere / "user.db").close()
    email = json.dumps({"order_id": "O1", "kind": "confirmation", "to": "ada@example.com"})
    (data / MAILBOX).write_text(f"{email}\n{email}\n")
    # when the audit runs as the shop's settings say
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    done = subprocess.run(
        [sys.executable, "-m", "eventlab", "audit", "--json", "--data-dir", str(data)],
        env={**clean, "EVENTLAB_USER_STORE_URL": str(elsewhere / "user.db")},
        capture_output=True,
        text=True,
        check=False,
    )
    # then it checked the mailbox where the mailer writes it, and fails on the duplicate
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["no_duplicate_email"]["ok"] is False


def test_reading_a_split_shop_without_a_store_it_ran_on_is_refused_naming_the_variable(tmp_path):
    # given a shop whose Order ran on a store of its own (recorded in the shared store at start)
    with SqliteEventStore(tmp_path / "events.db") as shared:
        shared.set_checkpoint(own_store_checkpoint("order"), 1)
    # when the read side is given the shared store alone (the variable forgotten)
    ran = {name: eventlab(*args, EVENTLAB_DATA_DIR=str(tmp_path)) for name, args in READERS.items()}
    # then each command refuses in one line naming the variable, instead of reading half the shop
    for name, result in ran.items():
        assert result.returncode != 0, name
        [line] = result.stderr.strip().splitlines()
        assert "order ran on a store of its own" in line and "EVENTLAB_ORDER_STORE_URL" in line, (name, line)
    with pytest.raises(ProjectionError, match="EVENTLAB_ORDER_STORE_URL"):
        store_locations(Settings.from_env(env={}, data_dir=tmp_path))
    # and with the variable set, the shop is read as it ran
    given = Settings.from_env(env={}, data_dir=tmp_path, service_store_urls={"order": str(tmp_path / "order.db")})
    assert store_locations(given) == [tmp_path / "events.db", tmp_path / "order.db"]


READERS = {
    "audit": ("audit",),
    "query": ("query", "SELECT count(*) FROM orders"),
    "trace": ("trace", "O1"),
}

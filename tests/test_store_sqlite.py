from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import re
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import files_open_on, run_python

import eventlab
from eventlab.errors import StoreError
from eventlab.events import StockAdded
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.store import sqlite as sqlite_module
from eventlab.store.sqlite import SCHEMA_VERSION, verify_event_store


def test_opening_a_missing_store_without_create_fails_clearly(tmp_path):
    with pytest.raises(StoreError, match="no event store"):
        SqliteEventStore(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_a_file_that_is_not_an_event_store_is_refused(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE things (x)").connection.commit()
    with pytest.raises(StoreError, match="not an eventlab event store"):
        SqliteEventStore(other, create=False)
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 1000)
    with pytest.raises(StoreError):
        SqliteEventStore(text, create=False)


def test_a_store_knows_whether_this_process_has_it_open(tmp_path):
    from eventlab.store.sqlite import open_in_this_process

    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    assert open_in_this_process(path)
    store.close()
    assert not open_in_this_process(path)


def in_threads_of_their_own(work, count):
    """Run ``work(i)`` for each i in a new thread of its own (as a server does that starts a thread per
    connection), each thread ending only once all have done their work, and wait for all."""
    together = threading.Barrier(count)

    def run(i):
        work(i)
        together.wait(timeout=30)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_that_come_and_go_reuse_connections_instead_of_keeping_one_each(tmp_path):
    # given a store used by one round of 8 short-lived threads at once
    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        read = {}

        def place(i):
            store.append([NewEvent(StockAdded(product_id=f"P{i}", quantity=i + 1), 1)])
            read[i] = [e.event.quantity for e in store.read_stream("stock", f"P{i}")]

        in_threads_of_their_own(place, 8)
        after_one_round = files_open_on(path)
        # when 50 more rounds of new threads do the same
        for round in range(1, 51):
            in_threads_of_their_own(lambda i, round=round: place(round * 8 + i), 8)
        # then every event is there, and the store holds no more files open than after the first round
        # (a connection per thread kept until close: 2 to 3 file descriptors, a page cache and its statements each)
        assert store.head() == 51 * 8
        assert read == {i: [i + 1] for i in range(51 * 8)}
        assert 0 < files_open_on(path) == after_one_round
    assert files_open_on(path) == 0


def test_a_thread_that_ended_inside_a_transaction_does_not_pass_it_on(tmp_path):
    # given a thread that began a transaction on its connection and ended without finishing it
    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        connections = []

        def begin_and_end(_):
            conn = store._conn()
            conn.execute("BEGIN")
            connections.append(conn)

        in_threads_of_their_own(begin_and_end, 1)
        # when the next new thread appends
        in_threads_of_their_own(lambda _: store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)]), 1)
        # then it got a connection of its own and committed: the other was closed, which rolled it back
        with contextlib.closing(sqlite3.connect(path)) as reader:
            assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
        with pytest.raises(sqlite3.ProgrammingError):
            connections[0].execute("SELECT 1")


def test_closing_a_store_while_other_threads_query_it_does_not_crash_the_process(tmp_path):
    # given threads that query a store, started just before it is closed, round after round
    out = run_python(f"""
        import threading
        from eventlab.store import SqliteEventStore
        store = SqliteEventStore({str(tmp_path / "events.db")!r})
        heads = []

        def query():
            heads.append(store.head())
            heads.append(store.head())

        for _ in range(30):
            threads = [threading.Thread(target=query) for _ in range(20)]
            for thread in threads:
                thread.start()
            store.close()
            for thread in threads:
                thread.join()
        print(len(heads), set(heads))
    """)
    # then each query ran to its end on its own connection (closing it under the query was a SIGSEGV)
    assert out.split(maxsplit=1) == ["1200", "{0}\n"]


def test_a_child_of_fork_hands_back_none_of_the_parents_connections(tmp_path):
    # given a thread using the store while the process forks
    out = run_python(f"""
        import os, threading
        from eventlab.store import SqliteEventStore
        store = SqliteEventStore({str(tmp_path / "events.db")!r})
        using, done = threading.Event(), threading.Event()

        def user():
            store.head()
            using.set()
            done.wait(30)

        thread = threading.Thread(target=user)
        thread.start()
        using.wait(30)
        child = os.fork()
        if child == 0:  # Python clears the parent's other threads here: their connections are the parent's
            os._exit(len(store._idle))
        status = os.waitpid(child, 0)[1]
        done.set()
        thread.join()
        print(os.waitstatus_to_exitcode(status), len(store._idle))
    """)
    # then the child kept none of them for its own threads; the parent's goes back when its thread ends
    assert out.split() == ["0", "1"]


# --- opening checks the schema and never recreates tables over an existing store ---------------------


def fingerprint(path):
    """The bytes of the store file, and of its WAL if any: equal fingerprints, unchanged store."""
    wal = path.with_name(path.name + "-wal")
    return hashlib.sha256(path.read_bytes()).hexdigest(), wal.read_bytes() if wal.exists() else b""


def tables(path):
    with contextlib.closing(sqlite3.connect(path)) as con:
        return {name for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


@pytest.fixture
def shop_store(tmp_path):
    """A store with a few events, closed again."""
    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        for i in range(1, 4):
            store.append([NewEvent(StockAdded(product_id="P1", quantity=i), i)])
    return path


def raw(path, *statements):
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as con:
        for statement in statements:
            con.execute(statement)


def test_a_new_store_records_the_current_schema_version(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        assert store.head() == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as con:
        assert con.execute("SELECT value FROM eventlab WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_store_keeps_its_sub_journals_in_memory(tmp_path):
    # given a store, when a thread opens its connection
    with SqliteEventStore(tmp_path / "events.db") as store:
        # then temporary data (a batch savepoint's sub-journal, 0.6 MB for a consumer batch) stays in
        # memory: on disk, SQLite would create, write and delete a temporary file for every batch
        assert store._conn().execute("PRAGMA temp_store").fetchone() == (2,)


def test_a_store_whose_events_table_was_dropped_is_refused_and_left_alone(shop_store):
    # given a store whose events table was dropped by accident
    raw(shop_store, "DROP TABLE events")
    before = fingerprint(shop_store)
    # when it is opened (as every process of the shop opens it, create=True)
    with pytest.raises(StoreError) as refused:
        SqliteEventStore(shop_store)
    # then it is refused with the file and the problem named, and nothing was recreated or changed
    assert str(shop_store) in str(refused.value) and "table 'events' is missing" in str(refused.value)
    assert "events" not in tables(shop_store) and {"processed", "checkpoints", "eventlab"} <= tables(shop_store)
    assert fingerprint(shop_store) == before
    with pytest.raises(StoreError, match="table 'events' is missing"):
        verify_event_store(shop_store)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (["DROP TABLE processed"], "table 'processed' is missing"),
        (["DROP TABLE checkpoints", "CREATE TABLE checkpoints (name TEXT)"], "table 'checkpoints' has columns (name)"),
        (["DROP INDEX events_by_correlation", "ALTER TABLE events DROP COLUMN metadata"], "table 'events' has columns"),
        (
            ["ALTER TABLE events RENAME TO old", "CREATE TABLE events AS SELECT * FROM old", "DROP TABLE old"],
            "table 'events' lacks its unique key (aggregate_type, aggregate_id, version)",
        ),
        (["DELETE FROM eventlab"], "records no schema_version"),
        (["UPDATE eventlab SET value = 'one'"], "schema_version 'one' is not a number"),
    ],
)
def test_a_store_with_a_broken_table_is_refused(shop_store, damage, problem):
    raw(shop_store, *damage)
    before = fingerprint(shop_store)
    with pytest.raises(StoreError, match="broken eventlab event store") as refused:
        SqliteEventStore(shop_store)
    assert problem in str(refused.value) and str(shop_store) in str(refused.value)
    assert fingerprint(shop_store) == before


def test_a_store_of_a_newer_schema_version_is_refused(shop_store):
    raw(shop_store, f"UPDATE eventlab SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    before = fingerprint(shop_store)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than") as refused:
        SqliteEventStore(shop_store)
    assert str(shop_store) in str(refused.value)
    assert fingerprint(shop_store) == before
    with pytest.raises(StoreError, match="newer than"):
        verify_event_store(shop_store)


def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path):
    text = tmp_path / "events.db"
    text.write_text("order,user\nO1,U1\n" * 100)
    before = text.read_bytes()
    with pytest.raises(StoreError, match="is not an SQLite database") as refused:
        SqliteEventStore(text)
    assert str(text) in str(refused.value) and isinstance(refused.value.__cause__, sqlite3.DatabaseError)
    assert text.read_bytes() == before


def test_a_foreign_sqlite_database_is_refused_unchanged(tmp_path):
    other = tmp_path / "events.db"
    raw(other, "CREATE TABLE events (x)", "INSERT INTO events VALUES (1)")
    before = fingerprint(other)
    with pytest.raises(StoreError, match=r"not an eventlab event store: it has tables \(events\)"):
        SqliteEventStore(other)
    assert fingerprint(other) == before


def test_a_foreign_database_with_many_tables_names_a_few_of_them(tmp_path):
    other = tmp_path / "events.db"
    raw(other, *(f"CREATE TABLE t{n:03} (x)" for n in range(140)))
    with pytest.raises(StoreError) as refused:
        SqliteEventStore(other)
    assert str(refused.value).endswith("tables (t000, t001, t002, t003, t004 and 135 more) but no 'eventlab' table")


@pytest.mark.parametrize("name", ["%41", "what?mode=rw", "shop #1"])
@pytest.mark.parametrize("attach", [False, True])
def test_the_read_side_reads_the_store_in_a_directory_whose_name_looks_like_a_uri(tmp_path, name, attach):
    from eventlab.projections import query

    # given a store in a directory whose name SQLite's URIs give a meaning ('%41' is 'A'), and
    # another store with one more event where that meaning points
    meant, decoded = tmp_path / name / "events.db", tmp_path / name.replace("%41", "A").split("?")[0].split("#")[0]
    for path, products in ((meant, 1), (decoded / "events.db", 2)):
        with SqliteEventStore(path) as store:
            for number in range(products):
                store.append([NewEvent(StockAdded(product_id=f"P{number}", quantity=1), 1)])
    # when the read side checks it and counts its events
    assert verify_event_store(meant) == SCHEMA_VERSION
    counted = query(meant, "SELECT count(*) AS n FROM store.events", attach=attach)
    # then it read that store, not the other one
    assert counted["n"].to_list() == [1]


def test_an_older_store_is_migrated_in_one_transaction(shop_store, monkeypatch):
    # given this code knows one more version that adds a table
    migration = (
        "CREATE TABLE parked (id TEXT PRIMARY KEY, body TEXT NOT NULL);\nCREATE INDEX parked_body ON parked (body);"
    )
    newest = SCHEMA_VERSION + 1
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*sqlite_module.MIGRATIONS, migration))
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", newest)
    # when a version 1 store is opened, then it is at the newest version with its events intact
    with SqliteEventStore(shop_store) as store:
        assert store.head() == 3
    assert {"parked", "dead_letters"} <= tables(shop_store)
    assert verify_event_store(shop_store) == newest
    # and a new store is built at the newest version directly
    assert verify_event_store(SqliteEventStore(shop_store.with_name("new.db")).path) == newest


def test_a_failing_migration_changes_nothing(shop_store, monkeypatch):
    failing = "CREATE TABLE parked (id TEXT); INSERT INTO nowhere VALUES (1);"
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*sqlite_module.MIGRATIONS, failing))
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="no such table: nowhere"):
        SqliteEventStore(shop_store)
    assert "parked" not in tables(shop_store)
    monkeypatch.undo()
    assert verify_event_store(shop_store) == SCHEMA_VERSION


@contextlib.contextmanager
def schema_3_code(monkeypatch):
    """This eventlab as it was at schema version 3 (its first two migrations), to write stores of then."""
    with monkeypatch.context() as old:
        old.setattr(sqlite_module, "MIGRATIONS", sqlite_module.MIGRATIONS[:2])
        old.setattr(sqlite_module, "SCHEMA_VERSION", 3)
        yield


def test_a_version_3_store_upgrades_in_place_keeping_every_event_and_position(tmp_path, monkeypatch):
    # given a store written at schema version 3 (by-type index, AUTOINCREMENT positions): two streams, one
    # correlated, a marker, and a second writer (another process, say) that opened it at that version
    path = tmp_path / "events.db"
    with schema_3_code(monkeypatch):
        with SqliteEventStore(path) as store:
            store.append([NewEvent(StockAdded(product_id="P1", quantity=v), v) for v in (1, 2)])
            store.append([NewEvent(StockAdded(product_id="P2", quantity=1), 1, {"correlation_id": "c-1"})])
            store.append([], processed=("inventory", store.read_all()[0].event_id))
            before = store.read_all()
        assert verify_event_store(path) == 3
        earlier_writer = SqliteEventStore(path)
    # when this eventlab opens it
    with SqliteEventStore(path) as store, earlier_writer:
        # then it is at the current version, sound, with every event at its position
        assert verify_event_store(path) == SCHEMA_VERSION
        assert store.read_all() == before
        assert raw_rows(path, "PRAGMA integrity_check") == [("ok",)]
        # and appends from both writers continue after the last position, none reused
        added = [
            writer.append([NewEvent(StockAdded(product_id="P3", quantity=1), v)])[0].position
            for v, writer in ((1, store), (2, earlier_writer), (3, store))
        ]
        assert added == [4, 5, 6] and [e.position for e in store.read_all()] == [1, 2, 3, 4, 5, 6]
        # without rewriting a position counter on each commit (what AUTOINCREMENT did: a WAL page per append)
        assert raw_rows(path, "SELECT * FROM sqlite_sequence WHERE name = 'events'") == []
        # and what the by-type index served still answers: lag, tracking, stream ages
        assert store.unprocessed("inventory", ["StockAdded"]) == 5
        assert store.tracking_position("inventory", ["StockAdded"]) == 1
        assert [position for position, _, _ in store.stream_ages(["StockAdded"], after=3, limit=2)] == [4, 5]
        assert store.stream_ages(["OrderCompleted"]) == []
        # and a saga is still found by its correlation id through its index, not a scan of the log
        assert [e.position for e in store.read_correlated("c-1")] == [3]
        plan = raw_rows(
            path, "EXPLAIN QUERY PLAN SELECT * FROM events WHERE json_extract(metadata, '$.correlation_id') = 'c-1'"
        )
        assert "USING INDEX events_by_correlation" in str(plan)


def test_a_version_3_store_without_its_indexes_upgrades_too(tmp_path, monkeypatch):
    # given a version 3 store whose by-type and correlation indexes were dropped (by hand, or by a tool
    # that copies tables without their indexes): eventlab's schema check does not require them
    path = tmp_path / "events.db"
    with schema_3_code(monkeypatch), SqliteEventStore(path) as store:
        store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1, {"correlation_id": "c-1"})])
    raw(path, "DROP INDEX events_by_type")
    raw(path, "DROP INDEX events_by_correlation")
    # when this eventlab opens it, then it upgrades (the migration failed on the missing index before)
    with SqliteEventStore(path) as store:
        assert verify_event_store(path) == SCHEMA_VERSION
        assert raw_rows(path, "PRAGMA integrity_check") == [("ok",)]
        # and its sagas are found by correlation id again, through the index the upgrade built
        assert [e.position for e in store.read_correlated("c-1")] == [1]
        assert raw_rows(path, "SELECT name FROM sqlite_master WHERE name = 'events_by_correlation'") != []


def raw_rows(path, query):
    with contextlib.closing(sqlite3.connect(path)) as con:
        return con.execute(query).fetchall()


def test_many_openers_of_a_new_store_create_it_once(tmp_path):
    path = tmp_path / "events.db"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: SqliteEventStore(path), range(8)))
    for store in stores:
        store.close()
    assert verify_event_store(path) == SCHEMA_VERSION


# --- driver errors leave the store as eventlab errors --------------------------------------------


def test_a_driver_error_inside_a_read_or_an_append_is_a_store_error(shop_store):
    with SqliteEventStore(shop_store) as store:
        raw(shop_store, "DROP TABLE events")  # the table goes away under an open store
        for call in (store.read_all, store.head, lambda: store.read_stream("stock", "P1"), store.read_records):
            with pytest.raises(StoreError, match="no such table: events") as caught:
                call()
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreError, match="append failed: no such table: events"):
            store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 4)])
        with pytest.raises(StoreError, match="no such table"), store.transaction():
            store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 4)])


@pytest.mark.parametrize("microsecond", [0, 7, 999_999])
def test_the_recorded_time_is_the_clocks_instant_in_utc_to_the_microsecond(tmp_path, microsecond):
    # given a clock in another zone (a time on a whole second too: its text still has six digits)
    zone = timezone(timedelta(hours=-3, minutes=-30))
    instant = datetime(2026, 12, 31, 22, 45, 9, microsecond, tzinfo=zone)  # 02:15:09 UTC the next day, a new year
    with SqliteEventStore(tmp_path / "events.db", clock=lambda: instant) as store:
        # when an event is appended alone and with another
        (alone,) = store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
        both = store.append([NewEvent(StockAdded(product_id="P2", quantity=1), v) for v in (1, 2)])
        read = store.read_stream("stock", "P1")
    # then the store keeps it as UTC text without a zone, and gives the same instant back in UTC
    assert raw_rows(tmp_path / "events.db", "SELECT DISTINCT recorded_at FROM events") == [
        (f"2027-01-01 02:15:09.{microsecond:06d}",)
    ]
    for event in (alone, *both, *read):
        assert event.recorded_at == instant and event.recorded_at.utcoffset() == timedelta(0)


def test_only_the_store_package_imports_a_database_driver():
    package = Path(eventlab.__file__).parent
    importers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import|from) (sqlite3|psycopg)\b", path.read_text(), re.MULTILINE)
    }
    assert importers and all(name.startswith("store/") for name in importers), importers


def test_demo_on_a_store_whose_events_table_was_dropped_refuses_instead_of_starting_over(shop_store, capsys):
    # the story of issue 8: the demo used to recreate an empty log over it, without a word
    from eventlab.cli import main

    raw(shop_store, "DROP TABLE events")
    before = fingerprint(shop_store)
    assert main(["demo", "--data-dir", str(shop_store.parent), "--orders", "1"]) == 2
    assert "table 'events' is missing" in capsys.readouterr().err
    assert fingerprint(shop_store) == before and "events" not in tables(shop_store)


#: The DDL eventlab wrote before schema checks existed (version 1), exactly as released.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (event_type, position);
CREATE INDEX IF NOT EXISTS events_by_correlation ON events (json_extract(metadata, '$.correlation_id'));
CREATE TABLE IF NOT EXISTS processed (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS eventlab (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO eventlab VALUES ('schema_version', '1');
"""


def test_a_store_made_by_the_first_release_opens_as_version_1(tmp_path):
    path = tmp_path / "events.db"
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.executescript(FIRST_RELEASE_SCHEMA)
    assert verify_event_store(path) == 1
    with SqliteEventStore(path) as store:
        store.append([NewEvent(StockAdded(product_id="P1", quantity=1), 1)])
        assert store.head() == 1


def test_several_streams_and_markers_are_read_in_one_call_as_one_by_one(tmp_path):
    # given three streams of different lengths and markers for some events
    with SqliteEventStore(tmp_path / "events.db") as store:
        for product, length in (("P1", 3), ("P2", 1), ("P3", 5)):
            store.append([NewEvent(StockAdded(product_id=product, quantity=v), v) for v in range(1, length + 1)])
        ids = [event.event_id for event in store.read_all()]
        for event_id in ids[::2]:
            store.append([], processed=("inventory", event_id))
        # when several streams are read at once, each after its own version (one has no events)
        wanted = {("stock", "P1"): 1, ("stock", "P2"): 0, ("stock", "P3"): 4, ("stock", "P9"): 0}
        found = store.read_streams(wanted)
        # then each holds what read_stream gives, in version order
        assert found == {key: store.read_stream(*key, after_version=version) for key, version in wanted.items()}
        assert [e.version for e in found[("stock", "P1")]] == [2, 3] and found[("stock", "P9")] == []
        # and the markers among many ids (more than one query's worth) are the ones recorded
        many = ids + [f"unknown-{n}" for n in range(1200)]
        assert store.processed_among("inventory", many) == set(ids[::2])
        assert store.processed_among("order", many) == set()


# --- the relay lease: a flock on a file beside the store ---------------------------------------------


def test_a_lease_whose_file_is_deleted_is_lost_and_only_the_new_holder_has_it(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        # given a relay holding the lease
        first, second = store.lease("relay"), store.lease("relay")
        assert first.acquire() and not second.acquire()
        # when the lease file is deleted (a clean-up of the data directory)
        next(tmp_path.glob("*.relay.lease")).unlink()
        # then the holder knows it lost the lease, and a standby takes it on the new file
        assert not first.held()
        assert second.acquire() and second.held()
        # and there is one holder only: the first cannot take it back
        assert not first.acquire() and not first.held()
        second.release()


def test_a_lease_whose_file_is_replaced_is_lost(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        first, second = store.lease("relay"), store.lease("relay")
        assert first.acquire()
        # when another file is moved over the lease file (e.g. a restored backup)
        lease_file = next(tmp_path.glob("*.relay.lease"))
        (tmp_path / "other").write_text("0\n")
        (tmp_path / "other").replace(lease_file)
        # then the holder lost it, and a standby gets it
        assert not first.held()
        assert second.acquire() and not first.acquire()
        second.release()


def test_one_store_reached_through_a_symlink_has_one_lease(tmp_path):
    # given one store opened by its path and through a symlink in another directory
    (tmp_path / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "shop.db").symlink_to(tmp_path / "real" / "events.db")
    store, linked = (
        SqliteEventStore(tmp_path / "real" / "events.db"),
        SqliteEventStore(tmp_path / "elsewhere" / "shop.db"),
    )
    with store, linked:
        # when a relay holds the lease through one path, then a relay using the other cannot take it
        active = store.lease("relay")
        assert active.acquire()
        assert not linked.lease("relay").acquire()
        active.release()


def test_a_lease_that_cannot_be_written_is_not_held_and_not_leaked(tmp_path, monkeypatch):
    with SqliteEventStore(tmp_path / "events.db") as store:
        # given a disk that fails when the holder writes its pid into the lease file
        def full(fd: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        failing = store.lease("relay")
        with monkeypatch.context() as patched:
            patched.setattr(sqlite_module.os, "ftruncate", full)
            # when a relay takes the lease, then it is a store error and the relay does not hold it
            with pytest.raises(StoreError, match="cannot write the relay lease"):
                failing.acquire()
        assert not failing.held()
        # and the lock was not leaked: another relay takes the lease
        other = store.lease("relay")
        assert other.acquire()
        other.release()


def test_a_store_that_cannot_be_created_for_a_full_disk_says_so(tmp_path):
    # given a process that may write files of at most 60,000 bytes: creating the store fails at its COMMIT,
    # after SQLite rolled back, and a second ROLLBACK said "no transaction is active" in the error's place
    said = run_python(f"""
        import resource
        from eventlab.store import SqliteEventStore
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.RLIM_INFINITY))
        try:
            SqliteEventStore({str(tmp_path / "events.db")!r})
        except Exception as exc:
            print(exc)
    """)
    # then the error says what happened
    assert "opening failed: " in said and "no transaction is active" not in said, said
    assert "disk I/O error" in said or "disk is full" in said, said

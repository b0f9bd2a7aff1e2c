"""The PostgreSQL store beyond the shared contract: its schema, created and versioned by eventlab, and
driver errors translated. The server is the session's throwaway cluster (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import threading
from urllib.parse import quote

import psycopg
import pytest
from store_contract import append_many, held_in_another_thread

from eventlab.errors import StoreError
from eventlab.events import StockAdded
from eventlab.projections import Projections
from eventlab.projections.sources import store_locations
from eventlab.settings import Settings
from eventlab.store import NewEvent, StoreBusy, open_store, open_stores
from eventlab.store.postgres import MIGRATIONS, SCHEMA, SCHEMA_VERSION, PostgresEventStore, identity


def added(quantity=1):
    return StockAdded(product_id="P1", quantity=quantity)


def sql(url, *statements):
    """Run ``statements`` on the schema of ``url`` (its search_path), as a person with psql would;
    return the rows of each that has some."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursors = [conn.execute(statement.encode()) for statement in statements]
        return [cursor.fetchall() for cursor in cursors if cursor.description is not None]


def tables(url):
    [rows] = sql(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    return {name for (name,) in rows}


@pytest.fixture
def shop_store(postgres_store_url):
    """A store with three events, closed again."""
    with PostgresEventStore(postgres_store_url) as store:
        for version in (1, 2, 3):
            store.append([NewEvent(added(version), version)])
    return postgres_store_url


def test_a_new_store_records_the_current_schema_version(postgres_store_url):
    with PostgresEventStore(postgres_store_url) as store:
        assert store.head() == 0
    assert sql(postgres_store_url, "SELECT value FROM eventlab WHERE key = 'schema_version'") == [
        [(str(SCHEMA_VERSION),)]
    ]
    assert {"events", "processed", "checkpoints", "dead_letters", "eventlab"} <= tables(postgres_store_url)


def test_open_store_opens_postgresql_when_the_url_names_it(postgres_store_url, tmp_path):
    settings = Settings.from_env({"EVENTLAB_STORE_URL": postgres_store_url}, data_dir=tmp_path)
    with open_store(settings) as store:
        assert isinstance(store, PostgresEventStore)
        store.append([NewEvent(added(), 1)])
    with open_store(settings, create=False) as again:
        assert again.head() == 1
    assert not settings.store_path.exists()  # nothing went to the SQLite file


def test_opening_an_empty_schema_without_create_is_refused_and_creates_nothing(postgres_store_url):
    with pytest.raises(StoreError, match="not an eventlab event store: it has no tables"):
        PostgresEventStore(postgres_store_url, create=False)
    assert tables(postgres_store_url) == set()


def test_a_store_whose_events_table_was_dropped_is_refused_and_left_alone(shop_store):
    # given a store whose events table was dropped by accident
    sql(shop_store, "DROP TABLE events")
    # when it is opened, then it is refused with the problem named, and nothing was recreated
    with pytest.raises(StoreError, match="table 'events' is missing") as refused:
        PostgresEventStore(shop_store)
    assert "postgresql://postgres@127.0.0.1" in str(refused.value)
    assert "events" not in tables(shop_store)


def test_a_store_that_lost_its_optimistic_concurrency_key_is_refused(shop_store):
    sql(shop_store, "ALTER TABLE events DROP CONSTRAINT events_aggregate_type_aggregate_id_version_key")
    with pytest.raises(StoreError, match=r"lacks its unique key \(aggregate_type, aggregate_id, version\)"):
        PostgresEventStore(shop_store)


def test_a_store_of_a_newer_schema_version_is_refused_unchanged(shop_store):
    sql(shop_store, f"UPDATE eventlab SET value = '{SCHEMA_VERSION + 1}'")
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than this eventlab understands \({SCHEMA_VERSION}\)"
    with pytest.raises(StoreError, match=newer):
        PostgresEventStore(shop_store)
    # and the read side says the same (it checked against a SQLite file's versions: "broken, restore it")
    with pytest.raises(StoreError, match=newer):
        Projections(shop_store)
    assert sql(shop_store, "SELECT value FROM eventlab") == [[(str(SCHEMA_VERSION + 1),)]]


def test_a_version_1_store_is_migrated_with_its_events_intact(postgres_store_url):
    # given a store as the first schema version left it
    with psycopg.connect(postgres_store_url, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute("INSERT INTO eventlab VALUES ('schema_version', '1')")
    assert len(MIGRATIONS) == SCHEMA_VERSION - 1 and "dead_letters" not in tables(postgres_store_url)
    # when this code opens it, then it is at the current version and works
    with PostgresEventStore(postgres_store_url) as store:
        store.append([NewEvent(added(), 1)])
        letter = store.record_dead_letter("order", "t", 0, 1, b"k", b"v", [], "poison")
        assert store.dead_letters() == [letter]
    assert sql(postgres_store_url, "SELECT value FROM eventlab") == [[(str(SCHEMA_VERSION),)]]


@pytest.mark.parametrize("isolation", ["repeatable%5C%20read", "serializable"])
def test_writers_lose_nothing_whatever_isolation_the_url_asks_for(postgres_store_url, isolation):
    # given a URL whose options make every transaction repeatable read or serializable: a write's
    # snapshot then predated the write lock, and about half of concurrent appends failed
    url = f"{postgres_store_url}%20-cdefault_transaction_isolation%3D{isolation}"
    with PostgresEventStore(url, busy_timeout=10) as store:
        # when four threads append 25 events each, to streams of their own
        def write(thread):
            for n in range(25):
                store.append([NewEvent(StockAdded(product_id=f"P{thread}-{n}", quantity=1), 1)])

        threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # then every one is stored, at positions 1..100
        assert [e.position for e in store.read_all()] == list(range(1, 101))


@pytest.mark.parametrize("schema", ["Orders", "my schema", "a,b", "a.b", 'o"rders'])
def test_a_schema_may_have_any_name_postgresql_takes(postgres_url, schema):
    # upper case, a space, a comma or a dot: the schema was created, then the store refused it
    # ("schema orders does not exist", "invalid name syntax"), and a comma split the name in two
    quoted = '"' + schema.replace('"', '""') + '"'
    url = f"{postgres_url}?options={quote('-csearch_path=' + quoted.replace(' ', chr(92) + ' '))}"
    try:
        with PostgresEventStore(url) as store:
            store.append([NewEvent(added(), 1)])
        with PostgresEventStore(url, create=False) as store:
            assert store.head() == 1 and store.name.endswith(f" schema {schema}")
        with Projections(url) as projections:  # and the read side reads it
            assert projections.checkpoint == 1
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE".encode())


def test_stores_in_two_schemas_of_one_database_are_separate(postgres_url):
    # given two services, each with a schema of its own in one database, which eventlab creates
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS orders CASCADE; DROP SCHEMA IF EXISTS stock CASCADE")
    try:
        with pytest.raises(StoreError, match="no schema to keep the events in"):
            PostgresEventStore(
                f"{postgres_url}?options=-csearch_path%3Dorders", create=False
            )  # a reader creates nothing
        orders = PostgresEventStore(f"{postgres_url}?options=-csearch_path%3Dorders")
        stock = PostgresEventStore(f"{postgres_url}?options=-csearch_path%3Dstock")
        # when one appends, then the other does not see it, and neither waits for the other's write lock
        orders.append([NewEvent(added(), 1)])
        assert (orders.head(), stock.head()) == (1, 0) and orders.write_lock != stock.write_lock
        orders.close(), stock.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA orders CASCADE; DROP SCHEMA stock CASCADE")


def test_one_schema_named_two_ways_is_one_store_for_the_shop_and_the_read_side(postgres_url, tmp_path):
    # given a shop whose Order names the shared schema in capitals and with a fallback schema after it
    schema = f"shared_{os.getpid()}"
    settings = Settings.from_env(
        env={},
        data_dir=tmp_path,
        store_url=f"{postgres_url}?options=-csearch_path%3D{schema}",
        service_store_urls={"order": f"{postgres_url}?options=-csearch_path%3D{schema.upper()}%2Cpublic"},
    )
    try:
        # when its stores are opened, for the write side and for the read side
        stores = open_stores(settings)
        try:
            # then every service shares one store: one relay, and its events are read once
            assert not stores.split and stores.of("order") is stores.of("user")
        finally:
            stores.close()
        assert len(store_locations(settings)) == 1
        # and the default schema is the same as naming it
        assert identity(postgres_url) == identity(f"{postgres_url}?options=-csearch_path%3Dpublic")
        assert identity(postgres_url) != identity(f"{postgres_url}?options=-csearch_path%3D{schema}")
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


def test_every_process_of_a_shop_may_open_a_new_schema_at_once_and_unquoted_names_fold_as_postgresql_does(
    postgres_url,
):
    # given six openers of one schema nobody has created yet (a compose shop's containers start together),
    # named the way a person may write it: unquoted, in capitals
    schema = f"Race_{os.getpid()}"
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            PostgresEventStore(url).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    openers = [threading.Thread(target=open_it) for _ in range(6)]
    try:
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(60)
        # then every one opened it, and the schema is the one PostgreSQL reads that name as
        assert failures == []
        with PostgresEventStore(url) as store:
            store.append([NewEvent(added(), 1)])
        assert sql(url, "SELECT current_schema(), count(*) FROM events") == [[(schema.lower(), 1)]]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


def test_a_read_the_servers_statement_timeout_cancels_is_one_line_naming_it(shop_store):
    # the catalogue read over information_schema takes far more than 1 ms
    with pytest.raises(StoreError) as cancelled:
        Projections(shop_store + "%20-cstatement_timeout%3D1")
    message = str(cancelled.value)
    assert "\n" not in message and "canceling statement due to statement timeout" in message
    assert message.endswith("(the server's statement_timeout, from the URL's options or the role's settings: raise it)")


def test_an_unreachable_server_is_a_store_error_naming_it_without_the_password():
    with pytest.raises(StoreError, match="postgresql://shop@127.0.0.1:1/shop") as refused:
        PostgresEventStore("postgresql://shop:hunter2@127.0.0.1:1/shop", connect_timeout=2)
    assert "hunter2" not in str(refused.value) and isinstance(refused.value.__cause__, psycopg.OperationalError)


def test_a_driver_error_inside_a_read_or_an_append_is_a_store_error(shop_store):
    with PostgresEventStore(shop_store) as store:
        sql(shop_store, "DROP TABLE events")  # the table goes away under an open store
        for call in (store.read_all, store.head, lambda: store.read_stream("stock", "P1"), store.read_records):
            with pytest.raises(StoreError, match='relation "events" does not exist') as caught:
                call()
            assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
        with pytest.raises(StoreError, match="append failed"):
            store.append([NewEvent(added(), 4)])
        with pytest.raises(StoreError, match="does not exist"), store.transaction():
            store.append([NewEvent(added(), 4)])


class ConnectionLostAtCommit(PostgresEventStore):
    """A store whose writes lose their connection as they commit: ``after`` the commit reached the
    server, or before it (then the server rolls the transaction back)."""

    after = True

    @contextlib.contextmanager
    def _writing(self):
        lost = psycopg.OperationalError("server closed the connection unexpectedly")
        with super()._writing() as conn:
            yield conn
            if not self.after:
                raise lost
        raise lost


def test_an_append_whose_connection_breaks_after_the_commit_is_stored_once_and_reported_so(postgres_store_url):
    with ConnectionLostAtCommit(postgres_store_url) as store:
        # when the commit reaches the server but its answer is lost, the append is reported as done
        stored = store.append([NewEvent(added(1), 1), NewEvent(added(2), 2)], processed=("inventory", "e-1"))
        assert [(e.position, e.version) for e in stored] == [(1, 1), (2, 2)]
        assert [e.event_id for e in store.read_all()] == [e.event_id for e in stored]
        assert store.is_processed("inventory", "e-1")
        # and when the connection breaks before the commit, nothing is stored and the append fails
        store.after = False
        with pytest.raises(StoreError, match="append failed: server closed the connection"):
            store.append([NewEvent(added(3), 3)])
        assert store.head() == 2


def test_connections_the_server_dropped_are_replaced_before_use(postgres_store_url):
    url = postgres_store_url + ("&" if "?" in postgres_store_url else "?") + "application_name=dropped_test"
    with PostgresEventStore(url) as store:
        store.append([NewEvent(added(), 1)])
        # when the server ends every session of the store (as a restart does), with the store idle
        sql(
            postgres_store_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dropped_test'",
        )
        # then the next calls work at once, on new connections
        assert store.head() == 1 and [e.version for e in store.read_stream("stock", "P1")] == [1]


# --- the shop on PostgreSQL --------------------------------------------------------------------------


def test_a_commit_in_another_process_wakes_a_waiter(postgres_store_url):
    # given a store listening for other processes' commits, and a thread waiting for the next one
    with PostgresEventStore(postgres_store_url) as store:
        assert store.wakes_across_processes
        seen = store.wait_for_commit(store.commits, timeout=0)  # listens from the first call on
        woke: list[int] = []
        waiter = threading.Thread(target=lambda: woke.append(store.wait_for_commit(seen, timeout=60)))
        waiter.start()
        # when another process appends an event
        reopen = functools.partial(PostgresEventStore, postgres_store_url)
        writer = multiprocessing.get_context("spawn").Process(target=append_many, args=(reopen, 1, 1))
        writer.start()
        writer.join(60)
        waiter.join(60)
        # then the waiter woke for it (it would have waited out its minute otherwise)
        assert writer.exitcode == 0 and woke and woke[0] > seen
        assert store.head() == 1


@pytest.mark.integration
def test_the_shop_runs_its_sagas_to_the_end_on_postgresql_and_again_after_a_restart(postgres_store_url, tmp_path):
    from collections import Counter
    from datetime import timedelta

    from eventlab import Shop
    from eventlab.adapters.mailer import MAILBOX
    from eventlab.projections.audit import audit
    from eventlab.services import inventory
    from eventlab.services.runtime import load

    # given the in-process shop (embedded broker) on a PostgreSQL store, and two keyboards in stock
    settings = Settings.from_env({"EVENTLAB_STORE_URL": postgres_store_url}, data_dir=tmp_path)
    with Shop(settings) as shop:
        assert isinstance(shop.store, PostgresEventStore)
        shop.register_user("U001", "Ada Lovelace", "ada@example.com")
        shop.create_product("P001", "Keyboard", 8900, initial_stock=2)
        shop.wait_idle()
        # when three orders of one keyboard each come in
        orders = [shop.place_order("U001", {"P001": 1}) for _ in range(3)]
        # then two complete and the third is cancelled for want of stock, every saga at its end
        statuses = Counter(shop.wait(order_id, timeout=60).status for order_id in orders)
        assert statuses == {"completed": 2, "cancelled": 1}
        shop.wait_idle()
        assert load(shop.store, ("stock", "P001"), inventory.evolve_stock).state == inventory.Stock(0, 0, 2)
        head = shop.store.head()
    assert not settings.store_path.exists()  # nothing went to the SQLite file
    # and a restarted shop (a new, empty embedded broker) applies nothing twice and takes new orders
    with Shop(settings) as shop:
        shop.create_product("P002", "Mouse", 2500, initial_stock=1)
        shop.wait_idle()
        assert shop.wait(shop.place_order("U001", {"P002": 1}), timeout=60).status == "completed"
        shop.wait_idle()
        assert load(shop.store, ("stock", "P001"), inventory.evolve_stock).state == inventory.Stock(0, 0, 2)
        replayed = [e for e in shop.store.read_all(after=head) if e.aggregate_id in orders]
        assert replayed == [] and shop.lag()["relay"] == 0
        # and the invariant audit, reading the PostgreSQL store through its port, finds nothing wrong
        assert (tmp_path / MAILBOX).is_file()  # the emails, checked against the events
        report = audit(shop.store, grace=timedelta(0), mailbox=tmp_path / MAILBOX)
        assert report.ok, [result for result in report.values() if not result.ok]
        assert report["stock_never_negative"].ok and report.position == shop.store.head()


def test_the_server_drops_a_silent_lease_holder_within_seconds(postgres_store_url):
    # given a relay holding the lease of a store whose URL sets its own session options
    with PostgresEventStore(postgres_store_url) as store:
        lease = store.lease("relay")
        assert lease.acquire()
        try:
            conn = lease._conn  # the lease's dedicated session, as the server sees it
            settings = {
                name: conn.execute(f"SHOW {name}".encode()).fetchone()[0]
                for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
            }
            # then the server probes it (a host or network that dies closes nothing) and ends its session
            assert settings == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}
            assert conn.execute(b"SHOW tcp_user_timeout").fetchone()[0] == "10000"
            # and the client gives up on a server that stopped answering, and on a lock check that hangs
            assert conn.info.get_parameters()["tcp_user_timeout"] == "10000"
            assert conn.execute(b"SHOW statement_timeout").fetchone()[0] == "5s"
            # and the URL's own options still apply to it
            assert conn.execute(b"SHOW search_path").fetchone()[0] == postgres_store_url.rsplit("%3D", 1)[1]
        finally:
            lease.release()


def test_a_pool_with_no_connection_to_give_tells_an_unreachable_server_from_busy_connections(postgres_store_url):
    # given a store whose one pooled connection is held by a transaction in another thread
    store = PostgresEventStore(postgres_store_url, pool_size=1, busy_timeout=0.5, connect_timeout=1)
    with store, held_in_another_thread(store.transaction()):
        # when another call waits for a connection in vain while the server answers, it is busy
        with pytest.raises(StoreBusy, match="no free connection in the pool"):
            store.head()
        # and when the server does not answer either (here: new connections go to a closed port),
        # it says so, in one line, instead of "busy" (it took a stopped server for a lock, 30 s a call)
        store._conninfo = "postgresql://127.0.0.1:1/nowhere"
        with pytest.raises(StoreError, match="head failed: cannot connect to the server") as refused:
            store.head()
        assert not isinstance(refused.value, StoreBusy) and "\n" not in str(refused.value)

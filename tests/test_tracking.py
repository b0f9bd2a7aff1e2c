"""Tracking positions and counted lag: how far each consumer has handled, derived from the processed
markers that commit with their events, so a crash can neither lose nor skip an event, a consumer's
lag is a few lookups at any size of store, and a restart republishes only what is not handled yet."""

from __future__ import annotations

import sqlite3

import pytest

from eventlab import Settings, Shop
from eventlab.bootstrap import subscriptions
from eventlab.events import StockAdded, UserCreated
from eventlab.kafka.relay import catch_up_subscriptions, rewind
from eventlab.shop import ShopInfrastructure
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.store.base import RELAY_CONSUMER, EventStore
from eventlab.store.memory import MemoryEventStore
from eventlab.store.sqlite import BASE_SCHEMA, MIGRATIONS, _statements


def added(product_id: str, version: int) -> NewEvent:
    return NewEvent(StockAdded(product_id=product_id, quantity=1), version)


def user(user_id: str) -> NewEvent:
    return NewEvent(UserCreated(user_id=user_id, name=user_id, email=f"{user_id.lower()}@example.com"), 1)


@pytest.fixture
def store(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        yield store


def handle(store, consumer, event, follow_up=()):
    """``consumer`` handles ``event``: its outcome and its marker in one append."""
    return store.append(list(follow_up), processed=(consumer, event.event_id))


def test_lag_is_counted_per_type_and_consumer_and_skips_dead_letters(store):
    # given five stock events, two user events, and the inventory service that handled two of the stock ones
    stock = [store.append([added("P1", v)])[0] for v in range(1, 6)]
    store.append([user("U1")]), store.append([user("U2")])
    handle(store, "inventory", stock[0])
    handle(store, "inventory", stock[1])
    handle(store, "inventory", stock[1])  # a redelivery: no second count
    # and one stock event it dead-lettered, one the relay could not publish
    store.record_dead_letter("inventory", "stock", 0, 7, b"P1", b"{}", [], "poison", event_id=stock[2].event_id)
    store.record_dead_letter(RELAY_CONSUMER, "store", 0, 4, b"P1", b"{}", [], "bad", event_id=stock[3].event_id)
    # then the raw lag counts what has no marker, the pending one leaves the dead letters out
    assert store.unprocessed("inventory", ["StockAdded"]) == 3
    assert store.unprocessed("inventory", ["StockAdded", "UserCreated", "StockAdded"]) == 5
    assert store.pending("inventory", ["StockAdded"]) == 1
    assert store.pending("order", ["StockAdded"]) == 4  # only the relay's dead letter counts for another consumer
    assert store.processed_count("inventory") == 2 and store.processed_count("order") == 0
    # and a dead-lettered event that is handled after all (a replay) is counted once
    handle(store, "inventory", stock[2])
    assert store.pending("inventory", ["StockAdded"]) == 1 and store.unprocessed("inventory", ["StockAdded"]) == 2


def test_a_store_of_schema_version_2_gets_its_counts_from_the_rows_it_has(tmp_path):
    # given a version-2 store with three events and one marker, written before counts existed
    path = tmp_path / "events.db"
    con = sqlite3.connect(path, isolation_level=None)
    for script in (BASE_SCHEMA, MIGRATIONS[0]):
        for statement in _statements(script):
            con.execute(statement)
    con.execute("INSERT INTO eventlab VALUES ('schema_version', '2')")
    for n, kind in enumerate(["StockAdded", "StockAdded", "UserCreated"], start=1):
        con.execute(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, data,"
            " metadata, recorded_at) VALUES (?, 'stock', 'P1', ?, ?, 1, '{}', '{}', '2026-01-01 00:00:00.000000')",
            (f"e-{n}", n, kind),
        )
    con.execute("INSERT INTO processed VALUES ('inventory', 'e-1')")
    con.close()
    # when eventlab opens it (migrating it)
    with SqliteEventStore(path) as store:
        # then the lag is what a scan would say, and new rows keep counting
        assert store.unprocessed("inventory", ["StockAdded"]) == 1
        assert store.processed_count("inventory") == 1
        store.append([], processed=("inventory", "e-2"))
        assert store.unprocessed("inventory", ["StockAdded"]) == 0


def test_the_tracking_position_stops_before_the_first_event_not_handled(store):
    # given six stock events interleaved with user events the inventory does not read
    stock = []
    for v in range(1, 7):
        stock.append(store.append([added("P1", v)])[0])
        store.append([user(f"U{v}")])
    # and the inventory handled all but the fourth; the third was dead-lettered instead
    for event in stock[:2] + stock[4:]:
        handle(store, "inventory", event)
    store.record_dead_letter("inventory", "stock", 0, 3, b"P1", b"{}", [], "poison", event_id=stock[2].event_id)
    # then its tracking position is just before the fourth
    assert store.tracking_position("inventory", ["StockAdded"]) == stock[3].position - 1
    # when the fourth is handled, the position moves to the head (the user events after it do not hold it)
    handle(store, "inventory", stock[3])
    assert store.tracking_position("inventory", ["StockAdded"]) == store.head()
    # and a consumer of no stored type is at the head too
    assert store.tracking_position("order", ["OrderCreated"]) == store.head()


def test_a_crash_between_the_append_and_the_marker_cannot_skip_an_event(store):
    # given three stock events; the inventory handles the first two
    stock = [store.append([added("P1", v)])[0] for v in range(1, 4)]
    handle(store, "inventory", stock[0])
    handle(store, "inventory", stock[1])
    # when it dies while handling the third (its transaction never commits)
    with pytest.raises(RuntimeError), store.transaction():
        handle(store, "inventory", stock[2], [added("P2", 1)])
        raise RuntimeError("killed mid-transaction")
    # then neither the outcome nor the marker exist, and the tracking position stays before the third
    assert store.read_stream("stock", "P2") == []
    assert store.tracking_position("inventory", ["StockAdded"]) == stock[1].position
    # and a rewind republishes from there, even if the relay had published everything
    store.set_checkpoint(RELAY_CONSUMER, store.head())
    assert rewind(store, {"inventory": ["StockAdded"]}) == stock[1].position
    assert store.checkpoint(RELAY_CONSUMER) == stock[1].position


def test_rewind_goes_back_to_the_lowest_consumer_and_never_past_the_relay(store):
    stock = [store.append([added("P1", v)])[0] for v in range(1, 5)]
    for event in stock:
        handle(store, "inventory", event)
    handle(store, "order", stock[0])
    store.set_checkpoint(RELAY_CONSUMER, stock[2].position)
    assert rewind(store, {"inventory": ["StockAdded"]}) == stock[2].position  # not beyond what was published
    store.set_checkpoint(RELAY_CONSUMER, store.head())
    assert rewind(store, {"inventory": ["StockAdded"], "order": ["StockAdded"]}) == stock[0].position
    assert rewind(store) == 0  # consumers unknown: everything again


@pytest.mark.integration
def test_a_restart_after_a_clean_stop_republishes_nothing(tmp_path):
    # given a shop that took an order and stopped once idle
    settings = Settings.from_env(env={}, data_dir=tmp_path)
    with Shop(settings) as shop:
        shop.register_user("U001", "Ada Lovelace", "ada@example.com")
        shop.create_product("P001", "Keyboard", 8900, initial_stock=5)
        shop.wait_idle()  # the stock is in before the order comes (they travel on different topics)
        order_id = shop.place_order("U001", {"P001": 1})
        assert shop.wait(order_id).status == "completed"
        shop.wait_idle()
        head = shop.store.head()
        consumers = subscriptions(shop.services)
    # when its infrastructure starts again on a new (empty) embedded broker
    infra = ShopInfrastructure(settings, consumers=consumers)
    try:
        infra.start()
        # then the relay is to go on from the head: every consumer had handled everything
        assert infra.store.checkpoint(RELAY_CONSUMER) == head
    finally:
        infra.stop()


class _PortDefaults(SqliteEventStore):
    """The SQLite store answering with the port's default tracking position (what a backend without
    its own gets)."""

    tracking_position = EventStore.tracking_position


def test_the_ports_default_tracking_position_agrees_with_sqlites(tmp_path):
    with SqliteEventStore(tmp_path / "a.db") as fast, _PortDefaults(tmp_path / "b.db") as default:
        for store in (fast, default):
            stock = [store.append([added("P1", v)])[0] for v in range(1, 5)]
            store.append([user("U1")])
            for event in (stock[0], stock[1], stock[3]):
                handle(store, "inventory", event)
        assert fast.tracking_position("inventory", ["StockAdded"]) == 2
        assert default.tracking_position("inventory", ["StockAdded"]) == 2
        for store in (fast, default):
            handle(store, "inventory", store.read_stream("stock", "P1")[2])
        assert fast.tracking_position("inventory", ["StockAdded"]) == fast.head() == 5
        assert default.tracking_position("inventory", ["StockAdded"]) == default.head() == 5


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_consumer_newly_subscribed_to_a_type_gets_its_older_events_published_again(tmp_path, kind):
    # given a store where the order consumer handled every stock event, and users it never read
    with SqliteEventStore(tmp_path / "events.db") if kind == "sqlite" else MemoryEventStore() as store:
        users = []
        for v in range(1, 4):
            handle(store, "order", store.append([added("P1", v)])[0])
            users.append(store.append([user(f"U{v}")])[0])
        old = {"order": ["StockAdded"]}
        assert catch_up_subscriptions(store, old) == 0  # a first start records what it subscribes to
        store.set_checkpoint(RELAY_CONSUMER, store.head())
        assert store.tracking_position("order", ["StockAdded"]) == store.head()
        assert catch_up_subscriptions(store, old) is None  # nothing new: nothing moves
        # when it is upgraded to subscribe to UserCreated as well
        new = {"order": ["StockAdded", "UserCreated"]}
        position = catch_up_subscriptions(store, new)
        # then the relay goes back to just before the first user event, which it never handled
        assert position == users[0].position - 1 == store.checkpoint(RELAY_CONSUMER)
        assert store.tracking_position("order", new["order"]) == position
        # and only once: the next start finds the subscription recorded
        assert catch_up_subscriptions(store, new) is None
        assert store.checkpoint(RELAY_CONSUMER) == position
        # when it has handled them, its tracking position is the head again
        for event in users:
            handle(store, "order", event)
        assert store.tracking_position("order", new["order"]) == store.head()

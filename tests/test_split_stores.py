"""A store per service (``EVENTLAB_<SERVICE>_STORE_URL``): each service writes its events, processed
markers and dead letters to its own store, a relay publishes each store, and the saga, its
compensation, restarts and lag work across stores, on the real embedded broker and SQLite files."""

from __future__ import annotations

import threading
import urllib.error
from collections import Counter
from datetime import datetime, timedelta

import pytest
from conftest import free_port_offset
from test_processes import processes, request, wait_healthy

from eventlab import Settings, Shop
from eventlab.adapters import SimulatedGateway
from eventlab.application import Commands
from eventlab.bootstrap import Wiring, build_services, subscriptions
from eventlab.events import StockAdded, UserCreated
from eventlab.kafka.loop import ServiceLoop
from eventlab.kafka.relay import rewind
from eventlab.resilience import wait_until
from eventlab.services import SERVICE_NAMES, inventory
from eventlab.services.runtime import load, trace_metadata
from eventlab.store import MemoryEventStore, NewEvent, ShopStores, SqliteEventStore, open_stores

pytestmark = pytest.mark.integration


def split_settings(tmp_path, services=SERVICE_NAMES, **values):
    """Settings giving each of ``services`` a SQLite file of its own (the others share events.db)."""
    urls = {name: str(tmp_path / f"{name}.db") for name in services}
    return Settings.from_env(env={}, data_dir=tmp_path, service_store_urls=urls, **values)


def stored_types(store):
    return {record.aggregate_type for record in store.read_records()}


def emails_sent(shop):
    return Counter(
        (e.data["order_id"], e.data["kind"])
        for e in shop.stores.of("notification").read_all()
        if e.event_type == "EmailSent"
    )


def test_a_shop_with_every_service_on_its_own_store_completes_and_compensates_orders(tmp_path):
    # given a shop whose six services each write to a SQLite file of their own
    settings = split_settings(tmp_path)
    with Shop(settings) as shop:
        assert shop.stores.split and len(shop.relays) == 6 and "order.db" in repr(shop)
        wait_until(lambda: all(relay.active for relay in shop.relays.values()), 60)
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.create_product("P1", "Lamp", 2750, initial_stock=5)
        shop.wait_idle()
        # when one order goes through and one's payment fails
        completed = shop.wait(shop.place_order("U1", {"P1": 2}))
        shop.gateway.failure_rate = 1.0
        cancelled = shop.wait(shop.place_order("U1", {"P1": 1}))
        shop.gateway.failure_rate = 0.0
        shop.wait_idle()
        # then the first completed, the second was compensated: its stock released again
        assert completed.status == "completed"
        assert (cancelled.status, cancelled.reason) == ("cancelled", "payment_failed")
        types = [e.event_type for e in shop.order(cancelled.order_id).events]  # read from every store
        assert types.index("PaymentCompleted") < types.index("OrderCancelled") < types.index("StockReleased")
        stock = load(shop.stores.of("inventory"), ("stock", "P1"), inventory.evolve_stock).state
        assert stock == inventory.Stock(available=3, reserved=0, sold=2)
        # and every store holds only the streams of its own service, with its markers
        for name, service in shop.services.items():
            store = shop.stores.of(name)
            assert stored_types(store) <= set(service.evolvers), name
            if service.subscriptions:
                assert store.processed_count(name) > 0 and all(
                    shop.stores.of(other).processed_count(name) == 0 for other in SERVICE_NAMES if other != name
                )
        assert shop.lag() == dict.fromkeys(["relay", *shop.loops], 0)
    # and the shared store the settings name by default was never even made
    assert not (tmp_path / "events.db").exists()


def test_a_split_shop_restarted_on_an_empty_embedded_broker_handles_nothing_twice(tmp_path):
    # given a split shop (order and inventory on their own stores) that took an order and stopped
    settings = split_settings(tmp_path, ["order", "inventory", "notification"])
    with Shop(settings) as shop:
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.create_product("P1", "Lamp", 2750, initial_stock=5)
        shop.wait_idle()
        first = shop.wait(shop.place_order("U1", {"P1": 1})).order_id
        shop.wait_idle()
        before = emails_sent(shop)
    # when it starts again on a new embedded broker, which has forgotten every topic
    with Shop(settings) as shop:
        shop.wait_idle()
        second = shop.wait(shop.place_order("U1", {"P1": 1}))
        shop.wait_idle()
        # then the new order completes and nothing of the first was handled again
        assert second.status == "completed"
        emails = emails_sent(shop)
        assert {key: count for key, count in emails.items() if key[0] == first} == before
        assert set(emails.values()) == {1} and len(emails) == 4
        events = Counter(e.event_type for e in shop.order(first).events)
        assert events["StockReserved"] == events["PaymentCompleted"] == events["OrderCompleted"] == 1
        stock = load(shop.stores.of("inventory"), ("stock", "P1"), inventory.evolve_stock).state
        assert stock == inventory.Stock(available=3, reserved=0, sold=2)


def test_a_consumers_lag_counts_the_events_of_other_stores_it_has_not_handled(tmp_path):
    # given a split shop (user and order on stores of their own) that registered a user and stopped
    settings = split_settings(tmp_path, ["order", "user"])
    with Shop(settings) as shop:
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.wait_idle()
    # when a user is registered straight into the user service's store while nothing runs
    stores = open_stores(settings)
    try:
        stores.of("user").append([NewEvent(UserCreated(user_id="U2", name="Bo", email="bo@example.com"), 1)])
        order = ServiceLoop(
            build_services(settings, SimulatedGateway())["order"], stores.of("order"), settings, sources=list(stores)
        )
        # then Order's lag counts it: an event of another store, without a marker in Order's store
        assert order.lag() == 1
    finally:
        stores.close()
    # and once the shop runs again, Order handles it (published again: the broker forgot it) and its lag is 0
    with Shop(settings) as shop:
        shop.wait_idle()
        assert shop.loops["order"].lag() == 0
        assert shop.stores.of("order").read_stream("order_customer", "U2")


@pytest.fixture(params=["memory", "sqlite"])
def two_stores(request, tmp_path):
    """A user service's store and an order service's store, of one kind."""
    if request.param == "memory":
        yield MemoryEventStore(), MemoryEventStore()
        return
    users, orders = SqliteEventStore(tmp_path / "user.db"), SqliteEventStore(tmp_path / "order.db")
    yield users, orders
    users.close()
    orders.close()


def test_rewind_goes_back_per_store_to_the_first_event_a_consumer_of_another_store_has_not_handled(two_stores):
    # given a user store with three registrations, all published, and Order's markers in a store of its own
    users, orders = two_stores
    stored = [
        users.append([NewEvent(UserCreated(user_id=f"U{i}", name="X", email="x@example.com"), 1)])[0] for i in range(3)
    ]
    users.set_checkpoint("relay", users.head())
    consumers = {"order": subscriptions(build_services(Settings(store_url="memory://"), SimulatedGateway()))["order"]}
    # when Order handled the first only, and the relay of the user store rewinds
    orders.append([], processed=("order", stored[0].event_id))
    position = rewind(users, consumers, {"order": orders})
    # then it goes back to just after the first, and Order's tracking is recorded in Order's store only
    assert position == stored[0].position
    tracking = f"tracking:order@{stored[0].event_id}"
    assert orders.checkpoint(tracking) == position and users.checkpoint(tracking) == 0
    assert users.pending_across("order", consumers["order"], orders) == 2
    # and once Order has handled the rest, it tracks up to the head, with nothing pending
    for event in stored[1:]:
        orders.append([], processed=("order", event.event_id))
    assert users.pending_across("order", consumers["order"], orders) == 0
    assert users.tracking_position_across("order", consumers["order"], orders) == users.head()
    assert orders.checkpoint(tracking) == users.head()
    # and an event Order dead-lettered (recorded in its own store) is no lag either
    poison = users.append([NewEvent(UserCreated(user_id="U9", name="X", email="x@example.com"), 1)])[0]
    assert users.pending_across("order", consumers["order"], orders) == 1
    orders.record_dead_letter("order", "user.profile.created", 0, 9, None, b"?", [], "bad", event_id=poison.event_id)
    assert users.pending_across("order", consumers["order"], orders) == 0


def test_open_stores_routes_each_service_to_its_own_store(tmp_path):
    stores = open_stores(split_settings(tmp_path, ["order"]))
    try:
        assert stores.of("order") is not stores.of("user") and stores.of("user") is stores.of("payment")
        assert stores.services_of(stores.of("order")) == ["order"]
    finally:
        stores.close()


def test_one_process_per_service_with_order_and_inventory_on_stores_of_their_own(tmp_path):
    # given `eventlab up --processes` with the order and inventory services on SQLite files of their own
    offset = free_port_offset()
    order_db, inventory_db = tmp_path / "order.db", tmp_path / "inventory.db"
    variables = {"EVENTLAB_ORDER_STORE_URL": str(order_db), "EVENTLAB_INVENTORY_STORE_URL": str(inventory_db)}
    port = {name: 8081 + index + offset for index, name in enumerate(SERVICE_NAMES)}
    with processes(tmp_path, offset, **variables) as up:
        # then it says which store each service writes to (as the README promises)
        said = [up.stdout.readline() for _ in range(1 + len(SERVICE_NAMES))]
        assert said[0].startswith("eventlab: broker 127.0.0.1:") and said[0].endswith(
            f"store {tmp_path / 'events.db'}\n"
        )
        assert [line.split() for line in said[1:]] == [
            [name, "store", str({"order": order_db, "inventory": inventory_db}.get(name, tmp_path / "events.db"))]
            for name in SERVICE_NAMES
        ]
        for name in SERVICE_NAMES:
            wait_healthy(port[name])
        # when a user and a product are registered and an order is placed over HTTP
        request(port["user"], "POST", "/users", {"user_id": "U1", "name": "Ada", "email": "ada@example.com"})
        product = {"product_id": "P1", "name": "Lamp", "price_cents": 2750, "initial_stock": 5}
        request(port["product"], "POST", "/products", product)
        line = {"user_id": "U1", "lines": [{"product_id": "P1", "quantity": 1}]}
        order_id = wait_until(lambda: _place(port["order"], line), 60)
        # then it completes, its saga read from every store
        found = wait_until(lambda: request(port["order"], "GET", f"/orders/{order_id}"), 60, until=_terminal)
        assert found["status"] == "completed" and "StockReserved" in found["events"]
        assert "EmailRequested" in found["events"]
    # and each store holds its own service's streams
    stores = open_stores(split_settings(tmp_path, ["order", "inventory"]))
    try:
        assert stored_types(stores.of("order")) == {"order", "order_customer", "order_price"}
        assert stored_types(stores.of("inventory")) == {"stock", "reservation"}
        assert {"user", "product", "payment", "notification"} <= stored_types(stores.of("user"))
    finally:
        stores.close()


def _place(port, line):
    """The order's id, or None while Order has not heard of the user or product yet."""
    try:
        return request(port, "POST", "/orders", line)["order_id"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _terminal(order):
    return order["status"] in ("completed", "cancelled")


def test_a_second_relay_process_stands_by_for_every_store_and_takes_each_over(tmp_path):
    # given two relay "processes" (as `--replicas relay=2` runs), each with a relay per store
    settings = split_settings(tmp_path, ["order", "inventory"])
    services = build_services(settings, SimulatedGateway())
    first_stores, second_stores = open_stores(settings), open_stores(settings)
    first, second = (
        Wiring(settings, first_stores, services).relays(),
        Wiring(settings, second_stores, services).relays(),
    )
    stop_first, stop_second = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=relay.run, args=(stop,), daemon=True)
        for relays, stop in ((first, stop_first), (second, stop_second))
        for relay in relays.values()
    ]
    try:
        for thread in threads[: len(first)]:
            thread.start()
        wait_until(lambda: all(relay.active for relay in first.values()), 60)
        for thread in threads[len(first) :]:
            thread.start()
        # then each store has one active relay, the first process's, and the second stands by for each
        assert len(first) == len(second) == 3
        assert not any(store.lease("relay").acquire() for store in second_stores)  # each held by the first
        assert not any(relay.active for relay in second.values())
        # when the first process stops, the second takes over every store
        stop_first.set()
        wait_until(lambda: all(relay.active for relay in second.values()), 60)
    finally:
        stop_first.set()
        stop_second.set()
        for thread in threads:
            thread.join(10)
        first_stores.close()
        second_stores.close()


def test_an_orders_saga_read_from_several_stores_keeps_each_stores_order_even_when_its_clock_steps_back():
    # given Order's store, whose second event was stamped earlier than its first (times are taken
    # before the write lock), and Payment's store with an event in between
    second = timedelta(seconds=1)
    times = iter([START + 2 * second, START, START + second])  # Order's first, Order's second, Payment's
    order_store, payment_store = (MemoryEventStore(clock=lambda: next(times)) for _ in range(2))
    saga = trace_metadata("test", "O1")
    order_store.append([NewEvent(StockAdded(product_id="first", quantity=1), 1, saga)])
    order_store.append([NewEvent(StockAdded(product_id="second", quantity=1), 2, saga)])
    payment_store.append([NewEvent(StockAdded(product_id="payment", quantity=1), 1, saga)])
    stores = ShopStores(
        {name: payment_store if name == "payment" else order_store for name in SERVICE_NAMES},
        {"order": order_store, "payment": payment_store},
    )
    # when the saga is read from both
    events = Commands(stores).read_correlated("O1")
    # then Order's events keep their order (sorting by time alone put its second first), Payment's
    # before both: Order had reached a later time by its first
    assert [event.event.product_id for event in events] == ["payment", "first", "second"]


START = datetime(2026, 1, 1)

"""A store per service over a shop's life: an upgrade that subscribes a service to more event types while
another process (the supervisor) also tracks it, and a shop that ran on one store given a store per
service later (refused: its data is not moved)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import free_port, free_port_offset

from eventlab import Settings, Shop
from eventlab.adapters import SimulatedGateway
from eventlab.bootstrap import aggregates, build_services
from eventlab.errors import StoreError
from eventlab.events import CustomerRecorded, ProductCreated, UserCreated
from eventlab.kafka.relay import catch_up_subscriptions, rewind
from eventlab.shop import check_service_stores
from eventlab.store import NewEvent, SqliteEventStore, check_stores_named, open_stores

pytestmark = pytest.mark.integration

#: Each service's aggregate types, as the shop knows them.
OWNED = aggregates(build_services(Settings(store_url="memory://"), SimulatedGateway()))

#: Order's subscriptions before and after an upgrade that keeps its own copy of the users too.
BEFORE_UPGRADE = {"order": {"ProductCreated"}}
AFTER_UPGRADE = {"order": {"ProductCreated", "UserCreated"}}


def product(number: int) -> NewEvent:
    return NewEvent(ProductCreated(product_id=f"P{number}", name="Lamp", price_cents=2750, initial_stock=5), 1)


def user(number: int) -> NewEvent:
    return NewEvent(UserCreated(user_id=f"U{number}", name="Ada", email="ada@example.com"), 1)


def test_an_upgrade_seen_by_another_process_still_republishes_the_events_order_never_handled(tmp_path):
    # given a shared store with a product, a user and a product, all published, and an older Order (a store
    # of its own, subscribed to products only) that handled both products
    shared = SqliteEventStore(tmp_path / "events.db")
    first, registered, second = (shared.append([event])[0] for event in (product(1), user(1), product(2)))
    order_store = tmp_path / "order.db"
    with SqliteEventStore(order_store) as order:
        for event in (first, second):
            order.append([], processed=("order", event.event_id))
    shared.set_checkpoint("relay", shared.head())
    # and the supervisor of `eventlab up --processes` (its own store objects) tracked Order up to the head
    supervisor_shared, supervisor_order = SqliteEventStore(tmp_path / "events.db"), SqliteEventStore(order_store)
    catch_up_subscriptions(supervisor_shared, BEFORE_UPGRADE, {"order": supervisor_order})
    assert rewind(supervisor_shared, BEFORE_UPGRADE, {"order": supervisor_order}) == shared.head()
    # when the upgraded Order subscribes to users too: the relay process catches up, back before the user
    with SqliteEventStore(order_store) as relay_order:
        assert catch_up_subscriptions(shared, AFTER_UPGRADE, {"order": relay_order}) == first.position
    shared.set_checkpoint("relay", shared.head())  # published again; Order has not handled the user yet
    # then the supervisor sees the user as Order's lag
    assert supervisor_shared.pending_across("order", AFTER_UPGRADE["order"], supervisor_order) == 1
    # and when it stops, recording the tracking positions, and the shop starts on an empty embedded broker
    supervisor_shared.tracking_position_across("order", AFTER_UPGRADE["order"], supervisor_order)
    supervisor_shared.close()
    supervisor_order.close()
    with SqliteEventStore(order_store) as order:
        position = rewind(shared, AFTER_UPGRADE, {"order": order})
    # then the user Order never handled is published again
    assert position < registered.position
    shared.close()


def test_a_tracking_position_forgotten_while_another_process_computes_one_stays_forgotten(
    store_backend, tmp_path, monkeypatch
):
    # given a shared store whose two products Order (a store of its own, of each kind) handled, tracked up to
    # the first
    shared = SqliteEventStore(tmp_path / "shared.db")
    first, second = (shared.append([product(number)])[0] for number in (1, 2))
    order = store_backend.store
    order.append([], processed=("order", first.event_id))
    assert shared.tracking_position_across("order", BEFORE_UPGRADE["order"], order) == first.position
    order.append([], processed=("order", second.event_id))
    # when one process follows Order up to the head while another forgets Order's tracking meanwhile
    following = store_backend.reopen()
    checked = following.processed_among

    def checked_while_forgotten(consumer, event_ids):
        monkeypatch.setattr(following, "processed_among", checked)
        shared.forget_tracking_across("order", order)
        return checked(consumer, event_ids)

    monkeypatch.setattr(following, "processed_among", checked_while_forgotten)
    assert shared.tracking_position_across("order", BEFORE_UPGRADE["order"], following) == second.position
    # then the forgetting wins: the next tracking starts from the first event again
    assert order.checkpoint(f"tracking:order@{first.event_id}") == 0
    if following is not order:
        following.close()
    shared.close()


# --- a store per service given to a shop that already ran (or taken away) -------------------------------


def order_store_settings(tmp_path, **values):
    """The shop in ``tmp_path`` with Order on a SQLite file of its own (``EVENTLAB_ORDER_STORE_URL``)."""
    return Settings.from_env(
        env={}, data_dir=tmp_path, service_store_urls={"order": str(tmp_path / "order.db")}, **values
    )


def ran_on_one_store(tmp_path, *, markers=True, customers=False):
    """A shop that ran on the one store ``events.db``: two registrations, handled by Order (its processed
    markers) and/or copied into Order's own customers (events of its aggregate ``order_customer``)."""
    with SqliteEventStore(tmp_path / "events.db") as shared:
        for number in range(2):
            registered = shared.append([user(number)])[0]
            copy = [NewEvent(CustomerRecorded(user_id=f"U{number}", email="ada@example.com"), 1)] if customers else []
            shared.append(copy, processed=("order", registered.event_id) if markers else None)


def test_a_shop_that_ran_on_one_store_is_refused_a_store_of_its_own_for_order(tmp_path):
    # given a shop that ran on one store, where Order handled two registrations
    ran_on_one_store(tmp_path)
    # when the operator gives Order a store of its own and starts the shop again
    shop = Shop(order_store_settings(tmp_path))
    try:
        with pytest.raises(StoreError) as refused:
            shop.start()
    finally:
        shop.stop()
    # then it is refused, naming the service, its variable, both stores and the way out
    message = str(refused.value)
    assert message.startswith("order has a store of its own (EVENTLAB_ORDER_STORE_URL: ")
    assert str(tmp_path / "order.db") in message and str(tmp_path / "events.db") in message
    assert "new data directory" in message and "unset EVENTLAB_ORDER_STORE_URL" in message
    # and nothing was republished to Order: the shared store's relay never rewound
    with SqliteEventStore(tmp_path / "events.db") as shared:
        assert (
            shared.checkpoint("relay") == 0
            and shared.checkpoint(f"tracking:order@{shared.read_all()[0].event_id}") == 0
        )


def order_on_a_store_of_its_own(tmp_path, **more: str) -> dict[str, str]:
    """This process's environment without eventlab's variables, for a shop in ``tmp_path`` whose Order
    is given a store of its own (and ``more``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTLAB_", "OTEL_"))}
    env.update(
        EVENTLAB_DATA_DIR=str(tmp_path),
        EVENTLAB_HTTP_PORT_OFFSET=str(free_port_offset()),
        EVENTLAB_ORDER_STORE_URL=str(tmp_path / "order.db"),
        **more,
    )
    return env


def test_up_processes_refuses_it_in_one_line(tmp_path):
    # given a shop that ran on one store, where Order keeps its own copy of two customers
    ran_on_one_store(tmp_path, markers=False, customers=True)
    # when `eventlab up --processes` starts it with Order on a store of its own
    env = order_on_a_store_of_its_own(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--processes"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        output, errors = up.communicate(timeout=120)  # a started shop runs until stopped; a loaded CI machine is slow
    except subprocess.TimeoutExpired:
        up.send_signal(signal.SIGTERM)
        output, errors = up.communicate(timeout=60)
        pytest.fail(f"the shop started: {output}{errors}")
    # then it stops before starting anything, with one line and a non-zero status
    assert up.returncode == 2, output + errors
    assert errors.startswith("eventlab: error: order has a store of its own (EVENTLAB_ORDER_STORE_URL: ")
    assert len(errors.strip().splitlines()) == 1 and "Traceback" not in errors


@pytest.mark.parametrize("service", ["order", "relay"])
def test_eventlab_run_refuses_it_too_before_joining_the_shop(tmp_path, service):
    # given a shop that ran on one store, where Order handled two registrations
    ran_on_one_store(tmp_path)
    # when one process joins it with `eventlab run` (as in compose), Order given a store of its own
    env = order_on_a_store_of_its_own(
        tmp_path,
        EVENTLAB_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nothing listens: the check comes first
    )
    run = subprocess.run(
        [sys.executable, "-m", "eventlab", "run", service],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it stops before handling anything (in Order's empty store, committing Kafka offsets the shop's
    # own Order process would then never see), with one line and status 2
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith("eventlab: error: order has a store of its own (EVENTLAB_ORDER_STORE_URL: ")
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_shop_on_stores_of_their_own_from_the_start_is_accepted_and_keeps_them(tmp_path):
    # given a shop that ran with Order on a store of its own from the start (the shared store holds users)
    ran_on_one_store(tmp_path, markers=False)
    stores = open_stores(order_store_settings(tmp_path))
    try:
        check_service_stores(order_store_settings(tmp_path), stores, OWNED)
        registered = stores.of("user").read_all()[0]
        stores.of("order").append([], processed=("order", registered.event_id))
        # when it starts again, then it is accepted
        check_service_stores(order_store_settings(tmp_path), stores, OWNED)
    finally:
        stores.close()
    # but when EVENTLAB_ORDER_STORE_URL is unset later, Order's past (in its own store) is not forgotten
    one = open_stores(Settings.from_env(env={}, data_dir=tmp_path))
    try:
        with pytest.raises(StoreError, match="^order ran on a store of its own .*set EVENTLAB_ORDER_STORE_URL again"):
            check_service_stores(Settings.from_env(env={}, data_dir=tmp_path), one, OWNED)
    finally:
        one.close()


def test_every_service_on_a_store_of_its_own_is_checked_against_the_shared_store_that_ran_before(tmp_path):
    # given a shop that ran on one store, where Order handled two registrations
    ran_on_one_store(tmp_path)
    # when every service gets a store of its own (the shared store is then no service's)
    urls = {name: str(tmp_path / f"{name}.db") for name in OWNED}
    settings = Settings.from_env(env={}, data_dir=tmp_path, service_store_urls=urls)
    stores = open_stores(settings)
    try:
        # then it is refused all the same, naming the first service whose past is there (User's registrations)
        with pytest.raises(StoreError, match="^user has a store of its own .*EVENTLAB_USER_STORE_URL"):
            check_service_stores(settings, stores, OWNED)
    finally:
        stores.close()


def order_on(tmp_path, name):
    """Settings of the shop in ``tmp_path`` with Order on the SQLite file ``name`` of its own."""
    return Settings.from_env(env={}, data_dir=tmp_path, service_store_urls={"order": str(tmp_path / name)})


def test_order_pointed_at_another_store_of_its_own_is_refused_and_at_its_moved_one_accepted(tmp_path):
    # given a shop that ran with Order on order-a.db, where Order copied a customer
    ran_on_one_store(tmp_path, markers=False)
    stores = open_stores(order_on(tmp_path, "order-a.db"))
    try:
        check_service_stores(order_on(tmp_path, "order-a.db"), stores, OWNED)
        stores.of("order").append([NewEvent(CustomerRecorded(user_id="U0", email="ada@example.com"), 1)])
    finally:
        stores.close()
    # when it starts with Order on a new, empty order-b.db (its orders and copies left behind: its
    # ids counted from 1 again, and the shop's invariants broke)
    switched = open_stores(order_on(tmp_path, "order-b.db"))
    try:
        # then it is refused, naming the variable and the store
        with pytest.raises(StoreError) as refused:
            check_service_stores(order_on(tmp_path, "order-b.db"), switched, OWNED)
    finally:
        switched.close()
    assert str(refused.value).startswith(
        f"order ran on another store of its own than EVENTLAB_ORDER_STORE_URL names ({tmp_path / 'order-b.db'})"
    )
    # and so is reading the shop with it (the audit and the projections would leave order-a.db out)
    with pytest.raises(StoreError, match="^order ran on another store of its own"):
        check_stores_named(order_on(tmp_path, "order-b.db"))
    # but order-a.db moved to another name is the same store: accepted
    (tmp_path / "order-a.db").rename(tmp_path / "order-moved.db")
    check_stores_named(order_on(tmp_path, "order-moved.db"))
    moved = open_stores(order_on(tmp_path, "order-moved.db"))
    try:
        check_service_stores(order_on(tmp_path, "order-moved.db"), moved, OWNED)
    finally:
        moved.close()


def test_a_store_recorded_by_an_eventlab_without_store_ids_is_accepted_and_given_one(tmp_path):
    # given a shared store where an older eventlab recorded only that Order had a store of its own
    ran_on_one_store(tmp_path, markers=False)
    with SqliteEventStore(tmp_path / "events.db") as shared:
        shared.set_checkpoint("own store:order", 1)
    # when the shop starts with Order's store, then it is accepted, and the store recorded by its id
    stores = open_stores(order_on(tmp_path, "order.db"))
    try:
        check_service_stores(order_on(tmp_path, "order.db"), stores, OWNED)
        ident = stores.of("order").checkpoint("store id")
        assert ident > 1 and stores.of("user").checkpoint("own store:order") == ident
    finally:
        stores.close()

"""Services own their data: no service reads another service's streams.

Order keeps its own copy of the customers and prices it needs, Notification of the customers'
email addresses, each recorded from the ``UserCreated`` and ``ProductCreated`` events it consumes.
"""

from __future__ import annotations

import pytest
from conftest import unique

from eventlab.adapters import FileMailer, SimulatedGateway
from eventlab.application import Commands
from eventlab.bootstrap import build_services
from eventlab.errors import NotFound
from eventlab.events import (
    EVENT_TYPES,
    CustomerRecorded,
    Event,
    OrderConfirmed,
    OrderLine,
    PriceRecorded,
    ProductCreated,
    RecipientRecorded,
    UserCreated,
)
from eventlab.services import notification, order
from eventlab.services.runtime import Service, execute, trace_metadata
from eventlab.settings import Settings
from eventlab.store import SqliteEventStore


def six_services(tmp_path) -> dict[str, Service]:
    settings = Settings.from_env(env={}, data_dir=tmp_path)
    return build_services(settings, SimulatedGateway(0.0), mailer=FileMailer(tmp_path / "mailbox.jsonl"))


def example(cls: type[Event]) -> Event:
    """An event of type ``cls`` with every field set to something (only ids and lines matter here)."""
    fields: dict[str, object] = dict.fromkeys(cls.model_fields, "X1")
    if "lines" in fields:
        fields["lines"] = (OrderLine(product_id="P1", quantity=1, unit_price_cents=1),)
    return cls.model_construct(**fields)


# --- structure: each service reads only streams it writes ----------------------------------


def test_every_aggregate_type_belongs_to_exactly_one_service(tmp_path):
    # given the six services as the shop wires them
    services = six_services(tmp_path)
    # then no aggregate type is folded by two services (no service reads another's streams) ...
    owners: dict[str, list[str]] = {}
    for name, service in services.items():
        for aggregate_type in service.evolvers:
            owners.setdefault(aggregate_type, []).append(name)
    assert {kind: names for kind, names in owners.items() if len(names) > 1} == {}
    # ... and every event type's stream is owned by the one service that folds it
    for cls in EVENT_TYPES.values():
        assert len(owners.get(cls.aggregate_type, [])) == 1, f"{cls.__name__}: {cls.aggregate_type} has no owner"


def test_a_decision_reads_only_streams_of_its_own_service(tmp_path):
    # given the six services
    for name, service in six_services(tmp_path).items():
        for cls in service.subscriptions:
            # when a consumed event is decided on, then only the service's own aggregate types are read
            read = {kind for kind, _ in service.streams(example(cls))}
            assert read <= set(service.evolvers), f"{name} on {cls.__name__} reads {read - set(service.evolvers)}"
            # and only events of those aggregate types are ever written there
            own = {t.aggregate_type for t in EVENT_TYPES.values() if t.aggregate_type in service.evolvers}
            assert read <= own


def test_placing_an_order_reads_only_orders_own_state(tmp_path):
    # given a store with a user and a product registered (but no Order copies yet)
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store)
    commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    commands.create_product(product_id="P1", name="Pen", price_cents=100)
    # when an order is placed, then the check reads Order's copy, which does not exist yet
    with pytest.raises(NotFound) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert error.value.field == "user_id"
    assert "has not heard of it" in str(error.value)
    store.close()


# --- behaviour: Order and Notification keep their copies -----------------------------------


def consume(store: SqliteEventStore, service: Service, event: Event, event_id: str) -> None:
    """Handle ``event`` as the service's consumer loop does (same call, processed marker included)."""
    execute(
        store,
        service.streams(event),
        service.evolvers,
        lambda states: service.handle(event, states),
        trace_metadata(service.name, event_id),
        processed=(service.name, event_id),
    )


def test_an_order_is_accepted_once_order_has_heard_of_the_user_and_the_product(tmp_path):
    # given a registered user and product that Order has not consumed yet
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store, id_factory=lambda: "O-1")
    ada = commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    pen = commands.create_product(product_id="P1", name="Pen", price_cents=250, initial_stock=5)
    lines = [{"product_id": "P1", "quantity": 2}]
    # when Order has heard only of the product, then the order is rejected naming the user
    consume(store, order.SERVICE, pen, "evt-pen")
    with pytest.raises(NotFound) as error:
        commands.place_order(user_id="U1", lines=lines)
    assert error.value.field == "user_id"
    # when Order consumes the UserCreated (twice: a redelivery records nothing more)
    consume(store, order.SERVICE, ada, "evt-ada")
    consume(store, order.SERVICE, ada, "evt-ada")
    consume(store, order.SERVICE, ada, "evt-ada-copy")
    # then the order is accepted, priced from Order's own price list
    assert commands.place_order(user_id="U1", lines=lines) == "O-1"
    assert commands.get_order("O-1").total_cents == 500
    assert [e.event_type for e in store.read_stream("order_customer", "U1")] == ["CustomerRecorded"]
    assert [e.event_type for e in store.read_stream("order_price", "P1")] == ["PriceRecorded"]
    store.close()


def test_an_order_for_a_product_order_has_not_heard_of_names_the_line(tmp_path):
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store)
    consume(store, order.SERVICE, commands.register_user(user_id="U1", name="Ada", email="a@example.com"), "e1")
    commands.create_product(product_id="P1", name="Pen", price_cents=250)
    with pytest.raises(NotFound) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert error.value.field == "lines.0.product_id"
    store.close()


def test_order_records_each_customer_and_price_once():
    ada = UserCreated(user_id="U1", name="Ada", email="ada@example.com")
    pen = ProductCreated(product_id="P1", name="Pen", price_cents=250, initial_stock=0)
    assert order.decide(ada, {("order_customer", "U1"): None}) == [CustomerRecorded(user_id="U1")]
    assert order.decide(ada, {("order_customer", "U1"): order.Customer("U1")}) == []
    assert order.decide(pen, {("order_price", "P1"): None}) == [PriceRecorded(product_id="P1", price_cents=250)]
    assert order.decide(pen, {("order_price", "P1"): order.Price("P1", 250)}) == []


def test_notification_emails_the_address_it_recorded():
    ada = UserCreated(user_id="U1", name="Ada", email="ada@example.com")
    [recorded] = notification.decide(ada, {("notification_recipient", "U1"): None})
    assert recorded == RecipientRecorded(user_id="U1", email="ada@example.com")
    recipient = notification.evolve_recipient(None, recorded)
    assert notification.decide(ada, {("notification_recipient", "U1"): recipient}) == []
    confirmed = OrderConfirmed(order_id="O-1", user_id="U1", total_cents=100)
    states = {("notification", "O-1"): None, ("notification_recipient", "U1"): recipient}
    [requested] = notification.decide(confirmed, states)
    assert requested.to == "ada@example.com"


@pytest.mark.integration
def test_a_registered_user_can_order_at_once_through_the_shop(shop, make_product):
    # given a user registered through the shop (which waits until Order and Notification recorded it)
    user_id = unique("U")
    shop.register_user(user_id, "Ada", f"{user_id.lower()}@example.com")
    product_id = make_product(stock=3, price_cents=700)
    # then both services hold their own copy
    assert [e.event_type for e in shop.store.read_stream("order_customer", user_id)] == ["CustomerRecorded"]
    assert [e.event_type for e in shop.store.read_stream("notification_recipient", user_id)] == ["RecipientRecorded"]
    # and an order placed right away completes, emailing the recorded address
    view = shop.wait(shop.place_order(user_id, {product_id: 1}))
    assert (view.status, view.total_cents) == ("completed", 700)
    shop.wait_idle()
    emails = [e.event for e in shop.store.read_stream("notification", view.order_id)]
    assert {e.to for e in emails} == {f"{user_id.lower()}@example.com"}

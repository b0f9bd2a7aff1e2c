"""Services own their data: no service reads another service's streams.

Order keeps its own copy of the customers (with their email) and prices it needs, recorded from the
``UserCreated`` and ``ProductCreated`` events it consumes. Notification keeps no copy: the order's
events carry the email (Order knew it when it accepted the order), so an order's events reaching
Notification before the ``UserCreated`` — topics are not ordered with each other — lose no email.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import consume, free_port_offset, ordering, unique

from eventlab import Shop, services
from eventlab.adapters import FileMailer, SimulatedGateway
from eventlab.adapters.mailer import MAILBOX
from eventlab.application import Commands
from eventlab.bootstrap import build_services
from eventlab.commands import PlaceOrder
from eventlab.errors import AlreadyExists, InvalidCommand, NotFound
from eventlab.events import (
    EVENT_TYPES,
    CustomerRecorded,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    PriceRecorded,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    UserCreated,
)
from eventlab.resilience import wait_until
from eventlab.services import notification, order
from eventlab.services.runtime import Service, trace_metadata
from eventlab.settings import Settings
from eventlab.store import NewEvent, SqliteEventStore, open_store
from eventlab.workshop import sequential_ids


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


def owners(services: dict[str, Service]) -> dict[str, list[str]]:
    """Each aggregate type with the services that fold it (read its streams)."""
    found: dict[str, list[str]] = {}
    for name, service in services.items():
        for aggregate_type in service.evolvers:
            found.setdefault(aggregate_type, []).append(name)
    return found


def test_every_aggregate_type_belongs_to_exactly_one_service(tmp_path):
    # given the six services as the shop wires them
    folded_by = owners(six_services(tmp_path))
    # then no aggregate type is folded by two services (no service reads another's streams) ...
    assert {kind: names for kind, names in folded_by.items() if len(names) > 1} == {}
    # ... and every event type's stream is owned by the one service that folds it
    for cls in EVENT_TYPES.values():
        assert len(folded_by.get(cls.aggregate_type, [])) == 1, f"{cls.__name__}: {cls.aggregate_type} has no owner"


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_a_decision_on_any_event_reads_only_streams_of_its_own_service(tmp_path, cls):
    # given the six services, and an event of any type (subscribed or not: a handler must not reach out)
    for name, service in six_services(tmp_path).items():
        # when the service decides on it, then it reads only aggregate types it folds itself
        read = {kind for kind, _ in service.streams(example(cls))}
        assert read <= set(service.evolvers), f"{name} on {cls.__name__} reads {read - set(service.evolvers)}"
        # and it reads at all only what it subscribes to
        assert not read or cls in service.subscriptions, f"{name} reads streams for unsubscribed {cls.__name__}"


def test_the_streams_a_decision_follows_are_its_own_services_too():
    # given an order placed before order events carried the email, and an answer about it
    legacy = order.evolve(None, OrderCreated(order_id="O-1", user_id="U1", lines=(), total_cents=0))
    answer = ReservationConfirmed(order_id="O-1", lines=())
    # then the stream Order follows to its customer is Order's own copy, never the user's stream
    followed = order.SERVICE.follow(answer, {("order", "O-1"): legacy}) if order.SERVICE.follow else []
    assert followed == [("order_customer", "U1")]
    assert {kind for kind, _ in followed} <= set(order.SERVICE.evolvers)


SERVICE_MODULES = ("user", "product", "order", "payment", "inventory", "notification")


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_a_service_module_imports_no_other_service(module):
    # given a service's pure core
    tree = ast.parse((Path(services.__file__).parent / f"{module}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {
        f"eventlab.services.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "eventlab.services"
        for alias in node.names
    }
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    # then it borrows no other service's state or fold (only the shared runtime)
    others = {f"eventlab.services.{name}" for name in SERVICE_MODULES if name != module}
    assert imported & others == set()


def test_placing_an_order_reads_only_orders_own_state(tmp_path):
    # given a store with a user and a product registered (but no Order copies yet)
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store, copy_wait=0)
    commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    commands.create_product(product_id="P1", name="Pen", price_cents=100)
    # when an order is placed, then the check reads Order's copy, which does not exist yet
    with pytest.raises(NotFound) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert error.value.field == "user_id"
    assert "has not heard of it" in str(error.value)
    store.close()


# --- behaviour: Order and Notification keep their copies -----------------------------------


def test_an_order_is_accepted_once_order_has_heard_of_the_user_and_the_product(tmp_path):
    # given a registered user and product that Order has not consumed yet
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store, id_factory=lambda: "O-1", copy_wait=0)
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


@pytest.mark.parametrize("quantity", [3, 1], ids=["other-lines", "same-lines"])
def test_an_order_id_the_factory_gives_twice_is_refused_and_writes_nothing(tmp_path, quantity):
    # given an order O-1 placed, and an id factory that gives O-1 again (a counter restarted)
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store, id_factory=lambda: "O-1")
    commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    head = store.head()
    # when another order is placed (even one like it: only a client's own id makes a repeat), then it
    # is refused naming the id, and nothing is written
    with pytest.raises(AlreadyExists) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": quantity}])
    assert error.value.field == "order_id"
    assert store.head() == head
    assert commands.get_order("O-1").total_cents == 250
    store.close()


def test_an_order_sent_again_under_its_own_id_is_placed_once(tmp_path):
    # given an order placed under the client's own id (its answer lost, say)
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store, id_factory=lambda: pytest.fail("the client gave the id"))
    request = {"order_id": "mine-1", "user_id": "U1", "lines": [{"product_id": "P1", "quantity": 2}]}
    assert commands.place_order(request) == "mine-1"
    head = store.head()
    # when the client sends it again, then it gets the same id and nothing more is written
    assert commands.place_order(request) == "mine-1"
    assert commands.place_order({**request, "order_id": " mine-1 "}) == "mine-1"  # ids are stripped like any
    assert store.head() == head
    assert [e.event_type for e in store.read_stream("order", "mine-1")] == ["OrderCreated"]
    store.close()


@pytest.mark.parametrize(
    "other",
    [
        {"user_id": "U2"},
        {"lines": [{"product_id": "P1", "quantity": 3}]},
        {"lines": [{"product_id": "P2", "quantity": 2}]},
        {"lines": [{"product_id": "P1", "quantity": 2}, {"product_id": "P2", "quantity": 1}]},
    ],
)
def test_an_id_in_use_with_another_user_or_other_lines_is_refused_and_writes_nothing(tmp_path, other):
    # given an order placed under the client's own id
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store)
    request = {"order_id": "mine-1", "user_id": "U1", "lines": [{"product_id": "P1", "quantity": 2}]}
    commands.place_order(request)
    head = store.head()
    # when the same id comes with another user or other lines, then it is refused naming the id
    with pytest.raises(AlreadyExists) as error:
        commands.place_order({**request, **other})
    assert error.value.field == "order_id" and "another user or other lines" in str(error.value)
    assert store.head() == head
    store.close()


def test_the_same_order_sent_from_eight_threads_at_once_is_placed_once(tmp_path):
    # given eight clients retrying one order under its id at the same moment (one SQLite file, like the service)
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store)
    request = {"order_id": "mine-1", "user_id": "U1", "lines": [{"product_id": "P1", "quantity": 1}]}
    start = threading.Barrier(8)

    def place(_):
        start.wait()
        return commands.place_order(request)

    # when they all place it, then each gets its id, and one OrderCreated is stored
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(place, range(8))) == ["mine-1"] * 8
    assert [e.event_type for e in store.read_stream("order", "mine-1")] == ["OrderCreated"]
    store.close()


@pytest.mark.parametrize(
    ("method", "request_", "stream"),
    [
        ("register_user", {"user_id": "U9", "name": "Ada", "email": "ada@example.com"}, ("user", "U9")),
        (
            "create_product",
            {"product_id": "P9", "name": "Lamp", "price_cents": 2750, "initial_stock": 3},
            ("product", "P9"),
        ),
    ],
    ids=["user", "product"],
)
def test_a_registration_sent_from_eight_threads_at_once_is_written_once(tmp_path, method, request_, stream):
    # given eight clients retrying one registration under its id at the same moment
    store = SqliteEventStore(tmp_path / "events.db")
    create = getattr(Commands(store), method)
    start = threading.Barrier(8)

    def send(_):
        start.wait()
        return create(request_)

    # when they all send it, then each gets the same event, and it is stored once
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert answers == [answers[0]] * 8 and answers[0].model_dump() == request_
    assert [e.event for e in store.read_stream(*stream)] == [answers[0]]
    # and the same id with other details is refused naming it, writing nothing
    head = store.head()
    with pytest.raises(AlreadyExists) as error:
        create({**request_, "name": "Someone else"})
    assert error.value.field == f"{stream[0]}_id"
    assert store.head() == head
    store.close()


@pytest.mark.integration
def test_a_shop_restarted_with_sequential_ids_refuses_to_reuse_order_001(tmp_path):
    # given order-001 completed, and the shop stopped
    settings = Settings.from_env(env={}, data_dir=tmp_path, http_port_offset=free_port_offset())
    with Shop(settings, id_factory=sequential_ids("order")) as shop:
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.create_product("P1", "Pen", 250, 5)
        assert shop.wait(shop.place_order("U1", {"P1": 1})).status == "completed"
    # when it is started again on the same data, its ids counting from 1 again
    with Shop(settings, id_factory=sequential_ids("order")) as shop:
        # then the next order is refused naming its id, and order-001 stays as it was
        with pytest.raises(AlreadyExists) as error:
            shop.place_order("U1", {"P1": 2})
        assert error.value.field == "order_id"
        assert [e.event_type for e in shop.store.read_stream("order", "order-001")].count("OrderCreated") == 1
        assert shop.order("order-001").status == "completed"


@pytest.mark.parametrize("bad_id", ["x" * 300, "", "order 1", 42, None])
def test_an_id_the_factory_gives_that_is_not_an_id_is_refused_naming_order_id(tmp_path, bad_id):
    store = SqliteEventStore(tmp_path / "events.db")
    commands = ordering(store, id_factory=lambda: bad_id)
    head = store.head()
    with pytest.raises(InvalidCommand) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert error.value.field == "order_id"
    assert len(str(error.value)) < 200
    assert store.head() == head
    store.close()


def test_an_order_for_a_product_order_has_not_heard_of_names_the_line(tmp_path):
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store, copy_wait=0.2)
    consume(store, order.SERVICE, commands.register_user(user_id="U1", name="Ada", email="a@example.com"), "e1")
    commands.create_product(product_id="P1", name="Pen", price_cents=250)
    with pytest.raises(NotFound) as error:
        commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert error.value.field == "lines.0.product_id"
    store.close()


def test_an_order_placed_right_after_the_registration_waits_for_orders_copy(tmp_path):
    # given a user and a product just registered, their events still on their way to Order
    store = SqliteEventStore(tmp_path / "events.db")
    commands = Commands(store, id_factory=lambda: "O-1", copy_wait=30.0)  # ample on a loaded machine
    ada = commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    pen = commands.create_product(product_id="P1", name="Pen", price_cents=250, initial_stock=5)

    def order_consumes_them() -> None:
        time.sleep(0.3)
        consume(store, order.SERVICE, pen, "evt-pen")
        time.sleep(0.1)
        consume(store, order.SERVICE, ada, "evt-ada")

    arrive = threading.Thread(target=order_consumes_them)
    arrive.start()
    # when the order is placed at once, then it waits for Order's copies (woken by their commits) and is accepted
    assert commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}]) == "O-1"
    arrive.join()
    assert commands.get_order("O-1").total_cents == 250
    store.close()


def test_order_records_each_customer_and_price_once():
    ada = UserCreated(user_id="U1", name="Ada", email="ada@example.com")
    pen = ProductCreated(product_id="P1", name="Pen", price_cents=250, initial_stock=0)
    assert order.decide(ada, {("order_customer", "U1"): None}) == [
        CustomerRecorded(user_id="U1", email="ada@example.com")
    ]
    assert order.decide(ada, {("order_customer", "U1"): order.Customer("U1", "ada@example.com")}) == []
    assert order.decide(pen, {("order_price", "P1"): None}) == [PriceRecorded(product_id="P1", price_cents=250)]
    assert order.decide(pen, {("order_price", "P1"): order.Price("P1", 250)}) == []


# --- the email travels with the order (event-carried state) --------------------------------


def test_every_order_event_order_decides_carries_the_customers_email():
    # given Order's copy of Ada (recorded from her UserCreated) and its price list
    ada = order.evolve_customer(None, CustomerRecorded(user_id="U1", email="ada@example.com"))
    pen = order.Price("P1", 250)
    # when she places an order, then OrderCreated carries her email
    [created] = order.place(
        PlaceOrder(user_id="U1", lines=[{"product_id": "P1", "quantity": 2}]), "O-1", None, ada, {"P1": pen}
    )
    assert isinstance(created, OrderCreated) and created.email == "ada@example.com"
    placed = {("order", "O-1"): order.evolve(None, created)}
    confirmed = order.decide(ReservationConfirmed(order_id="O-1", lines=created.lines), placed)
    rejected = order.decide(ReservationRejected(order_id="O-1", product_id="P1", requested=2, available=0), placed)
    paying = {("order", "O-1"): order.evolve(placed[("order", "O-1")], confirmed[0])}
    paid = order.decide(PaymentCompleted(order_id="O-1", amount_cents=500, status="COMPLETED"), paying)
    declined = order.decide(PaymentCompleted(order_id="O-1", amount_cents=500, status="FAILED"), paying)
    timed_out = order.time_out(paying[("order", "O-1")], "confirmed", "late")
    # then so does every event Notification reacts to, whichever way the saga ends
    decided = [*confirmed, *rejected, *paid, *declined, *timed_out]
    assert [type(e) for e in decided] == [
        OrderConfirmed,
        OrderCancelled,
        OrderCompleted,
        OrderCancelled,
        OrderCancelled,
    ]
    assert {e.email for e in decided if isinstance(e, OrderConfirmed | OrderCompleted | OrderCancelled)} == {
        "ada@example.com"
    }


def test_notification_emails_the_address_the_order_event_carries_with_no_user_state():
    # given Notification has never heard of user U1 (it has no copy of the users at all)
    assert {kind for kind, _ in notification.streams(OrderConfirmed(order_id="O-1", user_id="U1", total_cents=1))} == {
        "notification"
    }
    # when O-1's confirmation arrives carrying the email, then one email is requested to that address
    confirmed = OrderConfirmed(order_id="O-1", user_id="U1", email="ada@example.com", total_cents=100)
    [requested] = notification.decide(confirmed, {("notification", "O-1"): None})
    assert (requested.kind, requested.to) == ("order_confirmed", "ada@example.com")
    # and the same event again requests nothing more
    box = notification.evolve(None, requested)
    assert notification.decide(confirmed, {("notification", "O-1"): box}) == []


def test_an_order_event_without_an_email_requests_nothing_and_says_so(tmp_path, caplog):
    # given an OrderConfirmed stored by an eventlab that did not carry the email yet
    legacy = OrderConfirmed.model_validate({"order_id": "O-1", "user_id": "U1", "total_cents": 100})
    # then Notification has no address and requests no email (rather than reading the users)
    assert legacy.email is None
    assert notification.decide(legacy, {("notification", "O-1"): None}) == []
    # and the service says so in a warning, naming the order (not a silent drop)
    service = notification.service(FileMailer(tmp_path / "mailbox.jsonl"))
    with caplog.at_level("WARNING", logger="eventlab.services.notification"):
        assert service.handle(legacy, {("notification", "O-1"): None}) == []
    assert "OrderConfirmed of order O-1 carries no email" in caplog.text


# --- orders in flight at the upgrade (placed before order events carried the email) ---------


LEGACY = OrderCreated(
    order_id="O-1", user_id="U1", lines=(OrderLine(product_id="P1", quantity=2, unit_price_cents=250),), total_cents=500
)


def test_an_order_placed_without_an_email_gets_it_from_orders_copy_of_its_customer():
    # given an order placed before order events carried the email, and Order's copy of its customer
    placed = order.evolve(None, LEGACY)
    ada = order.Customer("U1", "ada@example.com")
    known = {("order", "O-1"): placed, ("order_customer", "U1"): ada}
    # when the saga goes on, then each next order event carries the email from the copy
    [confirmed] = order.decide(ReservationConfirmed(order_id="O-1", lines=LEGACY.lines), known)
    [rejected] = order.decide(ReservationRejected(order_id="O-1", product_id="P1", requested=2, available=0), known)
    [timed_out] = order.time_out(placed, "created", "late", known)
    assert {e.email for e in (confirmed, rejected, timed_out)} == {"ada@example.com"}
    paying = {("order", "O-1"): order.evolve(placed, confirmed), ("order_customer", "U1"): ada}
    [paid] = order.decide(PaymentCompleted(order_id="O-1", amount_cents=500, status="COMPLETED"), paying)
    assert isinstance(paid, OrderCompleted) and paid.email == "ada@example.com"
    # but without a copy (Order never heard of the customer) the event goes on without one
    [bare] = order.decide(ReservationConfirmed(order_id="O-1", lines=LEGACY.lines), {("order", "O-1"): placed})
    assert bare.email is None
    # and an order that carries its email reads no copy at all
    assert order.customer_of(order.evolve(None, LEGACY.model_copy(update={"email": "x@example.com"}))) == []


def test_orders_consumer_reads_the_customer_copy_of_an_order_stored_without_an_email(tmp_path):
    # given an order stored before order events carried the email, and Order's copy of Ada
    store = SqliteEventStore(tmp_path / "events.db")
    store.append([NewEvent(LEGACY, 1, {"source": "order"})])
    consume(store, order.SERVICE, UserCreated(user_id="U1", name="Ada", email="ada@example.com"), "evt-ada")
    # when Order's consumer handles Inventory's answer (the call its loop makes)
    consume(store, order.SERVICE, ReservationConfirmed(order_id="O-1", lines=LEGACY.lines), "evt-reserved")
    # then the OrderConfirmed it stores carries her email
    [_, confirmed] = [stored.event for stored in store.read_stream("order", "O-1")]
    assert isinstance(confirmed, OrderConfirmed) and confirmed.email == "ada@example.com"
    store.close()


@pytest.mark.integration
def test_a_registered_user_can_order_at_once_through_the_shop(shop, make_product):
    # given a user registered through the shop (which waits until Order recorded its copy)
    user_id = unique("U")
    shop.register_user(user_id, "Ada", f"{user_id.lower()}@example.com")
    product_id = make_product(stock=3, price_cents=700)
    # then Order holds its own copy, email included
    [recorded] = shop.store.read_stream("order_customer", user_id)
    assert recorded.event == CustomerRecorded(user_id=user_id, email=f"{user_id.lower()}@example.com")
    # and an order placed right away completes, emailing that address
    view = shop.wait(shop.place_order(user_id, {product_id: 1}))
    assert (view.status, view.total_cents) == ("completed", 700)
    shop.wait_idle()
    emails = [e.event for e in shop.store.read_stream("notification", view.order_id)]
    assert {e.to for e in emails} == {f"{user_id.lower()}@example.com"}


def emails_of(shop, order_id: str) -> list[tuple[str, str]]:
    """(kind, to) of each email about ``order_id`` in the shop's mailbox, as delivered."""
    lines = [json.loads(line) for line in (shop.settings.data_dir / MAILBOX).read_text().splitlines()]
    return sorted((line["kind"], line["to"]) for line in lines if line["order_id"] == order_id)


@pytest.mark.integration
def test_order_events_that_reach_notification_before_the_user_event_still_send_each_email_once(shop, make_product):
    # given Order has recorded its copy of a customer whose UserCreated is not even published yet
    # (Notification sees the order's events first: topics are not ordered with each other)
    user_id = unique("U")
    email = f"{user_id.lower()}@example.com"
    late = UserCreated(user_id=user_id, name="Late Lovelace", email=email)
    consume(shop.store, order.SERVICE, late, f"evt-{user_id}")
    product_id = make_product(stock=3, price_cents=300)
    # when an order is placed, and its saga runs through Kafka to the end
    view = shop.wait(shop.place_order(user_id, {product_id: 1}))
    assert view.status == "completed"
    shop.wait_idle()
    # then Notification emailed the customer once per order event, with no user event anywhere
    assert shop.store.read_stream("user", user_id) == []
    expected = [("order_completed", email), ("order_confirmed", email)]
    assert emails_of(shop, view.order_id) == expected
    # when the UserCreated finally arrives (the user service records it; the relay publishes it)
    shop.register_user(user_id, late.name, email)
    shop.wait_idle()
    # then nothing is sent again and Order's copy is not recorded twice
    assert emails_of(shop, view.order_id) == expected
    sent = [e.event for e in shop.store.read_stream("notification", view.order_id) if e.event_type == "EmailSent"]
    assert sorted((e.kind, e.to) for e in sent) == expected
    assert [e.event_type for e in shop.store.read_stream("order_customer", user_id)] == ["CustomerRecorded"]


@pytest.mark.integration
def test_every_stored_event_was_written_by_the_service_owning_its_stream(shop, customer, make_product):
    # given orders that complete and that are cancelled for lack of stock, run through Kafka
    product_id = make_product(stock=1, price_cents=100)
    done = [shop.wait(shop.place_order(customer, {product_id: 1})) for _ in range(2)]
    assert sorted(view.status for view in done) == ["cancelled", "completed"]
    shop.wait_idle()
    # then every event in the store was written by the one service that folds its aggregate type:
    # no service wrote (nor, as it writes only streams it read, read) another service's streams
    folded_by = {kind: names[0] for kind, names in owners(shop.services).items()}
    writers = {(stored.aggregate_type, stored.metadata["source"]) for stored in shop.store.read_all()}
    assert {(kind, source) for kind, source in writers if folded_by[kind] != source} == set()
    assert {"order_customer", "order_price", "order", "notification", "stock", "reservation", "payment"} <= {
        kind for kind, _ in writers
    }


# --- upgrading a shop whose store was written before Order kept its own copies ----------------

#: What each consumer subscribed to before Order kept copies (Notification is left out: it read the
#: users then, which this code cannot replay; its markers are set as if it had mailed).
BEFORE_COPIES: dict[str, tuple[type[Event], ...]] = {
    "order": (ReservationConfirmed, ReservationRejected, PaymentCompleted),
    "inventory": (ProductCreated, OrderCreated, OrderCancelled, OrderCompleted),
    "payment": (OrderConfirmed, OrderCancelled),
}


def write_store_as_before_copies(settings: Settings) -> None:
    """A store as the code before Order's copies left it: a user, a product and a completed order,
    every event handled and published, order events without email (schema version 1), no
    ``CustomerRecorded``/``PriceRecorded``, and each consumer's tracking position past it all."""
    services = six_services(settings.data_dir)
    store = open_store(settings)
    commands = Commands(store)
    commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    commands.create_product(product_id="P1", name="Pen", price_cents=250, initial_stock=5)
    store.append([NewEvent(LEGACY.model_copy(update={"order_id": "O-OLD"}), 1, trace_metadata("order", "O-OLD"))])
    handled: set[tuple[str, str]] = set()
    while todo := [
        (name, stored)
        for stored in store.read_all()
        for name, types in BEFORE_COPIES.items()
        if type(stored.event) in types and (name, stored.event_id) not in handled
    ]:
        for name, stored in todo:
            consume(store, services[name], stored.event, stored.event_id)
            handled.add((name, stored.event_id))
    for stored in store.read_all():
        if type(stored.event) in (OrderConfirmed, OrderCompleted, OrderCancelled):
            store.append([], processed=("notification", stored.event_id))
    assert [e.event_type for e in store.read_stream("order", "O-OLD")][-1] == "OrderCompleted"
    assert not store.read_stream("order_customer", "U1") and not store.read_stream("order_price", "P1")
    for name, types in BEFORE_COPIES.items():
        assert store.tracking_position(name, [cls.__name__ for cls in types]) == store.head()
    store.set_checkpoint("relay", store.head())
    store.close()
    with sqlite3.connect(settings.store_path) as con:  # the order events as that code wrote them
        con.execute(
            "UPDATE events SET schema_version = 1, data = json_remove(data, '$.email') WHERE aggregate_type = 'order'"
        )
    con.close()


@pytest.mark.integration
def test_a_shop_upgraded_to_orders_own_copies_takes_orders_from_its_existing_customers(tmp_path):
    # given a store written before Order kept its own copies of customers and prices
    settings = Settings.from_env(env={}, data_dir=tmp_path)
    write_store_as_before_copies(settings)
    # when the upgraded shop starts on it (a new, empty embedded broker)
    with Shop(settings) as shop:
        # then Order hears of the existing customer and product through its own consumer ...
        wait_until(lambda: shop.store.read_stream("order_customer", "U1"), 30)
        wait_until(lambda: shop.store.read_stream("order_price", "P1"), 30)
        # ... and an order for them completes, emailing the customer
        view = shop.wait(shop.place_order("U1", {"P1": 1}))
        assert (view.status, view.total_cents) == ("completed", 250)
        # when an order without email arrives (placed by an Order replica not yet upgraded)
        late = LEGACY.model_copy(update={"order_id": "O-LATE"})
        shop.store.append([NewEvent(late, 1, trace_metadata("order", "O-LATE"))])
        # then its saga picks up the email from Order's copy, and each email goes to the customer
        assert shop.wait("O-LATE").status == "completed"
        shop.wait_idle()
        assert emails_of(shop, "O-LATE") == [
            ("order_completed", "ada@example.com"),
            ("order_confirmed", "ada@example.com"),
        ]
        assert emails_of(shop, view.order_id) == emails_of(shop, "O-LATE")
        # and the old order was neither mailed again nor touched
        assert emails_of(shop, "O-OLD") == []
        assert [e.event_type for e in shop.store.read_stream("order", "O-OLD")][-1] == "OrderCompleted"

"""Domain stories: given events, when a command or event, then new events (or an error).

Pure logic only: no Kafka, no database.
"""

from __future__ import annotations

import threading
from functools import reduce
from unittest import mock

import pytest

from eventlab.adapters import FileMailer, SimulatedGateway
from eventlab.commands import CreateProduct, PlaceOrder, RegisterUser, parse
from eventlab.errors import AlreadyExists, InvalidCommand, NotFound
from eventlab.events import (
    EmailRequested,
    EmailSent,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    StockAdded,
    StockReleased,
    StockReserved,
    StockSold,
    UserCreated,
)
from eventlab.services import inventory, notification, order, payment, product, user

ADA = UserCreated(user_id="U001", name="Ada Lovelace", email="ada@example.com")
KEYBOARD = order.Price("P001", 8900)
MOUSE = order.Price("P002", 2499)
LINES = (
    OrderLine(product_id="P001", quantity=1, unit_price_cents=8900),
    OrderLine(product_id="P002", quantity=2, unit_price_cents=2499),
)
#: Every event of O-1 carries Ada's id and email (from Order's copy of her, for Notification).
ADA_IDS = {"order_id": "O-1", "user_id": "U001", "email": "ada@example.com"}
CREATED = OrderCreated(**ADA_IDS, lines=LINES, total_cents=13898)


def fold(evolve, events):
    return reduce(evolve, events, None)


# --- user and product ------------------------------------------------------------------------


def test_a_user_registers_once_and_a_repeat_of_the_registration_decides_nothing():
    command = parse(RegisterUser, {"user_id": "U001", "name": "Ada Lovelace", "email": "ada@example.com"})
    assert user.register(command, None) == [ADA]
    assert user.register(command, fold(user.evolve, [ADA])) == []


@pytest.mark.parametrize("other", [{"name": "Ada King"}, {"email": "ada@example.org"}])
def test_a_user_id_taken_with_another_name_or_email_is_refused(other):
    command = parse(RegisterUser, {"user_id": "U001", "name": "Ada Lovelace", "email": "ada@example.com", **other})
    with pytest.raises(AlreadyExists, match="U001 already exists with another name or email") as error:
        user.register(command, fold(user.evolve, [ADA]))
    assert error.value.field == "user_id"


KEYBOARD_ROW = {"product_id": "P001", "name": "Keyboard", "price_cents": 8900, "initial_stock": 5}


def test_a_product_is_created_once_and_a_repeat_decides_nothing():
    command = parse(CreateProduct, KEYBOARD_ROW)
    created = ProductCreated(**KEYBOARD_ROW)
    assert product.create(command, None) == [created]
    assert product.create(command, fold(product.evolve, [created])) == []


@pytest.mark.parametrize("other", [{"name": "Mouse"}, {"price_cents": 8901}, {"initial_stock": 4}])
def test_a_product_id_taken_with_other_details_is_refused(other):
    command = parse(CreateProduct, {**KEYBOARD_ROW, **other})
    with pytest.raises(AlreadyExists, match="P001 already exists with other details") as error:
        product.create(command, fold(product.evolve, [ProductCreated(**KEYBOARD_ROW)]))
    assert error.value.field == "product_id"


def test_a_product_carries_its_initial_stock_to_inventory():
    created = ProductCreated(product_id="P001", name="Keyboard", price_cents=8900, initial_stock=5)
    states = {("stock", "P001"): None}
    assert inventory.decide(created, states) == [StockAdded(product_id="P001", quantity=5)]


def test_a_second_product_created_adds_no_stock():
    # Given a product stocked once (a second ProductCreated cannot pass the Product service, but can be sent)
    created = ProductCreated(product_id="P001", name="Keyboard", price_cents=8900, initial_stock=5)
    states = {("stock", "P001"): fold(inventory.evolve_stock, [StockAdded(product_id="P001", quantity=5)])}
    # then another one adds nothing: the catalogue's stock is counted once
    assert inventory.decide(created, states) == []


# --- placing an order ------------------------------------------------------------------------


ADA_STATE = order.Customer("U001", "ada@example.com")


def place(lines, customer=ADA_STATE, catalogue=None):
    command = parse(PlaceOrder, {"user_id": "U001", "lines": lines})
    return order.place(command, "O-1", None, customer, catalogue or {"P001": KEYBOARD, "P002": MOUSE})


def test_an_order_is_priced_from_the_catalogue_in_cents():
    events = place([{"product_id": "P001", "quantity": 1}, {"product_id": "P002", "quantity": 2}])
    assert events == [CREATED]
    assert isinstance(events[0].total_cents, int)


def test_an_order_for_an_unknown_user_is_rejected():
    with pytest.raises(NotFound) as error:
        place([{"product_id": "P001", "quantity": 1}], customer=None)
    assert error.value.field == "user_id"


def test_an_order_id_is_taken_once():
    # given a completed order O-1
    paid = OrderCompleted(**ADA_IDS, total_cents=13898, lines=LINES)
    completed = fold(order.evolve, [CREATED, OrderConfirmed(**ADA_IDS, total_cents=13898), paid])
    command = parse(PlaceOrder, {"user_id": "U001", "lines": [{"product_id": "P001", "quantity": 1}]})
    # when an order is placed under the same id, then it is refused naming the id
    with pytest.raises(AlreadyExists, match="O-1 already exists") as error:
        order.place(command, "O-1", completed, ADA_STATE, {"P001": KEYBOARD})
    assert error.value.field == "order_id"


def test_an_order_for_an_unknown_product_names_the_line():
    with pytest.raises(NotFound) as error:
        place([{"product_id": "P001", "quantity": 1}, {"product_id": "P404", "quantity": 1}])
    assert error.value.field == "lines.1.product_id"
    assert "P404" in str(error.value)


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([], "lines"),
        ([{"product_id": "P001", "quantity": 0}], "lines.0.quantity"),
        ([{"product_id": "P001", "quantity": -3}], "lines.0.quantity"),
        ([{"product_id": "P001", "quantity": 10**9}], "lines.0.quantity"),
        ([{"product_id": "P001", "quantity": 1.5}], "lines.0.quantity"),
        ([{"product_id": "P001", "quantity": 1}] * 2, "lines"),
        ([{"product_id": f"P{i}", "quantity": 1} for i in range(51)], "lines"),
        ([{"product_id": "x" * 65, "quantity": 1}], "lines.0.product_id"),
        ([{"product_id": "P001"}], "lines.0.quantity"),
    ],
)
def test_invalid_orders_name_the_field(lines, field):
    with pytest.raises(InvalidCommand) as error:
        parse(PlaceOrder, {"user_id": "U001", "lines": lines})
    assert error.value.field == field


def test_too_many_lines_are_refused_before_any_line_is_validated():
    """A 64 KiB body holds 32,000 bad lines: counting them first names the count, not line 0, and
    spares describing 32,000 errors (~0.5 s of CPU each time, measured before the check)."""
    with pytest.raises(InvalidCommand) as error:
        parse(PlaceOrder, {"user_id": "U001", "lines": [1] * 32_000})
    assert (error.value.field, error.value.message) == ("lines", "at most 50 lines, not 32000")


def test_unknown_fields_are_rejected():
    with pytest.raises(InvalidCommand) as error:
        parse(RegisterUser, {"user_id": "U1", "name": "A", "email": "a@b.co", "admin": True})
    assert error.value.field == "admin"


# --- inventory: all lines or none ------------------------------------------------------------


def stock(available, held=None):
    return inventory.Stock(available=available, held=held or {})


#: O-1's reservation as Inventory's state has it: 1 keyboard and 2 mice held for it.
RESERVED = {
    ("reservation", "O-1"): inventory.Reservation("confirmed"),
    ("stock", "P001"): stock(4, {"O-1": 1}),
    ("stock", "P002"): stock(3, {"O-1": 2}),
}


def test_inventory_reserves_every_line():
    states = {("reservation", "O-1"): None, ("stock", "P001"): stock(5), ("stock", "P002"): stock(2)}
    assert inventory.decide(CREATED, states) == [
        StockReserved(product_id="P001", order_id="O-1", quantity=1),
        StockReserved(product_id="P002", order_id="O-1", quantity=2),
        ReservationConfirmed(order_id="O-1", lines=LINES),
    ]


def test_inventory_reserves_nothing_when_one_line_is_short():
    states = {("reservation", "O-1"): None, ("stock", "P001"): stock(5), ("stock", "P002"): stock(1)}
    assert inventory.decide(CREATED, states) == [
        ReservationRejected(order_id="O-1", product_id="P002", requested=2, available=1)
    ]


def test_inventory_decides_once_per_order():
    states = {
        ("reservation", "O-1"): inventory.Reservation("confirmed"),
        ("stock", "P001"): stock(5),
        ("stock", "P002"): stock(5),
    }
    assert inventory.decide(CREATED, states) == []


def test_stock_folds_through_reserve_release_and_sell():
    events = [
        StockAdded(product_id="P001", quantity=10),
        StockReserved(product_id="P001", order_id="O-1", quantity=3),
        StockReserved(product_id="P001", order_id="O-2", quantity=2),
        StockReleased(product_id="P001", order_id="O-1", quantity=3),
        StockSold(product_id="P001", order_id="O-2", quantity=2),
    ]
    assert fold(inventory.evolve_stock, events) == inventory.Stock(available=8, reserved=0, sold=2)


def test_a_stock_state_is_immutable_and_compares_by_its_units_only():
    # given a stock folded from a reservation, and one with the same units held by nobody
    reserved = fold(inventory.evolve_stock, [StockReserved(product_id="P001", order_id="O-1", quantity=3)])
    same_units = inventory.Stock(available=-3, reserved=3)
    # then a field cannot be assigned, and neither state changed while folding on
    with pytest.raises(AttributeError):
        reserved.available = 0  # type: ignore[misc]
    later = inventory.evolve_stock(reserved, StockSold(product_id="P001", order_id="O-1", quantity=3))
    assert reserved.held == {"O-1": 3} and later.held == {} and later == inventory.Stock(-3, 0, 3)
    # and equality, hashing and repr leave the held units out, as the dataclass it was did; no order
    assert reserved == same_units and hash(reserved) == hash(same_units) and reserved != (-3, 3, 0, {"O-1": 3})
    assert repr(reserved) == "Stock(available=-3, reserved=3, sold=0)"
    with pytest.raises(TypeError):
        _ = reserved < same_units


def test_a_stock_compared_with_something_else_lets_the_other_side_answer():
    # given a stock, and values that are not stocks
    stock = inventory.Stock(available=3)
    # when it is compared with an object that knows how to compare (mock.ANY), then that object answers
    assert stock == mock.ANY
    assert stock.__ne__(mock.ANY) is NotImplemented
    assert stock.__eq__("3") is NotImplemented
    # and with a plain tuple of the same fields, or another type, it is still not equal
    assert stock != (3, 0, 0, {}) and (3, 0, 0, {}) != stock and stock != 3 and stock != "Stock"
    assert stock == inventory.Stock(3) and stock.__ne__(inventory.Stock(3)) is False


def test_a_cancelled_order_releases_what_was_reserved():
    cancelled = OrderCancelled(
        order_id="O-1", user_id="U001", reason="payment_failed", detail="card declined", lines=LINES
    )
    assert inventory.decide(cancelled, RESERVED) == [
        StockReleased(product_id="P001", order_id="O-1", quantity=1),
        StockReleased(product_id="P002", order_id="O-1", quantity=2),
    ]
    rejected = {("reservation", "O-1"): inventory.Reservation("rejected"), ("stock", "P001"): stock(5)}
    rejected[("stock", "P002")] = stock(5)
    assert inventory.decide(cancelled, rejected) == []


def test_a_completed_order_sells_its_reserved_stock():
    completed = OrderCompleted(order_id="O-1", user_id="U001", total_cents=13898, lines=LINES)
    assert [type(e) for e in inventory.decide(completed, RESERVED)] == [StockSold, StockSold]


# --- the saga in the order service -----------------------------------------------------------


def order_after(*events):
    return {("order", "O-1"): fold(order.evolve, [CREATED, *events])}


def test_reservation_confirms_the_order_with_its_total():
    decided = order.decide(ReservationConfirmed(order_id="O-1", lines=LINES), order_after())
    assert decided == [OrderConfirmed(**ADA_IDS, total_cents=13898)]


def test_rejected_reservation_cancels_as_out_of_stock():
    rejected = ReservationRejected(order_id="O-1", product_id="P002", requested=2, available=1)
    [cancelled] = order.decide(rejected, order_after())
    assert cancelled.reason == "out_of_stock"
    assert cancelled.detail == "P002: 2 requested, 1 available"


def test_successful_payment_completes_the_order():
    confirmed = OrderConfirmed(order_id="O-1", user_id="U001", total_cents=13898)
    paid = PaymentCompleted(order_id="O-1", amount_cents=13898, status="COMPLETED")
    assert order.decide(paid, order_after(confirmed)) == [OrderCompleted(**ADA_IDS, total_cents=13898, lines=LINES)]


def test_failed_payment_cancels_the_order_with_its_lines_for_compensation():
    confirmed = OrderConfirmed(order_id="O-1", user_id="U001", total_cents=13898)
    failed = PaymentCompleted(order_id="O-1", amount_cents=13898, status="FAILED", reason="card declined")
    [cancelled] = order.decide(failed, order_after(confirmed))
    assert (cancelled.reason, cancelled.detail, cancelled.lines) == ("payment_failed", "card declined", LINES)


def test_late_or_repeated_answers_change_nothing():
    confirmed = OrderConfirmed(order_id="O-1", user_id="U001", total_cents=13898)
    completed = OrderCompleted(order_id="O-1", user_id="U001", total_cents=13898, lines=LINES)
    paid = PaymentCompleted(order_id="O-1", amount_cents=13898, status="COMPLETED")
    assert order.decide(paid, order_after(confirmed, completed)) == []
    assert order.decide(ReservationConfirmed(order_id="O-1", lines=LINES), order_after(confirmed)) == []


# --- payment ---------------------------------------------------------------------------------


def test_payment_charges_once_and_reports_declines():
    confirmed = OrderConfirmed(order_id="O-1", user_id="U001", total_cents=13898)
    gateway = SimulatedGateway(failure_rate=1.0)
    service = payment.service(gateway)
    [failed] = service.handle(confirmed, {("payment", "O-1"): None})
    assert (failed.status, failed.reason, failed.amount_cents) == ("FAILED", "card declined", 13898)
    already = fold(payment.evolve, [failed])
    assert service.handle(confirmed, {("payment", "O-1"): already}) == []
    assert gateway.charges == 1


def test_gateway_declines_depend_only_on_seed_and_order():
    a, b = SimulatedGateway(0.5, seed=7), SimulatedGateway(0.5, seed=7)
    orders = [f"O-{i}" for i in range(50)]
    answers = [a.charge(o, 100).approved for o in orders]
    assert answers == [b.charge(o, 100).approved for o in reversed(orders)][::-1]
    assert 10 < sum(answers) < 40


def test_a_gateway_outage_fails_the_payment_and_opens_the_breaker():
    gateway = SimulatedGateway()
    gateway.available.clear()
    service = payment.service(gateway, payment.CircuitBreaker(failure_threshold=2, reset_after=60))
    for i in range(3):
        confirmed = OrderConfirmed(order_id=f"O-{i}", user_id="U001", total_cents=100)
        [failed] = service.handle(confirmed, {("payment", f"O-{i}"): None})
        assert failed.status == "FAILED"
    assert failed.reason.startswith("circuit open")


# --- notification ----------------------------------------------------------------------------


def test_order_events_become_one_email_each_then_sent():
    confirmed = OrderConfirmed(**ADA_IDS, total_cents=13898)
    [requested] = notification.decide(confirmed, {("notification", "O-1"): None})
    assert (requested.kind, requested.to) == ("order_confirmed", "ada@example.com")
    box = fold(notification.evolve, [requested])
    assert notification.decide(confirmed, {("notification", "O-1"): box}) == []
    assert notification.decide(requested, {("notification", "O-1"): box}) == [
        EmailSent(order_id="O-1", kind="order_confirmed", to="ada@example.com")
    ]


def test_the_mailer_writes_each_sent_email(tmp_path):
    mailer = FileMailer(tmp_path / "mailbox.jsonl")
    service = notification.service(mailer)
    email = EmailRequested(order_id="O-1", kind="order_completed", to="ada@example.com", subject="Paid")
    service.handle(email, {("notification", "O-1"): None})
    assert '"to": "ada@example.com"' in (tmp_path / "mailbox.jsonl").read_text()


def test_gateway_latency_does_not_change_which_orders_are_declined():
    orders = [f"O-{i}" for i in range(30)]
    quick = SimulatedGateway(0.5, latency_ms=0, seed=3)
    slow = SimulatedGateway(0.5, latency_ms=0.01, seed=3)
    assert [quick.charge(o, 1).approved for o in orders] == [slow.charge(o, 1).approved for o in orders]


@pytest.mark.parametrize("rate", [True, False, "0.5", None, float("nan"), -0.1, 1.5])
def test_a_failure_rate_that_is_not_a_number_from_0_to_1_is_refused(rate):
    gateway = SimulatedGateway(failure_rate=0.25)
    with pytest.raises(ValueError, match="failure_rate"):
        gateway.failure_rate = rate
    assert gateway.failure_rate == 0.25


@pytest.mark.parametrize("latency", [-1, float("nan"), float("inf"), 60_001, True, "5", None])
def test_a_gateway_latency_that_is_not_a_number_of_milliseconds_is_refused(latency):
    with pytest.raises(ValueError, match="latency_ms"):
        SimulatedGateway(latency_ms=latency)
    gateway = SimulatedGateway(latency_ms=5)
    with pytest.raises(ValueError, match="latency_ms"):
        gateway.latency_ms = latency
    assert gateway.latency_ms == 5


@pytest.mark.parametrize("end_the_wait", ["lower the latency", "wake"])
def test_a_call_waiting_out_a_long_latency_ends_when_the_latency_is_lowered_or_the_gateway_woken(end_the_wait):
    # given a charge waiting out a latency of a minute
    gateway = SimulatedGateway(latency_ms=60_000)
    call = threading.Thread(target=gateway.charge, args=("O-1", 100), daemon=True)
    call.start()
    call.join(0.2)
    assert call.is_alive()
    # when the latency goes back to 0 (or the shop stops and wakes the gateway)
    if end_the_wait == "wake":
        gateway.wake()
    else:
        gateway.latency_ms = 0
    # then the call ends at once, with its answer recorded
    call.join(5)
    assert not call.is_alive()
    assert gateway.charges == 1


# --- finished orders stay finished -----------------------------------------------------------


def test_a_duplicated_order_completed_sells_nothing_more():
    # given O-1 reserved, then completed: Inventory sold its units
    completed = OrderCompleted(order_id="O-1", user_id="U001", total_cents=13898, lines=LINES)
    sold = inventory.decide(completed, RESERVED)
    history = {
        pid: [StockAdded(product_id=pid, quantity=5), StockReserved(product_id=pid, order_id="O-1", quantity=qty)]
        + [e for e in sold if e.product_id == pid]
        for pid, qty in [("P001", 1), ("P002", 2)]
    }
    stocks = {("stock", pid): fold(inventory.evolve_stock, events) for pid, events in history.items()}
    assert stocks[("stock", "P002")] == inventory.Stock(available=3, reserved=0, sold=2)
    states = {("reservation", "O-1"): inventory.Reservation("confirmed"), **stocks}
    # when a second OrderCompleted (another event, same order) arrives, or an OrderCancelled
    cancelled = OrderCancelled(order_id="O-1", user_id="U001", reason="timeout", detail="late", lines=LINES)
    # then Inventory moves no stock: O-1 holds nothing any more
    assert inventory.decide(completed, states) == []
    assert inventory.decide(cancelled, states) == []


def test_a_duplicated_order_event_requests_no_second_email():
    completed = OrderCompleted(**ADA_IDS, total_cents=13898, lines=LINES)
    states = {("notification", "O-1"): None}
    [requested] = notification.decide(completed, states)
    box = fold(notification.evolve, [requested])
    assert notification.decide(completed, {**states, ("notification", "O-1"): box}) == []


def test_the_order_saga_ignores_answers_for_a_finished_order():
    cancelled = OrderCancelled(order_id="O-1", user_id="U001", reason="timeout", detail="late", lines=LINES)
    states = order_after(OrderConfirmed(order_id="O-1", user_id="U001", total_cents=13898), cancelled)
    paid = PaymentCompleted(order_id="O-1", amount_cents=13898, status="COMPLETED")
    assert order.decide(paid, states) == []
    assert order.decide(ReservationConfirmed(order_id="O-1", lines=LINES), states) == []

"""Sagas always end: a step past its deadline cancels the order with reason ``timeout``, and every
service compensates as for any cancellation.

The pure core (where each order waits, which are overdue, the cancellation, Inventory's and
Payment's answers to it) without Kafka; then the whole shop on the embedded broker with a 1 s
deadline.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest
from conftest import free_port_offset

from eventlab import Settings, Shop
from eventlab.adapters import SimulatedGateway
from eventlab.bootstrap import build_services
from eventlab.errors import StoreError
from eventlab.events import (
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    PaymentRefunded,
    PaymentVoided,
    ReservationVoided,
    StockReserved,
)
from eventlab.projections import audit
from eventlab.resilience import wait_until
from eventlab.services import inventory, order, payment
from eventlab.services.deadlines import Deadlines, Waiting, advance, overdue
from eventlab.services.runtime import execute, load, trace_metadata
from eventlab.store.base import NewEvent, StoredEvent
from eventlab.store.sqlite import SqliteEventStore
from eventlab.sweeper import DeadlineSweeper

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LINES = (OrderLine(product_id="P001", quantity=2, unit_price_cents=500),)
CREATED = OrderCreated(order_id="O-1", user_id="U001", lines=LINES, total_cents=1000)
CONFIRMED = OrderConfirmed(order_id="O-1", user_id="U001", total_cents=1000)
TIMED_OUT = OrderCancelled(order_id="O-1", user_id="U001", reason="timeout", detail="late", lines=LINES)


def stored(event, position: int, at: datetime) -> StoredEvent:
    return StoredEvent(
        position, f"e{position}", event.aggregate_type, event.aggregate_id, position, event.event_type, 1,
        event.model_dump(mode="json"), {"correlation_id": event.aggregate_id}, at,
    )  # fmt: skip


# --- the pure core ---------------------------------------------------------------------------


def test_an_order_waits_at_its_last_step_until_it_ends():
    waiting = advance(None, stored(CREATED, 1, T0))
    assert (waiting.status, waiting.since) == ("created", T0)
    confirmed = advance(waiting, stored(CONFIRMED, 2, T0 + timedelta(seconds=1)))
    assert (confirmed.status, confirmed.since) == ("confirmed", T0 + timedelta(seconds=1))
    # a duplicated OrderCreated does not move the order back
    assert advance(confirmed, stored(CREATED, 3, T0 + timedelta(seconds=2))) == confirmed
    assert advance(confirmed, stored(TIMED_OUT, 4, T0 + timedelta(seconds=3))) is None


def test_each_step_has_its_own_deadline():
    deadlines = Deadlines.scaled(30)  # reservation 30 s, payment 60 s
    waiting = {
        "new": Waiting("created", T0 + timedelta(seconds=10), "e1", "new"),
        "unreserved": Waiting("created", T0, "e2", "unreserved"),
        "unpaid": Waiting("confirmed", T0 - timedelta(seconds=61), "e3", "unpaid"),
        "paying": Waiting("confirmed", T0, "e4", "paying"),
    }
    assert overdue(waiting, T0 + timedelta(seconds=31), deadlines) == ["unpaid", "unreserved"]


def test_the_timeout_cancels_only_an_order_still_waiting_at_that_step():
    still_created = reduce(order.evolve, [CREATED], None)
    [cancelled] = order.time_out(still_created, "created", "no answer within 30 s")
    assert (cancelled.reason, cancelled.lines) == ("timeout", LINES)
    moved_on = order.evolve(still_created, CONFIRMED)
    assert order.time_out(moved_on, "created", "no answer") == []  # a real answer won the race
    assert order.time_out(order.evolve(moved_on, TIMED_OUT), "confirmed", "again") == []


def test_inventory_voids_an_order_cancelled_before_it_was_reserved_and_never_reserves_it():
    states = {("reservation", "O-1"): None, ("stock", "P001"): inventory.Stock(available=5)}
    # when the cancellation arrives first (the OrderCreated was dead-lettered or is late)
    assert inventory.decide(TIMED_OUT, states) == [ReservationVoided(order_id="O-1")]
    # then a replay of the OrderCreated reserves nothing
    states[("reservation", "O-1")] = inventory.evolve_reservation(None, ReservationVoided(order_id="O-1"))
    assert inventory.decide(CREATED, states) == []


def test_inventory_releases_what_a_timed_out_order_holds():
    stock = reduce(
        inventory.evolve_stock,
        [
            inventory.StockAdded(product_id="P001", quantity=5),
            StockReserved(product_id="P001", order_id="O-1", quantity=2),
        ],
        None,
    )
    states = {("reservation", "O-1"): inventory.Reservation("confirmed"), ("stock", "P001"): stock}
    [released] = inventory.decide(TIMED_OUT, states)
    assert (released.event_type, released.quantity) == ("StockReleased", 2)


def test_payment_voids_a_timed_out_order_and_never_charges_it():
    gateway = SimulatedGateway()
    service = payment.service(gateway)
    # given the order timed out before Payment heard of it: the payment is void
    [voided] = service.handle(TIMED_OUT, {("payment", "O-1"): None})
    assert voided == PaymentVoided(order_id="O-1")
    # when the OrderConfirmed arrives late, nothing is charged
    void = payment.evolve(None, voided)
    assert service.handle(CONFIRMED, {("payment", "O-1"): void}) == []
    assert gateway.charge("O-1", 1000).approved is False  # the gateway refuses it too
    # an out-of-stock cancellation asks nothing of Payment (no event on that path)
    short = TIMED_OUT.model_copy(update={"reason": "out_of_stock"})
    assert service.handle(short, {("payment", "O-1"): None}) == []


def test_payment_refunds_a_charged_order_that_was_cancelled():
    gateway = SimulatedGateway()
    service = payment.service(gateway)
    [paid] = service.handle(CONFIRMED, {("payment", "O-1"): None})
    assert paid.status == "COMPLETED"
    [refunded] = service.handle(TIMED_OUT, {("payment", "O-1"): payment.evolve(None, paid)})
    assert refunded == PaymentRefunded(order_id="O-1", amount_cents=1000)
    # a charge racing the void (charged, then found the payment void) is refunded as well
    gateway2 = SimulatedGateway()
    gateway2.charge("O-1", 1000)
    void = payment.evolve(None, PaymentVoided(order_id="O-1"))
    assert payment.service(gateway2).handle(CONFIRMED, {("payment", "O-1"): void}) == [refunded]


# --- the whole shop, with a 1 s deadline -----------------------------------------------------


class HeldGateway(SimulatedGateway):
    """A gateway whose charges wait until the test lets them through (a payment that answers late)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.refunding = threading.Event()  # cleared: refunds meet an outage
        self.refunds: list[str] = []  # every refund call, made or not

    def charge(self, order_id: str, amount_cents: int) -> payment.ChargeResult:
        self.release.wait(30)
        return super().charge(order_id, amount_cents)

    def refund(self, order_id: str) -> payment.RefundResult:
        self.refunds.append(order_id)
        if not self.refunding.is_set():
            raise payment.GatewayUnavailable("payment gateway unavailable")
        return super().refund(order_id)


@pytest.fixture(scope="module")
def quick_shop(tmp_path_factory):
    """A shop whose sagas time out after 1 s (reservation) and 2 s (payment), with a held gateway."""
    data_dir = tmp_path_factory.mktemp("deadlines")
    settings = Settings.from_env(env={}, data_dir=data_dir, http_port_offset=free_port_offset(), saga_timeout_s=1.0)
    shop = Shop(settings)
    shop.gateway = HeldGateway(path=data_dir / "gateway.jsonl")
    shop.gateway.release.set()
    shop.gateway.refunding.set()
    shop.services = build_services(settings, shop.gateway, shop.breaker)
    with shop:
        shop.register_user("U001", "Ada", "ada@example.com")
        shop.create_product("P001", "Keyboard", 500, initial_stock=10)
        shop.wait_idle()
        yield shop


def stock(shop):
    return load(shop.store, ("stock", "P001"), inventory.evolve_stock).state


def test_an_order_inventory_never_heard_of_times_out_and_a_late_replay_reserves_nothing(quick_shop):
    shop = quick_shop
    before = stock(shop)
    # given an OrderCreated that Inventory never handles (as if dead-lettered)
    created = CREATED.model_copy(update={"order_id": "O-lost"})
    with shop.store.transaction():
        [event] = shop.store.append([NewEvent(created, 1, trace_metadata("order", "O-lost"))])
        shop.store.append([], processed=("inventory", event.event_id))
    # when its reservation deadline passes
    view = shop.wait("O-lost", timeout=15)
    # then the order ends cancelled for timeout, and Inventory voided the reservation
    assert (view.status, view.reason) == ("cancelled", "timeout")
    shop.wait_idle()
    assert load(shop.store, ("reservation", "O-lost"), inventory.evolve_reservation).state.status == "void"
    assert stock(shop) == before
    # and a late replay of the OrderCreated (a dead letter replayed after a fix) reserves nothing
    decided = execute(
        shop.store,
        inventory.SERVICE.streams(created),
        inventory.SERVICE.evolvers,
        lambda states: inventory.SERVICE.handle(created, states),
        trace_metadata("inventory", "O-lost"),
    )
    assert decided == [] and stock(shop) == before


def test_a_timed_out_order_whose_payment_answers_later_is_refunded(quick_shop):
    shop = quick_shop
    before = stock(shop)
    shop.gateway.release.clear()  # the gateway will answer only when we say so
    try:
        order_id = shop.place_order("U001", {"P001": 2})
        # when the payment does not answer within its deadline, the order is cancelled
        view = shop.wait(order_id, timeout=15)
        assert (view.status, view.reason) == ("cancelled", "timeout")
        assert "Payment's answer" in next(e for e in view.events if e.event_type == "OrderCancelled").data["detail"]
    finally:
        shop.gateway.release.set()  # and then the charge goes through after all
    shop.wait_idle()
    payments = [e.event for e in shop.store.read_stream("payment", order_id)]
    # then the money taken is given back, and the stock is back on the shelf
    assert [type(e) for e in payments] == [PaymentCompleted, PaymentRefunded]
    assert payments[0].status == "COMPLETED" and payments[1].amount_cents == payments[0].amount_cents == 1000
    assert shop.gateway.refund(order_id).refunded_cents == 1000  # recorded by the gateway, once
    assert stock(shop) == before
    report = audit(shop.store.path, now=datetime.now(UTC) + timedelta(minutes=5))
    assert report["cancelled_orders_not_charged"].ok and report["stock_conserved"].ok


def test_a_refund_the_gateway_cannot_take_waits_for_it_and_is_never_dead_lettered(quick_shop):
    shop = quick_shop
    gateway, loop = shop.gateway, shop.loops["payment"]
    dead_letters = shop.store.dead_letter_counts().get("payment", 0)
    gateway.release.clear()
    try:
        order_id = shop.place_order("U001", {"P001": 1})
        assert shop.wait(order_id, timeout=15).reason == "timeout"
        gateway.refunding.clear()  # the gateway goes down between the late charge and its refund
    finally:
        gateway.release.set()
    try:
        # when every try to refund meets the outage, for longer than the loop's tries before a dead letter
        wait_until(lambda: gateway.refunds.count(order_id) > 3 * loop.attempts, timeout=30)
        # then the cancellation is held, not dead-lettered, and /health says why
        (problem,) = loop.health()["problems"]
        assert "order.lifecycle.cancelled" in problem and "payment gateway unavailable" in problem
        assert shop.store.dead_letter_counts().get("payment", 0) == dead_letters
    finally:
        gateway.refunding.set()
    # and once the gateway is back, the money goes back
    wait_until(lambda: len(shop.store.read_stream("payment", order_id)) == 2, timeout=30)
    assert [type(e.event) for e in shop.store.read_stream("payment", order_id)] == [PaymentCompleted, PaymentRefunded]
    wait_until(lambda: loop.health()["problems"] == [], timeout=10)
    report = audit(shop.store.path, now=datetime.now(UTC) + timedelta(minutes=5))
    assert report["cancelled_orders_not_charged"].ok


def test_a_sweep_the_store_refuses_is_one_warning_line_and_the_sweeper_runs_on(tmp_path, caplog):
    sweeper = DeadlineSweeper(SqliteEventStore(tmp_path / "events.db"), Deadlines.scaled(0.2))
    stop, sweeps = threading.Event(), []

    def away():
        sweeps.append(1)
        if len(sweeps) == 3:
            stop.set()
        raise StoreError("events.db: read_from failed: server closed the connection")

    sweeper.sweep = away
    sweeper.run(stop)
    assert len(sweeps) == 3
    assert [(r.levelname, r.exc_info) for r in caplog.records if r.name == "eventlab.sweeper"] == [
        ("WARNING", None)
    ] * 3
    assert "server closed the connection; trying again" in caplog.text


def test_a_duplicated_order_completed_sells_nothing(quick_shop):
    shop = quick_shop
    order_id = shop.place_order("U001", {"P001": 1})
    assert shop.wait(order_id, timeout=15).status == "completed"
    shop.wait_idle()
    after_sale = stock(shop)
    # when a second OrderCompleted (another event id, same order) is stored
    [*_, completed] = shop.store.read_stream("order", order_id)
    shop.store.append([NewEvent(completed.event, completed.version + 1, trace_metadata("order", order_id))])
    shop.wait_idle()
    # then Inventory handled it and sold nothing more
    assert stock(shop) == after_sale and after_sale.reserved == 0
    assert audit(shop.store.path)["stock_never_negative"].ok


# --- the sweeper on a real store, with a clock we move ---------------------------------------


def test_the_sweeper_cancels_only_what_is_overdue_and_loses_a_race_cleanly(tmp_path):
    later = timedelta()
    with SqliteEventStore(tmp_path / "events.db") as store:
        sweeper = DeadlineSweeper(store, Deadlines.scaled(10), clock=lambda: datetime.now(UTC) + later)
        for order_id in ("O-late", "O-answered"):
            created = CREATED.model_copy(update={"order_id": order_id})
            store.append([NewEvent(created, 1, trace_metadata("order", order_id))])
        # given both orders are young: nothing to do
        assert sweeper.sweep() == [] and set(sweeper.waiting) == {"O-late", "O-answered"}
        # when 11 s pass, and O-answered got its answer just before the sweep
        later = timedelta(seconds=11)
        store.append([NewEvent(CONFIRMED.model_copy(update={"order_id": "O-answered"}), 2, {})])
        # then only O-late is cancelled; O-answered now waits for payment (20 s from its confirmation)
        assert sweeper.sweep() == ["O-late"]
        assert sweeper.waiting["O-answered"].status == "confirmed"
        [*_, cancelled] = store.read_stream("order", "O-late")
        assert (cancelled.event.reason, cancelled.correlation_id) == ("timeout", "O-late")
        assert "Inventory's reservation within 10 s" in cancelled.event.detail
        # and a second sweeper on the same store (another process) finds nothing left to cancel
        other = DeadlineSweeper(store, Deadlines.scaled(10), clock=lambda: datetime.now(UTC) + later)
        assert other.sweep() == [] and "O-late" not in other.waiting
        assert len(store.read_stream("order", "O-late")) == 2

"""End to end: the six services on a real SQLite store, on the embedded Kafka broker and on Apache Kafka."""

from __future__ import annotations

import json
import threading
import time

import pytest
from apache_kafka import BROKERS
from conftest import unique

from eventlab.events import UserCreated
from eventlab.kafka import dead_letter_topic, make_consumer, make_producer, to_message
from eventlab.kafka.loop import ServiceLoop
from eventlab.services import inventory
from eventlab.services.runtime import load

pytestmark = pytest.mark.integration


@pytest.fixture(params=BROKERS)
def shop(request, shop):
    """Each story runs on the embedded broker's shop and on Apache Kafka's."""
    return shop if request.param == "embedded" else request.getfixturevalue("apache_kafka_shop")


def stock_of(shop, product_id):
    return load(shop.store, ("stock", product_id), inventory.evolve_stock).state


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_happy_path(shop, customer, make_product):
    keyboard, mouse = make_product(10, 8900), make_product(10, 2499)
    shop.wait_idle()
    order = shop.wait(shop.place_order(customer, {keyboard: 1, mouse: 2}))
    assert (order.status, order.total_cents) == ("completed", 8900 + 2 * 2499)
    shop.wait_idle()
    types = [e.event_type for e in shop.order(order.order_id).events]
    for expected in [
        "OrderCreated",
        "StockReserved",
        "ReservationConfirmed",
        "OrderConfirmed",
        "PaymentCompleted",
        "OrderCompleted",
        "StockSold",
        "EmailSent",
    ]:
        assert expected in types
    assert types.index("OrderCreated") < types.index("ReservationConfirmed") < types.index("OrderConfirmed")
    assert types.index("PaymentCompleted") < types.index("OrderCompleted")
    assert stock_of(shop, mouse) == inventory.Stock(available=8, reserved=0, sold=2)
    mailbox = (shop.settings.data_dir / "mailbox.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["order_id"] == order.order_id for line in mailbox) == 2  # confirmed, completed


def test_the_shop_is_not_idle_when_work_arrives_while_it_is_being_read(shop):
    # given a settled shop, and a loop read after one that subscribes to UserCreated while it does not
    shop.wait_idle()
    loops = list(shop.loops.values())
    subscribed = [UserCreated in loop.service.subscriptions for loop in loops]
    assert any(subscribed)
    later = next(loop for i, loop in enumerate(loops) if i > subscribed.index(True) and not subscribed[i])
    user_id = unique("U")
    real_lag, registered = later.lag, []

    def lag_while_a_user_registers():  # a handler elsewhere appends an event between two reads
        if not registered:
            registered.append(
                shop.commands.register_user(user_id=user_id, name="Late", email=f"{user_id.lower()}@example.com")
            )
        return real_lag()

    later.lag = lag_while_a_user_registers
    try:
        # when the shop is asked whether it is idle, and a UserCreated is stored during that read
        idle = shop.idle()
    finally:
        del later.lag
    # then it is not: the subscriber read as idle a moment before has work now
    assert registered and not idle
    shop.wait_idle()
    assert shop.store.read_stream("order_customer", user_id)


def test_one_short_line_cancels_the_whole_order(shop, customer, make_product):
    plenty, scarce = make_product(5), make_product(1)
    shop.wait_idle()
    order = shop.wait(shop.place_order(customer, {plenty: 2, scarce: 2}))
    assert (order.status, order.reason) == ("cancelled", "out_of_stock")
    assert "StockReserved" not in [e.event_type for e in order.events]
    assert stock_of(shop, plenty) == inventory.Stock(available=5)
    assert stock_of(shop, scarce) == inventory.Stock(available=1)


def test_failed_payment_is_compensated(shop, customer, make_product):
    product = make_product(3)
    shop.wait_idle()
    shop.gateway.failure_rate = 1.0
    try:
        order = shop.wait(shop.place_order(customer, {product: 2}))
    finally:
        shop.gateway.failure_rate = 0.0
    assert (order.status, order.reason) == ("cancelled", "payment_failed")
    shop.wait_idle()
    types = [e.event_type for e in shop.order(order.order_id).events]
    assert types.index("PaymentCompleted") < types.index("OrderCancelled") < types.index("StockReleased")
    assert stock_of(shop, product) == inventory.Stock(available=3, reserved=0, sold=0)


def test_fifty_concurrent_orders_for_ten_units_never_oversell(shop, make_product):
    product = make_product(10)
    customers = []
    for i in range(5):
        customers.append(f"UC{product}{i}")
        shop.register_user(customers[-1], "Buyer", f"buyer{i}@example.com")
    second = ServiceLoop(shop.services["inventory"], shop.store, shop.loops["inventory"].settings)
    stop = threading.Event()
    thread = threading.Thread(target=second.run, args=(stop,))
    thread.start()  # a second Inventory instance in the same consumer group
    try:
        assert second.assigned.wait(30)
        shop.wait_idle()
        order_ids = []
        lock = threading.Lock()

        def buy(user_id):
            for _ in range(10):
                order_id = shop.place_order(user_id, {product: 1})
                with lock:
                    order_ids.append(order_id)

        buyers = [threading.Thread(target=buy, args=(c,)) for c in customers]
        for b in buyers:
            b.start()
        for b in buyers:
            b.join()
        outcomes = [shop.wait(o, timeout=60).status for o in order_ids]
        shop.wait_idle()
    finally:
        stop.set()
        thread.join()
    assert len(order_ids) == 50
    assert outcomes.count("completed") == 10
    assert outcomes.count("cancelled") == 40
    assert stock_of(shop, product) == inventory.Stock(available=0, reserved=0, sold=10)


def test_duplicate_delivery_is_a_no_op(shop, customer, make_product):
    product = make_product(5)
    shop.wait_idle()
    order = shop.wait(shop.place_order(customer, {product: 1}))
    shop.wait_idle()
    created = next(e for e in order.events if e.event_type == "OrderCreated")
    head = shop.store.head()
    duplicates = shop.loops["inventory"].stats.duplicates
    producer = make_producer(shop.relay.settings)
    key, value, headers = to_message(created)
    producer.produce("order.lifecycle.created", value, key, headers=headers)
    producer.flush(10)
    wait_until(lambda: shop.loops["inventory"].stats.duplicates > duplicates)
    shop.wait_idle()
    assert shop.store.head() == head
    assert stock_of(shop, product) == inventory.Stock(available=4, reserved=0, sold=1)


def test_a_poison_message_goes_to_the_dead_letter_topic(shop, customer, make_product):
    settings = shop.relay.settings
    producer = make_producer(settings)
    producer.produce(
        "order.lifecycle.created",
        b"{not json",
        b"poison",
        headers=[("ce_specversion", b"1.0"), ("ce_id", b"poison-1"), ("ce_type", b"OrderCreated")],
    )
    producer.produce(
        "order.lifecycle.created",
        b"{}",
        b"stranger",
        headers=[("ce_specversion", b"1.0"), ("ce_id", b"stranger-1"), ("ce_type", b"Mystery")],
    )
    producer.flush(10)
    consumer = make_consumer(settings, "test-dlq-reader")
    consumer.subscribe([dead_letter_topic("order.lifecycle.created")])
    reasons = {}
    deadline = time.monotonic() + 30
    while len(reasons) < 2 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error():
            continue
        headers = dict(message.headers())
        if headers.get("ce_id") in (b"poison-1", b"stranger-1"):  # other tests dead-letter on this topic too
            reasons[headers["ce_id"].decode()] = headers["dlq_reason"].decode()
    consumer.close()
    assert reasons["poison-1"].startswith("value is not JSON")
    assert reasons["stranger-1"] == "unknown ce_type 'Mystery'"
    product = make_product(1)
    shop.wait_idle()
    assert shop.wait(shop.place_order(customer, {product: 1})).status == "completed"  # still running

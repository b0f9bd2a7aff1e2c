"""The failure lab's levers (Shop.faults) and the control panel that drives them, on the embedded broker."""

from __future__ import annotations

import pytest

from eventlab.adapters import SimulatedGateway
from eventlab.events import OrderCreated
from eventlab.faults import Faults
from eventlab.resilience import wait_until
from eventlab.services.payment import GatewayUnavailable


def test_the_gateway_goes_down_and_comes_back():
    gateway = SimulatedGateway()
    gateway.take_down()
    assert gateway.down and "DOWN" in repr(gateway)
    with pytest.raises(GatewayUnavailable):
        gateway.charge("order-1", 100)
    gateway.bring_up()
    assert not gateway.down and gateway.charge("order-1", 100).approved


def test_a_failure_rate_outside_0_to_1_is_refused_when_set_too():
    gateway = SimulatedGateway()
    with pytest.raises(ValueError, match="between 0 and 1"):
        gateway.failure_rate = 1.5
    assert gateway.failure_rate == 0.0


@pytest.mark.integration
def test_an_outage_cancels_the_order_and_the_gateway_comes_back(shop, customer, make_product):
    product = make_product(5)
    shop.wait_idle()
    faults = shop.faults
    assert isinstance(faults, Faults) and shop.faults is faults  # one lab (and one producer) per shop
    faults.gateway_down = True
    try:
        down = shop.wait(shop.place_order(customer, {product: 1}))
    finally:
        faults.gateway_down = False
    assert (down.status, down.reason) == ("cancelled", "payment_failed")
    assert shop.wait(shop.place_order(customer, {product: 1})).status == "completed"


@pytest.mark.integration
def test_a_redelivered_event_is_skipped_and_poison_is_dead_lettered(shop, customer, make_product):
    product = make_product(5)
    view = shop.wait(shop.place_order(customer, {product: 1}))
    shop.wait_idle()
    faults = shop.faults
    before, head = faults.counters()["inventory"], shop.store.head()
    # (what Inventory has handled, read from the store: the loop's own counter is raised a moment after
    # the commit that made the shop idle, so a snapshot of it taken now can still miss the last one)
    handled = shop.store.processed_count("inventory")

    # when: the order's OrderCreated is published again, then garbage is sent to its topic
    created = next(e for e in view.events if e.event_type == OrderCreated.__name__)
    assert faults.redeliver(created) == OrderCreated.topic
    producer = faults._producer
    assert faults.poison() == f"{OrderCreated.topic}.dlq"
    assert faults._producer is producer  # not one producer per message

    # then: Inventory skips the duplicate (no new event) and dead-letters the poison
    wait_until(
        lambda: faults.counters()["inventory"],
        30,
        until=lambda c: c["duplicates"] > before["duplicates"] and c["dead_lettered"] > before["dead_lettered"],
    )
    shop.wait_idle()
    assert shop.store.processed_count("inventory") == handled
    assert [e.event_type for e in shop.store.read_all(after=head)] == []


@pytest.mark.integration
def test_the_panel_follows_the_store_by_position(shop, customer, make_product):
    pytest.importorskip("ipywidgets")
    from eventlab.widgets import ControlPanel

    product = make_product(5)
    panel = ControlPanel(shop, users=[customer], products=[product])
    order_id = panel.place_order(customer, {product: 1})
    shop.wait(order_id)
    shop.wait_idle()
    reads: list[int] = []
    read_all = shop.store.read_all
    shop.store.read_all = lambda after=0: reads.append(after) or read_all(after=after)
    try:
        panel.refresh()
        newest = panel.redeliver_newest(OrderCreated)
    finally:
        del shop.store.read_all
    assert newest.aggregate_id == order_id
    assert reads and min(reads) > 0  # never from the start of the log again
    assert panel.outcomes()[order_id]["status"] == "completed"
    assert set(panel.stats()) >= {"inventory", "payment", "order"}

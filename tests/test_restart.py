"""Stopping and starting the shop on the same data directory loses nothing and applies nothing twice,
even though the embedded broker forgets its topics and offsets when it stops (Apache Kafka keeps them)."""

from __future__ import annotations

from collections import Counter

import pytest
from apache_kafka import BROKERS

from eventlab import Settings, Shop
from eventlab.services import inventory
from eventlab.services.runtime import load

pytestmark = pytest.mark.integration


@pytest.fixture(params=BROKERS)
def bootstrap_servers(request):
    """None for the embedded broker (the shop starts its own), else a fresh Apache Kafka broker's address."""
    return None if request.param == "embedded" else request.getfixturevalue("apache_kafka_factory")().bootstrap_servers


def test_restart_mid_run(tmp_path, bootstrap_servers):
    settings = Settings.from_env(env={}, data_dir=tmp_path, bootstrap_servers=bootstrap_servers)
    with Shop(settings, gateway_latency_ms=40) as shop:
        shop.register_user("U001", "Ada Lovelace", "ada@example.com")
        shop.create_product("P001", "Keyboard", 8900, initial_stock=100)
        shop.wait_idle()
        order_ids = [shop.place_order("U001", {"P001": 1}) for _ in range(30)]
        in_flight = sum(not shop.order(o).terminal for o in order_ids)
    assert in_flight > 0, "the shop must stop with sagas still running for this test to mean anything"

    with Shop(settings, gateway_latency_ms=40) as shop:
        statuses = [shop.wait(o, timeout=60).status for o in order_ids]
        shop.wait_idle()
        assert statuses == ["completed"] * 30
        for order_id in order_ids:
            counts = Counter(e.event_type for e in shop.order(order_id).events)
            assert counts == {
                "OrderCreated": 1,
                "StockReserved": 1,
                "ReservationConfirmed": 1,
                "OrderConfirmed": 1,
                "PaymentCompleted": 1,
                "OrderCompleted": 1,
                "StockSold": 1,
                "EmailRequested": 2,
                "EmailSent": 2,
            }, order_id
        stock = load(shop.store, ("stock", "P001"), inventory.evolve_stock).state
        assert stock == inventory.Stock(available=70, reserved=0, sold=30)
        assert shop.lag()["relay"] == 0

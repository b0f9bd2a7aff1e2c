"""One relay publishes per store: a second one is a standby that takes over when the first stops."""

from __future__ import annotations

import threading
import uuid

import pytest
from test_relay import eventually, published_ids, running
from test_relay import settings as broker_settings  # noqa: F401 - the fixture `settings`: an embedded broker

from eventlab.events import StockAdded
from eventlab.kafka.relay import Relay
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.store.base import RELAY_CONSUMER

pytestmark = pytest.mark.integration


def stock(store, product, quantities):
    return store.append([NewEvent(StockAdded(product_id=product, quantity=q), q) for q in quantities])


def test_a_standby_relay_publishes_nothing_until_the_active_one_stops_then_takes_over(settings, tmp_path):
    # given two relays on one SQLite store, each with its own store object (as two processes have)
    path = tmp_path / "events.db"
    first_store, second_store = SqliteEventStore(path), SqliteEventStore(path)
    first, second = Relay(first_store, settings), Relay(second_store, settings)
    product = f"P-lease-{uuid.uuid4().hex[:8]}"
    first_stop = threading.Event()
    first_thread = threading.Thread(target=first.run, args=(first_stop,), daemon=True)
    try:
        first_thread.start()
        eventually(lambda: first.active, "the first relay holds the lease")
        with running(second):
            # when events are stored while both run
            early = stock(first_store, product, [1, 2, 3])
            eventually(lambda: first.published == 3, "the active relay published them")
            # then only the lease holder published them; the other stands by
            assert second.published == 0 and not second.active
            assert second.health()["lease"] == "standby" and first.health()["lease"] == "active"
            # when the active relay stops (releasing the lease) and more events are stored
            first_stop.set()
            first_thread.join(30)
            late = stock(second_store, product, [4, 5])
            # then the standby takes over from the saved checkpoint: it publishes only the new ones
            eventually(lambda: second.active and second.published == 2, "the standby took over")
        wanted = {e.event_id for e in early + late}
        assert published_ids(settings, StockAdded.topic, wanted) == wanted
        assert second_store.checkpoint(RELAY_CONSUMER) == 5
    finally:
        first_stop.set()
        first_store.close()
        second_store.close()

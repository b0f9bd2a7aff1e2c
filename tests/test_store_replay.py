"""Loading aggregates through the store's lean read path, on every backend (memory, SQLite, PostgreSQL).

``read_stream_events`` / ``read_streams_events`` give a fold only (version, typed event), decoded the
cheapest way a backend can; they must give exactly what ``read_stream`` gives. ``load`` and ``load_many``
(eventlab.services.runtime) fold through them, and an append of several events reports the positions
the log holds (the store derives them from the last one).
"""

from __future__ import annotations

import json

import pytest
from store_contract import added

from eventlab.events import OrderCreated, OrderLine, StockAdded, UserCreated
from eventlab.services import inventory, order
from eventlab.services.runtime import Stream, load, load_many
from eventlab.store import NewEvent
from eventlab.store.base import events_from_json


@pytest.fixture
def store(store_backend):
    return store_backend.store


def placed(order_id="O-1"):
    lines = (
        OrderLine(product_id="P-é", quantity=2, unit_price_cents=350),
        OrderLine(product_id="P2", quantity=1, unit_price_cents=99),
    )
    return OrderCreated(order_id=order_id, user_id="U-ü", lines=lines, total_cents=799, email="zoë@shop.example")


def test_a_fold_reads_the_events_read_stream_gives(store):
    # given an order (nested lines, non-ASCII text) and a stock stream of three events
    store.append([NewEvent(placed(), 1, {"correlation_id": "c-1"})])
    store.append([NewEvent(added("P1", quantity=n), n) for n in (1, 2, 3)])
    for key in (("order", "O-1"), ("stock", "P1"), ("stock", "nobody")):
        for after in (0, 1, 3):
            # when a fold reads it, then it gets the versions and typed events read_stream gives
            expected = [(stored.version, stored.event) for stored in store.read_stream(*key, after_version=after)]
            assert store.read_stream_events(*key, after_version=after) == expected
    assert store.read_stream_events("order", "O-1") == [(1, placed())]


def test_several_streams_are_read_for_a_fold_at_once(store):
    # given two stock streams, a user and an order
    store.append([NewEvent(added("P1"), 1), NewEvent(added("P2", 5), 1), NewEvent(added("P1", 7), 2)])
    store.append([NewEvent(UserCreated(user_id="P1", name="Ann", email="ann@shop.example"), 1)])
    store.append([NewEvent(placed(), 1)])
    wanted = {("stock", "P1"): 1, ("stock", "P2"): 0, ("user", "P1"): 0, ("order", "O-1"): 0, ("stock", "none"): 0}
    # when they are read in one call
    found = store.read_streams_events(wanted)
    # then each stream has its own events after its version, by version, and a stream without events is empty
    assert found == {
        ("stock", "P1"): [(2, added("P1", 7))],
        ("stock", "P2"): [(1, added("P2", 5))],
        ("user", "P1"): [(1, UserCreated(user_id="P1", name="Ann", email="ann@shop.example"))],
        ("order", "O-1"): [(1, placed())],
        ("stock", "none"): [],
    }


def test_load_many_folds_each_stream_as_load_does_continuing_from_what_is_known(store):
    # given stock streams and an order
    store.append([NewEvent(added("P1", quantity=v), v) for v in (1, 2, 3)] + [NewEvent(added("P2", 4), 1)])
    store.append([NewEvent(placed(), 1)])
    evolvers = {"stock": inventory.evolve_stock, "order": order.evolve}
    keys = [("stock", "P1"), ("stock", "P2"), ("order", "O-1"), ("stock", "none")]
    # when they are loaded at once, and again from an earlier load of P1 at version 2
    streams = load_many(store, keys, evolvers)
    earlier = load(store, ("stock", "P1"), inventory.evolve_stock)
    stale = Stream(
        ("stock", "P1"), inventory.evolve_stock(inventory.evolve_stock(None, added("P1", 1)), added("P1", 2)), 2
    )
    caught_up = load_many(store, [("stock", "P1")], evolvers, {("stock", "P1"): stale})
    # then each is the fold load gives, version included
    assert streams == {key: load(store, key, evolvers[key[0]]) for key in keys}
    assert streams[("stock", "P1")] == earlier == caught_up[("stock", "P1")]
    assert earlier.version == 3 and earlier.state is not None and earlier.state.available == 6
    assert streams[("stock", "none")] == Stream(("stock", "none"), None, 0)


def test_the_positions_an_append_reports_are_those_the_log_holds(store):
    # given an event already stored
    store.append([NewEvent(added("P0"), 1)])
    # when several events are appended at once, on their own and inside a transaction after another append
    alone = store.append([NewEvent(added("P1", quantity=v), v) for v in (1, 2, 3)])
    with store.transaction():
        store.append([NewEvent(added("P2"), 1)])
        grouped = store.append([NewEvent(added("P3"), 1), NewEvent(added("P4"), 1)])
    # then each reported position is where the log holds that very event
    by_id = {record.event_id: record.position for record in store.read_records()}
    assert [e.position for e in alone] == [2, 3, 4] and [e.position for e in grouped] == [6, 7]
    assert all(by_id[e.event_id] == e.position for e in alone + grouped)


def test_a_stored_text_that_pydantic_core_cannot_parse_still_folds():
    # given rows as json.dumps writes them: a lone surrogate escape, which pydantic-core's parser refuses
    lone = json.dumps({"product_id": "P\ud800", "quantity": 2})
    rows = [(1, "StockAdded", '{"product_id":"P1","quantity":1}'), (2, "StockAdded", lone)]
    with pytest.raises(ValueError):
        StockAdded.__pydantic_validator__.validate_json(lone)
    # when they are decoded for a fold, then each event comes back as json.loads reads it
    assert events_from_json(rows) == [(1, added("P1")), (2, added("P\ud800", 2))]
    # and data that does not validate is still refused
    with pytest.raises(ValueError):
        events_from_json([(1, "StockAdded", '{"product_id":"P1","quantity":"many"}')])

"""Loading aggregates through the store's lean read path, on every backend (memory, SQLite, PostgreSQL).

``read_stream_events`` / ``read_streams_events`` give a fold only the last version and the typed events,
decoded the cheapest way a backend can; they must give exactly what ``read_stream`` gives. ``load`` and ``load_many``
(eventlab.services.runtime) fold through them, and an append of several events reports the positions
the log holds (the store derives them from the last one).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3

import pytest
from store_contract import added

from eventlab.events import OrderCompleted, OrderConfirmed, OrderCreated, OrderLine, UserCreated
from eventlab.services import inventory, order
from eventlab.services.runtime import Stream, load, load_many
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.store.base import events_from_json, iter_tails_from_json


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
            # when a fold reads it, then it gets the typed events read_stream gives and the last one's version
            stored = store.read_stream(*key, after_version=after)
            expected = (stored[-1].version if stored else after, [each.event for each in stored])
            assert store.read_stream_events(*key, after_version=after) == expected
    assert store.read_stream_events("order", "O-1") == (1, [placed()])
    assert store.read_stream_events("stock", "P1", 3) == (3, [])


def test_several_streams_are_read_for_a_fold_at_once(store):
    # given two stock streams, a user and an order
    store.append([NewEvent(added("P1"), 1), NewEvent(added("P2", 5), 1), NewEvent(added("P1", 7), 2)])
    store.append([NewEvent(UserCreated(user_id="P1", name="Ann", email="ann@shop.example"), 1)])
    store.append([NewEvent(placed(), 1)])
    wanted = {("stock", "P1"): 1, ("stock", "P2"): 0, ("user", "P1"): 0, ("order", "O-1"): 0, ("stock", "none"): 0}
    # when they are read in one call
    found = store.read_streams_events(wanted)
    # then each stream has its own events after its version, by version, and its last version; a stream
    # without events after its version keeps that version
    assert found == {
        ("stock", "P1"): (2, [added("P1", 7)]),
        ("stock", "P2"): (1, [added("P2", 5)]),
        ("user", "P1"): (1, [UserCreated(user_id="P1", name="Ann", email="ann@shop.example")]),
        ("order", "O-1"): (1, [placed()]),
        ("stock", "none"): (0, []),
    }
    assert store.read_streams_events({("stock", "P1"): 2, ("stock", "P2"): 0}) == {
        ("stock", "P1"): (2, []),
        ("stock", "P2"): (1, [added("P2", 5)]),
    }
    # and read one stream at a time (as load_many folds them), the same tails come in the order asked
    assert list(store.iter_streams_events(wanted)) == list(found.items())
    backwards = dict(reversed(wanted.items()))
    assert list(store.iter_streams_events(backwards)) == [(key, found[key]) for key in backwards]


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
    # given rows as json.dumps writes them: a lone surrogate escape in a name, which pydantic-core's parser
    # refuses (an id may hold none: ids are length-checked, which needs Unicode text)
    lone = json.dumps({"user_id": "U1", "name": "Ada\ud800", "email": "ada@example.com"})
    first = '{"user_id":"U1","name":"Ada","email":"ada@example.com"}'
    rows = [(1, "UserCreated", first), (2, "UserCreated", lone)]
    with pytest.raises(ValueError):
        UserCreated.__pydantic_validator__.validate_json(lone)
    # when they are decoded for a fold, one stream or several at once
    tails = dict(
        iter_tails_from_json([(0, *row) for row in rows] + [(1, 4, *rows[1][1:])], {("user", "U1"): 0, ("u", "2"): 3})
    )
    # then each event comes back as json.loads reads it
    ada, lone_ada = (UserCreated(user_id="U1", name=name, email="ada@example.com") for name in ("Ada", "Ada\ud800"))
    assert events_from_json(rows) == (2, [ada, lone_ada])
    assert tails == {("user", "U1"): (2, [ada, lone_ada]), ("u", "2"): (4, [lone_ada])}
    # and data that does not validate is still refused
    refused = (1, "StockAdded", '{"product_id":"P1","quantity":"many"}')
    with pytest.raises(ValueError):
        events_from_json([refused])
    with pytest.raises(ValueError):
        dict(iter_tails_from_json([(0, *refused)], {("stock", "P1"): 0}))


def test_old_shapes_long_streams_and_late_versions_replay_alike_one_by_one_and_batched(tmp_path):
    # given a SQLite store holding an order whose creation is still in schema version 1 (before it carried
    # the email), a stock stream of 300 events, an order whose version 2 was stored before its version 1,
    # and 250 more stock streams (the batched read goes 200 streams a query)
    store = SqliteEventStore(tmp_path / "events.db")
    store.append(
        [
            NewEvent(placed("O-old"), 1),
            NewEvent(OrderConfirmed(order_id="O-old", user_id="U-ü", total_cents=799), 2),
            NewEvent(OrderCompleted(order_id="O-old", user_id="U-ü", total_cents=799, lines=placed().lines), 3),
        ]
    )
    for start in range(1, 301, 100):
        store.append([NewEvent(added("P-long", quantity=v), v) for v in range(start, start + 100)])
    store.append([NewEvent(OrderConfirmed(order_id="O-late", user_id="U-ü", total_cents=799), 2)])
    store.append([NewEvent(placed("O-late"), 1)])
    store.append([NewEvent(added(f"P{n}", quantity=v), v) for n in range(250) for v in (1, 2)])
    with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as con:
        con.execute(
            "UPDATE events SET schema_version = 1, data = json_remove(data, '$.email')"
            " WHERE aggregate_id = 'O-old' AND version = 1"
        )
    evolvers = {"stock": inventory.evolve_stock, "order": order.evolve}
    keys = [("order", "O-late"), *[("stock", f"P{n}") for n in reversed(range(250))], ("stock", "P-long")]
    keys += [("order", "O-old"), ("stock", "nobody")]

    # when every stream is loaded one by one, all at once, and through the full rows read_stream gives
    one_by_one = {key: load(store, key, evolvers[key[0]]) for key in keys}
    batched = load_many(store, keys, evolvers)
    folded = {
        key: Stream(key, functools.reduce(evolvers[key[0]], [e.event for e in stored], None), len(stored))
        for key in keys
        for stored in [store.read_stream(*key)]
    }

    # then the three agree, versions included; the old order reads with no email; events fold by version
    assert batched == one_by_one == folded
    old = batched[("order", "O-old")]
    assert old.version == 3 and isinstance(old.state, order.Order)
    assert old.state.status == "completed" and old.state.email is None
    late = batched[("order", "O-late")]
    assert late.version == 2 and isinstance(late.state, order.Order) and late.state.status == "confirmed"
    long = batched[("stock", "P-long")]
    assert long.version == 300 and isinstance(long.state, inventory.Stock) and long.state.available == 300 * 301 // 2
    assert batched[("stock", "P7")].version == 2 and batched[("stock", "nobody")] == Stream(
        ("stock", "nobody"), None, 0
    )
    assert store.read_stream_events("stock", "P-long", 298) == (300, [added("P-long", 299), added("P-long", 300)])
    store.close()


def test_an_unknown_event_type_stops_a_replay_with_its_name(tmp_path):
    # given a stream holding an event of a type this code does not know
    store = SqliteEventStore(tmp_path / "events.db")
    store.append([NewEvent(added("P1"), 1), NewEvent(added("P1"), 2)])
    with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as con:
        con.execute("UPDATE events SET event_type = 'StockTeleported' WHERE version = 2")
    # when it is loaded one by one or in a batch, then the error names the type (as read_stream's event does)
    with pytest.raises(KeyError, match="StockTeleported"):
        load(store, ("stock", "P1"), inventory.evolve_stock)
    with pytest.raises(KeyError, match="StockTeleported"):
        load_many(store, [("stock", "P1")], {"stock": inventory.evolve_stock})
    with pytest.raises(KeyError, match="StockTeleported"):
        _ = store.read_stream("stock", "P1")[1].event
    store.close()

"""The CloudEvents codec, without a broker."""

from __future__ import annotations

import sqlite3

import pytest

from eventlab.events import OrderCancelled, OrderCompleted, OrderConfirmed, OrderCreated, OrderLine, StockAdded
from eventlab.kafka.cloudevents import UndecodableMessage, from_message, record_topic, to_message
from eventlab.services import order
from eventlab.store import NewEvent, SqliteEventStore


@pytest.fixture
def stored(tmp_path):
    store = SqliteEventStore(tmp_path / "events.db")
    [event] = store.append(
        [NewEvent(StockAdded(product_id="P001", quantity=3), 1, {"source": "inventory", "correlation_id": "order-7"})]
    )
    yield event, store.read_records()[0]
    store.close()


def test_a_decoded_event_and_its_raw_record_make_the_same_message(stored):
    event, record = stored
    assert to_message(event) == to_message(record)
    key, value, headers = to_message(record)
    assert key == "P001" and dict(headers)["ce_type"] == b"StockAdded"
    assert dict(headers)["ce_time"].endswith(b"Z")
    assert from_message(value, headers).event == event.event


#: The headers of a StockAdded message, as its producer sends them.
STOCK_ADDED = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"StockAdded")]


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"{}", [], "missing header ce_specversion"),
        (
            b"{}",
            [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_type", b"StockAdded")],
            "unsupported ce_specversion",
        ),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"Nope")], "unknown ce_type 'Nope'"),
        (b"\xff", STOCK_ADDED, "value is not JSON"),
        (
            b'{"product_id": "P1", "quantity": -1}',
            STOCK_ADDED,
            "invalid StockAdded: quantity",
        ),
        (None, STOCK_ADDED, "value is not JSON"),
        (
            b"[" * 100_000 + b"]" * 100_000,
            STOCK_ADDED,
            "value is nested too deeply",
        ),
        (  # valid JSON to json.loads, but no UTF-8 text holds it: storing it would fail on every retry
            b'{"product_id": "P\\ud800", "quantity": 1}',
            STOCK_ADDED,
            "invalid StockAdded: value: Invalid JSON: unexpected end of hex escape",
        ),
        (
            b'{"product_id": "P\\udc00x", "quantity": 1}',
            STOCK_ADDED,
            "invalid StockAdded: value: Invalid JSON: lone leading surrogate",
        ),
        (  # strict: a number in text, a boolean or a float is no integer (the projections would read otherwise)
            b'{"product_id": "P1", "quantity": "5"}',
            STOCK_ADDED,
            "invalid StockAdded: quantity: Input should be a valid integer",
        ),
        (
            b'{"product_id": "P1", "quantity": true}',
            STOCK_ADDED,
            "invalid StockAdded: quantity: Input should be a valid integer",
        ),
        (
            b'{"product_id": "P1", "quantity": 5.0}',
            STOCK_ADDED,
            "invalid StockAdded: quantity: Input should be a valid integer",
        ),
        (
            b'{"product_id": 1, "quantity": 5}',
            STOCK_ADDED,
            "invalid StockAdded: product_id: Input should be a valid string",
        ),
        (  # read with replacement characters, b"\xfe1" would be the same id: skipped as already handled
            b'{"product_id": "P1", "quantity": 1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"\xff1"), ("ce_type", b"StockAdded")],
            "ce_id is not UTF-8",
        ),
        (  # valid JSON and Python text, but PostgreSQL keeps no NUL: the store would fail on every retry
            b'{"product_id": "P\\u0000x", "quantity": 1}',
            STOCK_ADDED,
            "value holds a NUL character",
        ),
        (
            b'{"product_id": "P1", "quantity": 1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1\x00"), ("ce_type", b"StockAdded")],
            "header ce_id holds a NUL character",
        ),
        (
            b'{"product_id": "P1", "quantity": 1}',
            [*STOCK_ADDED, ("correlation_id", b"\x00")],
            "header correlation_id holds a NUL character",
        ),
        (  # PostgreSQL indexes ids: an entry over 2,704 bytes fails every write, and held the partition there
            b'{"product_id": "P1", "quantity": 1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"i" * 256), ("ce_type", b"StockAdded")],
            "header ce_id is longer than 255 characters",
        ),
        (
            b'{"product_id": "P1", "quantity": 1}',
            [*STOCK_ADDED, ("correlation_id", b"c" * 3000)],
            "header correlation_id is longer than 255 characters",
        ),
        (
            b'{"product_id": "' + b"P" * 3000 + b'", "quantity": 1}',
            STOCK_ADDED,
            "invalid StockAdded: product_id: String should have at most 255 characters",
        ),
        (
            b'{"order_id": "O1", "user_id": "U1", "lines": [{"product_id": "'
            + b"P" * 256
            + b'", "quantity": 1, "unit_price_cents": 1}], "total_cents": 1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"OrderCreated")],
            "invalid OrderCreated: lines.0.product_id: String should have at most 255 characters",
        ),
        (  # the HTTP API refuses it; forged on the topic, Inventory would reserve each line against all the stock
            b'{"order_id": "O1", "user_id": "U1", "lines": ['
            + b'{"product_id": "P1", "quantity": 2, "unit_price_cents": 1},' * 2
            + b'{"product_id": "P2", "quantity": 1, "unit_price_cents": 1}], "total_cents": 5}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"OrderCreated")],
            "invalid OrderCreated: lines: Value error, product P1 appears twice",
        ),
        (  # Python reads it; the projections' BIGINT would read NULL, and a charge of it is no money
            b'{"product_id": "P1", "quantity": 100000000000000000000}',
            STOCK_ADDED,
            "StockAdded: quantity beyond 64-bit integers",
        ),
        (  # it fits in 64 bits, but Order recorded the price, and an order of two overflowed its total
            b'{"product_id": "P1", "name": "x", "price_cents": 9223372036854775807, "initial_stock": 1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"ProductCreated")],
            "invalid ProductCreated: price_cents: Input should be less than or equal to 100000000",
        ),
    ],
)
def test_undecodable_messages_say_why(value, headers, reason):
    with pytest.raises(UndecodableMessage, match=reason):
        from_message(value, headers)


def test_a_backslash_then_u0000_as_text_is_no_nul_and_decodes():
    headers = STOCK_ADDED
    assert from_message(b'{"product_id": "P\\\\u0000", "quantity": 1}', headers).event.product_id == "P\\u0000"


def test_a_surrogate_pair_and_other_headers_that_are_not_utf8_still_decode():
    # given an emoji written as a JSON surrogate pair, and a correlation id that is not UTF-8
    headers = [*STOCK_ADDED, ("correlation_id", b"\xff")]
    message = from_message(b'{"product_id": "P\\ud83d\\ude00", "quantity": 1}', headers)
    # then the event is read, the emoji whole, the correlation id with a replacement character
    assert message.event.product_id == "P\U0001f600" and message.correlation_id == "\ufffd"


@pytest.mark.parametrize(
    ("event_type", "data", "metadata", "reason"),
    [
        ("OrderTeleported", "{}", "{}", "unknown event type 'OrderTeleported'"),
        ("StockAdded", '{"product_id": "P1"}', "{}", "invalid StockAdded: quantity"),
        ("StockAdded", "{nope", "{}", "value is not JSON"),
        ("StockAdded", '{"product_id": "P1", "quantity": 1}', "[1]", "metadata is not a JSON object"),
    ],
)
def test_a_stored_event_no_consumer_could_read_is_refused_by_the_relay_check(
    stored, event_type, data, metadata, reason
):
    _, record = stored
    assert record_topic(record) == "inventory.stock.added"
    broken = record._replace(event_type=event_type, data=data, metadata=metadata)
    with pytest.raises(UndecodableMessage, match=reason):
        record_topic(broken)


# --- schema versions: order events gained ``email`` in version 2 ------------------------------


def order_created(**extra: object) -> OrderCreated:
    line = OrderLine(product_id="P1", quantity=1, unit_price_cents=250)
    return OrderCreated(order_id="O-1", user_id="U1", lines=(line,), total_cents=250, **extra)


def test_order_events_are_written_as_schema_version_2(tmp_path):
    # given an order placed by this eventlab (its events carry the email)
    store = SqliteEventStore(tmp_path / "events.db")
    [stored] = store.append([NewEvent(order_created(email="ada@example.com"), 1, {"source": "order"})])
    # then the store and the message say version 2; events that did not change stay at 1
    assert stored.schema_version == 2 == store.read_records()[0].schema_version
    assert dict(to_message(stored)[2])["ce_dataschemaversion"] == b"2"
    assert {cls.schema_version for cls in (OrderConfirmed, OrderCompleted, OrderCancelled)} == {2}
    assert StockAdded.schema_version == 1
    store.close()


def test_a_version_1_order_event_from_the_topic_is_read_without_an_email():
    # given an OrderCreated as an eventlab before version 2 sent it (no email field, version 1)
    value = order_created().model_dump_json(exclude={"email"}).encode()
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"OrderCreated")]
    # then it decodes, with or without the version header
    for version in ([("ce_dataschemaversion", b"1")], []):
        event = from_message(value, headers + version).event
        assert isinstance(event, OrderCreated) and event.email is None and event.total_cents == 250


def test_a_schema_version_this_eventlab_does_not_read_is_refused_saying_so():
    value = order_created(email="ada@example.com").model_dump_json().encode()
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"OrderCreated")]
    with pytest.raises(
        UndecodableMessage, match=r"OrderCreated: schema version 3 is not one this eventlab reads \(1..2\)"
    ):
        from_message(value, [*headers, ("ce_dataschemaversion", b"3")])
    with pytest.raises(UndecodableMessage, match="schema version 'two' is not a number"):
        from_message(value, [*headers, ("ce_dataschemaversion", b"two")])


def test_a_version_1_order_event_in_the_store_loads_folds_and_publishes_as_version_1(tmp_path):
    # given an OrderCreated stored by an eventlab before version 2 (raw row: version 1, no email)
    store = SqliteEventStore(tmp_path / "events.db")
    store.append([NewEvent(order_created(email="ada@example.com"), 1, {"source": "order"})])
    data = order_created().model_dump_json(exclude={"email"})
    with sqlite3.connect(tmp_path / "events.db") as con:
        con.execute("UPDATE events SET schema_version = 1, data = ?", (data,))
    con.close()
    # then it loads and folds (no email), and the relay publishes it as the version it is
    [stored] = store.read_stream("order", "O-1")
    assert stored.schema_version == 1 and stored.event == order_created()
    assert order.evolve(None, stored.event) == order.Order("O-1", "U1", order_created().lines, 250)
    [record] = store.read_records()
    assert record_topic(record) == "order.lifecycle.created"
    assert dict(to_message(record)[2])["ce_dataschemaversion"] == b"1"
    # but the relay refuses a stored version it does not read (a consumer would refuse it too)
    with pytest.raises(UndecodableMessage, match="schema version 3"):
        record_topic(record._replace(schema_version=3))
    store.close()

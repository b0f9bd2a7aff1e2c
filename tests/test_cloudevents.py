"""The CloudEvents codec, without a broker."""

from __future__ import annotations

import pytest

from eventlab.events import StockAdded
from eventlab.kafka.cloudevents import UndecodableMessage, from_message, record_topic, to_message
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
        (b"\xff", [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"StockAdded")], "value is not JSON"),
        (
            b'{"product_id": "P1", "quantity": -1}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"StockAdded")],
            "invalid StockAdded: quantity",
        ),
        (None, [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"StockAdded")], "value is not JSON"),
        (
            b"[" * 100_000 + b"]" * 100_000,
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"StockAdded")],
            "value is nested too deeply",
        ),
    ],
)
def test_undecodable_messages_say_why(value, headers, reason):
    with pytest.raises(UndecodableMessage, match=reason):
        from_message(value, headers)


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

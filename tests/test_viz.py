"""The drawing helpers, on hand-built events: a saga is drawn the same whatever the interleaving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventlab.events import (
    EmailRequested,
    EmailSent,
    Event,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ReservationConfirmed,
    ReservationRejected,
    StockReleased,
    StockReserved,
)
from eventlab.saga import causal_order, saga_mermaid, saga_steps
from eventlab.store.base import NewEvent, StoredEvent
from eventlab.store.sqlite import SqliteEventStore
from eventlab.tables import Table
from eventlab.viz import events_table, feed_html, plot_saga_timeline
from eventlab.widgets import EventFeed
from eventlab.workshop import order_outcomes, sequential_ids

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LINES = (OrderLine(product_id="P001", quantity=2, unit_price_cents=8900),)
ORDER = {"order_id": "order-007", "user_id": "U001"}


class Saga:
    """Builds a saga's stored events: each step names its cause, its service and when it was recorded."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self._versions: dict[tuple[str, str], int] = {}

    def add(self, event: Event, source: str, ms: float, cause: StoredEvent | None = None) -> StoredEvent:
        key = (event.aggregate_type, event.aggregate_id)
        self._versions[key] = self._versions.get(key, 0) + 1
        metadata = {"source": source, "correlation_id": ORDER["order_id"]}
        if cause is not None:
            metadata["causation_id"] = cause.event_id
        stored = StoredEvent(
            position=len(self.events) + 1,
            event_id=f"e{len(self.events) + 1:02d}",
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            version=self._versions[key],
            event_type=event.event_type,
            schema_version=event.schema_version,
            data=event.model_dump(mode="json"),
            metadata=metadata,
            recorded_at=T0 + timedelta(milliseconds=ms),
        )
        self.events.append(stored)
        return stored


def payment_failure(notification_first: bool) -> list[StoredEvent]:
    """Order placed, stock reserved, payment declined, stock released; Notification and Payment race."""
    s = Saga()
    created = s.add(OrderCreated(**ORDER, lines=LINES, total_cents=17800), "order", 0)
    s.add(StockReserved(product_id="P001", order_id="order-007", quantity=2), "inventory", 10, created)
    reserved = s.add(ReservationConfirmed(order_id="order-007", lines=LINES), "inventory", 10, created)
    confirmed = s.add(OrderConfirmed(**ORDER, total_cents=17800), "order", 20, reserved)
    email = {"order_id": "order-007", "kind": "order_confirmed", "to": "ada@example.com"}

    def notify() -> StoredEvent:
        return s.add(EmailRequested(**email, subject="We have your order"), "notification", 25, confirmed)

    if notification_first:
        requested = notify()
    declined = s.add(
        PaymentCompleted(order_id="order-007", amount_cents=17800, status="FAILED", reason="card declined"),
        "payment",
        30,
        confirmed,
    )
    if not notification_first:
        requested = notify()
    cancelled = s.add(
        OrderCancelled(**ORDER, reason="payment_failed", detail="card declined", lines=LINES), "order", 40, declined
    )
    s.add(EmailSent(**email), "notification", 45, requested)
    s.add(StockReleased(product_id="P001", order_id="order-007", quantity=2), "inventory", 55, cancelled)
    return s.events


def out_of_stock() -> list[StoredEvent]:
    s = Saga()
    created = s.add(OrderCreated(**ORDER, lines=LINES, total_cents=17800), "order", 0)
    rejected = s.add(
        ReservationRejected(order_id="order-007", product_id="P001", requested=2, available=1), "inventory", 8, created
    )
    s.add(OrderCancelled(**ORDER, reason="out_of_stock", detail="P001", lines=LINES), "order", 15, rejected)
    return s.events


def types(events: list[StoredEvent]) -> list[str]:
    return [e.event_type for e in events]


class TestCausalOrder:
    def test_the_same_saga_is_ordered_the_same_whatever_the_interleaving(self):
        one, other = payment_failure(notification_first=True), payment_failure(notification_first=False)
        assert types(one) != types(other)  # the store's positions differ...
        assert types(causal_order(one)) == types(causal_order(other))  # ...the causal order does not

    def test_an_event_comes_after_its_cause(self):
        ordered = causal_order(payment_failure(notification_first=True))
        seen = set()
        for event in ordered:
            cause = event.metadata.get("causation_id")
            assert cause is None or cause in seen
            seen.add(event.event_id)

    def test_events_written_in_one_decision_keep_their_order(self):
        ordered = types(causal_order(payment_failure(notification_first=False)))
        assert ordered.index("StockReserved") + 1 == ordered.index("ReservationConfirmed")

    def test_input_order_does_not_matter(self):
        events = payment_failure(notification_first=True)
        assert causal_order(reversed(events)) == causal_order(events)

    def test_no_events(self):
        assert causal_order([]) == []


class TestSagaMermaid:
    def test_participants_are_the_services_that_wrote_events_plus_the_customer(self):
        diagram = saga_mermaid(payment_failure(notification_first=True))
        assert diagram.splitlines()[0] == "sequenceDiagram"
        participants = [line.split()[1] for line in diagram.splitlines() if line.strip().startswith("participant")]
        assert participants == ["order", "inventory", "payment", "notification"]
        assert "actor customer as Customer U001" in diagram
        assert "customer->>order: PlaceOrder" in diagram

    def test_arrows_go_from_the_writer_to_each_service_that_reacted(self):
        diagram = saga_mermaid(payment_failure(notification_first=True))
        assert "order->>inventory: OrderCreated 178.00" in diagram
        assert "inventory->>order: ReservationConfirmed" in diagram
        assert "order->>payment: OrderConfirmed 178.00" in diagram
        assert "order->>notification: OrderConfirmed 178.00" in diagram
        assert "notification->>notification: EmailRequested order_confirmed" in diagram

    def test_failures_are_crossed_and_compensation_is_marked(self):
        diagram = saga_mermaid(payment_failure(notification_first=False))
        assert "payment-xorder: PaymentCompleted FAILED (card declined)" in diagram
        assert "order-xinventory: OrderCancelled (payment_failed)" in diagram
        assert "Note over inventory: StockReleased P001 x2 (compensation)" in diagram

    def test_the_diagram_does_not_depend_on_the_interleaving(self):
        assert saga_mermaid(payment_failure(notification_first=True)) == saga_mermaid(
            payment_failure(notification_first=False)
        )

    def test_out_of_stock_is_a_short_saga(self):
        body = [line.strip() for line in saga_mermaid(out_of_stock(), autonumber=False).splitlines()]
        assert body[-3:] == [
            "order->>inventory: OrderCreated 178.00",
            "inventory-xorder: ReservationRejected P001 2 > 1",
            "Note over order: OrderCancelled (out_of_stock)",
        ]

    def test_a_title_and_no_events(self):
        titled = saga_mermaid(out_of_stock(), title='order-007: "short"; #7')
        assert titled.startswith("---\ntitle: \"order-007: 'short', no. 7\"\n---\nsequenceDiagram")
        assert saga_mermaid([]).startswith("sequenceDiagram")


class TestSteps:
    def test_each_step_runs_from_its_cause_to_itself(self):
        steps = saga_steps(payment_failure(notification_first=True))
        assert [s.index for s in steps] == list(range(1, 10))
        first, released = steps[0], steps[-1]
        assert (first.event_type, first.cause_type, first.start_ms, first.duration_ms) == ("OrderCreated", "", 0, 0)
        assert (released.event_type, released.cause_type) == ("StockReleased", "OrderCancelled")
        assert (released.start_ms, released.end_ms, released.duration_ms) == (40, 55, 15)
        assert released.service == "inventory" and released.label == "StockReleased P001 x2"

    def test_the_timeline_has_one_bar_per_step(self):
        events = payment_failure(notification_first=True)
        fig = plot_saga_timeline(events, title="order-007")
        ax = fig.axes[0]
        assert len(ax.patches) == len(events)
        assert ax.get_title() == "order-007"
        assert next(t.get_text() for t in ax.get_yticklabels()) == "1. order: OrderCreated 178.00"


class TestTables:
    def test_events_table_in_causal_order(self):
        table = events_table(payment_failure(notification_first=False))
        assert [r["event"] for r in table.rows][:4] == [
            "OrderCreated 178.00",
            "StockReserved P001 x2",
            "ReservationConfirmed",
            "OrderConfirmed 178.00",
        ]
        assert table.columns == ["step", "service", "event", "stream", "caused_by"]
        assert table.rows[0]["caused_by"] == "(command)"
        assert table.rows[1]["stream"] == "stock:P001"

    def test_positions_on_request(self):
        table = events_table(out_of_stock(), causal=False, positions=True, versions=True)
        assert [r["position"] for r in table.rows] == [1, 2, 3]
        assert [r["version"] for r in table.rows] == [1, 1, 2]

    def test_table_renders_as_text_and_escaped_html(self):
        table = Table([{"a": 1, "b": "<x>"}, {"a": 22, "b": None}])
        assert repr(table).splitlines() == ["a  | b", "---+----", "1  | <x>", "22 |"]
        assert "<td>&lt;x&gt;</td>" in table._repr_html_()
        assert len(table) == 2

    def test_table_from_a_polars_frame(self):
        pl = pytest.importorskip("polars")
        table = Table(pl.DataFrame({"status": ["completed"], "orders": [3]}))
        assert table.rows == [{"status": "completed", "orders": 3}]

    def test_feed_shows_the_newest_first(self):
        events = payment_failure(notification_first=True)
        page = feed_html(events, limit=2, head=9)
        assert page.index("StockReleased") < page.index("EmailSent")
        assert "OrderCreated" not in page and "9 events in the store" in page


def test_event_feed_follows_a_store(tmp_path):
    pytest.importorskip("ipywidgets")
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        feed = EventFeed(store, limit=3)
        assert feed.last_position == 0
        created = OrderCreated(**ORDER, lines=LINES, total_cents=17800)
        store.append([NewEvent(created, 1, {"source": "order", "correlation_id": "order-007"})])
        assert feed.refresh() == 1
        assert "OrderCreated 178.00" in feed.widget.value
        assert feed.refresh() == 0
        assert feed.last_position == 1
        assert feed._repr_mimebundle_()["text/plain"] == "<EventFeed limit=3>"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"limit": bad}, "limit") for bad in (0, -3, 2.5, True)]
    + [({"interval": bad}, "interval") for bad in (0, -1, float("nan"), float("inf"), "1")],
)
def test_an_event_feed_refuses_a_limit_or_interval_that_is_not_above_0_naming_it(tmp_path, arguments, named):
    pytest.importorskip("ipywidgets")
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        with pytest.raises(ValueError, match=named):
            EventFeed(store, **arguments)
    finally:
        store.close()


def test_sequential_ids_and_order_outcomes():
    ids = sequential_ids("order")
    assert [ids() for _ in range(2)] == ["order-001", "order-002"]
    assert sequential_ids("x", width=2)() == "x-01"
    outcomes = order_outcomes(payment_failure(notification_first=True) + out_of_stock())
    assert outcomes == {"order-007": {"status": "cancelled", "reason": "out_of_stock"}}
    assert order_outcomes(payment_failure(notification_first=True)) == {
        "order-007": {"status": "cancelled", "reason": "payment_failed"}
    }

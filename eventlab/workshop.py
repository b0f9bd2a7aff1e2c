"""Helpers for the workshop notebooks: deterministic ids, running one order to the end, peeking
at Kafka, and the failure-lab control panel.

Example:
    >>> from eventlab.workshop import sequential_ids
    >>> ids = sequential_ids("order")
    >>> ids(), ids()
    ('order-001', 'order-002')
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventlab.events import EVENT_TYPES
from eventlab.kafka.clients import make_consumer, make_producer, produce_and_wait
from eventlab.kafka.cloudevents import to_message
from eventlab.services import inventory
from eventlab.settings import Settings
from eventlab.store.base import StoredEvent
from eventlab.viz import BackgroundRefresh

if TYPE_CHECKING:  # pragma: no cover
    from eventlab.application import OrderView
    from eventlab.shop import Shop

__all__ = [
    "ControlPanel",
    "Record",
    "kafka_settings",
    "nothing_lost",
    "order_outcomes",
    "quiet",
    "read_topic",
    "redeliver",
    "run_order",
    "send_raw",
    "sequential_ids",
    "wait_until",
]

_groups = itertools.count(1)


def sequential_ids(prefix: str = "order", width: int = 3) -> Callable[[], str]:
    """An id factory giving ``prefix-001``, ``prefix-002``, ... (for ``Shop(id_factory=...)``)."""
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):0{width}d}"


def quiet(level: int = logging.ERROR) -> None:
    """Keep eventlab's expected warnings (dead-lettered messages, retries) out of cell outputs.

    They come from background threads, so they would land in whichever cell happens to run;
    the notebooks show the same facts through counters instead.
    """
    logging.getLogger("eventlab").setLevel(level)


def run_order(shop: Shop, user_id: str, lines: Mapping[str, int], timeout: float = 30.0) -> OrderView:
    """Place an order, wait for its saga to end *and* for every follow-up (stock sold or
    released, emails sent), and return it. Orders run this way one after another give the
    same events on every run."""
    order_id = shop.place_order(user_id, lines)
    shop.wait(order_id, timeout)
    shop.wait_idle(timeout)
    return shop.order(order_id)


def kafka_settings(shop: Shop) -> Settings:
    """The shop's settings pointing at the broker it uses (embedded or external)."""
    return shop.kafka_settings


@dataclass(frozen=True)
class Record:
    """A Kafka message as read from a topic."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]

    def __repr__(self) -> str:
        return f"<Record {self.topic}[{self.partition}]@{self.offset} key={self.key!r} {len(self.value)} bytes>"


def read_topic(
    shop: Shop,
    topic: str | Iterable[str],
    *,
    max_messages: int = 1,
    timeout: float = 20.0,
    group: str | None = None,
) -> list[Record]:
    """Read up to ``max_messages`` from the start of ``topic`` (one name or several) with a fresh
    consumer group, giving up after ``timeout`` seconds; sorted by topic, partition and offset.

    A new group has no committed offsets, so it starts at the earliest offset
    (``auto.offset.reset=earliest``) and does not disturb the services' groups.
    """
    name = group or f"workshop-{next(_groups)}"
    consumer = make_consumer(kafka_settings(shop), name, **{"enable.auto.commit": False})
    records: list[Record] = []
    try:
        consumer.subscribe([topic] if isinstance(topic, str) else list(topic))
        deadline = time.monotonic() + timeout
        while len(records) < max_messages and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            key = message.key()
            records.append(
                Record(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    key=key.decode() if key is not None else None,
                    value=message.value() or b"",
                    headers={k: (v or b"").decode("utf-8", "replace") for k, v in message.headers() or []},
                )
            )
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll ``condition`` until it is true; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {timeout} s")
        time.sleep(interval)


def send_raw(
    shop: Shop,
    topic: str,
    value: bytes,
    *,
    key: str | None = None,
    headers: Iterable[tuple[str, bytes]] = (),
) -> None:
    """Produce one message as is (no event store, no CloudEvents checks) and wait for the ack."""
    produce_and_wait(make_producer(kafka_settings(shop)), topic, value, key, list(headers), timeout=10)


def redeliver(shop: Shop, stored: StoredEvent) -> str:
    """Publish an already-delivered event again, exactly as the relay did (same ``ce_id``);
    return the topic. This is what at-least-once delivery does after a crash or a rebalance."""
    key, value, headers = to_message(stored)
    topic = EVENT_TYPES[stored.event_type].topic
    send_raw(shop, topic, value, key=key, headers=headers)
    return topic


_STATUS = {
    "OrderCreated": "created",
    "OrderConfirmed": "confirmed",
    "OrderCompleted": "completed",
    "OrderCancelled": "cancelled",
}


def order_outcomes(
    events: Iterable[StoredEvent], into: dict[str, dict[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """Fold order events into ``{order_id: {"status": ..., "reason": ...}}`` (pure; incremental
    when given the previous result as ``into``)."""
    orders = {} if into is None else into
    for event in events:
        status = _STATUS.get(event.event_type)
        if status is None:
            continue
        order = orders.setdefault(event.aggregate_id, {"status": "created", "reason": ""})
        order["status"] = status
        if status == "cancelled":
            order["reason"] = event.data.get("reason", "")
    return orders


def nothing_lost(shop: Shop, placed: Iterable[str] = ()) -> dict[str, bool]:
    """Checks that the shop lost nothing and applied nothing twice:

    - ``idle``: every stored event was published and handled by every service;
    - ``every_order_ended``: every order (and every id in ``placed``) is completed or cancelled;
    - ``one_outcome_per_order``: no order has two terminal events, none was charged twice;
    - ``stock_conserved``: for every product, available + reserved + sold = stock added,
      and nothing is left reserved once every saga ended.
    """
    shop.wait_idle()
    events = shop.store.read_all()
    outcomes = order_outcomes(events)
    terminal: dict[str, int] = {}
    payments: dict[str, int] = {}
    added: dict[str, int] = {}
    stock: dict[str, inventory.Stock] = {}
    for event in events:
        if event.event_type in ("OrderCompleted", "OrderCancelled"):
            terminal[event.aggregate_id] = terminal.get(event.aggregate_id, 0) + 1
        elif event.event_type == "PaymentCompleted":
            payments[event.aggregate_id] = payments.get(event.aggregate_id, 0) + 1
        if event.aggregate_type == "stock":
            stock[event.aggregate_id] = inventory.evolve_stock(stock.get(event.aggregate_id), event.event)
            if event.event_type == "StockAdded":
                added[event.aggregate_id] = added.get(event.aggregate_id, 0) + event.data["quantity"]
    return {
        "idle": not any(shop.lag().values()),
        "every_order_ended": all(o["status"] in ("completed", "cancelled") for o in outcomes.values())
        and all(order_id in outcomes for order_id in placed),
        "one_outcome_per_order": all(n == 1 for n in terminal.values()) and all(n == 1 for n in payments.values()),
        "stock_conserved": all(
            s.available + s.reserved + s.sold == added.get(pid, 0) and s.reserved == 0 for pid, s in stock.items()
        ),
    }


class ControlPanel(BackgroundRefresh):
    """An ipywidgets control panel over a running shop, with a live view.

    - an order form (customer, product, quantity, *Place order*);
    - the payment gateway's failure rate and latency, and an outage switch;
    - *Redeliver* (publish the newest ``OrderCreated`` again: the ``duplicates`` counter rises,
      no event is written) and *Poison* (garbage on ``order.lifecycle.created``: it lands on
      ``order.lifecycle.created.dlq`` with a ``dlq_reason`` header);
    - live: the newest events, every order's outcome, each service's counters.

    Every button calls a method you can also call from code (:meth:`place_order`,
    :meth:`redeliver_newest`, :meth:`poison`), which is what a notebook run headless does.
    """

    def __init__(
        self, shop: Shop, *, users: Iterable[str] = (), products: Iterable[str] = (), interval: float = 0.5
    ) -> None:
        import ipywidgets as w

        from eventlab.catalogue import load_products, load_users
        from eventlab.viz import EventFeed

        self.shop = shop
        self.interval = interval
        self.placed: list[str] = []
        self.messages: list[str] = []
        self._outcomes: dict[str, dict[str, str]] = {}
        self._seen = 0
        self._lock = threading.Lock()
        users = list(users) or [u["user_id"] for u in load_users()]
        products = list(products) or [p["product_id"] for p in load_products()]

        self.user = w.Dropdown(options=users, description="Customer")
        self.product = w.Dropdown(options=products, description="Product")
        self.quantity = w.BoundedIntText(value=1, min=1, max=1000, description="Quantity")
        self.place_button = w.Button(description="Place order", button_style="primary", icon="shopping-cart")
        self.failure_rate = w.FloatSlider(
            value=shop.gateway.failure_rate, min=0, max=1, step=0.05, description="Declines", readout_format=".0%"
        )
        self.latency = w.IntSlider(
            value=int(shop.gateway.latency_ms), min=0, max=2000, step=50, description="Latency ms"
        )
        self.outage = w.ToggleButton(value=not shop.gateway.available.is_set(), description="Gateway down", icon="plug")
        self.redeliver_button = w.Button(
            description="Redeliver", icon="copy", tooltip="publish the newest OrderCreated again"
        )
        self.poison_button = w.Button(description="Poison", button_style="danger", icon="bug")
        self.log = w.HTML()
        self.outcomes_view = w.HTML()
        self.stats_view = w.HTML()
        self.feed = EventFeed(shop.store, limit=12)

        self.place_button.on_click(lambda _b: self._safely(self._place_from_form))
        self.redeliver_button.on_click(lambda _b: self._safely(self.redeliver_newest))
        self.poison_button.on_click(lambda _b: self._safely(self.poison))
        self.failure_rate.observe(lambda c: setattr(shop.gateway, "failure_rate", c["new"]), names="value")
        self.latency.observe(lambda c: setattr(shop.gateway, "latency_ms", c["new"]), names="value")
        self.outage.observe(lambda c: self._set_outage(c["new"]), names="value")

        form = w.VBox(
            [w.HTML("<b>Order form</b>"), self.user, self.product, self.quantity, self.place_button],
            layout=w.Layout(min_width="18em"),
        )
        gateway = w.VBox(
            [w.HTML("<b>Payment gateway</b>"), self.failure_rate, self.latency, self.outage],
            layout=w.Layout(min_width="20em"),
        )
        chaos = w.VBox(
            [w.HTML("<b>Kafka mischief</b>"), self.redeliver_button, self.poison_button, self.log],
            layout=w.Layout(min_width="14em"),
        )
        live = w.HBox(
            [self.feed.widget, w.VBox([self.outcomes_view, self.stats_view])], layout=w.Layout(align_items="flex-start")
        )
        self.widget = w.VBox([w.HBox([form, gateway, chaos]), live])
        self.refresh()

    # --- actions (buttons call these) --------------------------------------------------------

    def place_order(self, user_id: str, lines: Mapping[str, int]) -> str:
        """Place an order without waiting for it; return its id."""
        order_id = self.shop.place_order(user_id, lines)
        self.placed.append(order_id)
        self._say(f"placed {order_id}")
        return order_id

    def redeliver_newest(self, event_type: str = "OrderCreated") -> StoredEvent:
        """Publish the newest stored ``event_type`` again (same event id); return it."""
        newest = None
        for event in self.shop.store.read_all():
            if event.event_type == event_type:
                newest = event
        if newest is None:
            raise LookupError(f"no {event_type} in the store yet")
        topic = redeliver(self.shop, newest)
        self._say(f"redelivered {event_type} {newest.aggregate_id} to {topic}")
        return newest

    def poison(self, topic: str = "order.lifecycle.created", value: bytes = b"\x00 this is not an event") -> str:
        """Produce garbage to ``topic``; its consumer dead-letters it. Return the dead-letter topic."""
        from eventlab.kafka.clients import dead_letter_topic

        send_raw(self.shop, topic, value, key="poison")
        self._say(f"sent poison to {topic}")
        return dead_letter_topic(topic)

    def _place_from_form(self) -> None:
        self.place_order(self.user.value, {self.product.value: self.quantity.value})

    def _set_outage(self, down: bool) -> None:
        if down:
            self.shop.gateway.available.clear()
        else:
            self.shop.gateway.available.set()
        self._say("gateway DOWN" if down else "gateway up")

    def _safely(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - show the error in the panel, keep it usable
            self._say(f"<span style='color:#b00'>{type(exc).__name__}: {exc}</span>")

    def _say(self, message: str) -> None:
        self.messages.append(message)
        self.log.value = "<br>".join(self.messages[-4:])

    # --- live view ---------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Each consuming service's counters and lag."""
        lag = self.shop.lag()
        return {
            name: {
                "handled": loop.stats.handled,
                "duplicates": loop.stats.duplicates,
                "dead_lettered": loop.stats.dead_lettered,
                "retries": loop.stats.retries,
                "lag": lag.get(name, 0),
            }
            for name, loop in self.shop.loops.items()
        }

    def outcomes(self) -> dict[str, dict[str, str]]:
        """Every order's status and reason, as of the last refresh."""
        return {k: dict(v) for k, v in self._outcomes.items()}

    def refresh(self) -> None:
        """Update the live view from the store and the service loops."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        import html

        new = self.shop.store.read_all(after=self._seen)
        if new:
            order_outcomes(new, self._outcomes)
            self._seen = new[-1].position
        self.feed.refresh()
        colours = {"completed": "#2ca02c", "cancelled": "#d62728"}
        rows = "".join(
            f"<tr><td>{html.escape(oid)}</td><td style='color:{colours.get(o['status'], '#555')}'>{o['status']}</td>"
            f"<td>{html.escape(o['reason'])}</td></tr>"
            for oid, o in list(self._outcomes.items())[-10:]
        )
        self.outcomes_view.value = (
            f"<b>Sagas</b><table><tr><th>order</th><th>status</th><th>reason</th></tr>{rows}</table>"
        )
        stats = self.stats()
        head = "".join(f"<th>{k}</th>" for k in ("service", "handled", "duplicates", "dead_lettered", "retries", "lag"))
        body = "".join(
            f"<tr><td>{name}</td>" + "".join(f"<td>{v}</td>" for v in s.values()) + "</tr>" for name, s in stats.items()
        )
        gateway = html.escape(repr(self.shop.gateway))
        self.stats_view.value = f"<b>Services</b> <small>{gateway}</small><table><tr>{head}</tr>{body}</table>"

    def __repr__(self) -> str:
        return f"<ControlPanel orders={len(self.placed)}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

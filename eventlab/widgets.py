"""Live notebook widgets: the newest events of a store, and the failure lab's control panel.

ipywidgets is imported when a widget is created, never by importing this module. Both widgets
refresh from a daemon thread (:class:`BackgroundRefresh`) and render their tables with
:func:`eventlab.tables.html_table`.

Example:
    >>> from eventlab.widgets import ControlPanel
    >>> panel = ControlPanel(shop).start()  # doctest: +SKIP
    >>> panel  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from eventlab.arguments import is_number
from eventlab.events import Event, OrderCreated
from eventlab.faults import POISON, ServiceCounters
from eventlab.services.order import Order
from eventlab.store.base import StoredEvent
from eventlab.tables import Html, html_table
from eventlab.viz import feed_html
from eventlab.workshop import order_states

if TYPE_CHECKING:  # pragma: no cover
    from eventlab.shop import Shop
    from eventlab.store.base import EventStore

__all__ = ["BackgroundRefresh", "ControlPanel", "EventFeed"]

log = logging.getLogger(__name__)

_STATUS_COLOURS = {"completed": "#2ca02c", "cancelled": "#d62728"}
#: How many orders the panel's saga table shows (the newest).
_ORDERS_SHOWN = 10


class BackgroundRefresh:
    """Calls :meth:`refresh` every ``interval`` seconds from a daemon thread, from :meth:`start`
    until :meth:`stop` (for live widgets). Subclasses set ``interval`` and define ``refresh``."""

    interval: float = 0.5
    _thread: threading.Thread | None = None

    def refresh(self) -> object:
        raise NotImplementedError

    def start(self) -> Self:
        """Refresh from a background thread until :meth:`stop`."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name=f"eventlab-{type(self).__name__}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the store or shop closed under us: stop refreshing
                log.info("%s stopped refreshing: %s: %s", type(self).__name__, type(exc).__name__, exc)
                return


def _interval(seconds: float) -> float:
    """``seconds`` between refreshes if it is a finite number above 0, else ValueError naming interval."""
    if not is_number(seconds) or not 0 < seconds < math.inf:
        raise ValueError(f"interval must be a finite number of seconds above 0, not {seconds!r:.40}")
    return seconds


def _widget_bundle(widget: Any, text: str, **kwargs: Any) -> dict[str, Any]:
    """The widget's mime bundle with ``text`` as its plain-text form (what a headless run shows)."""
    bundle: dict[str, Any] = widget._repr_mimebundle_(**kwargs)
    bundle["text/plain"] = text
    return bundle


class EventFeed(BackgroundRefresh):
    """A live widget with the newest events of a store.

    :meth:`refresh` reads what was appended since the last call (and hands it to ``on_new``, if
    given); :meth:`start` does so from a background thread every ``interval`` seconds until
    :meth:`stop`. In a notebook, show it as a cell's value.

    Example:
        >>> feed = EventFeed(shop.store)  # doctest: +SKIP
        >>> feed.start()  # doctest: +SKIP
        >>> feed  # doctest: +SKIP
    """

    def __init__(
        self,
        store: EventStore,
        *,
        limit: int = 12,
        interval: float = 0.5,
        on_new: Callable[[Sequence[StoredEvent]], object] | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number of events, at least 1, not {limit!r:.40}")
        import ipywidgets as widgets

        self.store = store
        self.limit = limit
        self.interval = _interval(interval)
        self.on_new = on_new
        self.widget = widgets.HTML(layout=widgets.Layout(max_height="28em", overflow="auto"))
        self._events: list[StoredEvent] = []
        self._last = 0
        self._lock = threading.Lock()
        self.refresh()

    @property
    def last_position(self) -> int:
        """The newest position shown."""
        return self._last

    def refresh(self) -> int:
        """Read the events appended since the last refresh, update the widget; return how many."""
        with self._lock:
            new = self.store.read_all(after=self._last)
            if new:
                self._events = (self._events + new)[-self.limit :]
                self._last = new[-1].position
                if self.on_new is not None:
                    self.on_new(new)
            self.widget.value = feed_html(self._events, limit=self.limit, head=self._last)
            return len(new)

    def __repr__(self) -> str:
        return f"<EventFeed limit={self.limit}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _widget_bundle(self.widget, repr(self), **kwargs)


class ControlPanel(BackgroundRefresh):
    """An ipywidgets control panel over a running shop, with a live view.

    - an order form (customer, product, quantity, *Place order*);
    - the payment gateway's failure rate and latency, and an outage switch;
    - *Redeliver* (publish the newest ``OrderCreated`` again: the ``duplicates`` counter rises,
      no event is written) and *Poison* (garbage on ``order.lifecycle.created``: it lands on
      ``order.lifecycle.created.dlq`` with a ``dlq_reason`` header);
    - live: the newest events, every order's outcome, each service's counters.

    Every control acts through the shop's lab API (:attr:`Shop.faults <eventlab.faults.Faults>`),
    and every button calls a method you can also call from code (:meth:`place_order`,
    :meth:`redeliver_newest`, :meth:`poison`), which is what a notebook run headless does. The
    live view follows the store by position: each refresh reads only what was appended since.
    """

    def __init__(
        self, shop: Shop, *, users: Iterable[str] = (), products: Iterable[str] = (), interval: float = 0.5
    ) -> None:
        import ipywidgets as w

        from eventlab.catalogue import load_products, load_users

        self.shop = shop
        self.faults = shop.faults
        self.interval = _interval(interval)
        self.placed: list[str] = []
        self.messages: list[str] = []
        self._orders: dict[str, Order] = {}
        self._newest: dict[str, StoredEvent] = {}
        self._lock = threading.Lock()
        users = list(users) or [u["user_id"] for u in load_users()]
        products = list(products) or [p["product_id"] for p in load_products()]

        self.user = w.Dropdown(options=users, description="Customer")
        self.product = w.Dropdown(options=products, description="Product")
        self.quantity = w.BoundedIntText(value=1, min=1, max=1000, description="Quantity")
        self.place_button = w.Button(description="Place order", button_style="primary", icon="shopping-cart")
        self.failure_rate = w.FloatSlider(
            value=self.faults.failure_rate, min=0, max=1, step=0.05, description="Declines", readout_format=".0%"
        )
        self.latency = w.IntSlider(
            value=int(self.faults.latency_ms), min=0, max=2000, step=50, description="Latency ms"
        )
        self.outage = w.ToggleButton(value=self.faults.gateway_down, description="Gateway down", icon="plug")
        self.redeliver_button = w.Button(
            description="Redeliver", icon="copy", tooltip="publish the newest OrderCreated again"
        )
        self.poison_button = w.Button(description="Poison", button_style="danger", icon="bug")
        self.log = w.HTML()
        self.outcomes_view = w.HTML()
        self.stats_view = w.HTML()
        self.feed = EventFeed(shop.store, limit=12, on_new=self._follow)

        self.place_button.on_click(lambda _b: self._safely(self._place_from_form))
        self.redeliver_button.on_click(lambda _b: self._safely(self.redeliver_newest))
        self.poison_button.on_click(lambda _b: self._safely(self.poison))
        self.failure_rate.observe(self._set_failure_rate, names="value")
        self.latency.observe(self._set_latency, names="value")
        self.outage.observe(self._set_outage, names="value")

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

    def redeliver_newest(self, event_type: type[Event] = OrderCreated) -> StoredEvent:
        """Publish the newest stored ``event_type`` again (same event id); return it."""
        self.refresh()
        newest = self._newest.get(event_type.__name__)
        if newest is None:
            raise LookupError(f"no {event_type.__name__} in the store yet")
        topic = self.faults.redeliver(newest)
        self._say(f"redelivered {newest.event_type} {newest.aggregate_id} to {topic}")
        return newest

    def poison(self, topic: str = OrderCreated.topic, value: bytes = POISON) -> str:
        """Produce garbage to ``topic``; its consumer dead-letters it. Return the dead-letter topic."""
        dead_letters = self.faults.poison(topic, value)
        self._say(f"sent poison to {topic}")
        return dead_letters

    def _place_from_form(self) -> None:
        self.place_order(self.user.value, {self.product.value: self.quantity.value})

    def _set_failure_rate(self, change: Mapping[str, Any]) -> None:
        self.faults.failure_rate = change["new"]

    def _set_latency(self, change: Mapping[str, Any]) -> None:
        self.faults.latency_ms = change["new"]

    def _set_outage(self, change: Mapping[str, Any]) -> None:
        self.faults.gateway_down = down = bool(change["new"])
        self._say("gateway DOWN" if down else "gateway up")

    def _safely(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - show the error in the panel, keep it usable
            self._say(f"<span style='color:#b00'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>")

    def _say(self, message: str) -> None:
        self.messages.append(message)
        self.log.value = "<br>".join(self.messages[-4:])

    # --- live view ---------------------------------------------------------------------------

    def stats(self) -> dict[str, ServiceCounters]:
        """Each consuming service's counters and lag."""
        return self.faults.counters()

    def outcomes(self) -> dict[str, dict[str, str]]:
        """Every order's status and reason, as of the last refresh."""
        with self._lock:
            return {order_id: {"status": o.status, "reason": o.reason} for order_id, o in self._orders.items()}

    def refresh(self) -> None:
        """Update the live view with what was appended to the store since, and the services' counters."""
        with self._lock:
            self.feed.refresh()  # hands what is new to _follow
            self._show()

    def _follow(self, new: Sequence[StoredEvent]) -> None:
        order_states(new, self._orders)
        self._newest.update((event.event_type, event) for event in new)

    def _show(self) -> None:
        newest = list(self._orders.values())[-_ORDERS_SHOWN:]
        rows = [
            (
                o.order_id,
                Html(f"<span style='color:{_STATUS_COLOURS.get(o.status, '#555')}'>{o.status}</span>"),
                o.reason,
            )
            for o in newest
        ]
        self.outcomes_view.value = "<b>Sagas</b>" + html_table(["order", "status", "reason"], rows)
        counters = self.faults.counters()
        columns = ["service", *ServiceCounters.__annotations__]
        body = [[name, *c.values()] for name, c in counters.items()]
        summary = html.escape(repr(self.faults))
        self.stats_view.value = f"<b>Services</b> <small>{summary}</small>" + html_table(columns, body)

    def __repr__(self) -> str:
        return f"<ControlPanel orders={len(self.placed)}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return _widget_bundle(self.widget, repr(self), **kwargs)

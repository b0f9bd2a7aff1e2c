"""Draw what happened: saga sequence diagrams, step timelines, event tables and a live feed.

Everything here reads :class:`~eventlab.store.StoredEvent` rows and nothing else, so it works on
events from the running shop, from a copy of the store, or built by hand in a test.

- :func:`causal_order` puts a saga's events in *causal* order (a logical clock): an event comes
  after the event that caused it (``metadata['causation_id']``); events at the same causal depth
  are ordered by their causes, then by service. Services run concurrently, so the store's
  positions interleave differently from run to run; the causal order does not.
- :func:`saga_mermaid` turns one order's events into a mermaid ``sequenceDiagram``: participants
  are the services that wrote the events (``metadata['source']``), arrows are events travelling
  through Kafka from the service that wrote them to each service that reacted to them.
- :func:`saga_steps` and :func:`plot_saga_timeline` show how long each step took (from the
  cause being recorded to the reaction being recorded: relay, Kafka, handler and append).
- :func:`events_table` and :class:`Table` render rows as a plain HTML/text table whose output does
  not depend on any dataframe library's formatting.
- :class:`EventFeed` is a live widget (ipywidgets, imported only when used) showing the newest
  events of a store.

matplotlib (the one charting library, imported only by the plotting functions) renders inline in
JupyterLab and to PNG headless with the Agg backend.

Example:
    >>> from eventlab.viz import saga_mermaid
    >>> view = shop.wait(order_id)  # doctest: +SKIP
    >>> print(saga_mermaid(view.events))  # doctest: +SKIP
    sequenceDiagram
        ...
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from eventlab.store.base import StoredEvent
from eventlab.tables import Table

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from eventlab.store.base import EventStore

__all__ = [
    "SERVICE_COLOURS",
    "BackgroundRefresh",
    "EventFeed",
    "Step",
    "Table",
    "causal_order",
    "causes",
    "describe",
    "events_table",
    "feed_html",
    "mermaid_markdown",
    "plot_saga_timeline",
    "reactions",
    "saga_mermaid",
    "saga_steps",
]

#: One colour per service (matplotlib's tab10 hues), used by the timeline and the feed.
SERVICE_COLOURS: dict[str, str] = {
    "user": "#7f7f7f",
    "product": "#8c564b",
    "order": "#1f77b4",
    "payment": "#2ca02c",
    "inventory": "#ff7f0e",
    "notification": "#9467bd",
}

_FAILURES = {"ReservationRejected", "OrderCancelled"}

#: Left to right in a diagram: who starts a saga, who answers first, who is told last.
_LANES: tuple[str, ...] = ("user", "product", "order", "inventory", "payment", "notification")


def _source(event: StoredEvent) -> str:
    return event.metadata.get("source", "eventlab")


def _service_rank(service: str) -> int:
    return _LANES.index(service) if service in _LANES else len(_LANES)


def causes(events: Sequence[StoredEvent]) -> dict[str, StoredEvent]:
    """Map each event id to the event (among ``events``) that caused it; roots are absent."""
    by_id = {e.event_id: e for e in events}
    found = {}
    for event in events:
        parent = by_id.get(event.metadata.get("causation_id", ""))
        if parent is not None and parent is not event:
            found[event.event_id] = parent
    return found


def causal_order(events: Iterable[StoredEvent]) -> list[StoredEvent]:
    """The events in causal order: by causal depth, then by the order of their causes, then by
    service, then by position (events written in one decision keep their order).

    The result is the same whatever order the concurrent services happened to write in.
    """
    events = sorted(events, key=lambda e: e.position)
    parent_of = causes(events)
    children: dict[str | None, list[StoredEvent]] = {}
    for event in events:
        parent = parent_of.get(event.event_id)
        children.setdefault(parent.event_id if parent else None, []).append(event)

    def sibling_key(event: StoredEvent) -> tuple[int, int]:
        return (_service_rank(_source(event)), event.position)

    ordered: list[StoredEvent] = []
    layer = sorted(children.get(None, []), key=sibling_key)
    while layer:
        ordered.extend(layer)
        layer = [child for event in layer for child in sorted(children.get(event.event_id, []), key=sibling_key)]
    return ordered


def reactions(events: Sequence[StoredEvent]) -> dict[str, list[str]]:
    """Map each event id to the services that reacted to it (wrote an event caused by it)."""
    by_id = {e.event_id: e for e in events}
    found: dict[str, list[str]] = {}
    for child_id, parent in causes(events).items():
        child = by_id[child_id]
        services = found.setdefault(parent.event_id, [])
        if _source(child) not in services:
            services.append(_source(child))
    for services in found.values():
        services.sort(key=_service_rank)
    return found


def _money(cents: Any) -> str:
    try:
        value = int(cents)
    except (TypeError, ValueError):
        return str(cents)
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value) // 100}.{abs(value) % 100:02d}"


def describe(event: StoredEvent) -> str:
    """A short label for an event: its type and the detail that matters."""
    d = event.data
    kind = event.event_type
    if kind in ("OrderCreated", "OrderConfirmed", "OrderCompleted"):
        return f"{kind} {_money(d.get('total_cents'))}"
    if kind == "OrderCancelled":
        return f"{kind} ({d.get('reason', '')})"
    if kind in ("StockAdded", "StockReserved", "StockReleased", "StockSold"):
        return f"{kind} {d.get('product_id')} x{d.get('quantity')}"
    if kind == "ReservationRejected":
        return f"{kind} {d.get('product_id')} {d.get('requested')} > {d.get('available')}"
    if kind == "PaymentCompleted":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"{kind} {d.get('status')}{reason}"
    if kind in ("EmailRequested", "EmailSent"):
        return f"{kind} {d.get('kind')}"
    return kind


def _label(text: str) -> str:
    # ``;`` ends a statement and ``#`` starts an entity code in mermaid sequence diagrams.
    return text.replace(";", ",").replace("#", "no. ").replace("\n", " ")


def saga_mermaid(events: Iterable[StoredEvent], *, title: str | None = None, autonumber: bool = True) -> str:
    """A mermaid ``sequenceDiagram`` of one saga, drawn from its events.

    - participants: the services that wrote the events, in the shop's service order, with an
      ``actor`` for the customer when the saga starts with a placed order;
    - an arrow ``A->>B: Event`` for every event written by ``A`` that ``B`` reacted to (both via
      Kafka; ``A->>A`` when a service reacts to its own event), ``-x`` for failures;
    - a note over the writer for events nobody in this saga reacted to (stock moves, emails sent),
      marked *compensation* when stock is released.
    """
    ordered = causal_order(events)
    if not ordered:
        return "sequenceDiagram\n    Note over eventlab: no events"
    reacted = reactions(ordered)
    services = {_source(e) for e in ordered} | {s for ss in reacted.values() for s in ss}
    lines = ["sequenceDiagram"]
    if title:
        quoted = _label(title).replace("\\", "/").replace('"', "'")
        lines.insert(0, f'---\ntitle: "{quoted}"\n---')  # YAML front matter: quoted, colons allowed
    if autonumber:
        lines.append("    autonumber")
    root = ordered[0]
    customer = root.data.get("user_id") if root.event_type == "OrderCreated" else None
    if customer:
        lines.append(f"    actor customer as Customer {_label(str(customer))}")
    for service in sorted(services, key=_service_rank):
        lines.append(f"    participant {service} as {service.capitalize()}")
    if customer:
        lines.append(f"    customer->>{_source(root)}: PlaceOrder")
    for event in ordered:
        source = _source(event)
        label = _label(describe(event))
        failed = event.event_type in _FAILURES or event.data.get("status") == "FAILED"
        arrow = "-x" if failed else "->>"
        targets = reacted.get(event.event_id, [])
        if not targets:
            note = f"{label} (compensation)" if event.event_type == "StockReleased" else label
            lines.append(f"    Note over {source}: {note}")
        for target in targets:
            lines.append(f"    {source}{arrow}{target}: {label}")
    return "\n".join(lines)


def mermaid_markdown(diagram: str) -> Any:
    """``IPython.display.Markdown`` with the diagram in a mermaid fence (JupyterLab 4 draws it)."""
    from IPython.display import Markdown

    return Markdown(f"```mermaid\n{diagram}\n```")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a saga: ``service`` wrote ``event_type`` in reaction to ``cause_type``.

    ``start_ms``/``end_ms`` are milliseconds since the saga's first event: from the moment the
    cause was recorded to the moment this event was recorded.
    """

    index: int
    service: str
    event_type: str
    label: str
    cause_type: str
    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


def saga_steps(events: Iterable[StoredEvent]) -> list[Step]:
    """The saga's steps in causal order, with when each started and ended."""
    ordered = causal_order(events)
    if not ordered:
        return []
    parent_of = causes(ordered)
    t0 = min(e.recorded_at for e in ordered)

    def ms(event: StoredEvent) -> float:
        return (event.recorded_at - t0).total_seconds() * 1000

    steps = []
    for index, event in enumerate(ordered, start=1):
        parent = parent_of.get(event.event_id)
        steps.append(
            Step(
                index=index,
                service=_source(event),
                event_type=event.event_type,
                label=describe(event),
                cause_type=parent.event_type if parent else "",
                start_ms=ms(parent) if parent else ms(event),
                end_ms=ms(event),
            )
        )
    return steps


def plot_saga_timeline(events: Iterable[StoredEvent], *, ax: Axes | None = None, title: str | None = None) -> Figure:
    """A Gantt-style chart of :func:`saga_steps`: one bar per step, coloured by service.

    Returns the matplotlib figure (closed, so a notebook shows it once when it is the cell's value).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    steps = saga_steps(events)
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(steps), 1) + 1.2))
        plt.close(fig)
    else:
        fig = ax.figure  # type: ignore[assignment]
    labels = [f"{s.index}. {s.service}: {s.label}" for s in steps]
    for row, step in enumerate(steps):
        colour = SERVICE_COLOURS.get(step.service, "#333333")
        ax.barh(row, max(step.duration_ms, 0.5), left=step.start_ms, color=colour, height=0.6)
    ax.set_yticks(range(len(steps)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the order was placed")
    if title:
        ax.set_title(title)
    seen = list(dict.fromkeys(s.service for s in steps))
    ax.legend(
        handles=[Patch(color=SERVICE_COLOURS.get(s, "#333333"), label=s) for s in seen],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig  # type: ignore[return-value]


def events_table(
    events: Iterable[StoredEvent], *, causal: bool = True, positions: bool = False, versions: bool = False
) -> Table:
    """One row per event: step, service, what happened, its stream, what caused it.

    ``causal=True`` (default) lists them in :func:`causal_order`, which is the same on every run.
    ``positions=True`` adds the store position and ``versions=True`` the version in its stream;
    both can vary between runs where services write concurrently (commit order; e.g. the
    notification stream of an order gets its emails in whatever order they were handled).
    """
    events = list(events)
    ordered = causal_order(events) if causal else sorted(events, key=lambda e: e.position)
    parent_of = causes(ordered)
    rows = []
    for index, event in enumerate(ordered, start=1):
        row: dict[str, Any] = {"step": index}
        if positions:
            row["position"] = event.position
        parent = parent_of.get(event.event_id)
        row.update(service=_source(event), event=describe(event), stream=f"{event.aggregate_type}:{event.aggregate_id}")
        if versions:
            row["version"] = event.version
        row["caused_by"] = parent.event_type if parent else "(command)"
        rows.append(row)
    return Table(rows)


def feed_html(events: Sequence[StoredEvent], *, limit: int = 12, head: int | None = None) -> str:
    """The newest ``limit`` events as an HTML table, newest first, coloured by service."""
    newest = sorted(events, key=lambda e: e.position, reverse=True)[:limit]
    rows = "".join(
        f'<tr><td>{e.position}</td><td style="color:{SERVICE_COLOURS.get(_source(e), "#333")}">'
        f"{html.escape(_source(e))}</td><td>{html.escape(describe(e))}</td>"
        f"<td>{html.escape(e.aggregate_type)}:{html.escape(e.aggregate_id)}</td>"
        f"<td>{html.escape(e.correlation_id if len(e.correlation_id) <= 12 else e.correlation_id[:8] + '…')}</td></tr>"
        for e in newest
    )
    total = f"{head} events in the store; " if head is not None else ""
    return (
        f"<div><b>Live events</b> <small>({total}newest first)</small>"
        '<table class="eventlab-feed"><thead><tr><th>position</th><th>service</th><th>event</th>'
        f"<th>stream</th><th>saga</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


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
            except Exception:  # noqa: BLE001 - the store or shop closed under us: stop quietly
                return


class EventFeed(BackgroundRefresh):
    """A live widget with the newest events of a store.

    :meth:`refresh` reads what was appended since the last call; :meth:`start` does so from a
    background thread every ``interval`` seconds until :meth:`stop`. In a notebook, show it as a
    cell's value. Needs ``ipywidgets`` (imported on creation).

    Example:
        >>> feed = EventFeed(shop.store)  # doctest: +SKIP
        >>> feed.start()  # doctest: +SKIP
        >>> feed  # doctest: +SKIP
    """

    def __init__(self, store: EventStore, *, limit: int = 12, interval: float = 0.5) -> None:
        import ipywidgets as widgets

        self.store = store
        self.limit = limit
        self.interval = interval
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
            self.widget.value = feed_html(self._events, limit=self.limit, head=self._last)
            return len(new)

    def __repr__(self) -> str:
        return f"<EventFeed limit={self.limit}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

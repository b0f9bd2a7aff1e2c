"""Read a saga from its events: what caused what, who reacted, how long each step took.

Pure functions of :class:`~eventlab.store.StoredEvent` rows and nothing else, so they work on
events from the running shop, from a copy of the store, or built by hand in a test;
:mod:`eventlab.viz` draws what they find.

- :func:`causal_order` puts a saga's events in *causal* order (a logical clock): an event comes
  after the event that caused it (``metadata['causation_id']``); events at the same causal depth
  are ordered by their causes, then by service. Services run concurrently, so the store's
  positions interleave differently from run to run; the causal order does not.
- :func:`saga_mermaid` turns one order's events into a mermaid ``sequenceDiagram``: participants
  are the services that wrote the events (``metadata['source']``), arrows are events travelling
  through Kafka from the service that wrote them to each service that reacted to them.
- :func:`saga_steps` says how long each step took (from the cause being recorded to the reaction
  being recorded: relay, Kafka, handler and append).

Example:
    >>> from eventlab.saga import saga_mermaid
    >>> view = shop.wait(order_id)  # doctest: +SKIP
    >>> print(saga_mermaid(view.events))  # doctest: +SKIP
    sequenceDiagram
        ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eventlab.application import money
from eventlab.events import (
    EmailRequested,
    EmailSent,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    ReservationRejected,
    StockAdded,
    StockReleased,
    StockReserved,
    StockSold,
)
from eventlab.services import SERVICE_NAMES
from eventlab.store.base import StoredEvent

__all__ = [
    "LANES",
    "Step",
    "causal_order",
    "causes",
    "describe",
    "reactions",
    "saga_mermaid",
    "saga_steps",
    "source",
]


def _names(*classes: type[Event]) -> frozenset[str]:
    return frozenset(cls.__name__ for cls in classes)


_TOTALS = _names(OrderCreated, OrderConfirmed, OrderCompleted)
_STOCK_MOVES = _names(StockAdded, StockReserved, StockReleased, StockSold)
_EMAILS = _names(EmailRequested, EmailSent)
_FAILURES = _names(ReservationRejected, OrderCancelled)


def _lanes() -> tuple[str, ...]:
    """The services in start-up order, but Inventory before Payment: it answers an order first."""
    lanes = [name for name in SERVICE_NAMES if name != "inventory"]
    lanes.insert(lanes.index("payment"), "inventory")
    return tuple(lanes)


#: Left to right in a diagram: who starts a saga, who answers first, who is told last.
LANES: tuple[str, ...] = _lanes()


def source(event: StoredEvent) -> str:
    """The service that wrote ``event`` (``eventlab`` when its metadata does not say)."""
    return event.metadata.get("source", "eventlab")


def _lane(service: str) -> int:
    return LANES.index(service) if service in LANES else len(LANES)


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
    by_position = sorted(events, key=lambda e: e.position)
    parent_of = causes(by_position)
    children: dict[str | None, list[StoredEvent]] = {}
    for event in by_position:
        parent = parent_of.get(event.event_id)
        children.setdefault(parent.event_id if parent else None, []).append(event)

    def sibling_key(event: StoredEvent) -> tuple[int, int]:
        return (_lane(source(event)), event.position)

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
        services = found.setdefault(parent.event_id, [])
        if source(by_id[child_id]) not in services:
            services.append(source(by_id[child_id]))
    for services in found.values():
        services.sort(key=_lane)
    return found


def describe(event: StoredEvent) -> str:
    """A short label for an event: its type and the detail that matters."""
    d = event.data
    kind = event.event_type
    if kind in _TOTALS:
        return f"{kind} {money(d['total_cents'])}"
    if kind == OrderCancelled.__name__:
        return f"{kind} ({d.get('reason', '')})"
    if kind in _STOCK_MOVES:
        return f"{kind} {d.get('product_id')} x{d.get('quantity')}"
    if kind == ReservationRejected.__name__:
        return f"{kind} {d.get('product_id')} {d.get('requested')} > {d.get('available')}"
    if kind == PaymentCompleted.__name__:
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"{kind} {d.get('status')}{reason}"
    if kind in _EMAILS:
        return f"{kind} {d.get('kind')}"
    return kind


def _label(text: str) -> str:
    # ``;`` ends a statement and ``#`` starts an entity code in mermaid sequence diagrams.
    return text.replace(";", ",").replace("#", "no. ").replace("\n", " ")


def saga_mermaid(events: Iterable[StoredEvent], *, title: str | None = None, autonumber: bool = True) -> str:
    """A mermaid ``sequenceDiagram`` of one saga, drawn from its events.

    - participants: the services that wrote the events, in :data:`LANES` order, with an
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
    services = {source(e) for e in ordered} | {s for ss in reacted.values() for s in ss}
    lines = ["sequenceDiagram"]
    if title:
        quoted = _label(title).replace("\\", "/").replace('"', "'")
        lines.insert(0, f'---\ntitle: "{quoted}"\n---')  # YAML front matter: quoted, colons allowed
    if autonumber:
        lines.append("    autonumber")
    root = ordered[0]
    customer = root.data.get("user_id") if root.event_type == OrderCreated.__name__ else None
    if customer:
        lines.append(f"    actor customer as Customer {_label(str(customer))}")
    for service in sorted(services, key=_lane):
        lines.append(f"    participant {service} as {service.capitalize()}")
    if customer:
        lines.append(f"    customer->>{source(root)}: PlaceOrder")
    for event in ordered:
        writer = source(event)
        label = _label(describe(event))
        failed = event.event_type in _FAILURES or event.data.get("status") == "FAILED"
        arrow = "-x" if failed else "->>"
        targets = reacted.get(event.event_id, [])
        if not targets:
            note = f"{label} (compensation)" if event.event_type == StockReleased.__name__ else label
            lines.append(f"    Note over {writer}: {note}")
        for target in targets:
            lines.append(f"    {writer}{arrow}{target}: {label}")
    return "\n".join(lines)


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
                service=source(event),
                event_type=event.event_type,
                label=describe(event),
                cause_type=parent.event_type if parent else "",
                start_ms=ms(parent) if parent else ms(event),
                end_ms=ms(event),
            )
        )
    return steps

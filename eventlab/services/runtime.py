"""What every service shares: load streams, decide, append — no Kafka here.

A service is a pure core (``streams`` says which streams a decision needs, ``handle`` turns an
event and those streams' states into new events) plus the shared loop in :mod:`.loop`.
Commands from HTTP or Python go through :func:`execute` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventlab.errors import ConcurrencyError
from eventlab.events import Event
from eventlab.ids import new_span_id, new_trace_id
from eventlab.store.base import EventStore, Metadata, NewEvent, StoredEvent

__all__ = ["StreamKey", "Stream", "Service", "Evolve", "load", "execute", "trace_metadata"]

#: (aggregate type, aggregate id)
StreamKey = tuple[str, str]
Evolve = Callable[[Any, Event], Any]
States = Mapping[StreamKey, Any]


@dataclass(frozen=True, slots=True)
class Stream:
    """A stream's current state (its events folded with ``evolve``) and version."""

    key: StreamKey
    state: Any
    version: int


def _no_streams(_event: Event) -> Sequence[StreamKey]:
    return ()


def _no_events(_event: Event, _states: States) -> Sequence[Event]:
    return ()


@dataclass(frozen=True)
class Service:
    """One microservice: what it consumes and how it decides.

    - ``subscriptions``: the event types it reacts to (their topics are subscribed);
    - ``evolvers``: the fold for each aggregate type it reads;
    - ``streams(event)``: the streams a decision on ``event`` reads and may append to;
    - ``handle(event, states)``: the new events (pure, except where a service calls a gateway).
    """

    name: str
    subscriptions: tuple[type[Event], ...] = ()
    evolvers: Mapping[str, Evolve] = field(default_factory=dict)
    streams: Callable[[Event], Sequence[StreamKey]] = _no_streams
    handle: Callable[[Event, States], Sequence[Event]] = _no_events

    @property
    def topics(self) -> list[str]:
        return sorted({cls.topic for cls in self.subscriptions})

    def __repr__(self) -> str:
        consumes = ", ".join(cls.__name__ for cls in self.subscriptions) or "commands only"
        return f"<Service {self.name}: {consumes}>"


def load(store: EventStore, key: StreamKey, evolve: Evolve) -> Stream:
    """Fold one stream's events into its state."""
    state = None
    events = store.read_stream(*key)
    for stored in events:
        state = evolve(state, stored.event)
    return Stream(key, state, events[-1].version if events else 0)


def trace_metadata(source: str, correlation_id: str, causation_id: str = "", traceparent: str = "") -> Metadata:
    """Metadata for events caused by one input: same trace, a new span."""
    parts = traceparent.split("-")
    trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else new_trace_id()
    metadata = {
        "source": source,
        "correlation_id": correlation_id,
        "traceparent": f"00-{trace_id}-{new_span_id()}-01",
    }
    if causation_id:
        metadata["causation_id"] = causation_id
    return metadata


def execute(
    store: EventStore,
    keys: Sequence[StreamKey],
    evolvers: Mapping[str, Evolve],
    decide: Callable[[States], Sequence[Event]],
    metadata: Metadata,
    *,
    processed: tuple[str, str] | None = None,
    attempts: int = 20,
) -> list[StoredEvent]:
    """Load ``keys``, decide, append with optimistic concurrency; reload and retry on a conflict.

    Events may only go to streams in ``keys`` (so every write is version-checked).
    Returns the stored events (``[]`` when nothing was decided or ``processed`` was already recorded).
    """
    for attempt in range(attempts):
        streams = {key: load(store, key, evolvers[key[0]]) for key in keys}
        events = decide({key: stream.state for key, stream in streams.items()})
        versions = {key: stream.version for key, stream in streams.items()}
        batch = []
        for event in events:
            key = (event.aggregate_type, event.aggregate_id)
            if key not in versions:
                raise ValueError(f"{event.event_type} goes to stream {key}, which the decision did not read")
            versions[key] += 1
            batch.append(NewEvent(event, versions[key], metadata))
        if not batch and processed is None:
            return []
        try:
            return store.append(batch, processed=processed)
        except ConcurrencyError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")

"""Prometheus metrics for each service's ``GET /metrics``, in the Prometheus text format.

Every :class:`~eventlab.http.ServiceHttp` has its own ``CollectorRegistry`` (six services share one
process in threads mode, and tests run several shops in one process), holding a
:class:`ServiceCollector` that reads everything at scrape time, and prometheus_client's
``ProcessCollector`` (``process_start_time_seconds``, CPU, memory of the process serving it).

| metric | type | from |
|---|---|---|
| ``eventlab_handled_total{service}`` | counter | processed markers in the event store: survives restarts |
| ``eventlab_dead_lettered_total{service}`` | counter | the health dict (dead-letter records in the store) |
| ``eventlab_duplicates_total``, ``eventlab_retries_total`` | counter | this process, since it started |
| ``eventlab_lag{service}`` | gauge | stored events of its types the service has not handled |
| ``eventlab_healthy{service}`` | gauge | 1 when ``/health`` says ok, 0 when degraded |
| ``eventlab_problems{service}`` | gauge | how many problems ``/health`` lists |
| ``eventlab_<key>{service}`` | gauge | any other number in the health dict |
| ``eventlab_handler_seconds{service}`` | histogram | decide + append of each handled message |
| ``eventlab_relay_publish_seconds{service="relay"}`` | histogram | the outbox relay: producing a batch until the broker acknowledged it (threads mode: on the order service) |
| ``eventlab_saga_seconds{outcome}`` | histogram | order service only: ``OrderCreated`` to ``OrderCompleted`` / ``OrderCancelled`` |

The saga histogram is read from the event store (the time between an order stream's first event
and its terminal event, as recorded), a few rows per scrape: it costs the saga nothing, and it
survives restarts like the counters above.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from eventlab.arguments import is_number
from eventlab.store.base import EventStore

__all__ = [
    "COUNTERS",
    "GAUGES",
    "HANDLER_BUCKETS",
    "RELAY_BUCKETS",
    "SAGA_BUCKETS",
    "LatencyHistogram",
    "SagaDurations",
    "ServiceCollector",
    "handler_histogram",
    "problems_of",
    "registry_for",
    "relay_histogram",
    "render",
]

#: Numbers in a health dict that only ever grow: exposed as ``eventlab_<key>_total`` counters.
COUNTERS: dict[str, str] = {
    "handled": "Events this service has handled (durable: processed markers in the event store).",
    "duplicates": "Redelivered events skipped because they were already handled (this process).",
    "dead_lettered": "Messages sent to a dead-letter topic (durable: dead-letter records).",
    "retries": "Handler attempts retried after a transient error (this process).",
}
#: Gauges with a known meaning; any other number in a health dict is exposed as a gauge too.
GAUGES: dict[str, str] = {
    "lag": "Stored events of this service's types that it has not handled yet.",
    "events": "Events in the event store (its head position).",
}
#: A handler takes about a millisecond; a slow store or gateway, up to seconds.
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A saga takes ~0.1 s when all is well and tens of seconds after a kill or a deadline.
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Event types that end an order's saga.
TERMINAL_EVENTS = ("OrderCompleted", "OrderCancelled")

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class LatencyHistogram:
    """A histogram in no registry: its owner (a service loop) observes, a server's collector exposes it.

    Example:
        >>> timings = handler_histogram("order")
        >>> timings.observe(0.002)
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], **labels: str) -> None:
        self._metric = Histogram(name, documentation, list(labels), buckets=buckets, registry=None)
        self._child = self._metric.labels(**labels)

    def observe(self, seconds: float) -> None:
        self._child.observe(seconds)

    def collect(self) -> Iterable[Metric]:
        return self._metric.collect()


def handler_histogram(service: str) -> LatencyHistogram:
    """The handler-latency histogram a service loop observes (one per loop)."""
    return LatencyHistogram(
        "eventlab_handler_seconds",
        "Time to decide on and append the outcome of one message (excluding a batch's commit).",
        HANDLER_BUCKETS,
        service=service,
    )


#: The relay's batches: a few ms on a local broker, up to its 30 s confirm limit when it is down.
RELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def relay_histogram() -> LatencyHistogram:
    """The publish-latency histogram the outbox relay observes (one per relay)."""
    return LatencyHistogram(
        "eventlab_relay_publish_seconds",
        "Time from producing a batch of stored events to the broker's last acknowledgement.",
        RELAY_BUCKETS,
        service="relay",
    )


class SagaDurations:
    """Order-to-terminal durations, read from the event store incrementally at each scrape.

    Each terminal event (``OrderCompleted``, ``OrderCancelled``) is observed once, with the time
    since its order stream's first event (``OrderCreated``); the position read so far is kept.
    """

    def __init__(self, store: EventStore, batch: int = 5_000) -> None:
        self.store = store
        self.batch = batch
        self.position = 0
        self._histogram = Histogram(
            "eventlab_saga_seconds",
            "Time from OrderCreated to the order's terminal event, by outcome.",
            ["outcome"],
            buckets=SAGA_BUCKETS,
            registry=None,
        )
        self._outcomes = {
            event_type: self._histogram.labels(outcome=event_type.removeprefix("Order").lower())
            for event_type in TERMINAL_EVENTS
        }
        self._lock = threading.Lock()

    def catch_up(self) -> int:
        """Observe the terminal events stored since the last call; return how many."""
        seen = 0
        with self._lock:
            while True:
                head = self.store.head()  # read first: what commits later is read next time
                rows = self.store.stream_ages(TERMINAL_EVENTS, after=self.position, limit=self.batch)
                for position, event_type, seconds in rows:
                    self._outcomes[event_type].observe(max(seconds, 0.0))
                    self.position = position
                seen += len(rows)
                if len(rows) < self.batch:
                    # every terminal event up to the head was read: the next scan starts there, not at the
                    # last terminal event (while no order ends, each scrape would read every event since)
                    self.position = max(self.position, head)
                    return seen

    def collect(self) -> Iterable[Metric]:
        self.catch_up()
        return self._histogram.collect()


def problems_of(health: Mapping[str, object]) -> list[str]:
    """The ``problems`` a health report lists (none if it lists none).

    Example:
        >>> problems_of({"lag": 3, "problems": ["not consuming"]}), problems_of({"events": 12})
        (['not consuming'], [])
    """
    problems = health.get("problems")
    return [str(problem) for problem in problems] if isinstance(problems, list) else []


class ServiceCollector:
    """Turns one service's health dict (and its histograms) into metric families at scrape time."""

    def __init__(
        self,
        service: str,
        health: Callable[[], Mapping[str, object]],
        histograms: Sequence[LatencyHistogram | SagaDurations] = (),
    ) -> None:
        self.service = service
        self.health = health
        self.histograms = tuple(histograms)

    def collect(self) -> Iterator[Metric]:
        labels = ["service"]
        health = self.health()
        problems = problems_of(health)
        healthy = GaugeMetricFamily("eventlab_healthy", "1 when /health reports ok, 0 when degraded.", labels=labels)
        healthy.add_metric([self.service], 0 if problems else 1)
        yield healthy
        count = GaugeMetricFamily("eventlab_problems", "How many problems /health reports.", labels=labels)
        count.add_metric([self.service], len(problems))
        yield count
        for key, value in health.items():
            if not is_number(value) or not _NAME.match(key):
                continue
            if key in COUNTERS:
                family: CounterMetricFamily | GaugeMetricFamily = CounterMetricFamily(
                    f"eventlab_{key}", COUNTERS[key], labels=labels
                )
            else:
                documentation = GAUGES.get(key, f"{key} as GET /health reports it.")
                family = GaugeMetricFamily(f"eventlab_{key}", documentation, labels=labels)
            family.add_metric([self.service], value)
            yield family
        for histogram in self.histograms:
            yield from histogram.collect()


def registry_for(collector: ServiceCollector) -> CollectorRegistry:
    """A registry of its own for one server: its service's metrics and its process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's metrics in the format the scraper asked for (Prometheus text by default, also
    for an ``Accept`` prometheus_client cannot read, such as an OpenMetrics ``version=1.x.0``)."""
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):  # it compares the version's parts as numbers without checking them
        encoder, content_type = choose_encoder("")
    return encoder(registry), content_type

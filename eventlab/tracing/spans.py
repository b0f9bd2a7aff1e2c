"""The OpenTelemetry side of :mod:`eventlab.tracing`, imported only once tracing is switched on.

Spans are made here and nowhere else: the loops, the relay and the HTTP servers call the
:class:`Tracing` they were handed (None when off), and the gateway, the mailer and the command
side are wrapped (:class:`TracedGateway`, :class:`TracedMailer`, :class:`TracedCommands`).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Message as KafkaMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from eventlab.application import Commands
from eventlab.events import EmailRequested
from eventlab.ids import TRACEPARENT
from eventlab.kafka.cloudevents import Message
from eventlab.services.payment import ChargeResult, Gateway, RefundResult
from eventlab.settings import Settings
from eventlab.store import ShopStores
from eventlab.store.base import EventStore
from eventlab.tracing import SPANS_FILE, TracingError

__all__ = [
    "JsonLinesExporter",
    "PublishSpans",
    "SpanKind",
    "TracedCommands",
    "TracedGateway",
    "TracedMailer",
    "Tracing",
    "context_of",
    "exporter",
    "failed",
    "kafka_attributes",
    "traceparent_of",
]

log = logging.getLogger(__name__)

#: How long a collector may take to answer one batch (the SDK's default of 10 s held up every stop).
EXPORT_TIMEOUT_S = 2
#: How long stopping tracing waits for the last spans to be exported.
STOP_TIMEOUT_S = 5.0

_T = TypeVar("_T")


def context_of(traceparent: str) -> Context | None:
    """The OpenTelemetry context a W3C ``traceparent`` names (None when empty or not valid W3C).

    Example:
        >>> context_of("") is None
        True
    """
    valid = TRACEPARENT.fullmatch(traceparent)
    if valid is None:
        return None
    trace_id, span_id, flags = (int(valid[name], 16) for name in ("trace_id", "span_id", "flags"))
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))
    return trace.set_span_in_context(NonRecordingSpan(remote))


def traceparent_of(span: trace.Span) -> str:
    """The W3C ``traceparent`` of ``span``, for event metadata and message headers."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def kafka_attributes(
    topic: str,
    key: str,
    *,
    operation: str,
    message_id: str = "",
    group: str = "",
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, str | int]:
    """Span attributes of the OpenTelemetry messaging conventions for one Kafka message.

    Example:
        >>> kafka_attributes("order.lifecycle.created", "O-1", operation="publish")["messaging.system"]
        'kafka'
    """
    found: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": key,
    }
    if message_id:
        found["messaging.message.id"] = message_id
    if group:
        found["messaging.consumer.group.name"] = group
    if partition is not None:
        found["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        found["messaging.kafka.offset"] = offset
    return found


class JsonLinesExporter(SpanExporter):
    """The local sink: appends each finished span as one JSON line to ``path``.

    Each batch is one ``write`` in append mode, so the processes of a shop can share the file (a last
    line cut by a writer killed mid-write is ended first).
    A line holds ``trace_id``, ``span_id``, ``parent_id``, ``name``, ``kind``, ``service``,
    ``start_ns``, ``end_ns``, ``status`` and ``attributes``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        #: Whether the last batch could not be written (warned about once, until one can).
        self.failing = False

    def __repr__(self) -> str:
        return f"JsonLinesExporter({str(self.path)!r})"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(map(_line, spans)).encode()
        try:
            with self.path.open("a+b") as sink:
                end = sink.seek(0, os.SEEK_END)
                if end:
                    sink.seek(end - 1)
                    if sink.read(1) != b"\n":  # a line cut by a killed writer: ended first
                        lines = b"\n" + lines
                sink.write(lines)
        except OSError as exc:
            if not self.failing:
                log.warning("cannot write spans to %s (dropped until it can be written): %s", self.path, exc)
            self.failing = True
            return SpanExportResult.FAILURE
        if self.failing:
            log.warning("spans are written to %s again", self.path)
        self.failing = False
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""


#: Each span's line, formatted directly (a dict per span and ``json.dumps`` of it cost twice as much).
_LINE = (
    '{"trace_id":"%032x","span_id":"%016x","parent_id":%s,"name":%s,"kind":"%s","service":%s,'
    '"start_ns":%d,"end_ns":%d,"status":"%s","attributes":%s}\n'
)


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _line(span: ReadableSpan) -> str:
    """``span`` as one JSON line of the local sink (see :class:`JsonLinesExporter`)."""
    context, parent, attributes = span.context, span.parent, span.attributes
    assert context is not None  # a finished SDK span always has its context
    return _LINE % (
        context.trace_id,
        context.span_id,
        f'"{parent.span_id:016x}"' if parent is not None else "null",
        _encode(span.name),
        span.kind.name,
        _encode(span.resource.attributes.get("service.name", "")),
        span.start_time or 0,
        span.end_time or 0,
        span.status.status_code.name,
        _encode(dict(attributes)) if attributes else "{}",
    )


class _Shared(SpanProcessor):
    """Forwards one provider's spans to the pipelines every provider of a :class:`Tracing` shares
    (none while it is shut: such spans are dropped)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts: only finished spans are exported."""

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self.tracing.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        """The pipelines belong to the :class:`Tracing`, which shuts them down once."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.tracing.flush(timeout_millis)


#: The part of a trace id the sampled share is decided by (as the SDK's ``TraceIdRatioBased``).
_TRACE_ID_LOW = TraceIdRatioBased.TRACE_ID_LIMIT


class _FollowParent(Sampler):
    """The SDK's ``ParentBased(root)`` without its per-span cost, one decision per trace: a span under
    a valid parent is recorded exactly when the parent was sampled and ``root`` keeps its trace id
    (its trace state kept), as :meth:`Tracing.records` decides; a new trace asks ``root``."""

    _DROPPED = SamplingResult(Decision.DROP)

    def __init__(self, root: TraceIdRatioBased) -> None:
        self.root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid:
            return self.root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if not parent.trace_flags.sampled or trace_id & _TRACE_ID_LOW >= self.root.bound:
            return self._DROPPED
        # the span takes its attributes from the result
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)

    def get_description(self) -> str:
        return f"FollowParent{{root:{self.root.get_description()}}}"


class Tracing:
    """Tracers for the services of one shop, all exporting through the same pipelines.

    ``exporters`` makes the exporters each time the shop opens its tracing (:meth:`open`, at its
    start); :meth:`shutdown` (at its stop) exports what is left and stops them.

    Example:
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        >>> memory = InMemorySpanExporter()
        >>> tracing = Tracing(lambda: [memory]).open()
        >>> with tracing.tracer("order").start_as_current_span("place order"):
        ...     pass
        >>> tracing.flush(), [span.name for span in memory.get_finished_spans()]
        (True, ['place order'])
        >>> tracing.shutdown()
    """

    def __init__(
        self, exporters: Callable[[], Sequence[SpanExporter]], *, sample: float = 1.0, schedule_delay_ms: int = 200
    ) -> None:
        self._make_exporters = exporters
        self.schedule_delay_ms = schedule_delay_ms
        #: The exporters of the last :meth:`open`.
        self.exporters: tuple[SpanExporter, ...] = ()
        #: The batch pipelines while open (empty when shut: spans that end then are dropped).
        self.processors: tuple[BatchSpanProcessor, ...] = ()
        #: The share of traces recorded, decided by trace id wherever a span starts (a caller's
        #: sampled ``traceparent`` too: its trace is recorded whole or not at all), and a parent's
        #: "not sampled" followed. Spans under a stored or received ``traceparent`` are only made once
        #: :meth:`records` said yes (the same rule), so the SDK's sampler never runs for a step of an
        #: unrecorded order.
        ratio = TraceIdRatioBased(sample)
        self.sampler = _FollowParent(ratio)
        self._bound = ratio.bound
        self._tracers: dict[str, Tracer] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "open" if self.processors else "shut"
        return (
            f"<Tracing {state} {', '.join(type(e).__name__ for e in self.exporters)} services={sorted(self._tracers)}>"
        )

    def open(self) -> Tracing:
        """Make the exporters and start their batch pipelines (idempotent); return self."""
        with self._lock:
            if not self.processors:
                self.exporters = tuple(self._make_exporters())
                self.processors = tuple(
                    BatchSpanProcessor(exporter, schedule_delay_millis=self.schedule_delay_ms, max_queue_size=65536)
                    for exporter in self.exporters
                )
                atexit.register(self.shutdown)
        return self

    def tracer(self, service: str) -> Tracer:
        """The tracer of ``service`` (its spans carry ``service.name`` = ``service``)."""
        found = self._tracers.get(service)
        if found is not None:
            return found
        with self._lock:
            found = self._tracers.get(service)
            if found is None:
                resource = Resource.create({"service.name": service, "service.namespace": "eventlab"})
                provider = TracerProvider(sampler=self.sampler, resource=resource, shutdown_on_exit=False)
                provider.add_span_processor(_Shared(self))
                found = self._tracers[service] = provider.get_tracer("eventlab")
            return found

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now, waiting at most ``timeout_ms`` for the collectors; True
        when all went."""
        went: list[bool] = []  # what each flush that ended in time answered
        flushes = [functools.partial(_answer, processor.force_flush, went) for processor in self.processors]
        return all(_all_within(flushes, timeout_ms / 1000)) and all(went)

    def flush_local(self) -> bool:
        """Export every finished span to the local sink now (before reading it), not waiting for the
        collectors; True when all went."""
        return all(
            processor.force_flush()
            for processor in self.processors
            if isinstance(processor.span_exporter, JsonLinesExporter)
        )

    def shutdown(self) -> None:
        """Export what is left and stop the pipelines and exporters (also at interpreter exit), all at
        once and for at most :data:`STOP_TIMEOUT_S` (a collector that never answers loses the rest);
        idempotent, and :meth:`open` starts anew."""
        with self._lock:
            processors, self.processors = self.processors, ()
        stopped = _all_within([processor.shutdown for processor in processors], STOP_TIMEOUT_S)
        for done, processor in zip(stopped, processors, strict=True):
            if not done:
                log.warning(
                    "tracing: %r did not finish exporting within %g s; the rest of its spans are dropped",
                    processor.span_exporter,
                    STOP_TIMEOUT_S,
                )
        if processors:
            atexit.unregister(self.shutdown)

    def records(self, traceparent: str) -> bool:
        """Whether the trace ``traceparent`` names is recorded (sampled, and in the sampled share):
        checked before any span is made, so an unrecorded order costs a string split per step."""
        parts = traceparent.split("-")
        if len(parts) != 4:
            return True  # no usable parent: a new trace, which the sampler decides
        if parts[3] == "00":
            return False
        try:
            return int(parts[1], 16) & _TRACE_ID_LOW < self._bound
        except ValueError:
            return True

    def consuming(self, group: str, message: Message, raw: KafkaMessage | None) -> trace.Span | None:
        """The started ``CONSUMER`` span of consumer group ``group`` handling ``message`` (``raw``: as
        consumed), a child of the span that published it (the message's ``traceparent``); None, with
        nothing built, when that trace is not recorded. Run the handler :meth:`within` it, then
        :meth:`finish` it once its outcome is committed."""
        if not self.records(message.traceparent):
            return None
        topic = raw.topic() if raw is not None else None
        topic = topic or message.event.topic
        attributes = kafka_attributes(
            topic,
            _text(raw.key()) if raw is not None else "",
            operation="process",
            message_id=message.event_id,
            group=group,
            partition=raw.partition() if raw is not None else None,
            offset=raw.offset() if raw is not None else None,
        )
        parent = context_of(message.traceparent)
        return self.tracer(group).start_span(f"process {topic}", parent, SpanKind.CONSUMER, attributes)

    @staticmethod
    def within(span: trace.Span, call: Callable[[], _T]) -> _T:
        """``call()`` with ``span`` current (the parent of the spans it makes: a gateway call, a mail)."""
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return call()
        finally:
            otel_context.detach(token)

    @staticmethod
    def finish(spans: Iterable[trace.Span], error: BaseException | None = None) -> None:
        """End ``spans``, failed with ``error`` if one ended their work."""
        for span in spans:
            if error is not None:
                span.record_exception(error)
                failed(span, f"{type(error).__name__}: {error}")
            span.end()

    def publishing(self, topics: Collection[str] | None = None) -> PublishSpans:
        """A batch of the relay's ``PRODUCER`` spans, for messages to ``topics`` (all when None; see
        :class:`PublishSpans`)."""
        return PublishSpans(self.tracer("relay"), self.records, topics)

    @contextmanager
    def serving(
        self, service: str, method: str, route: str, path: str, traceparent: str
    ) -> Iterator[Callable[[int], None]]:
        """The ``SERVER`` span of one HTTP request to ``service``, named after its ``route`` (``GET
        /orders/{order_id}``; a child of the caller's ``traceparent`` if it sent one); call what it
        yields with the response status."""
        attributes = {"http.request.method": method, "http.route": route, "url.path": path}
        with self.tracer(service).start_as_current_span(
            f"{method} {route}", context_of(traceparent), SpanKind.SERVER, attributes
        ) as span:

            def answered(status: int) -> None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    failed(span, f"HTTP {status}")

            yield answered

    @staticmethod
    def traceparent(span: trace.Span) -> str:
        """The W3C ``traceparent`` of ``span`` (see :func:`traceparent_of`)."""
        return traceparent_of(span)

    def commands(self, store: EventStore | ShopStores, id_factory: Callable[[], str]) -> TracedCommands:
        """The command side, with a span around placing an order."""
        return TracedCommands(store, id_factory, self)

    def gateway(self, gateway: Gateway) -> TracedGateway:
        """``gateway`` with a span around each call."""
        return TracedGateway(gateway, self)

    def mailer(self, mailer: Callable[[EmailRequested], object]) -> TracedMailer:
        """``mailer`` with a span around each send."""
        return TracedMailer(mailer, self)


class PublishSpans:
    """The relay's ``PRODUCER`` spans for one batch: each a child of the span that appended its event.

    :meth:`start` puts the producer span's own ``traceparent`` in the message's headers, so the
    consumer's span becomes its child; :meth:`end` ends them all once the broker acknowledged.
    Only messages to ``topics`` (when given: those a service of the shop consumes) get a span; the
    others (e.g. ``inventory.stock.sold``, read by nobody) keep the appending span's ``traceparent``,
    so a consumer outside the shop still joins the order's trace.
    """

    def __init__(self, tracer: Tracer, records: Callable[[str], bool], topics: Collection[str] | None = None) -> None:
        self.tracer = tracer
        self.records = records
        self.topics = topics
        self.spans: list[trace.Span] = []

    def start(
        self, topic: str, key: str, event_id: str, headers: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """Start the span publishing one message; return its headers with the span's ``traceparent``."""
        if self.topics is not None and topic not in self.topics:
            return list(headers)
        stored = next((raw.decode() for name, raw in headers if name == "traceparent"), "")
        if not self.records(stored):
            return list(headers)
        attributes = kafka_attributes(topic, key, operation="publish", message_id=event_id)
        span = self.tracer.start_span(f"publish {topic}", context_of(stored), SpanKind.PRODUCER, attributes)
        self.spans.append(span)
        own = ("traceparent", traceparent_of(span).encode())
        return [header for header in headers if header[0] != "traceparent"] + [own]

    def end(self, error: str = "") -> None:
        """End every span of the batch (failed with ``error`` when the broker did not acknowledge)."""
        for span in self.spans:
            if error:
                failed(span, error)
            span.end()
        self.spans.clear()


class TracedCommands(Commands):
    """The command side with a span around placing an order (its events carry the span's
    ``traceparent``, so the saga's trace starts there, or at the HTTP request around it)."""

    def __init__(self, store: EventStore | ShopStores, id_factory: Callable[[], str], tracing: Tracing) -> None:
        super().__init__(store, id_factory)
        self.tracer = tracing.tracer("order")

    def place_order(self, data: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        with self.tracer.start_as_current_span("place order") as span:
            order_id = super().place_order(data, **fields)
            span.set_attribute("eventlab.order_id", order_id)
            return order_id

    def _meta(self, source: str, correlation_id: str = "") -> dict[str, str]:
        metadata = super()._meta(source, correlation_id)
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            metadata["traceparent"] = traceparent_of(span)
        return metadata


def _all_within(calls: Sequence[Callable[[], object]], seconds: float) -> list[bool]:
    """Run ``calls`` at once, each in a daemon thread; which of them returned within ``seconds``
    (the others go on in the background: a collector that never answers holds up nobody)."""
    threads = [threading.Thread(target=call, name="eventlab-tracing-export", daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [not thread.is_alive() for thread in threads]


def _answer(call: Callable[[], bool], answers: list[bool]) -> None:
    answers.append(call())


def _text(raw: str | bytes | None) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw or ""


# --- the outside world's calls, wrapped ---------------------------------------------------------


class TracedGateway:
    """The payment gateway with a ``CLIENT`` span around each call (only made when tracing is on)."""

    def __init__(self, gateway: Gateway, tracing: Tracing) -> None:
        self.gateway = gateway
        self.tracer = tracing.tracer("payment")

    def __repr__(self) -> str:
        return f"<TracedGateway {self.gateway!r}>"

    def charge(self, order_id: str, amount_cents: int) -> ChargeResult:
        if not trace.get_current_span().is_recording():  # not a traced order: no span, no new trace
            return self.gateway.charge(order_id, amount_cents)
        attributes: dict[str, str | int] = {"eventlab.order_id": order_id, "eventlab.amount_cents": amount_cents}
        span = self.tracer.start_span("gateway charge", kind=SpanKind.CLIENT, attributes=attributes)
        result = _call(span, functools.partial(self.gateway.charge, order_id, amount_cents))
        span.set_attribute("eventlab.approved", result.approved)
        span.end()
        return result

    def refund(self, order_id: str) -> RefundResult:
        if not trace.get_current_span().is_recording():
            return self.gateway.refund(order_id)
        span = self.tracer.start_span(
            "gateway refund", kind=SpanKind.CLIENT, attributes={"eventlab.order_id": order_id}
        )
        result = _call(span, functools.partial(self.gateway.refund, order_id))
        span.set_attribute("eventlab.refunded_cents", result.refunded_cents)
        span.end()
        return result


class TracedMailer:
    """The mailer with a ``CLIENT`` span around each send (only made when tracing is on)."""

    def __init__(self, mailer: Callable[[EmailRequested], object], tracing: Tracing) -> None:
        self.mailer = mailer
        self.tracer = tracing.tracer("notification")

    def __repr__(self) -> str:
        return f"<TracedMailer {self.mailer!r}>"

    def __call__(self, email: EmailRequested) -> object:
        if not trace.get_current_span().is_recording():
            return self.mailer(email)
        attributes = {"eventlab.order_id": email.order_id, "eventlab.email_kind": email.kind}
        span = self.tracer.start_span("mail send", kind=SpanKind.CLIENT, attributes=attributes)
        delivered = _call(span, functools.partial(self.mailer, email))
        span.set_attribute("eventlab.delivered", bool(delivered))
        span.end()
        return delivered


def _call(span: trace.Span, call: Callable[[], _T]) -> _T:
    """``call()``; if it raises, ``span`` ends failed with the exception before it goes on."""
    try:
        return call()
    except BaseException as exc:
        Tracing.finish([span], exc)
        raise


def failed(span: trace.Span, reason: str) -> None:
    """Mark ``span`` as failed with ``reason`` (an error that was handled, not raised)."""
    span.set_status(Status(StatusCode.ERROR, reason))


def exporter(sink: str, settings: Settings) -> SpanExporter:
    """The exporter of one sink the settings name (``file``, ``otlp`` or ``zipkin``)."""
    if sink == "file":
        return JsonLinesExporter(settings.data_dir / SPANS_FILE)
    try:
        if sink == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint
            if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
                endpoint = endpoint.rstrip("/") + "/v1/traces"
            return OTLPSpanExporter(endpoint=endpoint or None, timeout=EXPORT_TIMEOUT_S)
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter(endpoint=settings.zipkin_endpoint or None, timeout=EXPORT_TIMEOUT_S)
    except ImportError as exc:
        raise TracingError(
            f"the {sink} exporter is not installed: pip install 'eventlab[tracing]' ({exc.name} missing)"
        ) from exc

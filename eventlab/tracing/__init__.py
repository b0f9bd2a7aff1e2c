"""OpenTelemetry spans for every step of a saga, carried across Kafka in the W3C ``traceparent``.

One order is one trace. Its root is the span that places the order: ``place order`` in the
process (``Shop.place_order``, ``eventlab demo``), or the ``SERVER`` span ``POST /orders`` around it
when the order comes over HTTP (a child of the caller's ``traceparent`` if it sent one); each event
the order service appends carries that span's ``traceparent`` in its metadata. The relay publishes
later, from the store: for a message some service consumes, its ``PRODUCER`` span
``publish <topic>`` is a child of the stored ``traceparent`` (the span that appended the event) and
replaces the message's ``traceparent`` header with its own (a message nobody in the shop reads
keeps the stored one: no span, and an outside consumer still joins the trace); the
consuming service's ``CONSUMER`` span ``process <topic>`` (decide + append) is a child of that
header, and the events it appends carry the consumer span's ``traceparent``. The gateway call and
the mail send are ``CLIENT`` spans inside the handler that makes them. Span attributes follow the
OpenTelemetry messaging conventions for Kafka (``messaging.system=kafka``,
``messaging.destination.name``, ``messaging.kafka.message.key``, partition, offset, consumer group).

Sampling (``EVENTLAB_TRACE_SAMPLE``) keeps or drops whole orders, decided by trace id where the
trace starts; every later step checks the ``traceparent`` it got before it builds anything, so an
unrecorded order costs a string split per step.

Tracing is off by default and then costs nothing: :func:`open_tracing` returns None, every hook
(loop, relay, HTTP, gateway, mailer) checks for None, and OpenTelemetry is not even imported (the
spans live in :mod:`eventlab.tracing.spans`, imported when a sink is named). It is on when
``EVENTLAB_TRACING`` names a sink (``file``, ``otlp``, ``zipkin``), when ``EVENTLAB_OTLP_ENDPOINT``
or ``EVENTLAB_ZIPKIN_ENDPOINT`` is set, or when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is. The ``file`` sink appends one JSON object per span to
``<data_dir>/spans.jsonl`` (every process of the shop, in threads or process mode), which
:mod:`eventlab.tracing.waterfall` reads for ``eventlab trace ORDER_ID`` and the notebooks.

Each service gets its own ``TracerProvider`` (resource ``service.name`` = the service), so Jaeger
and Zipkin show six services, while all of them share one batch pipeline per exporter. A
``Tracing`` belongs to the composition root that made it (:class:`~eventlab.shop.Shop`, or
:func:`~eventlab.supervisor.run_one` in process mode), which hands it to every part that makes
spans and shuts it down when it stops; nothing is installed globally, so two shops in one process
trace to their own sinks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from eventlab.errors import EventlabError
from eventlab.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from eventlab.tracing.spans import Tracing

__all__ = ["OTEL_ENDPOINTS", "SPANS_FILE", "TracingError", "open_tracing", "sinks"]

log = logging.getLogger(__name__)

#: The local sink's file in the data directory: one JSON object per finished span.
SPANS_FILE = "spans.jsonl"
#: The standard OpenTelemetry variables that switch the OTLP exporter on.
OTEL_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class TracingError(EventlabError):
    """Tracing was asked for in a way that cannot work (e.g. an exporter that is not installed)."""


def sinks(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """The sinks the settings (and the standard ``OTEL_*`` variables in ``env``) switch on.

    Example:
        >>> sinks(Settings(tracing="file", zipkin_endpoint="http://localhost:9411/api/v2/spans"), env={})
        ['file', 'zipkin']
    """
    env = os.environ if env is None else env
    named = [part.strip() for part in settings.tracing.split(",") if part.strip() not in ("", "off")]
    if settings.otlp_endpoint or any(env.get(name) for name in OTEL_ENDPOINTS):
        named.append("otlp")
    if settings.zipkin_endpoint:
        named.append("zipkin")
    return list(dict.fromkeys(named))


def open_tracing(settings: Settings, *exporters: SpanExporter) -> Tracing | None:
    """A new :class:`~eventlab.tracing.spans.Tracing` for one shop, exporting to the sinks the settings
    name and to ``exporters`` (e.g. an ``InMemorySpanExporter`` as a test's collector); None when
    neither names any, and then OpenTelemetry is not imported.

    Nothing runs until the shop opens it (:meth:`~eventlab.tracing.spans.Tracing.open`) and its
    stop shuts it down, so two shops in one process trace each to their own sinks. An exporter
    handed in is shut down with the shop it served.
    """
    chosen = sinks(settings)
    if not chosen and not exporters:
        return None
    from eventlab.tracing.spans import Tracing, exporter

    def made() -> list[SpanExporter]:
        return [*(exporter(sink, settings) for sink in chosen), *exporters]

    log.info("tracing %s to %s", settings.data_dir, ", ".join([*chosen, *(type(e).__name__ for e in exporters)]))
    return Tracing(made, sample=settings.trace_sample)

"""OpenTelemetry spans for every step of a saga, carried across Kafka in the W3C ``traceparent``.

One order is one trace. Its root is the span that places the order (``POST /orders`` as a
``SERVER`` span when it comes over HTTP, inside it ``place order``); each event the order service
appends carries that span's ``traceparent`` in its metadata. The relay publishes later, from the
store: its ``PRODUCER`` span ``publish <topic>`` is a child of the stored ``traceparent`` (the span
that appended the event) and replaces the message's ``traceparent`` header with its own; the
consuming service's ``CONSUMER`` span ``process <topic>`` (decide + append) is a child of that
header, and the events it appends carry the consumer span's ``traceparent``. The gateway call and
the mail send are ``CLIENT`` spans inside the handler that makes them. Span attributes follow the
OpenTelemetry messaging conventions for Kafka (``messaging.system=kafka``,
``messaging.destination.name``, ``messaging.kafka.message.key``, partition, offset, consumer group).

Tracing is off by default and then costs nothing: :func:`tracing_for` returns None, every hook
(loop, relay, HTTP, gateway, mailer) checks for None, and OpenTelemetry is not even imported (the
spans live in :mod:`eventlab.tracing.spans`, imported when a sink is named). It is on when
``EVENTLAB_TRACING`` names a sink (``file``, ``otlp``, ``zipkin``), when ``EVENTLAB_OTLP_ENDPOINT``
or ``EVENTLAB_ZIPKIN_ENDPOINT`` is set, or when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is. The ``file`` sink appends one JSON object per span to
``<data_dir>/spans.jsonl`` (every process of the shop, in threads or process mode), which
:mod:`eventlab.tracing.waterfall` reads for ``eventlab trace ORDER_ID`` and the notebooks.

Each service gets its own ``TracerProvider`` (resource ``service.name`` = the service), so Jaeger
and Zipkin show six services, while all of them share one batch pipeline per exporter. The
providers are never installed globally: two shops in one process trace to their own sinks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from eventlab.errors import EventlabError
from eventlab.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from eventlab.tracing.spans import Tracing

__all__ = ["OTEL_ENDPOINTS", "SPANS_FILE", "TracingError", "flush", "forget", "install", "sinks", "tracing_for"]

log = logging.getLogger(__name__)

#: The local sink's file in the data directory: one JSON object per finished span.
SPANS_FILE = "spans.jsonl"
#: The standard OpenTelemetry variables that switch the OTLP exporter on.
OTEL_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class TracingError(EventlabError):
    """Tracing was asked for in a way that cannot work (e.g. an exporter that is not installed)."""


_REGISTRY: dict[Path, Tracing] = {}
_REGISTRY_LOCK = threading.Lock()


def _key(settings: Settings) -> Path:
    return settings.data_dir.expanduser().resolve()


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


def tracing_for(settings: Settings) -> Tracing | None:
    """The tracing of the shop in ``settings.data_dir`` (made once per process); None when off.

    Off unless the settings or the ``OTEL_*`` variables name a sink, or :func:`install` was called.
    """
    key = _key(settings)
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(key)
        if found is not None:
            return found
        chosen = sinks(settings)
        if not chosen:
            return None
        from eventlab.tracing.spans import Tracing, exporter

        found = _REGISTRY[key] = Tracing([exporter(sink, settings) for sink in chosen], sample=settings.trace_sample)
        log.info("tracing %s to %s", settings.data_dir, ", ".join(chosen))
        return found


def install(settings: Settings, *exporters: SpanExporter) -> Tracing:
    """Trace the shop in ``settings.data_dir`` to ``exporters`` as well as the sinks the settings name.

    For tests and notebooks: e.g. an ``InMemorySpanExporter`` as an in-process collector. Replaces
    (and shuts down) the tracing this process had for that directory. Call it before the shop is made.
    """
    from eventlab.tracing.spans import Tracing, exporter

    tracing = Tracing(
        [*(exporter(sink, settings) for sink in sinks(settings)), *exporters], sample=settings.trace_sample
    )
    with _REGISTRY_LOCK:
        previous = _REGISTRY.pop(_key(settings), None)
        _REGISTRY[_key(settings)] = tracing
    if previous is not None:
        previous.shutdown()
    return tracing


def forget(tracing: Tracing) -> None:
    """Drop ``tracing`` from this process's shops (it was shut down)."""
    with _REGISTRY_LOCK:
        for key, found in list(_REGISTRY.items()):
            if found is tracing:
                del _REGISTRY[key]


def flush(settings: Settings) -> None:
    """Export the finished spans of the shop in ``settings.data_dir``, if this process traces it."""
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(_key(settings))
    if found is not None:
        found.flush()

"""An order's trace as a waterfall: in the terminal (``eventlab trace ORDER_ID``) and in a notebook.

The spans come from the local sink (``<data_dir>/spans.jsonl``, see :mod:`eventlab.tracing`) or
from any OpenTelemetry SDK exporter (:func:`from_sdk`). An order's trace id is the one in its
``OrderCreated``'s ``traceparent``, so finding its spans needs only the event store.

Example:
    >>> spans = [SpanRecord("t", "a", None, "POST /orders", "SERVER", "order", 0, 3_000_000),
    ...          SpanRecord("t", "b", "a", "place order", "INTERNAL", "order", 1_000_000, 2_000_000)]
    >>> print(Waterfall(spans, width=10))
    service  step              start  duration
    order    POST /orders     0.0 ms    3.0 ms  |##########|
    order      place order    1.0 ms    1.0 ms  |   ###    |
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eventlab.arguments import utf8_text, whole_number
from eventlab.cli import Command
from eventlab.errors import EventlabError, NotFound
from eventlab.services import SERVICE_NAMES
from eventlab.settings import Settings
from eventlab.store.base import EventStore
from eventlab.tables import Table
from eventlab.tracing import SPANS_FILE, TracingError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from eventlab.tracing.spans import Tracing

__all__ = [
    "COMMAND",
    "SpanRecord",
    "Step",
    "TracedShop",
    "Waterfall",
    "critical_path",
    "from_sdk",
    "order_spans",
    "order_trace_id",
    "read_spans",
    "slowest_steps",
    "steps",
    "structure",
    "time_split",
]

#: Bar colours by service, in the saga's lane order (the relay last).
COLOURS = dict(
    zip((*SERVICE_NAMES, "relay"), ("#6b8e23", "#8b6914", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f"))
)


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, as the local sink stores it (times in nanoseconds since the epoch)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def read_spans(path: Path | str, trace_id: str | None = None) -> list[SpanRecord]:
    """The spans in a local sink file (or a data directory's ``spans.jsonl``), of one trace if given.

    A line cut short by a process killed mid-write, even inside a character, is skipped, and so is
    any other line that is not a span (a field of the wrong type, nesting too deep to parse).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SPANS_FILE
    if not path.exists():
        return []
    if not path.is_file():
        raise TracingError(f"{path} is not a file")
    found = []
    with path.open(encoding="utf-8", errors="replace") as lines:  # a cut character spoils only its line
        for line in lines:
            if trace_id is not None and trace_id not in line:
                continue
            span = _span_of(line)
            if span is not None and (trace_id is None or span.trace_id == trace_id):
                found.append(span)
    return found


#: The type of each field of a local sink's line; all but ``status`` and ``attributes`` required.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "trace_id": str,
    "span_id": str,
    "parent_id": (str, type(None)),
    "name": str,
    "kind": str,
    "service": str,
    "start_ns": int,
    "end_ns": int,
    "status": str,
    "attributes": dict,
}
_REQUIRED = _FIELD_TYPES.keys() - {"status", "attributes"}


def _span_of(line: str) -> SpanRecord | None:
    """The span one line of the local sink holds; None when it holds none."""
    try:
        fields = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or not _REQUIRED <= fields.keys() <= _FIELD_TYPES.keys():
        return None
    if not all(isinstance(value, _FIELD_TYPES[name]) for name, value in fields.items()):
        return None
    return SpanRecord(**fields)


def from_sdk(spans: Iterable[ReadableSpan]) -> list[SpanRecord]:
    """Spans from an OpenTelemetry SDK exporter (e.g. ``InMemorySpanExporter``) as records."""
    found = []
    for span in spans:
        context, parent = span.get_span_context(), span.parent
        if context is None or span.start_time is None or span.end_time is None:
            continue
        found.append(
            SpanRecord(
                trace_id=f"{context.trace_id:032x}",
                span_id=f"{context.span_id:016x}",
                parent_id=f"{parent.span_id:016x}" if parent is not None else None,
                name=span.name,
                kind=span.kind.name,
                service=str(span.resource.attributes.get("service.name", "")),
                start_ns=span.start_time,
                end_ns=span.end_time,
                status=span.status.status_code.name,
                attributes=dict(span.attributes or {}),
            )
        )
    return found


def order_trace_id(store: EventStore, order_id: str) -> str:
    """The trace id of ``order_id``'s saga: the one its first event's ``traceparent`` carries."""
    for stored in store.read_stream("order", order_id):
        parts = stored.metadata.get("traceparent", "").split("-")
        if len(parts) == 4:
            return parts[1]
        break
    raise NotFound("order_id", f"no traced order {order_id}")


class TracedShop(Protocol):
    """What :func:`order_spans` reads: a running :class:`~eventlab.shop.Shop`, or anything alike."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> EventStore: ...

    @property
    def tracing(self) -> Tracing | None: ...


def order_spans(shop: TracedShop, order_id: str) -> list[SpanRecord]:
    """Every span of ``order_id``'s trace in the shop's local sink (its finished spans written there first)."""
    if shop.tracing is not None:
        shop.tracing.flush_local()
    return read_spans(shop.settings.data_dir, order_trace_id(shop.store, order_id))


@dataclass(frozen=True)
class Step:
    """A span placed in its trace: how deep under its root, and when it started after the trace did."""

    span: SpanRecord
    depth: int
    offset_ms: float

    @property
    def label(self) -> str:
        return "  " * self.depth + self.span.name


def steps(spans: Sequence[SpanRecord], *, by_name: bool = False) -> list[Step]:
    """The spans depth-first (each under its parent), siblings by start time (or by service and
    name with ``by_name``, an order that does not depend on timing); offsets from the first start."""
    if not spans:
        return []
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else None, []).append(span)
    first = min(span.start_ns for span in spans)
    found: list[Step] = []

    def visit(parent: str | None, depth: int) -> None:
        key = (lambda s: (s.service, s.name, s.start_ns)) if by_name else (lambda s: (s.start_ns, s.service))
        for span in sorted(children.get(parent, []), key=key):
            found.append(Step(span, depth, (span.start_ns - first) / 1e6))
            visit(span.span_id, depth + 1)

    visit(None, 0)
    return found


def structure(spans: Sequence[SpanRecord]) -> Table:
    """The trace's shape without its timings (the same on every run): service, step, kind, parent."""
    names = {span.span_id: span.name for span in spans}
    return Table(
        [
            {
                "service": step.span.service,
                "step": step.label,
                "kind": step.span.kind,
                "parent": names.get(step.span.parent_id or "", ""),
            }
            for step in steps(spans, by_name=True)
        ]
    )


class Waterfall:
    """One trace's spans as a waterfall: text bars in a terminal, an SVG in a notebook."""

    def __init__(self, spans: Sequence[SpanRecord], *, width: int = 40) -> None:
        self.spans = list(spans)
        self.width = width
        self.steps = steps(self.spans)
        self.total_ms = max((s.offset_ms + s.span.duration_ms for s in self.steps), default=0.0)

    def __str__(self) -> str:
        if not self.steps:
            return "(no spans)"
        service_w = max(len("service"), *(len(s.span.service) for s in self.steps))
        step_w = max(len("step"), *(len(s.label) for s in self.steps))
        scale = self.width / self.total_ms if self.total_ms else 0.0
        lines = [f"{'service':<{service_w}}  {'step':<{step_w}}  {'start':>9}  {'duration':>9}"]
        for step in self.steps:
            begin = min(self.width - 1, int(step.offset_ms * scale))
            length = max(1, round(step.span.duration_ms * scale))
            bar = (" " * begin + "#" * length)[: self.width].ljust(self.width)
            lines.append(
                f"{step.span.service:<{service_w}}  {step.label:<{step_w}}  {step.offset_ms:>6.1f} ms  "
                f"{step.span.duration_ms:>6.1f} ms  |{bar}|"
            )
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.svg()

    def svg(self, width: int = 760, row: int = 18, label: int = 300) -> str:
        """The waterfall as an SVG: a row per span, its bar coloured by service, times in a tooltip."""
        height = row * (len(self.steps) + 1)
        scale = (width - label - 70) / self.total_ms if self.total_ms else 0.0
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="eventlab-waterfall" width="{width}" '
            f'height="{height}" font-family="monospace" font-size="11">'
        )
        parts = [head]
        for index, step in enumerate(self.steps):
            y = index * row
            x = label + step.offset_ms * scale
            bar = max(1.0, step.span.duration_ms * scale)
            colour = COLOURS.get(step.span.service, "#444444")
            tip = html.escape(
                f"{step.span.service}: {step.span.name} at +{step.offset_ms:.1f} ms for {step.span.duration_ms:.1f} ms"
            )
            parts.append(
                f'<text x="4" y="{y + 13}">{html.escape(step.span.service[:12])}</text>'
                f'<text x="100" y="{y + 13}">{html.escape(step.label[:32])}</text>'
                f'<rect x="{x:.1f}" y="{y + 3}" width="{bar:.1f}" height="{row - 6}" fill="{colour}">'
                f"<title>{tip}</title></rect>"
                f'<text x="{x + bar + 4:.1f}" y="{y + 13}">{step.span.duration_ms:.1f} ms</text>'
            )
        parts.append(
            f'<text x="{label}" y="{height - 4}">0 ms … {self.total_ms:.1f} ms ({len(self.steps)} spans)</text></svg>'
        )
        return "".join(parts)


def slowest_steps(spans: Iterable[SpanRecord], top: int = 10) -> Table:
    """Where the time goes across many traces: each (service, step) with its count, median, p95, max
    and total milliseconds, the largest total first."""
    groups: dict[tuple[str, str], list[float]] = {}
    for span in spans:
        groups.setdefault((span.service, span.name), []).append(span.duration_ms)
    rows: list[dict[str, Any]] = []
    for (service, name), durations in groups.items():
        durations.sort()
        rows.append(
            {
                "service": service,
                "step": name,
                "count": len(durations),
                "p50 ms": round(statistics.median(durations), 2),
                "p95 ms": round(durations[min(len(durations) - 1, int(0.95 * len(durations)))], 2),
                "max ms": round(durations[-1], 2),
                "total ms": round(sum(durations), 1),
            }
        )
    rows.sort(key=lambda row: -row["total ms"])
    return Table(rows[:top])


def critical_path(spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    """The chain of spans from the root to the one that ended last: the steps the saga waited on."""
    if not spans:
        return []
    by_id = {span.span_id: span for span in spans}
    chain = [max(spans, key=lambda span: span.end_ns)]
    while chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id or ""])
    return chain[::-1]


def time_split(spans: Sequence[SpanRecord]) -> Table:
    """Where one trace's time went along its critical path: handlers, relay publishing, calls out,
    and the waiting between steps (a consumer's fetch, the relay's poll of the store)."""
    chain = critical_path(spans)
    if not chain:
        return Table([])
    total = (max(span.end_ns for span in spans) - min(span.start_ns for span in spans)) / 1e6
    kinds = {"SERVER": "the request", "INTERNAL": "the request", "CONSUMER": "handlers (decide + append)"}
    kinds |= {"PRODUCER": "relay publishing (produce to ack)", "CLIENT": "calls out (gateway, mail)"}
    working: dict[str, float] = {}
    for span, child in zip(chain, [*chain[1:], None], strict=True):
        # a parent's own time on the path: until its child on the path starts (or all of it)
        until = child.start_ns if child is not None else span.end_ns
        share = max(0, min(span.end_ns, until) - span.start_ns) / 1e6
        working[kinds.get(span.kind, span.kind)] = working.get(kinds.get(span.kind, span.kind), 0.0) + share
    rows = [{"where": "end to end", "ms": round(total, 1), "share": "100 %"}]
    rows += [
        {"where": where, "ms": round(ms, 1), "share": f"{100 * ms / total:.0f} %"} for where, ms in working.items()
    ]
    waiting = total - sum(working.values())
    rows.append({"where": "waiting between steps", "ms": round(waiting, 1), "share": f"{100 * waiting / total:.0f} %"})
    return Table(rows)


# --- eventlab trace ORDER_ID -------------------------------------------------------------------


def _trace(args: argparse.Namespace) -> int:
    from eventlab.store import check_stores_named, open_store

    settings = Settings.from_env(data_dir=args.data_dir)
    try:
        check_stores_named(settings, ["order"])
        store = open_store(settings.store_of("order"), create=False)  # the order's stream
        try:
            spans = read_spans(settings.data_dir, order_trace_id(store, args.order_id))
        finally:
            store.close()
    except EventlabError as exc:
        print(f"eventlab: error: {exc}", file=sys.stderr)
        return 1
    if not spans:
        print(
            f"no spans of order {args.order_id} in {settings.data_dir / SPANS_FILE}: run the shop with "
            "EVENTLAB_TRACING=file to record them"
        )
        return 1
    if args.json:
        print(json.dumps([asdict(span) for span in spans]))
    else:
        print(Waterfall(spans, width=args.width))
    return 0


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("order_id", type=utf8_text, metavar="ORDER_ID", help="the order whose saga to draw")
    parser.add_argument(
        "--width",
        type=whole_number(1, 10_000),
        default=40,
        help="width of the bars in characters, 1-10000 (default 40)",
    )
    parser.add_argument("--json", action="store_true", help="print the spans as one JSON list instead")


COMMAND = Command(
    "trace",
    help="draw one order's saga as a waterfall of its spans",
    description="Draw the spans of one order's trace (recorded with EVENTLAB_TRACING=file in "
    "<data_dir>/spans.jsonl): each step's service, name, start after the first span, duration and a bar. "
    "Exit status 1 when the order or its spans are not found.",
    handler=_trace,
    options=_options,
    epilog="examples:\n  EVENTLAB_TRACING=file eventlab demo --orders 20\n  eventlab trace <order id from the demo>",
)

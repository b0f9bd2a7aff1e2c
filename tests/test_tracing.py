"""Tracing: one order is one trace, parented across Kafka, exported to an in-process collector and
to the local sink; ``eventlab trace`` draws it; off means no spans and no exporter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request

import pytest
from conftest import consume, free_port_offset
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from eventlab import Settings, Shop, cli, tracing
from eventlab.adapters import SimulatedGateway
from eventlab.application import Commands
from eventlab.bootstrap import Wiring, build_services
from eventlab.demo import run_demo
from eventlab.ids import TRACEPARENT
from eventlab.services import order
from eventlab.services.runtime import trace_metadata
from eventlab.settings import SettingsError
from eventlab.store import open_store, open_stores
from eventlab.tracing import open_tracing
from eventlab.tracing.spans import JsonLinesExporter, Tracing
from eventlab.tracing.waterfall import (
    SpanRecord,
    Waterfall,
    from_sdk,
    order_spans,
    order_trace_id,
    read_spans,
    slowest_steps,
)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A shop tracing to the local sink and to an in-memory collector, with one order placed over
    HTTP by a client that sends its own ``traceparent`` and one placed in the process (``Shop.place_order``)."""
    settings = Settings.from_env(
        env={}, data_dir=tmp_path_factory.mktemp("traced"), http_port_offset=free_port_offset(), tracing="file"
    )
    collector = InMemorySpanExporter()
    with Shop(settings, http=True, tracing=open_tracing(settings, collector)) as shop:
        shop.seed_catalogue()
        body = json.dumps({"user_id": "U001", "lines": [{"product_id": "P001", "quantity": 1}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{settings.port('order')}/orders",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            order_id = json.load(response)["order_id"]
        assert shop.wait(order_id).status == "completed"
        in_process = shop.place_order("U001", {"P002": 1})
        assert shop.wait(in_process).status == "completed"
        shop.wait_idle()
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.port('order')}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        trace_id = order_trace_id(shop.store, order_id)
        assert shop.tracing.flush()
        yield settings, order_id, trace_id, collector, metrics, order_trace_id(shop.store, in_process)


def test_one_order_is_one_trace_parented_across_kafka(traced):
    # given an order placed over HTTP with the client's traceparent
    _, order_id, trace_id, collector, *_ = traced
    # when its spans reach the in-process collector
    spans = [span for span in from_sdk(collector.get_finished_spans()) if span.trace_id == trace_id]
    by_id = {span.span_id: span for span in spans}
    # then the order's trace is the client's, rooted at the HTTP request the client made
    assert trace_id == CLIENT_TRACE
    (root,) = [span for span in spans if span.parent_id not in by_id]
    assert (root.name, root.kind, root.service, root.parent_id) == ("POST /orders", "SERVER", "order", CLIENT_SPAN)
    # and it covers every service that handled the order, the relay, the gateway and the mailer
    assert {span.service for span in spans} == {"order", "relay", "inventory", "payment", "notification"}
    names = {span.name for span in spans}
    assert {"place order", "gateway charge", "mail send", "process order.lifecycle.created"} <= names
    # and every consumer span is the child of the relay's producer span of the same message
    consumers = [span for span in spans if span.kind == "CONSUMER"]
    assert len(consumers) >= 5
    for span in consumers:
        producer = by_id[span.parent_id]
        assert (producer.kind, producer.service) == ("PRODUCER", "relay")
        assert producer.attributes["messaging.message.id"] == span.attributes["messaging.message.id"]
        assert producer.attributes["messaging.destination.name"] == span.attributes["messaging.destination.name"]
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.consumer.group.name"] == span.service
        assert span.attributes["messaging.kafka.message.key"] == order_id
        assert isinstance(span.attributes["messaging.kafka.offset"], int)
    # and every producer span is the child of the span that appended its event (never the relay's own)
    for span in spans:
        if span.kind == "PRODUCER":
            assert by_id[span.parent_id].name in {"place order"} | {c.name for c in consumers}
    # and the gateway and mailer calls sit inside the handler that made them
    (charge,) = [span for span in spans if span.name == "gateway charge"]
    assert (by_id[charge.parent_id].service, by_id[charge.parent_id].kind) == ("payment", "CONSUMER")
    assert all(by_id[s.parent_id].service == "notification" for s in spans if s.name == "mail send")


def assert_one_saga_trace(spans, root_name):
    """The spans of one order: one root named ``root_name``; every consumer span the child of the relay's
    producer span of the same message, every producer span the child of the span that appended its
    event; every service that handles an order is there. Returns the root."""
    by_id = {span.span_id: span for span in spans}
    (root,) = [span for span in spans if span.parent_id not in by_id]
    assert (root.name, root.service) == (root_name, "order")
    assert {span.service for span in spans} == {"order", "relay", "inventory", "payment", "notification"}
    consumers = [span for span in spans if span.kind == "CONSUMER"]
    assert {span.service for span in consumers} == {"order", "inventory", "payment", "notification"}
    for span in consumers:
        producer = by_id[span.parent_id]
        assert (producer.kind, producer.service) == ("PRODUCER", "relay")
        assert producer.attributes["messaging.message.id"] == span.attributes["messaging.message.id"]
    for span in spans:
        if span.kind == "PRODUCER":
            assert by_id[span.parent_id].name in {"place order"} | {c.name for c in consumers}
    # and a producer span is a hop: only messages some service consumes get one (not e.g. stock sold)
    assert {s.span_id for s in spans if s.kind == "PRODUCER"} == {c.parent_id for c in consumers}
    return root


def test_an_order_placed_in_the_process_is_one_trace_rooted_at_place_order(traced):
    # given an order placed with Shop.place_order (threads mode: no HTTP request around it)
    *_, collector, _, trace_id = traced
    # when its spans reach the in-process collector
    spans = [span for span in from_sdk(collector.get_finished_spans()) if span.trace_id == trace_id]
    # then its trace has one root, `place order`, with every service's spans under it, parented across Kafka
    root = assert_one_saga_trace(spans, "place order")
    assert root.parent_id is None and root.kind == "INTERNAL"


def test_two_shops_in_one_process_trace_to_their_own_collectors_and_stop_flushes(traced, tmp_path):
    # given a second shop in this process (the first one still running), tracing to its own collector
    first = traced[3]
    before = len(first.get_finished_spans())
    settings = Settings.from_env(env={}, data_dir=tmp_path, tracing="file")
    collector = InMemorySpanExporter()
    with Shop(settings, tracing=open_tracing(settings, collector)) as shop:
        # when the demo places two orders on it, and the shop stops (no flush asked for)
        report = run_demo(shop, 2, seed=12)
        placed = [r.aggregate_id for r in shop.store.read_records(after=0) if r.event_type == "OrderCreated"]
        trace_ids = {order_trace_id(shop.store, order_id) for order_id in placed}
    # then every order's spans were exported by the stop, each order one trace rooted at `place order`
    assert report.completed == 2 and len(trace_ids) == 2
    mine = from_sdk(collector.get_finished_spans())
    for trace_id in trace_ids:
        assert_one_saga_trace([span for span in mine if span.trace_id == trace_id], "place order")
    assert {span.trace_id for span in read_spans(tmp_path)} == {span.trace_id for span in mine}
    # and none of them went to the first shop's collector
    assert not trace_ids & {span.trace_id for span in from_sdk(first.get_finished_spans()[before:])}


def test_the_local_sink_holds_the_same_spans(traced):
    # given the same run, also traced to <data_dir>/spans.jsonl
    settings, _, trace_id, collector, *_ = traced
    # when the file is read back
    from_file = read_spans(settings.data_dir, trace_id)
    # then it has exactly the spans the collector got, with their parents and services
    expected = [span for span in from_sdk(collector.get_finished_spans()) if span.trace_id == trace_id]
    assert sorted((s.span_id, s.parent_id, s.service, s.name) for s in from_file) == sorted(
        (s.span_id, s.parent_id, s.service, s.name) for s in expected
    )
    assert all(span.end_ns >= span.start_ns > 0 for span in from_file)


def test_eventlab_trace_draws_the_waterfall(traced, capsys):
    # given a traced order in the data directory
    settings, order_id, *_ = traced
    # when `eventlab trace ORDER_ID` runs
    status = cli.main(["trace", order_id, "--data-dir", str(settings.data_dir)])
    out = capsys.readouterr().out
    # then it prints a row per span, under its parent, with start, duration and a bar
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["service", "step", "start", "duration"]
    assert lines[1].split()[:3] == ["order", "POST", "/orders"]
    assert lines[1].rstrip().endswith("|") and "#" in lines[1]
    assert any(line.startswith("relay") and "publish order.lifecycle.created" in line for line in lines)
    assert any(line.startswith("payment") and "gateway charge" in line for line in lines)
    assert len(lines) == 1 + len(read_spans(settings.data_dir, order_trace_id_of(settings, order_id)))


def order_trace_id_of(settings, order_id):
    store = open_store(settings)
    try:
        return order_trace_id(store, order_id)
    finally:
        store.close()


@pytest.mark.parametrize("order_store", ["shared", "its own"])
def test_eventlab_trace_says_when_there_are_no_spans(tmp_path, capsys, monkeypatch, order_store):
    # given a data directory with an untraced store (or Order's events in a store of its own)
    if order_store == "its own":
        monkeypatch.setenv("EVENTLAB_ORDER_STORE_URL", str(tmp_path / "order.db"))
    settings = Settings.from_env(data_dir=tmp_path)
    commands = Commands(open_stores(settings))
    commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
    commands.create_product(product_id="P1", name="Pen", price_cents=100)
    stores = commands.stores
    for event in [event for store in stores for event in store.read_all()]:  # as Order's loop would hear of them
        consume(stores.of("order"), order.SERVICE, event.event, event.event_id)
    order_id = commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    stores.close()
    # when `eventlab trace` is asked for the order
    status = cli.main(["trace", order_id, "--data-dir", str(tmp_path)])
    # then it says how to record spans, with exit status 1
    assert status == 1
    assert "EVENTLAB_TRACING=file" in capsys.readouterr().out


def test_a_spans_file_cut_inside_a_character_is_read_past_the_cut(tmp_path):
    # given a spans file whose writer was killed inside a two-byte character, then appended to again
    span = SpanRecord("t1", "a", None, "place order ü", "INTERNAL", "order", 0, 1_000_000)
    line = json.dumps(span.__dict__ | {"attributes": {}}, ensure_ascii=False).encode()
    (tmp_path / "spans.jsonl").write_bytes(line[: line.index("ü".encode()) + 1] + line + b"\n" + line + b"\n")
    # when the spans are read
    spans = read_spans(tmp_path, "t1")
    # then the cut line is skipped and the whole one is read
    assert [s.name for s in spans] == ["place order ü"]


def test_a_spans_file_cut_at_its_end_does_not_swallow_the_next_span(tmp_path):
    # given a spans file whose last line was cut by a writer killed mid-write
    (tmp_path / "spans.jsonl").write_text('{"trace_id":"t0","span_id":"a","par')
    made = Tracing(lambda: [JsonLinesExporter(tmp_path / "spans.jsonl")]).open()
    # when the next run writes a span
    with made.tracer("order").start_as_current_span("place order") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
    made.shutdown()
    # then the span is read on a line of its own
    assert [s.name for s in read_spans(tmp_path, trace_id)] == ["place order"]


def test_a_spans_file_that_cannot_be_written_is_warned_about_once_per_outage(tmp_path, caplog):
    # given a local sink whose file is a directory for two batches, then a file again, then a directory
    path = tmp_path / "spans.jsonl"
    made = Tracing(lambda: [JsonLinesExporter(path)]).open()
    try:
        for blocked in (True, True, False, True):
            if blocked and not path.is_dir():
                path.unlink(missing_ok=True)
                path.mkdir()
            elif not blocked:
                path.rmdir()
            # when a batch is exported
            with made.tracer("order").start_as_current_span("place order"):
                pass
            made.flush()
    finally:
        made.shutdown()
    # then each outage is warned about once, and so is the recovery
    warnings = [r.getMessage().split(" ")[0] for r in caplog.records if r.name == "eventlab.tracing.spans"]
    assert warnings == ["cannot", "spans", "cannot"]


@pytest.mark.parametrize(
    "bad",
    [
        '{"start_ns": "1"}',
        '{"span_id": [1]}',
        '{"start_ns": 1e400}',
        '{"attributes": []}',
        "[" * 100_000 + " t1",
        '"t1"',
    ],
)
def test_a_spans_file_line_that_is_not_a_span_is_skipped(tmp_path, bad):
    # given a spans file with a span of trace t1 and a line of t1 that is not a span
    span = SpanRecord("t1", "a", None, "place order", "INTERNAL", "order", 0, 1_000_000)
    line = json.dumps(span.__dict__ | {"attributes": {}})
    if bad.startswith("{"):
        bad = json.dumps(span.__dict__ | json.loads(bad))
    (tmp_path / "spans.jsonl").write_text(f"{line}\n{bad}\n")
    # when the spans are read
    spans = read_spans(tmp_path, "t1")
    # then the line is skipped and the span is read
    assert [s.name for s in spans] == ["place order"]


def test_eventlab_trace_says_when_the_spans_file_is_not_a_file(traced, tmp_path, capsys):
    # given a traced shop's data directory whose spans.jsonl is a directory
    settings, order_id, *_ = traced
    copy = tmp_path / "copy"
    shutil.copytree(settings.data_dir, copy, ignore=shutil.ignore_patterns("spans.jsonl"))
    (copy / "spans.jsonl").mkdir()
    # when `eventlab trace` is asked for the order
    status = cli.main(["trace", order_id, "--data-dir", str(copy)])
    # then it says so in one line, with exit status 1
    assert (status, capsys.readouterr().err) == (1, f"eventlab: error: {copy / 'spans.jsonl'} is not a file\n")


def test_eventlab_trace_of_a_data_dir_without_a_store_creates_none(tmp_path, capsys):
    # given a data directory that does not exist (a typo)
    typo = tmp_path / "shpo"
    # when `eventlab trace` is asked for an order there
    status = cli.main(["trace", "demo-s0-r1-00001", "--data-dir", str(typo)])
    # then it says there is no store, on stderr, and leaves no directory or empty store behind
    assert status == 1
    err = capsys.readouterr().err
    assert "no event store" in err and str(typo) in err
    assert not typo.exists()


def test_a_bar_width_no_terminal_has_is_refused_before_anything_is_read(tmp_path, capsys):
    # when `eventlab trace` is asked for bars 10^14 characters wide (a MemoryError once a trace is drawn)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trace", "demo-s0-r1-00001", "--width", "99999999999999", "--data-dir", str(tmp_path)])
    # then one line names the option and its range
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --width: not a whole number from 1 to 10000" in err


def test_metrics_have_the_relay_and_saga_histograms(traced):
    # given the order service's /metrics in threads mode
    *_, metrics, _ = traced
    # when the Prometheus parser reads it
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    # then the relay publish latency, handler and saga histograms are there, with observations
    for name in ("eventlab_relay_publish_seconds", "eventlab_handler_seconds", "eventlab_saga_seconds"):
        assert families[name].type == "histogram"
    count = [s for s in families["eventlab_relay_publish_seconds"].samples if s.name.endswith("_count")]
    assert count and count[0].value > 0
    # and the scrape made no span (probes and scrapes would bury the orders' traces)
    collector = traced[3]
    assert not [span for span in collector.get_finished_spans() if span.name.startswith("GET /")]


def test_tracing_off_makes_no_tracer_and_no_spans(tmp_path):
    # given settings that name no sink (the default) and no OTEL_* endpoint
    settings = Settings.from_env(env={}, data_dir=tmp_path)
    # when the shop is wired
    store = open_store(settings)
    try:
        wiring = Wiring(settings, store, build_services(settings, SimulatedGateway()))
        # then nothing traces: no Tracing, plain commands, loops and relay without one
        assert open_tracing(settings) is None and wiring.tracing is None
        assert type(wiring.commands) is Commands
        assert all(loop.tracing is None for loop in wiring.loops().values())
        assert wiring.relay().tracing is None
    finally:
        store.close()


def test_tracing_off_does_not_even_import_opentelemetry(tmp_path):
    # given a fresh process with neither EVENTLAB_* nor OTEL_* variables
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTLAB_", "OTEL_"))}
    script = (
        "import sys\n"
        "from eventlab import Settings\n"
        "from eventlab.adapters import SimulatedGateway\n"
        "from eventlab.bootstrap import Wiring, build_services\n"
        "from eventlab.store import open_store\n"
        "settings = Settings.from_env(data_dir=sys.argv[1])\n"
        "wiring = Wiring(settings, open_store(settings), build_services(settings, SimulatedGateway()))\n"
        "wiring.loops(), wiring.relay()\n"
        "wiring.commands.register_user(user_id='U1', name='Ada', email='ada@example.com')\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n"
    )
    # when it wires the shop and runs a command
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, check=True
    ).stdout
    # then OpenTelemetry was never imported, and no span was written
    assert out.strip() == "[]"
    assert not (tmp_path / tracing.SPANS_FILE).exists()


def test_settings_choose_the_exporters(tmp_path, monkeypatch):
    # given each way of switching tracing on
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    cases = {
        "file": ({"EVENTLAB_TRACING": "file"}, [JsonLinesExporter]),
        "otlp": ({"EVENTLAB_OTLP_ENDPOINT": "http://localhost:4318"}, [OTLPSpanExporter]),
        "zipkin": ({"EVENTLAB_ZIPKIN_ENDPOINT": "http://localhost:9411/api/v2/spans"}, [ZipkinExporter]),
        "both": ({"EVENTLAB_TRACING": "file,zipkin"}, [JsonLinesExporter, ZipkinExporter]),
    }
    for name, (env, kinds) in cases.items():
        # when the settings are read and the shop's tracing made
        settings = Settings.from_env(env=env, data_dir=tmp_path / name)
        made = open_tracing(settings)
        # then it exports to exactly those
        assert made is not None and [type(e) for e in made.open().exporters] == kinds, name
        made.shutdown()
    # and the standard OTEL_* variable alone switches OTLP on
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    assert tracing.sinks(Settings.from_env(env={}, data_dir=tmp_path)) == ["otlp"]
    # and a sink nobody knows is refused, naming the variable
    with pytest.raises(SettingsError, match="EVENTLAB_TRACING: unknown sink jaeger"):
        Settings.from_env(env={"EVENTLAB_TRACING": "jaeger"}, data_dir=tmp_path)
    with pytest.raises(SettingsError, match="EVENTLAB_OTLP_ENDPOINT"):
        Settings.from_env(env={"EVENTLAB_OTLP_ENDPOINT": "localhost:4318"}, data_dir=tmp_path)


def test_slowest_steps_rank_by_total_time():
    # given spans of two orders
    spans = [
        SpanRecord("t1", "a", None, "process x", "CONSUMER", "payment", 0, 5_000_000),
        SpanRecord("t2", "b", None, "process x", "CONSUMER", "payment", 0, 7_000_000),
        SpanRecord("t1", "c", None, "publish x", "PRODUCER", "relay", 0, 1_000_000),
    ]
    # when the slowest steps are listed
    table = slowest_steps(spans)
    # then the payment step comes first with its count and median
    assert [(r["service"], r["count"], r["p50 ms"]) for r in table.rows] == [("payment", 2, 6.0), ("relay", 1, 1.0)]
    assert "<svg" in Waterfall(spans[:1])._repr_html_()


def test_sampling_keeps_or_drops_whole_orders():
    # given tracing that records one trace in ten, and a trace id inside and one outside that share
    memory = InMemorySpanExporter()
    sampled = Tracing(lambda: [memory], sample=0.1).open()
    kept, dropped = f"00-{1:032x}-{1:016x}-01", f"00-{2**64 - 1:032x}-{1:016x}-01"
    try:
        # then the decision depends on the trace id alone, and an unsampled parent is followed
        assert sampled.records(kept) and not sampled.records(dropped)
        assert not sampled.records(f"00-{1:032x}-{1:016x}-00")
        # and the relay makes no span for a dropped order, passing its headers on unchanged
        spans = sampled.publishing()
        headers = [("ce_id", b"e1"), ("traceparent", dropped.encode())]
        assert spans.start("order.lifecycle.created", "O-1", "e1", headers) == headers
        assert spans.start("order.lifecycle.created", "O-2", "e2", [("traceparent", kept.encode())]) != [
            ("traceparent", kept.encode())
        ]
        spans.end()
        sampled.flush()
        assert [span.attributes["messaging.kafka.message.key"] for span in memory.get_finished_spans()] == ["O-2"]
    finally:
        sampled.shutdown()


@pytest.mark.parametrize(("trace_id", "recorded"), [(1, ["place order", "POST /orders"]), (2**64 - 1, [])])
def test_a_callers_sampled_trace_is_recorded_whole_or_not_at_all(trace_id, recorded):
    # given tracing that records one trace in ten, and a caller that sampled its trace
    memory = InMemorySpanExporter()
    sampled = Tracing(lambda: [memory], sample=0.1).open()
    caller = f"00-{trace_id:032x}-{1:016x}-01"
    try:
        # when its request places an order, whose events carry the traceparent of `place order`
        with sampled.serving("order", "POST", "/orders", "/orders", caller) as answered:
            with sampled.tracer("order").start_as_current_span("place order") as span:
                stored = sampled.traceparent(span)
            answered(201)
        sampled.flush()
        # then the HTTP span, `place order` and the later steps all follow the trace id's share
        names = [span.name for span in memory.get_finished_spans()]
        assert (names, sampled.records(stored)) == (recorded, bool(recorded))
    finally:
        sampled.shutdown()


def test_otlp_endpoint_receives_the_spans(tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, request))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    # given an OTLP/HTTP collector and EVENTLAB_OTLP_ENDPOINT pointing at it
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    settings = Settings.from_env(env={"EVENTLAB_OTLP_ENDPOINT": endpoint}, data_dir=tmp_path)
    made = open_tracing(settings).open()
    try:
        # when a service makes a span and the pipeline flushes
        with made.tracer("payment").start_as_current_span("gateway charge"):
            pass
        assert made.flush()
    finally:
        made.shutdown()
        server.shutdown()
    # then the collector got it on /v1/traces, under the service's name
    (path, request), *_ = received
    resource = request.resource_spans[0]
    names = [span.name for scope in resource.scope_spans for span in scope.spans]
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    assert (path, names, service) == ("/v1/traces", ["gateway charge"], "payment")


@pytest.fixture
def silent_collector():
    """The URL of a collector that accepts each request and never answers (until the test ends)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Event, Thread

    ended = Event()

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self):
            ended.wait()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    ended.set()
    server.shutdown()


def test_stopping_tracing_does_not_wait_for_a_collector_that_never_answers(tmp_path, silent_collector):
    import time

    # given OTLP and Zipkin exporters to a collector that accepts and never answers
    env = {"EVENTLAB_OTLP_ENDPOINT": silent_collector, "EVENTLAB_ZIPKIN_ENDPOINT": f"{silent_collector}/api/v2/spans"}
    made = open_tracing(Settings.from_env(env=env, data_dir=tmp_path)).open()
    # and spans in a batch on its way and in the next one
    for wait in (0.5, 0):
        with made.tracer("payment").start_as_current_span("gateway charge"):
            pass
        time.sleep(wait)
    # when tracing stops
    started = time.monotonic()
    made.shutdown()
    # then it gives up on the collector instead of waiting 10 s per batch
    assert time.monotonic() - started < 10


class Stuck(InMemorySpanExporter):
    """An exporter to a collector that does not answer until ``answer`` is set."""

    def __init__(self):
        super().__init__()
        self.answer = threading.Event()

    def export(self, spans):
        self.answer.wait()
        return super().export(spans)


def test_a_collector_that_never_answers_holds_up_neither_flush_nor_order_spans(tmp_path):
    from types import SimpleNamespace

    # given tracing to the local sink and to a collector that does not answer, and one traced order
    stuck = Stuck()
    made = Tracing(lambda: [JsonLinesExporter(tmp_path / "spans.jsonl"), stuck], schedule_delay_ms=60_000).open()
    with made.tracer("order").start_as_current_span("place order") as span:
        metadata = {"traceparent": made.traceparent(span)}
    store = SimpleNamespace(read_stream=lambda *_: [SimpleNamespace(metadata=metadata)])
    shop = SimpleNamespace(settings=Settings(data_dir=tmp_path), store=store, tracing=made)
    found = []

    def read():
        found.append(made.flush(timeout_ms=100))
        found.append([span.name for span in order_spans(shop, "O-1")])

    try:
        # when the shop flushes with a timeout, and reads the order's spans
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        reading.join(10)
        # then both return: the flush saying not all went, the spans read from the local sink
        assert found == [False, ["place order"]]
        # and once the collector answers, a flush says every span went
        stuck.answer.set()
        assert made.flush() is True
    finally:
        stuck.answer.set()
        made.shutdown()


@pytest.mark.integration
def test_one_trace_across_service_processes(tmp_path):
    import time

    from test_processes import processes, request, wait_healthy

    # given `eventlab up --processes` with the local file sink: one OS process per service and the relay
    offset = free_port_offset()
    port = {name: Settings(http_port_offset=offset).port(name) for name in ("user", "product", "order")}
    with processes(tmp_path, offset, EVENTLAB_TRACING="file"):
        for p in port.values():
            wait_healthy(p)
        request(port["user"], "POST", "/users", {"user_id": "U1", "name": "Ada", "email": "ada@example.com"})
        product = {"product_id": "P2", "name": "Pen", "price_cents": 5, "initial_stock": 10}
        request(port["product"], "POST", "/products", product)
        # when an order placed over HTTP completes (once Order has heard of the user and product; retried
        # until Inventory has heard of the product's stock)
        deadline = time.monotonic() + 60
        store = open_store(Settings(data_dir=tmp_path))
        while not (store.read_stream("order_customer", "U1") and store.read_stream("order_price", "P2")):
            assert time.monotonic() < deadline, "order never heard of U1 and P2"
            time.sleep(0.1)
        store.close()
        body = {"user_id": "U1", "lines": [{"product_id": "P2", "quantity": 1}]}
        while True:
            order_id = request(port["order"], "POST", "/orders", body)["order_id"]
            while (status := request(port["order"], "GET", f"/orders/{order_id}")["status"]) not in (
                "completed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, f"order {order_id} stuck"
                time.sleep(0.1)
            if status == "completed" or time.monotonic() > deadline:
                break
        assert status == "completed"
        # then its spans, written by six processes into one file, form one trace parented across Kafka
        store = open_store(Settings(data_dir=tmp_path))
        trace_id = order_trace_id(store, order_id)
        store.close()
        wanted = {"order", "relay", "inventory", "payment", "notification"}

        def unparented(spans: list[SpanRecord]) -> list[str]:
            by_id = {span.span_id for span in spans}
            return [s.name for s in spans if s.parent_id not in by_id]

        # each process exports every 200 ms, and a consumer span ends (and is exported) after its
        # batch commits: a child exported before its parent is an orphan only until the next export
        spans = read_spans(tmp_path, trace_id)
        while {s.service for s in spans} != wanted or unparented(spans) != ["POST /orders"]:
            if time.monotonic() > deadline + 10:
                break
            time.sleep(0.2)
            spans = read_spans(tmp_path, trace_id)
        assert {s.service for s in spans} == wanted
        assert unparented(spans) == ["POST /orders"]
        by_id = {span.span_id: span for span in spans}
        assert all(by_id[s.parent_id].service == "relay" for s in spans if s.kind == "CONSUMER")


@pytest.mark.parametrize("flags", ["00", "01"])
def test_events_caused_by_a_message_stay_in_its_trace_and_keep_its_sampling_decision(flags):
    # given: a traceparent from a caller that did (01) or did not (00) sample the trace
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-{flags}"
    # when: a service records events caused by it
    _, trace, span, sampled = trace_metadata("order", "O-1", "E-1", incoming)["traceparent"].split("-")
    # then: same trace, a new span, and the caller's decision, so no later hop records a rootless trace
    assert (trace, sampled) == (trace_id, flags)
    assert span != "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "incoming",
    [
        "00-" + "z" * 32 + "-00f067aa0ba902b7-01",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        f"00-{CLIENT_TRACE.upper()}-00f067aa0ba902b7-01",
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"ff-{CLIENT_TRACE}-00f067aa0ba902b7-01",
        f" 00-{CLIENT_TRACE}-00f067aa0ba902b7-01",
    ],
)
def test_events_caused_by_an_invalid_traceparent_start_a_trace_of_their_own(incoming):
    # when: a service records events caused by a message with an invalid traceparent
    stored = trace_metadata("order", "O-1", "E-1", incoming)["traceparent"]
    # then: they carry a new, valid, sampled trace, not the invalid one
    assert TRACEPARENT.fullmatch(stored) and stored.endswith("-01")
    assert stored.split("-")[1] not in incoming.lower()


@pytest.mark.parametrize(("flags", "kept"), [("02", "00"), ("03", "01")])
def test_events_caused_by_a_message_keep_its_sampled_bit_alone(flags, kept):
    # given a traceparent with other flags than the sampled bit (W3C level 2), then: only that bit is kept
    incoming = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-{flags}"
    assert trace_metadata("order", "O-1", "E-1", incoming)["traceparent"].split("-")[::3] == ["00", kept]


@pytest.mark.parametrize(
    "received",
    [
        f"00-0x{CLIENT_TRACE[2:]}-{CLIENT_SPAN}-01",
        f" 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",
        f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-+1",
    ],
)
def test_a_traceparent_that_is_not_valid_w3c_names_no_parent(received):
    from eventlab.tracing.spans import context_of

    assert context_of(received) is None
    assert context_of(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01") is not None


def test_an_http_span_is_named_after_its_route_and_keeps_the_path():
    from eventlab.http import Reply, ServiceHttp

    # given the order service's HTTP server, traced
    memory = InMemorySpanExporter()
    made = Tracing(lambda: [memory]).open()
    server = ServiceHttp("order", 0, dict, tracing=made).start()
    try:
        # when two orders are asked for, one by a 2000-character id
        for order_id in ("O-1", "Q" * 2000):
            server.call("GET", f"/orders/{order_id}", lambda _: Reply(200, {}), None)
        made.flush()
    finally:
        server.stop()
        made.shutdown()
    # then both spans have the route's name, and each its own path
    spans = memory.get_finished_spans()
    assert [(s.name, s.attributes["url.path"]) for s in spans] == [
        ("GET /orders/{order_id}", "/orders/O-1"),
        ("GET /orders/{order_id}", "/orders/" + "Q" * 2000),
    ]

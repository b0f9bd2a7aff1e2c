"""``GET /metrics`` in the Prometheus text format, and ``GET /health`` as its contract says.

Durable counts (handled, saga durations) are read from the event store, so they survive restarts;
the output is checked with prometheus_client's own parsers.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from conftest import unique
from projection_story import ShopStory
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from eventlab import Settings
from eventlab.errors import StoreError
from eventlab.events import OrderCreated, OrderLine, StockAdded
from eventlab.http import STALL_S, ServiceHealth, ServiceHttp, service_health
from eventlab.kafka.loop import ServiceLoop
from eventlab.metrics import SagaDurations
from eventlab.services import inventory
from eventlab.store.base import NewEvent
from eventlab.store.sqlite import SqliteEventStore


def fetch(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(port: int) -> dict:
    """The metric families at ``port``'s /metrics, parsed by prometheus_client's text parser."""
    status, content_type, text = fetch(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for family in families.values():
        assert family.documentation, f"{family.name} has no # HELP"
        suffix = "_total" if family.type == "counter" else ""  # the parser names a counter without it
        assert f"# TYPE {family.name}{suffix} {family.type}\n" in text
    return families


def value(families: dict, sample_name: str, **labels: str) -> float:
    family = families[sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    matches = [s.value for s in family.samples if s.name == sample_name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, (sample_name, labels, family.samples)
    return matches[0]


def buckets(families: dict, name: str, **labels: str) -> dict[str, float]:
    family = families[name]
    wanted = labels.items()
    return {
        s.labels["le"]: s.value for s in family.samples if s.name == f"{name}_bucket" and wanted <= s.labels.items()
    }


@pytest.fixture
def servers():
    started = []

    def start(*args, **kwargs) -> int:
        server = ServiceHttp(*args, **kwargs).start()
        started.append(server)
        return server.port

    yield start
    for server in started:
        server.stop()


# --- on a running shop -------------------------------------------------------------------------


@pytest.mark.integration
def test_a_running_shop_exposes_counters_and_histograms_prometheus_can_parse(shop, customer, make_product):
    # Given an order that went through the whole saga
    product_id = make_product(stock=5)
    shop.wait_idle()  # inventory has stocked it
    order_id = shop.place_order(customer, {product_id: 1})
    assert shop.wait(order_id).status == "completed"
    shop.wait_idle()
    # when Prometheus scrapes the order service
    order = scrape(shop.settings.port("order"))
    # then it finds _total counters, both histograms, the lag gauge and the process's start time
    assert order["eventlab_handled"].type == "counter"
    assert value(order, "eventlab_handled_total", service="order") >= 2  # reservation and payment outcomes
    assert value(order, "eventlab_duplicates_total", service="order") >= 0
    assert (
        value(order, "eventlab_dead_lettered_total", service="order") == shop.loops["order"].health()["dead_lettered"]
    )
    assert value(order, "eventlab_retries_total", service="order") >= 0
    assert order["eventlab_lag"].type == "gauge" and value(order, "eventlab_lag", service="order") == 0
    assert value(order, "eventlab_healthy", service="order") == 1
    assert order["eventlab_handler_seconds"].type == "histogram"
    assert value(order, "eventlab_handler_seconds_count", service="order") >= 2
    assert order["eventlab_saga_seconds"].type == "histogram"
    assert value(order, "eventlab_saga_seconds_count", outcome="completed") >= 1
    assert buckets(order, "eventlab_saga_seconds", outcome="completed")["+Inf"] >= 1
    assert order["process_start_time_seconds"].samples[0].value > 0
    # and every consuming service has its own handler histogram; a command service has none
    inventory_families = scrape(shop.settings.port("inventory"))
    assert value(inventory_families, "eventlab_handler_seconds_count", service="inventory") >= 1
    assert "eventlab_handler_seconds" not in scrape(shop.settings.port("user"))


@pytest.mark.integration
def test_health_on_a_running_shop_follows_the_contract(shop):
    for service in ("user", "order", "inventory"):
        status, _, text = fetch(shop.settings.port(service), "/health")
        body = json.loads(text)
        assert (status, body["status"], body["problems"], body["service"]) == (200, "ok", [], service)
    status, _, text = fetch(shop.settings.port("inventory"), "/health")
    assert {"lag", "handled", "duplicates", "dead_lettered", "retries"} <= json.loads(text).keys()


# --- durable counts, without a broker -----------------------------------------------------------


def test_handled_total_comes_from_the_store_so_it_survives_a_restart(tmp_path, servers):
    # Given a store in which inventory has handled three events (in an earlier life)
    store = SqliteEventStore(tmp_path / "events.db")
    for n in range(3):
        event = StockAdded(product_id=f"P{n}", quantity=1)
        store.append([NewEvent(event, 1, {})], processed=("inventory", f"input-{n}"))
    # when a fresh inventory process starts (its loop has counted nothing yet, nor joined its group)
    loop = ServiceLoop(inventory.SERVICE, store, Settings.from_env(env={}, data_dir=tmp_path))
    port = servers("inventory", 0, service_health(loop, store))
    # then /metrics counts all three
    assert loop.stats.handled == 0
    assert value(scrape(port), "eventlab_handled_total", service="inventory") == 3
    # and /health answers although the loop is not consuming, saying so
    status, _, text = fetch(port, "/health")
    body = json.loads(text)
    assert (status, body["status"], body["handled"]) == (503, "degraded", 3)
    assert any("not consuming" in problem for problem in body["problems"])
    assert value(scrape(port), "eventlab_healthy", service="inventory") == 0
    store.close()


def test_a_service_that_handles_nothing_while_events_wait_is_reported_lagging(tmp_path):
    # Given an OrderCreated waiting for an inventory loop that handles nothing (it never consumes)
    store = SqliteEventStore(tmp_path / "events.db")
    line = OrderLine(product_id="P1", quantity=1, unit_price_cents=100)
    store.append([NewEvent(OrderCreated(order_id="O1", user_id="U1", lines=(line,), total_cents=100), 1)])
    loop = ServiceLoop(inventory.SERVICE, store, Settings.from_env(env={}, data_dir=tmp_path))
    now = [1000.0]
    health = ServiceHealth(loop, store, clock=lambda: now[0])
    # when /health is asked now and again a little later, then it is not lagging yet
    assert health()["lag"] == 1 and not any("lagging" in p for p in health()["problems"])
    now[0] += STALL_S / 2
    assert not any("lagging" in p for p in health()["problems"])
    # and once nothing was handled for longer than STALL_S, it is
    now[0] += STALL_S
    assert any(p.startswith("lagging: 1 events waiting") for p in health()["problems"])
    # and handling the event clears it
    store.append([], processed=("inventory", store.read_all()[0].event_id))
    assert not any("lagging" in p for p in health()["problems"])
    store.close()


def test_the_saga_histogram_is_read_from_the_store_once_per_order(tmp_path, servers):
    # Given a completed order that took 0.31 s and a cancelled one that took 40.01 s
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    fast = story.place("O1", "U1", {"P1": 1})
    story.now += timedelta(seconds=0.3)
    story.complete(fast)
    slow = story.place("O2", "U1", {"P1": 1})
    story.now += timedelta(seconds=40)
    story.cancel(slow, "payment_failed", "card declined", release=False)
    port = servers("order", 0, service_health(None, story.store))
    # when Prometheus scrapes twice
    scrape(port)
    families = scrape(port)
    # then each order is in the histogram once, in the bucket of its duration
    completed = buckets(families, "eventlab_saga_seconds", outcome="completed")
    cancelled = buckets(families, "eventlab_saga_seconds", outcome="cancelled")
    assert (completed["0.25"], completed["0.5"], completed["+Inf"]) == (0, 1, 1)
    assert (cancelled["30.0"], cancelled["60.0"], cancelled["+Inf"]) == (0, 1, 1)
    assert value(families, "eventlab_saga_seconds_sum", outcome="completed") == pytest.approx(0.31)
    # and an order completed after a scrape is added by the next one
    story.complete(story.place("O3", "U1", {"P1": 1}))
    assert value(scrape(port), "eventlab_saga_seconds_count", outcome="completed") == 2
    story.store.close()


def test_a_scrape_while_no_order_ends_starts_after_what_the_last_one_read(tmp_path):
    # given saga durations read up to a completed order, then orders placed that do not end
    story = ShopStory(tmp_path / "events.db")
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    story.complete(story.place("O1", "U1", {"P1": 1}))
    durations = SagaDurations(story.store, batch=2)
    assert durations.catch_up() == 1
    for n in range(3):
        story.place(f"O-open-{n}", "U1", {"P1": 1})
    # when Prometheus scrapes again
    assert durations.catch_up() == 0
    # then the next scrape starts at the head, not at the last terminal event (from where a store of
    # unfinished orders would be read again at every scrape)
    assert durations.position == story.store.head()
    # and an order ending later is still read
    story.complete(story.place("O2", "U1", {"P1": 1}))
    assert durations.catch_up() == 1
    story.store.close()


# --- /health's contract ------------------------------------------------------------------------


def test_problems_make_health_503_degraded_and_show_in_metrics(tmp_path, servers):
    def health():
        return {"lag": 7, "restarts": 2, "problems": ["relay crash-looping (5 restarts in 60 s)"]}

    port = servers("order", 0, health)
    status, _, text = fetch(port, "/health")
    body = json.loads(text)
    assert (status, body["status"], body["lag"]) == (503, "degraded", 7)
    assert body["problems"] == ["relay crash-looping (5 restarts in 60 s)"]
    families = scrape(port)
    assert value(families, "eventlab_healthy", service="order") == 0
    assert value(families, "eventlab_problems", service="order") == 1
    assert value(families, "eventlab_lag", service="order") == 7
    assert value(families, "eventlab_restarts", service="order") == 2  # any number in the dict is a gauge


class BrokenStore(SqliteEventStore):
    def head(self) -> int:
        raise StoreError("disk I/O error")


def test_health_reports_a_store_it_cannot_read_as_a_problem_not_a_crash(tmp_path, servers):
    store = BrokenStore(tmp_path / "events.db")
    port = servers("user", 0, service_health(None, store))
    status, _, text = fetch(port, "/health")
    body = json.loads(text)
    assert (status, body["status"]) == (503, "degraded")
    assert body["problems"] == ["health check failed: StoreError: disk I/O error"]
    store.close()


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(tmp_path, servers):
    store = SqliteEventStore(tmp_path / "events.db")
    port = servers("user", 0, service_health(None, store))
    status, content_type, text = fetch(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "eventlab_healthy" in {family.name for family in parse_openmetrics(text)}
    store.close()


@pytest.mark.parametrize("version", ["1.x.0", "abc"])
def test_an_accept_header_with_a_garbled_version_gets_the_text_format_not_a_500(tmp_path, servers, caplog, version):
    # given: a service, and a client whose Accept names OpenMetrics with a version that is no version
    store = SqliteEventStore(tmp_path / "events.db")
    port = servers("user", 0, service_health(None, store))
    # when: it scrapes /metrics
    status, content_type, text = fetch(port, "/metrics", accept=f"application/openmetrics-text; version={version}")
    # then: it gets the default format (as for any Accept the server cannot honour), and no bug is logged
    assert status == 200 and content_type.startswith("text/plain"), (status, text)
    assert "eventlab_healthy" in {family.name for family in text_string_to_metric_families(text)}
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    store.close()


@pytest.mark.integration
def test_a_user_registered_over_http_shows_in_the_store_head_gauge(shop):
    user_id = unique("U")
    before = value(scrape(shop.settings.port("user")), "eventlab_events", service="user")
    shop.register_user(user_id, "Ada", f"{user_id.lower()}@example.com")
    assert value(scrape(shop.settings.port("user")), "eventlab_events", service="user") > before

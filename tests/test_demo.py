"""`eventlab demo`: the main job, end to end, as a user runs it; the same seed gives the same counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from apache_kafka import BROKERS
from conftest import free_port_offset
from projection_story import standard_story

from eventlab import SagaTimeout, Settings, Shop
from eventlab.demo import StockBounds, fresh_data_dir, invariants, order_ids, run_demo
from eventlab.events import ProductCreated
from eventlab.projections import CHECKS, audit
from eventlab.projections.audit import MAILBOX_CHECKS
from eventlab.services import SERVICE_NAMES
from eventlab.settings import service_store_variable
from eventlab.store import MemoryEventStore, NewEvent, SqliteEventStore

pytestmark = pytest.mark.integration

AUDIT_NAMES = [check.name for check in (*CHECKS, *MAILBOX_CHECKS)]


def demo(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``eventlab demo ARGS --json`` as a user runs it, with ``env`` instead of our EVENTLAB_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_") and k != "XDG_DATA_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "eventlab", "demo", *args, "--json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def counts(report: dict) -> dict:
    return {k: report[k] for k in ("orders", "completed", "cancelled", "cancelled_by_reason", "stuck")}


def test_demo_json_reports_every_saga_and_every_audit_check(tmp_path):
    result = demo("--orders", "60", "--payment-failure-rate", "0.3", "--seed", "3", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["orders"] == 60 and report["stuck"] == 0
    assert report["completed"] + report["cancelled"] == 60
    assert report["cancelled_by_reason"].get("payment_failed", 0) > 0
    assert sum(report["cancelled_by_reason"].values()) == report["cancelled"]
    assert report["events"] >= 60 * 5
    assert report["saga_latency_ms"]["p50"] > 0 and report["saga_latency_ms"]["p99"] >= report["saga_latency_ms"]["p50"]
    assert report["store"] == str(tmp_path / "events.db")
    # the audit's checks, all of them, by the audit's names
    assert report["invariants"] == dict.fromkeys(AUDIT_NAMES, True)
    assert "terminal 60/60" in result.stderr  # progress output


@pytest.mark.parametrize("store", ["sqlite", "postgresql", "a-store-per-service"])
@pytest.mark.parametrize("broker", BROKERS)
def test_the_demo_passes_every_invariant_on_either_broker_and_either_store(broker, store, request, tmp_path):
    # given: the embedded broker or Apache Kafka, and a SQLite file, a PostgreSQL schema, or each
    # service a store of its own (SQLite files on the embedded broker, PostgreSQL schemas on Kafka)
    env = {"EVENTLAB_DATA_DIR": str(tmp_path)}
    if broker == "apache-kafka":
        env["EVENTLAB_BOOTSTRAP_SERVERS"] = request.getfixturevalue("apache_kafka_factory")().bootstrap_servers
    if store == "postgresql":
        env["EVENTLAB_STORE_URL"] = request.getfixturevalue("postgres_store_url")
    if store == "a-store-per-service":
        env.update(stores_per_service(broker, request, tmp_path))
    # when: the demo runs, as a user runs it
    result = demo("--orders", "12", "--payment-failure-rate", "0.3", "--seed", "4", **env)
    # then: every saga ends and every check of the audit holds, read from the store the shop wrote
    assert result.stdout, f"exit {result.returncode}, no report; its stderr ends:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert result.returncode == 0, {name: ok for name, ok in report["invariants"].items() if not ok}
    assert report["stuck"] == 0 and report["completed"] + report["cancelled"] == 12
    assert report["invariants"] == dict.fromkeys(AUDIT_NAMES, True)
    if store == "postgresql":
        assert report["store"].startswith("postgresql://") and "password" not in report["store"]
    elif store == "sqlite":
        assert report["store"] == str(tmp_path / "events.db")
    else:  # every service's store, and nothing in the shared default
        assert len(report["store"].split(", ")) == len(SERVICE_NAMES)
        assert not (tmp_path / "events.db").exists()


def stores_per_service(broker, request, tmp_path) -> dict[str, str]:
    """``EVENTLAB_<SERVICE>_STORE_URL`` for every service: a SQLite file each, or on Apache Kafka a
    PostgreSQL schema each (which eventlab creates; dropped after the test)."""
    if broker != "apache-kafka":
        return {service_store_variable(name): str(tmp_path / f"{name}.db") for name in SERVICE_NAMES}
    base = request.getfixturevalue("postgres_store_url")  # ...?options=-csearch_path%3D<a schema of its own>
    schemas = {name: f"{base.rsplit('%3D', 1)[1]}_{name}" for name in SERVICE_NAMES}

    def drop() -> None:
        with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as admin:
            for schema in schemas.values():
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())

    request.addfinalizer(drop)
    return {service_store_variable(name): f"{base.rsplit('%3D', 1)[0]}%3D{schema}" for name, schema in schemas.items()}


def test_without_a_data_dir_each_demo_starts_from_a_store_of_its_own_and_repeats_its_counts(tmp_path):
    # given: no data directory, a home of our own
    home = tmp_path / "xdg"
    # when: the demo runs twice with the default seed
    first, second = (demo("--orders", "30", XDG_DATA_HOME=str(home)) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    # then: the same counts and the same number of events (the second did not find the first's orders)
    assert counts(a) == counts(b) and a["events"] == b["events"]
    assert a["store"] == b["store"] == str(home / "eventlab" / "demo" / "events.db")


def test_two_demos_started_at_once_on_one_store_name_their_orders_apart():
    # given a store no demo has written to yet
    store = MemoryEventStore()
    # when two runs with the same seed start before either placed an order
    first, second = order_ids(store, seed=0), order_ids(store, seed=0)
    # then each has its own run number, so their ids never collide
    assert [first(), second(), first()] == ["demo-s0-r1-00001", "demo-s0-r2-00001", "demo-s0-r1-00002"]
    assert order_ids(MemoryEventStore(), seed=0)() == "demo-s0-r1-00001"


def test_a_second_demo_without_a_data_dir_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    # given a demo running in its own directory (here: this process, which emptied it and holds it)
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    running = fresh_data_dir()
    running.mkdir(parents=True)
    (running / "events.db").write_bytes(b"the first demo's store")
    # when a second demo starts without a data directory (another terminal)
    second = demo("--orders", "5", XDG_DATA_HOME=str(home), EVENTLAB_HTTP_PORT_OFFSET=str(free_port_offset()))
    # then it is refused in one line saying why and the way out, and the first demo's store is untouched
    assert second.returncode == 2, second.stdout + second.stderr
    assert (
        second.stderr.startswith("eventlab: error: another eventlab demo is using ") and "--data-dir" in second.stderr
    )
    assert len(second.stderr.strip().splitlines()) == 1
    assert (running / "events.db").read_bytes() == b"the first demo's store"
    # and the directory is emptied again for the next demo of this process
    assert fresh_data_dir() == running and not running.exists()


def test_a_demo_without_a_data_dir_refuses_a_service_store_an_earlier_run_left_elsewhere(tmp_path):
    # given Order's store outside the demo's directory, holding an earlier run's events
    order_store = tmp_path / "stores" / "order.db"
    with SqliteEventStore(order_store) as store:
        store.append([NewEvent(ProductCreated(product_id="P1", name="Lamp", price_cents=100, initial_stock=1), 1)])
    # and the store an earlier demo left in its own directory
    earlier = tmp_path / "xdg" / "eventlab" / "demo" / "events.db"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"the earlier demo's store")
    # when a demo starts without a data directory (it empties only its own directory)
    ran = demo("--orders", "5", XDG_DATA_HOME=str(tmp_path / "xdg"), EVENTLAB_ORDER_STORE_URL=str(order_store))
    # then it is refused in one line naming that store, instead of failing the audit on a mixed past
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert (
        ran.stderr.startswith("eventlab: error: the demo starts from empty stores, but ")
        and str(order_store) in ran.stderr
    )
    assert len(ran.stderr.strip().splitlines()) == 1
    with SqliteEventStore(order_store) as store:
        assert store.head() == 1
    # and the earlier demo's store is still there for `eventlab audit`
    assert earlier.read_bytes() == b"the earlier demo's store"


def test_a_given_data_dir_keeps_what_earlier_runs_wrote(tmp_path):
    command = ("--orders", "10", "--data-dir", str(tmp_path))
    first, second = demo(*command), demo(*command)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["stuck"] == 0
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventlab",
            "query",
            "--data-dir",
            str(tmp_path),
            "--csv",
            "SELECT order_id FROM orders",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ids = result.stdout.split()[1:]
    assert len(ids) == 20 and {i.rsplit("-", 1)[0] for i in ids} == {"demo-s0-r1", "demo-s0-r2"}


def scarce_catalogue(directory: Path) -> Path:
    """Three users and four products with a few units each: orders compete for the last ones."""
    directory.mkdir()
    (directory / "users.csv").write_text(
        "user_id,name,email\n" + "".join(f"U{i},User {i},u{i}@example.com\n" for i in range(1, 4))
    )
    (directory / "products.csv").write_text(
        "product_id,name,price_cents,initial_stock\n" + "".join(f"P{i},Thing {i},{100 * i},8\n" for i in range(1, 5))
    )
    return directory


def run_in_a_fresh_shop(tmp_path: Path, name: str, seed: int, catalogue: Path) -> dict:
    settings = Settings.from_env(env={}, data_dir=tmp_path / name)
    with Shop(settings, payment_failure_rate=0.3, seed=seed) as shop:
        report = run_demo(shop, 40, seed=seed, timeout=60, catalogue=catalogue)
    return report.as_dict()


def test_the_same_seed_gives_the_same_counts_although_orders_race_for_scarce_stock(tmp_path):
    # given: a catalogue of 32 units for 40 orders, 30 % declined payments, orders placed as fast as possible
    catalogue = scarce_catalogue(tmp_path / "catalogue")
    # when: the demo runs twice with one seed, each time in a fresh shop, then with another seed
    first = run_in_a_fresh_shop(tmp_path, "first", 5, catalogue)
    second = run_in_a_fresh_shop(tmp_path, "second", 5, catalogue)
    other = run_in_a_fresh_shop(tmp_path, "other", 6, catalogue)
    # then: one seed, one outcome: completed and cancelled by reason
    assert counts(first) == counts(second) and first["stuck"] == 0
    assert first["cancelled_by_reason"]["out_of_stock"] > 0 and first["cancelled_by_reason"]["payment_failed"] > 0
    # and: only the orders whose outcome depends on timing waited; the rest ran concurrently
    assert first["pauses"] == second["pauses"] and 0 < first["pauses"] < 40
    # and: another seed, another outcome
    assert counts(other) != counts(first)


def test_stock_bounds_tell_which_orders_cannot_depend_on_timing():
    # given: 5 units of P1 and 1 of P2
    bounds = StockBounds({"P1": 5, "P2": 1})
    # when / then: an order within what is surely left is surely reserved, and counts against it
    assert bounds.outcome({"P1": 3}) is True
    bounds.place({"P1": 3})
    assert (bounds.low["P1"], bounds.high["P1"]) == (2, 5)
    # an order for more than could ever be left is surely rejected, and counts for nothing
    assert bounds.outcome({"P1": 1, "P2": 2}) is False
    bounds.place({"P1": 1, "P2": 2})
    assert bounds.low == {"P1": 2, "P2": 1}
    # an order that fits only if an earlier one gives its stock back depends on timing
    assert bounds.outcome({"P1": 4}) is None
    # a product nobody stocked is never available
    assert bounds.outcome({"P9": 1}) is False


def test_the_demo_verdicts_are_the_audit_verdicts(tmp_path):
    # given: a store whose log holds an order that never finished (O5 waits for its payment)
    path = standard_story(tmp_path / "events.db").store.path
    # when: the demo judges it (after its shop stopped: nothing is in flight any more)
    verdicts = invariants(path)
    # then: every check of the audit, by its name, with the audit's verdict
    assert verdicts == {name: result.ok for name, result in audit(path, grace=timedelta(0)).items()}
    assert list(verdicts) == AUDIT_NAMES and verdicts["orders_terminal"] is False


def test_every_wait_of_the_demo_ends_at_its_timeout(tmp_path):
    # given: a shop whose gateway takes 1-3 s per payment, and an order still waiting for its payment
    settings = Settings.from_env(env={}, data_dir=tmp_path)
    with Shop(settings, gateway_latency_ms=2000) as shop:
        shop.seed_catalogue()
        shop.place_order("U001", {"P001": 1})
        # when: a demo that waits at most 1 s starts
        # then: its wait for a settled shop before the first order ends after 1 s
        with pytest.raises(SagaTimeout, match=r"shop not idle after 1(\.0)? s"):
            run_demo(shop, 2, timeout=1)
        # and: once settled, its wait for the sagas ends after 1 s too, reporting them stuck
        shop.wait_idle(timeout=60)
        report = run_demo(shop, 2, timeout=1)
    assert report.stuck > 0 and not report.ok


@pytest.mark.parametrize("variable", ["EVENTLAB_STORE_URL", "EVENTLAB_PAYMENT_STORE_URL"])
def test_a_demo_in_memory_is_audited_before_its_store_is_gone(variable, tmp_path):
    # given a store in the demo's own memory: the shop's, or one service's
    # when the demo runs
    result = demo("--orders", "8", "--data-dir", str(tmp_path), **{variable: "memory://"})
    # then its invariants were read while the shop still held that store
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stuck"] == 0 and report["invariants"] == dict.fromkeys(AUDIT_NAMES, True)

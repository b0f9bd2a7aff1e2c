"""The outbox relay survives what goes wrong around it: a locked store, a bug in one attempt, a topic deleted
under it (on Apache Kafka); and one relay publishes per store, a second one standing by until the first stops. On
the embedded broker it warns before a partition grows too large for that broker."""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from eventlab import Shop
from eventlab.adapters import SimulatedGateway
from eventlab.bootstrap import Wiring, build_services
from eventlab.events import OrderCreated, ProductCreated, StockAdded
from eventlab.kafka import EmbeddedBroker, ensure_topics, make_consumer
from eventlab.kafka.relay import Relay
from eventlab.settings import Settings
from eventlab.store import NewEvent, SqliteEventStore, open_store
from eventlab.store.base import RELAY_CONSUMER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as broker:
        settings = Settings(data_dir=tmp_path_factory.mktemp("data"), bootstrap_servers=broker.bootstrap_servers)
        ensure_topics(settings)
        yield settings


def eventually(condition, what, timeout=30.0):
    """Wait for ``condition()`` (a generous deadline, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def running(relay):
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)


def published_ids(settings, topic, wanted, timeout=30.0):
    """The CloudEvents ids among ``wanted`` found on ``topic`` (read from the start, no consumer group)."""
    consumer = make_consumer(settings, f"relay-test-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    found: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while found != wanted and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                found |= {v.decode() for k, v in message.headers() or [] if k == "ce_id"} & wanted
    finally:
        consumer.close()
    return found


def test_the_relay_keeps_running_while_the_store_is_locked_and_publishes_afterwards(settings, tmp_path):
    # given three stored events and another connection holding the store's write lock
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, busy_timeout=0.05)
    product = f"P-relay-{uuid.uuid4().hex[:8]}"
    stored = store.append([NewEvent(StockAdded(product_id=product, quantity=q), q) for q in (1, 2, 3)])
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    relay = Relay(store, settings)
    relay.max_backoff = 0.2
    with running(relay) as thread:
        # when the relay cannot record its checkpoint, attempt after attempt
        eventually(lambda: relay.failures >= 3, "three failed attempts")
        health = relay.health()
        # then it is still alive, and its health says what is wrong: the events went out (the
        # broker acknowledged them), but the checkpoint saying so is not recorded yet
        assert thread.is_alive()
        assert health["unpublished"] == 0 and health["relay_failures"] >= 3
        assert store.checkpoint(RELAY_CONSUMER) == 0
        assert (
            len(health["problems"]) == 1 and "StoreBusy" in health["problems"][0] and str(path) in health["problems"][0]
        )
        # and once the lock is released it publishes everything and is healthy again
        locker.execute("ROLLBACK")
        eventually(lambda: store.checkpoint(RELAY_CONSUMER) == store.head(), "the relay caught up")
        eventually(lambda: relay.failures == 0, "a successful attempt")
        assert thread.is_alive()
        assert relay.health()["problems"] == [] and relay.health()["unpublished"] == 0
    locker.close()
    store.close()
    wanted = {event.event_id for event in stored}
    assert published_ids(settings, StockAdded.topic, wanted) == wanted


def test_an_unexpected_error_is_logged_with_its_traceback_and_retried(settings, tmp_path, caplog, monkeypatch):
    store = SqliteEventStore(tmp_path / "events.db")
    [event] = store.append([NewEvent(StockAdded(product_id=f"P-bug-{uuid.uuid4().hex[:8]}", quantity=1), 1)])
    relay = Relay(store, settings)
    real = relay.publish_pending
    calls = []

    def buggy_once():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug in one attempt")
        return real()

    monkeypatch.setattr(relay, "publish_pending", buggy_once)
    with caplog.at_level(logging.ERROR, logger="eventlab.kafka.relay"), running(relay) as thread:
        eventually(lambda: store.checkpoint(RELAY_CONSUMER) == 1, "the event published after the bug")
        assert thread.is_alive() and relay.failures == 0 and relay.failures_total == 1
    [record] = [r for r in caplog.records if r.name == "eventlab.kafka.relay"]
    assert "KeyError" in record.getMessage() and record.exc_info is not None
    assert published_ids(settings, StockAdded.topic, {event.event_id}) == {event.event_id}
    store.close()


# --- one relay per store: the lease ------------------------------------------------------------------


def stock(store, product, quantities):
    return store.append([NewEvent(StockAdded(product_id=product, quantity=q), q) for q in quantities])


def test_a_standby_relay_publishes_nothing_until_the_active_one_stops_then_takes_over(settings, tmp_path):
    # given two relays on one SQLite store, each with its own store object (as two processes have)
    path = tmp_path / "events.db"
    first_store, second_store = SqliteEventStore(path), SqliteEventStore(path)
    first, second = Relay(first_store, settings), Relay(second_store, settings)
    product = f"P-lease-{uuid.uuid4().hex[:8]}"
    first_stop = threading.Event()
    first_thread = threading.Thread(target=first.run, args=(first_stop,), daemon=True)
    try:
        first_thread.start()
        eventually(lambda: first.active, "the first relay holds the lease")
        with running(second):
            # when events are stored while both run
            early = stock(first_store, product, [1, 2, 3])
            eventually(lambda: first.published == 3, "the active relay published them")
            # then only the lease holder published them; the other stands by
            assert second.published == 0 and not second.active
            assert second.health()["lease"] == "standby" and first.health()["lease"] == "active"
            # when the active relay stops (releasing the lease) and more events are stored
            first_stop.set()
            first_thread.join(30)
            late = stock(second_store, product, [4, 5])
            # then the standby takes over from the saved checkpoint: it publishes only the new ones
            eventually(lambda: second.active and second.published == 2, "the standby took over")
        wanted = {e.event_id for e in early + late}
        assert published_ids(settings, StockAdded.topic, wanted) == wanted
        assert second_store.checkpoint(RELAY_CONSUMER) == 5
    finally:
        first_stop.set()
        first_store.close()
        second_store.close()


def lease_breaker(kind, store_url):
    """How the holder loses its lease: its lease file deleted (SQLite), its session ended (PostgreSQL)."""
    if kind == "sqlite":
        return lambda: next(store_url.parent.glob("*.relay.lease")).unlink()

    def terminate():
        with psycopg.connect(store_url, autocommit=True) as admin:
            ended = admin.execute(
                b"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'eventlab relay lease%'"
            ).fetchall()
        assert ended == [(True,)]

    return terminate


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_relay_that_loses_the_lease_mid_run_stops_publishing_and_never_moves_the_checkpoint_back(
    kind, settings, tmp_path, request, monkeypatch
):
    # given two relays on one store (each with its own store object, as two processes have), the first active
    url = tmp_path / "events.db" if kind == "sqlite" else request.getfixturevalue("postgres_store_url")
    first_store, second_store = open_store(replace(settings, store_url=str(url))), None
    first, product = Relay(first_store, settings), f"P-fence-{uuid.uuid4().hex[:8]}"
    first.lease_check = 3600.0  # only the fence before each batch and each save may notice the loss
    saved_by_first: list[int] = []
    for method in ("set_checkpoint", "advance_checkpoint"):
        real_save = getattr(first_store, method)
        recording = lambda name, at, save=real_save: saved_by_first.append(at) or save(name, at)
        monkeypatch.setattr(first_store, method, recording)
    # and a batch the first relay has read but not yet published, held up (a pause, a slow network)
    real_read, paused, resume = first_store.read_records, threading.Event(), threading.Event()

    def slow_read(after=0, limit=1000):
        records = real_read(after=after, limit=limit)
        if records and after >= 3:
            paused.set()
            resume.wait(30)
        return records

    monkeypatch.setattr(first_store, "read_records", slow_read)
    first_stop = threading.Event()
    first_thread = threading.Thread(target=first.run, args=(first_stop,), daemon=True)
    try:
        first_thread.start()
        stock(first_store, product, [1, 2, 3])
        eventually(lambda: first.published == 3 and first_store.checkpoint(RELAY_CONSUMER) == 3, "first published")
        stock(first_store, product, [4, 5])
        assert paused.wait(30)
        saves_before = len(saved_by_first)
        # when the first relay loses its lease and the second takes over and publishes further
        lease_breaker(kind, url)()
        second_store = open_store(replace(settings, store_url=str(url)))
        second = Relay(second_store, settings)
        with running(second):
            eventually(lambda: second.active, "the second relay took the lease")
            stock(second_store, product, [6, 7])
            eventually(lambda: second_store.checkpoint(RELAY_CONSUMER) == 7, "the second relay published all")
            resume.set()  # the first relay wakes up with its old batch
            # then it publishes nothing more and stands by
            eventually(lambda: not first.active, "the first relay stood by")
            assert first.published == 3 and first.health()["lease"] == "standby"
            # and it never saved its checkpoint over the newer one
            assert saved_by_first[saves_before:] == []
            assert second_store.checkpoint(RELAY_CONSUMER) == 7
        assert second.published == 4
    finally:
        resume.set()
        first_stop.set()
        first_thread.join(30)
        first_store.close()
        if second_store is not None:
            second_store.close()


def test_asking_the_position_from_another_thread_never_decides_where_the_relay_goes_on(settings, tmp_path):
    # given a relay that has not published yet, and a health check asking its position
    store = SqliteEventStore(tmp_path / "events.db")
    [event] = store.append([NewEvent(StockAdded(product_id=f"P-back-{uuid.uuid4().hex[:8]}", quantity=1), 1)])
    store.set_checkpoint(RELAY_CONSUMER, 1)
    relay = Relay(store, settings)
    assert relay.position == 1

    # when the relay's own thread is told to go back (as catching up on a new subscription does)
    store.set_checkpoint(RELAY_CONSUMER, 0)

    # then it goes on from there, not from what the other thread saw
    assert relay.position == 0
    assert relay.publish_pending() == 1
    assert published_ids(settings, StockAdded.topic, {event.event_id}) == {event.event_id}
    store.close()


@pytest.fixture
def one_partition(tmp_path):
    """A fresh embedded broker whose topic ``inventory.stock.added`` has one partition: offsets count from 0."""
    with EmbeddedBroker(tmp_path / "broker") as broker:
        settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers, partitions=1)
        ensure_topics(settings, [StockAdded.topic])
        yield settings


def relay_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "eventlab.kafka.relay" and r.levelno == logging.WARNING]


def test_a_relay_warns_once_when_a_partition_of_the_embedded_broker_passes_the_warning_level(
    one_partition, tmp_path, caplog
):
    # given a relay told the broker's partitions struggle past 20 messages (the embedded broker's level, lowered)
    store = SqliteEventStore(tmp_path / "events.db")
    relay = Relay(store, one_partition, partition_warning=20)
    caplog.set_level(logging.WARNING, logger="eventlab.kafka.relay")
    try:
        # when it publishes 15 events into the partition: below the level, nothing to say
        stock(store, "P-guard", range(1, 16))
        assert relay.publish_pending() == 15
        assert relay_warnings(caplog) == []
        assert relay.health()["problems"] == []

        # when it publishes past the level, then on
        stock(store, "P-guard", range(16, 26))
        relay.publish_pending()
        stock(store, "P-guard", range(26, 36))
        relay.publish_pending()
    finally:
        relay.close()
        store.close()

    # then it warned exactly once, naming the partition and what to do, and its health keeps saying so
    partition = f"{StockAdded.topic}-0"
    (warning,) = relay_warnings(caplog)
    assert f"partition {partition} holds 25 messages" in warning
    assert "restart the shop" in warning and "EVENTLAB_BOOTSTRAP_SERVERS" in warning
    (problem,) = relay.health()["problems"]
    assert f"partition {partition} holds 35 messages" in problem


def test_a_relay_with_no_partition_warning_says_nothing_however_full_a_partition(one_partition, tmp_path, caplog):
    # given a relay on a broker without a partition limit (as the wiring makes it for Apache Kafka)
    store = SqliteEventStore(tmp_path / "events.db")
    relay = Relay(store, one_partition)
    caplog.set_level(logging.WARNING, logger="eventlab.kafka.relay")
    try:
        # when it publishes many events into one partition
        stock(store, "P-guard", range(1, 51))
        assert relay.publish_pending() == 50
    finally:
        relay.close()
        store.close()

    # then nothing is said
    assert relay_warnings(caplog) == []
    assert relay.health()["problems"] == []


def test_the_wiring_gives_relays_the_partition_warning_only_on_the_embedded_broker(tmp_path):
    # given a store and the shop's services
    store = SqliteEventStore(tmp_path / "events.db")
    settings = Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:9092")
    services = build_services(settings, SimulatedGateway())
    try:
        # when relays are wired for the embedded broker, and for another
        embedded = Wiring(settings, store, services, embedded=True).relay()
        external = Wiring(settings, store, services).relay()
    finally:
        store.close()

    # then only the embedded broker's relay watches its partitions
    assert embedded.partition_warning == EmbeddedBroker.PARTITION_WARNING
    assert external.partition_warning is None


def test_a_topic_deleted_under_the_relay_is_created_again_with_the_messages_no_consumer_had_read(
    apache_kafka_factory, tmp_path, caplog
):
    """On Apache Kafka: the embedded broker goes on acknowledging writes to a deleted topic (README)."""
    # given three events the relay published to their topic, which no consumer has read yet, after a product
    # whose consumer has not read it either (a new producer takes a topic it has just seen to be gone for 30 s;
    # a running shop's relay has seen its topics long before)
    broker = apache_kafka_factory()
    servers = broker.bootstrap_servers
    config = {"topic.metadata.propagation.max.ms": "1000"}
    settings = Settings(data_dir=tmp_path, bootstrap_servers=servers, partitions=1, kafka_config=config)
    ensure_topics(settings)
    topic = StockAdded.topic
    with SqliteEventStore(tmp_path / "events.db") as store:
        store.append([NewEvent(ProductCreated(product_id="P1", name="Pen", price_cents=100, initial_stock=0), 1)])
        stored = store.append([NewEvent(StockAdded(product_id="P1", quantity=q), q) for q in (1, 2, 3)])
        relay = Relay(store, settings, consumers={"inventory": ["StockAdded"], "catalogue": ["ProductCreated"]})
        with running(relay):
            eventually(lambda: relay.published == 4, "the first four published")
            # when the topic is deleted, and one more event is stored
            broker.delete_topic(topic)
            stored += store.append([NewEvent(StockAdded(product_id="P1", quantity=4), 4)])
            # then the relay creates the topic again and publishes the three it took with it, then the fourth: from
            # the first event their consumer has not handled (the product's consumer lost nothing)
            eventually(lambda: relay.published == 8 and relay.failures == 0, "all four published again")
    assert f"relay: topics ['{topic}'] were deleted: created again; publishing again from position 1" in (
        relay_warnings(caplog)
    )
    wanted = {event.event_id for event in stored}
    assert published_ids(settings, topic, wanted) == wanted


def test_orders_on_apache_kafka_complete_although_their_first_topic_is_deleted_mid_run(apache_kafka_factory, tmp_path):
    # given a shop on Apache Kafka with orders in flight (see above for the propagation setting)
    broker = apache_kafka_factory()
    servers = broker.bootstrap_servers
    config = {"topic.metadata.propagation.max.ms": "1000"}
    settings = Settings.from_env(env={}, data_dir=tmp_path, bootstrap_servers=servers, kafka_config=config)
    with Shop(settings, gateway_latency_ms=40) as shop:
        shop.register_user("U1", "Ada Lovelace", "ada@example.com")
        shop.create_product("P1", "Keyboard", 8900, initial_stock=100)
        placed = [shop.place_order("U1", {"P1": 1}) for _ in range(10)]
        # when the topic every saga starts on is deleted, and more orders follow
        broker.delete_topic(OrderCreated.topic)
        placed += [shop.place_order("U1", {"P1": 1}) for _ in range(10)]
        # then every order completes (none waits for its saga's timeout), each reserved and charged once
        assert [shop.wait(order_id, timeout=60).status for order_id in placed] == ["completed"] * 20
        shop.wait_idle()
        for order_id in placed:
            kinds = Counter(event.event_type for event in shop.order(order_id).events)
            assert kinds["StockReserved"] == kinds["PaymentCompleted"] == 1, kinds


DELETE_UNDER_A_CONSUMER = """
import pathlib, sys, time
from confluent_kafka.admin import AdminClient
from eventlab.kafka import EmbeddedBroker, ensure_topics, make_consumer, make_producer
from eventlab.settings import Settings

directory = pathlib.Path(sys.argv[1])
with EmbeddedBroker(directory / "broker") as broker:
    settings = Settings(data_dir=directory, bootstrap_servers=broker.bootstrap_servers, partitions=1)
    ensure_topics(settings, ["t"])
    producer = make_producer(settings)
    producer.produce("t", b"x")
    producer.flush(10)
    consumer = make_consumer(settings, "reader")
    consumer.subscribe(["t"])
    while (message := consumer.poll(0.2)) is None or message.error():
        pass
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.delete_topics(["t"])["t"].result(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        consumer.poll(0.1)
    print("survived")
"""


def test_a_consumer_reading_a_topic_deleted_on_the_embedded_broker_crashes_its_process(tmp_path):
    """What the README warns of (librdkafka 2.16 on Tansu): once this fails, the warning can go."""
    result = subprocess.run(
        [sys.executable, "-c", DELETE_UNDER_A_CONSUMER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),  # no core file of the crash
    )
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stdout, result.stderr[-2000:])

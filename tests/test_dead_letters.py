"""Dead letters: no input stops a service; each poison message is recorded once, whole, in the store,
copied to ``<topic>.dlq`` with a checked delivery, and can be listed, shown and replayed.

Runs on real SQLite and a real broker, the embedded one and Apache Kafka: the shared ``shop`` for the
end-to-end stories, a private broker and store where a test needs a service or a store of its own. Poison for the
shared shop goes to topics other than ``order.lifecycle.created``, whose dead-letter topic
``test_saga.py`` reads from the start.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sqlite3
import threading
import time
import uuid

import pytest
from apache_kafka import BROKERS
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from conftest import unique

from eventlab import cli
from eventlab.dlq import BODY_LIMIT, BrokerUnreachable, DeadLetterPublisher, DeadLetters, printable
from eventlab.errors import BrokerError, StoreError
from eventlab.events import (
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ProductCreated,
    ReservationConfirmed,
)
from eventlab.kafka import EmbeddedBroker, dead_letter_topic, ensure_topics, make_consumer, make_producer
from eventlab.kafka.broker import free_port
from eventlab.kafka.clients import STORE_TOPIC, make_dead_letter_producer, produce_and_wait
from eventlab.kafka.loop import ServiceLoop
from eventlab.kafka.relay import Relay, unpublished
from eventlab.services import inventory
from eventlab.services.runtime import Service, load
from eventlab.settings import Settings
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.store.base import RELAY_CONSUMER

pytestmark = pytest.mark.integration


@pytest.fixture(params=BROKERS)
def shop(request, shop):
    """Each end-to-end story runs on the embedded broker's shop and on Apache Kafka's."""
    return shop if request.param == "embedded" else request.getfixturevalue("apache_kafka_shop")


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.02)
    return found


def poison_headers(event_id: str, event_type: str = "OrderCreated") -> list[tuple[str, bytes]]:
    return [("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_type", event_type.encode())]


def send(settings, topic, value, key=b"poison", headers=(), **config):
    producer = make_producer(settings, **config)
    producer.produce(topic, value, key, headers=list(headers))
    # (a fresh Apache Kafka answers "coordinator load in progress" to the producer's first requests:
    # on a loaded machine for more than 10 s)
    assert producer.flush(60) == 0


def read_topic(settings, topic, until=None, timeout=30.0, settle=1.0):
    """Messages of ``topic`` from the start (assigned, no group join): until ``until(messages)``
    holds and nothing more arrived for ``settle`` seconds, or ``timeout``."""
    consumer = make_consumer(settings, f"test-reader-{uuid.uuid4().hex[:8]}")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                got.append(message)
                quiet_since = time.monotonic()
            elif (until is None or until(got)) and time.monotonic() - quiet_since > settle:
                break
    finally:
        consumer.close()
    return got


def letters_of(store, event_id):
    return [letter for letter in store.dead_letters() if letter.event_id == event_id]


def subscribers(shop, topic):
    return {name for name, loop in shop.loops.items() if topic in loop.service.topics}


# --- the shared shop: poison of every kind, and the shop goes on -----------------------------------


def test_deeply_nested_json_is_dead_lettered_and_orders_still_complete(shop, customer, make_product):
    # given a message with a known type whose data is a 100,000-deep JSON array
    event_id = f"deep-{uuid.uuid4()}"
    topic = OrderConfirmed.topic  # read by payment and notification, on every order's path
    send(
        shop.kafka_settings, topic, b"[" * 100_000 + b"]" * 100_000, headers=poison_headers(event_id, "OrderConfirmed")
    )
    # when every service reading that topic has seen it
    expected = subscribers(shop, topic)
    letters = wait_until(
        lambda: (found := letters_of(shop.store, event_id)) and {x.consumer for x in found} == expected and found,
        what="a dead letter per subscriber",
    )
    # then each recorded it once, with the reason, and its copy was acknowledged
    assert len(letters) == len(expected)
    assert all(letter.reason == "value is nested too deeply to decode" for letter in letters)
    wait_until(lambda: all(x.published for x in letters_of(shop.store, event_id)), what="copies published")
    # and the services keep working
    product = make_product(2)
    shop.wait_idle()
    assert shop.wait(shop.place_order(customer, {product: 1})).status == "completed"
    assert all(t.is_alive() for t in shop._threads)


def test_a_one_megabyte_body_is_recorded_whole_and_copied_truncated(shop, customer, make_product):
    # given 999,700 bytes that are not JSON
    event_id = f"huge-{uuid.uuid4()}"
    body = bytes(range(256)) * (999_700 // 256) + b"x" * (999_700 % 256)
    topic = ReservationConfirmed.topic  # read by the order service
    send(shop.kafka_settings, topic, body, headers=poison_headers(event_id, "ReservationConfirmed"))
    # when it has been dead-lettered
    letter = wait_until(
        lambda: next((x for x in letters_of(shop.store, event_id) if x.consumer == "order" and x.published), None),
        what="the order service's dead letter",
    )
    # then the store has every byte and the reason
    assert letter.value == body and len(letter.value) == 999_700
    assert letter.reason.startswith("value is not JSON")
    # and the .dlq copy carries the first 64 KiB, marked truncated, with where it came from
    copies = read_topic(
        shop.kafka_settings,
        dead_letter_topic(topic),
        lambda got: any(dict(m.headers()).get("dlq_id") == str(letter.id).encode() for m in got),
    )
    [copy] = [m for m in copies if dict(m.headers())["dlq_id"] == str(letter.id).encode()]
    headers = dict(copy.headers())
    assert headers["dlq_id"] == str(letter.id).encode()
    assert len(copy.value()) == BODY_LIMIT and body.startswith(copy.value())
    assert headers["dlq_truncated"] == b"1"
    assert headers["dlq_consumer"] == b"order"
    assert headers["dlq_topic"] == topic.encode()
    assert (int(headers["dlq_partition"]), int(headers["dlq_offset"])) == (letter.partition, letter.offset)
    assert headers["ce_id"] == event_id.encode()
    # and the shop goes on
    product = make_product(1)
    shop.wait_idle()
    assert shop.wait(shop.place_order(customer, {product: 1})).status == "completed"


def test_an_event_on_a_topic_not_its_own_is_dead_lettered_by_every_reader_and_acted_on_by_none(
    shop, customer, make_product
):
    # given a valid OrderCreated for a product in stock, sent to the cancelled orders' topic,
    # which Inventory reads (and acts on OrderCreated from its own topic)
    product = make_product(3)
    created = OrderCreated(
        order_id=unique("O"),
        user_id=customer,
        lines=(OrderLine(product_id=product, quantity=2, unit_price_cents=1000),),
        total_cents=2000,
    )
    event_id = f"astray-{uuid.uuid4()}"
    topic = OrderCancelled.topic
    send(
        shop.kafka_settings,
        topic,
        created.model_dump_json().encode(),
        key=created.order_id.encode(),
        headers=poison_headers(event_id),
    )
    # when every service reading that topic has seen it
    expected = subscribers(shop, topic)
    letters = wait_until(
        lambda: (found := letters_of(shop.store, event_id)) and {x.consumer for x in found} == expected and found,
        what="a dead letter per subscriber",
    )
    # then Inventory names the topic the type belongs on, and reserves nothing
    assert "inventory" in expected
    [refused] = [letter for letter in letters if letter.consumer == "inventory"]
    assert refused.reason == f"OrderCreated is published on {OrderCreated.topic}, not on {topic}"
    shop.wait_idle()
    assert load(shop.store, ("stock", product), inventory.evolve_stock).state == inventory.Stock(available=3)


def test_dead_lettered_count_is_durable_and_lag_ignores_dead_letters(shop):
    # given a poison message the order service has dead-lettered
    event_id = f"garbage-{uuid.uuid4()}"
    topic = PaymentCompleted.topic  # read by the order service
    send(shop.kafka_settings, topic, b"\x00\xff garbage", headers=poison_headers(event_id, "PaymentCompleted"))
    wait_until(lambda: any(x.consumer == "order" for x in letters_of(shop.store, event_id)))
    # when a new loop instance for the same service starts (a restart)
    fresh = ServiceLoop(shop.services["order"], shop.store, shop.kafka_settings)
    # then it reports every dead letter ever recorded for the service, not zero
    recorded = shop.store.dead_letter_counts()["order"]
    assert fresh.health()["dead_lettered"] == recorded >= 1
    assert fresh.health()["problems"] == []
    # and the shop becomes idle: no lag is left by what was dead-lettered
    shop.wait_idle()
    assert fresh.lag() == 0


# --- a private broker and store: what the loop and the relay do step by step -------------------------


@pytest.fixture(params=BROKERS)
def kafka(request, tmp_path):
    """Settings for a broker of this test's own (empty topics and groups), embedded or Apache Kafka."""
    with contextlib.ExitStack() as stack:
        if request.param == "embedded":
            servers = stack.enter_context(EmbeddedBroker(tmp_path / "broker")).bootstrap_servers
        else:
            servers = request.getfixturevalue("apache_kafka_factory")().bootstrap_servers
        settings = Settings(data_dir=tmp_path / "data", bootstrap_servers=servers, partitions=1)
        ensure_topics(settings)
        yield settings


@pytest.fixture
def store(kafka):
    with SqliteEventStore(kafka.store_path) as opened:
        yield opened


class FlakyProducer:
    """A real producer whose delivery reports fail while ``failing`` is set (a broker refusing the DLQ)."""

    def __init__(self, settings, failing):
        self._producer = make_dead_letter_producer(settings)
        self.failing = failing
        self.produced = 0

    def produce(self, topic, value, key, headers, on_delivery):
        if self.failing.is_set():
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            return
        self.produced += 1
        self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)

    def flush(self, timeout):
        return self._producer.flush(timeout)

    def purge(self):
        self._producer.purge()


def recorder(name, handled, broken=None):
    """A service that notes each ProductCreated it handles; fails while ``broken`` is set."""

    def handle(event, _states):
        if broken is not None and broken.is_set():
            raise RuntimeError("a bug in the handler")
        handled.append(event.product_id)
        return ()

    return Service(name, subscriptions=(ProductCreated,), handle=handle)


def committed(settings, service, topic):
    consumer = make_consumer(settings, service)
    try:
        [partition] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    finally:
        consumer.close()
    return partition.offset


def test_a_failed_dead_letter_delivery_holds_the_partition_until_it_succeeds(kafka, store):
    # given a loop whose dead-letter deliveries fail, and poison followed by a good message
    failing = threading.Event()
    failing.set()
    producers = []

    def factory(settings):
        producers.append(FlakyProducer(settings, failing))
        return producers[-1]

    handled: list[str] = []
    service = recorder(f"holder-{uuid.uuid4().hex[:6]}", handled)
    loop = ServiceLoop(service, store, kafka, dead_letters=DeadLetterPublisher(store, kafka, factory))
    topic = ProductCreated.topic
    send(kafka, topic, b"not json", headers=poison_headers("poison-1", "ProductCreated"))
    good = ProductCreated(product_id="P-after", name="After", price_cents=100, initial_stock=0)
    send(kafka, topic, good.model_dump_json().encode(), headers=poison_headers("good-1", "ProductCreated"))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        # when the dead letter cannot be delivered
        problems = wait_until(lambda: loop.health()["problems"], what="a reported problem")
        time.sleep(1.0)  # several retries with backoff
        # then the service reports it, holds at the poison and handles nothing after it
        assert "held at offset 0" in problems[0] and "cannot dead-letter" in problems[0]
        assert handled == []
        [letter] = store.dead_letters(consumer=service.name)
        assert not letter.published and letter.value == b"not json"
        assert committed(kafka, service.name, topic) < 1  # nothing committed past the poison
        # when the dead-letter topic can be written again
        failing.clear()
        wait_until(lambda: handled == ["P-after"], what="the good message handled")
        wait_until(lambda: committed(kafka, service.name, topic) == 2, what="offsets committed")
    finally:
        stop.set()
        thread.join(30)
    # then the poison was recorded and copied once, the good message handled once, the problem gone
    [letter] = store.dead_letters(consumer=service.name)
    assert letter.published
    assert sum(p.produced for p in producers) == 1
    assert loop.health()["problems"] == [] and loop.health()["dead_lettered"] == 1
    copies = read_topic(kafka, dead_letter_topic(topic), lambda got: len(got) >= 1)
    assert [dict(m.headers())["dlq_id"] for m in copies] == [str(letter.id).encode()]


def test_a_message_over_librdkafkas_default_answer_size_is_dead_lettered_not_a_stall(tmp_path):
    # Given the embedded broker, which takes a message of any size (Apache Kafka refuses one over 1 MB),
    # 101 MB that are not JSON, then a good message behind them
    with EmbeddedBroker(tmp_path / "broker") as broker, SqliteEventStore(tmp_path / "events.db") as store:
        settings = Settings(data_dir=tmp_path / "data", bootstrap_servers=broker.bootstrap_servers, partitions=1)
        ensure_topics(settings)
        topic, huge = ProductCreated.topic, b"x" * 101_000_000
        send(settings, topic, huge, headers=poison_headers("huge-1", "ProductCreated"), **{"message.max.bytes": 10**9})
        good = ProductCreated(product_id="P-after", name="After", price_cents=100, initial_stock=0)
        send(settings, topic, good.model_dump_json().encode(), headers=poison_headers("good-1", "ProductCreated"))
        handled: list[str] = []
        loop = ServiceLoop(recorder(f"big-{uuid.uuid4().hex[:6]}", handled), store, settings)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        try:
            # then the service reads past it: a librdkafka consumer with its default 100 MB answer limit
            # refused the fetch again and again, and stopped every partition it read
            wait_until(lambda: handled == ["P-after"], timeout=120, what="the message after the huge one handled")
        finally:
            stop.set()
            thread.join(30)
        # and the huge one is a dead letter, recorded whole
        [letter] = store.dead_letters()
        assert (letter.event_id, len(letter.value), letter.reason[:17]) == ("huge-1", len(huge), "value is not JSON")
        del letter, huge
        gc.collect()


def test_a_header_of_control_characters_is_recorded_in_a_third_more_bytes_not_six_times_as_many(tmp_path):
    # given headers of control characters (JSON writes each as six: 170 MB of them were 1 GB of text,
    # over what SQLite stores in one value, and the partition was held for good), text and binary
    headers = [("x", b"\x01" * 3_000_000), ("text", "café".encode()), ("raw", b"\xff\x00"), ("none", None)]
    with SqliteEventStore(tmp_path / "events.db") as store:
        letter = store.record_dead_letter("svc", "t", 0, 1, b"K", b"body", headers, "bad")
        # then they are recorded in at most 4/3 of their bytes, and read back byte for byte
        assert store.dead_letters(ids=[letter.id])[0].headers == headers
    with sqlite3.connect(tmp_path / "events.db") as con:
        [(stored,)] = con.execute("SELECT length(CAST(headers AS BLOB)) FROM dead_letters").fetchall()
    con.close()
    assert stored < 3_000_000 * 4 / 3 + 200


def test_a_message_too_large_for_the_store_is_recorded_cut_and_says_so(kafka, store, monkeypatch):
    # given a store that holds at most 1,000 bytes of a body and of headers (1e9 for real: a message
    # the broker took can be larger, and its record failed again and again, holding the partition)
    monkeypatch.setattr("eventlab.kafka.loop.RECORD_LIMIT", 1_000)
    topic = ProductCreated.topic
    headers = [*poison_headers("big-1", "ProductCreated"), ("padding", b"p" * 2_000)]
    send(kafka, topic, b"not json" * 500, headers=headers)
    good = ProductCreated(product_id="P-after", name="After", price_cents=100, initial_stock=0)
    send(kafka, topic, good.model_dump_json().encode(), headers=poison_headers("good-1", "ProductCreated"))
    handled: list[str] = []
    loop = ServiceLoop(recorder(f"cut-{uuid.uuid4().hex[:6]}", handled), store, kafka)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        # when the service reads it, then it moves on to the next message
        wait_until(lambda: handled == ["P-after"], what="the message after the large one handled")
    finally:
        stop.set()
        thread.join(30)
    # and the large one is recorded cut, its reason saying what was left out
    [letter] = store.dead_letters(consumer=loop.service.name)
    assert (letter.value, letter.headers) == ((b"not json" * 500)[:1_000], [])
    assert (
        "body recorded cut: 4,000 bytes in all" in letter.reason and "headers not recorded: 4 headers" in letter.reason
    )


class FlakyStore(SqliteEventStore):
    """A real store that fails like a full disk while ``failing`` is set."""

    def __init__(self, path, failing):
        super().__init__(path)
        self.failing = failing

    def _check(self):
        if self.failing.is_set():
            raise StoreError("disk I/O error")

    def is_processed(self, consumer, event_id):
        self._check()
        return super().is_processed(consumer, event_id)

    def processed_among(self, consumer, event_ids):  # a batch's first read
        self._check()
        return super().processed_among(consumer, event_ids)

    def append_batch(self, appends):  # a batch's one write
        self._check()
        return super().append_batch(appends)

    def record_dead_letter(self, *args, **kwargs):
        self._check()
        return super().record_dead_letter(*args, **kwargs)


def test_a_store_failure_holds_the_partition_and_skips_nothing(kafka):
    # given a store that fails, and a good message followed by poison
    failing = threading.Event()
    failing.set()
    handled: list[str] = []
    service = recorder(f"patient-{uuid.uuid4().hex[:6]}", handled)
    topic = ProductCreated.topic
    good = ProductCreated(product_id="P-first", name="First", price_cents=100, initial_stock=0)
    send(kafka, topic, good.model_dump_json().encode(), headers=poison_headers("good-2", "ProductCreated"))
    send(kafka, topic, b"not json either", headers=poison_headers("poison-3", "ProductCreated"))
    with FlakyStore(kafka.store_path, failing) as store:
        loop = ServiceLoop(service, store, kafka)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        try:
            # when the good message cannot be handled for a while
            problems = wait_until(lambda: loop.health()["problems"], what="a reported problem")
            time.sleep(1.0)
            # then it is held, not dead-lettered, and nothing after it is touched
            assert "held at offset 0" in problems[0] and "disk I/O error" in problems[0]
            assert store.dead_letters() == [] and handled == []
            # when the store recovers
            failing.clear()
            wait_until(lambda: committed(kafka, service.name, topic) == 2, what="offsets committed")
        finally:
            stop.set()
            thread.join(30)
        # then the good message was handled once and the poison dead-lettered once
        assert handled == ["P-first"]
        [letter] = store.dead_letters()
        assert (letter.offset, letter.event_id, letter.published) == (1, "poison-3", True)
        assert loop.health()["problems"] == []


def test_poison_behind_a_held_message_waits_its_turn(kafka):
    # given a good message and poison behind it, consumed in one batch
    topic = ProductCreated.topic
    good = ProductCreated(product_id="P-first", name="First", price_cents=100, initial_stock=0)
    send(kafka, topic, good.model_dump_json().encode(), headers=poison_headers("good-2", "ProductCreated"))
    send(kafka, topic, b"not json either", headers=poison_headers("poison-3", "ProductCreated"))
    consumer = make_consumer(kafka, f"reader-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + 30
    while len(messages) < 2 and time.monotonic() < deadline:
        if (message := consumer.poll(0.2)) is not None and not message.error():
            messages.append(message)
    consumer.close()
    # and a store that can record dead letters but cannot handle events
    failing = threading.Event()
    failing.set()

    class HandlingFails(FlakyStore):
        def record_dead_letter(self, *args, **kwargs):
            return SqliteEventStore.record_dead_letter(self, *args, **kwargs)

    handled: list[str] = []
    with HandlingFails(kafka.store_path, failing) as store:
        loop = ServiceLoop(recorder(f"patient-{uuid.uuid4().hex[:6]}", handled), store, kafka)
        # when the batch is processed
        offsets = loop.process(messages)
        # then the good message is held and the poison behind it is not touched yet
        assert offsets == [] and handled == [] and store.dead_letters() == []
        [problem] = loop.health()["problems"]
        assert "held at offset 0" in problem and "disk I/O error" in problem


def test_a_redelivered_poison_message_is_dead_lettered_once(kafka, store):
    # given a poison message, consumed as a service would
    topic = OrderCreated.topic
    send(kafka, topic, b"{broken", headers=poison_headers("poison-2"))
    consumer = make_consumer(kafka, f"reader-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    message = wait_until(lambda: (m := consumer.poll(0.2)) is not None and not m.error() and m, what="the message")
    consumer.close()
    service = Service("inventory", subscriptions=(OrderCreated,))
    # and a loop killed after recording its dead letter, before the copy was acknowledged
    failing = threading.Event()
    failing.set()
    first = ServiceLoop(
        service, store, kafka, dead_letters=DeadLetterPublisher(store, kafka, lambda s: FlakyProducer(s, failing))
    )
    assert first.process([message]) == []
    # when a new instance gets the message again (its offset was never committed), twice
    second = ServiceLoop(service, store, kafka)
    offsets = second.process([message])
    third = ServiceLoop(service, store, kafka)
    assert third.process([message]) == offsets
    # then there is one record and one copy, and the offset moves past the message
    assert [(o.partition, o.offset) for o in offsets] == [(message.partition(), message.offset() + 1)]
    [letter] = store.dead_letters()
    assert letter.published and (letter.topic, letter.offset) == (topic, message.offset())
    copies = read_topic(kafka, dead_letter_topic(topic), lambda got: len(got) >= 1)
    assert len(copies) == 1
    assert store.dead_letter_counts() == {"inventory": 1}


def insert_raw(store, event_type, data, metadata="{}", aggregate_id="X-1"):
    """Write a row straight into SQLite, as a bad migration or a hand edit would."""
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version,"
            " data, metadata, recorded_at) VALUES (?, 'order', ?, 1, ?, 1, ?, ?, '2026-01-01 00:00:00.000000')",
            (str(uuid.uuid4()), aggregate_id, event_type, data, metadata),
        )
    return store.head()


def publish_once(store, kafka):
    """One batch published by a new relay, closed after: (events published, the relay)."""
    relay = Relay(store, kafka)
    try:
        return relay.publish_pending(), relay
    finally:
        relay.close()


def test_the_relay_dead_letters_stored_events_it_cannot_decode_and_publishes_the_rest(kafka, store):
    # given stored events, three of which no consumer could read
    [before] = store.append(
        [NewEvent(ProductCreated(product_id="P-1", name="One", price_cents=100, initial_stock=0), 1)]
    )
    teleported = insert_raw(store, "OrderTeleported", '{"order_id": "O-1"}', aggregate_id="O-1")
    invalid = insert_raw(store, "OrderCreated", '{"order_id": "O-2"}', aggregate_id="O-2")
    not_json = insert_raw(store, "OrderCreated", "{not json", aggregate_id="O-3")
    [after] = store.append(
        [NewEvent(ProductCreated(product_id="P-2", name="Two", price_cents=200, initial_stock=0), 1)]
    )
    # when the relay runs
    published, relay = publish_once(store, kafka)
    # then it publishes the good ones, records the others and moves past them all
    assert published == 2 and relay.dead_lettered == 3
    assert store.checkpoint(RELAY_CONSUMER) == store.head() and unpublished(store) == 0
    letters = store.dead_letters(consumer="relay")
    assert [(x.topic, x.offset) for x in letters] == [
        (STORE_TOPIC, teleported),
        (STORE_TOPIC, invalid),
        (STORE_TOPIC, not_json),
    ]
    assert letters[0].reason == "unknown event type 'OrderTeleported'"
    assert letters[1].reason.startswith("invalid OrderCreated")
    assert letters[2].reason.startswith("value is not JSON")
    assert all(x.published for x in letters)
    products = read_topic(kafka, ProductCreated.topic, lambda got: len(got) >= 2)
    assert [dict(m.headers())["ce_id"].decode() for m in products] == [before.event_id, after.event_id]
    copies = read_topic(kafka, dead_letter_topic(STORE_TOPIC), lambda got: len(got) >= 3)
    assert [int(dict(m.headers())["dlq_offset"]) for m in copies] == [teleported, invalid, not_json]
    # and a second run does not record or copy them again
    assert Relay(store, kafka).publish_pending() == 0
    assert len(store.dead_letters()) == 3
    # and no service counts what the relay dead-lettered as lag
    assert ServiceLoop(Service("inventory", subscriptions=(OrderCreated,)), store, kafka).lag() == 0
    assert store.unprocessed("inventory", ["OrderCreated"]) == 2  # the raw count still sees them


def test_the_relay_dead_letters_a_stored_event_too_large_to_publish_instead_of_retrying_it_for_ever(kafka, store):
    # given a stored event larger than any broker takes (a forged message a service took in can grow so:
    # an email's subject repeats the order id), between two ordinary ones
    huge = ProductCreated(product_id="P-huge", name="x" * 1_200_000, price_cents=1, initial_stock=0)
    [before, too_large, after] = store.append(
        [
            NewEvent(ProductCreated(product_id="P-1", name="One", price_cents=100, initial_stock=0), 1),
            NewEvent(huge, 1),
            NewEvent(ProductCreated(product_id="P-2", name="Two", price_cents=200, initial_stock=0), 1),
        ]
    )
    # when the relay runs
    published, relay = publish_once(store, kafka)
    # then it records that one as a dead letter saying why, and publishes the others: nothing after it waits
    assert published == 2 and relay.dead_lettered == 1
    assert store.checkpoint(RELAY_CONSUMER) == store.head() and unpublished(store) == 0
    [letter] = store.dead_letters(consumer="relay")
    assert (letter.topic, letter.offset, letter.event_id) == (STORE_TOPIC, too_large.position, too_large.event_id)
    assert letter.reason.startswith("cannot be published") and "too large" in letter.reason, letter.reason
    products = read_topic(kafka, ProductCreated.topic, lambda got: len(got) >= 2)
    assert [dict(m.headers())["ce_id"].decode() for m in products] == [before.event_id, after.event_id]
    [copy] = read_topic(kafka, dead_letter_topic(STORE_TOPIC), lambda got: len(got) >= 1)
    assert int(dict(copy.headers())["dlq_offset"]) == too_large.position


def test_list_show_and_replay_round_trip(kafka, store, monkeypatch, capsys):
    # given a service whose handler has a bug, and a product event it dead-letters
    broken, handled = threading.Event(), []
    broken.set()
    service = recorder(f"buggy-{uuid.uuid4().hex[:6]}", handled, broken)
    loop = ServiceLoop(service, store, kafka, backoff=0.01)
    relay = Relay(store, kafka)
    [stored] = store.append(
        [NewEvent(ProductCreated(product_id="P-7", name="Seven", price_cents=700, initial_stock=0), 1)]
    )
    relay.publish_pending()
    relay.close()
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    data_dir = str(kafka.data_dir)
    try:
        wait_until(lambda: store.dead_letters(consumer=service.name), what="the dead letter")
        assert loop.lag() == 0  # dead-lettered, so no lag
        # when a person lists it
        assert cli.main(["dlq", "list", "--data-dir", data_dir, "--json"]) == 0
        [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert listed["consumer"] == service.name and listed["event_id"] == stored.event_id
        assert listed["reason"].startswith("handler failed after 4 attempts: RuntimeError: a bug in the handler")
        assert cli.main(["dlq", "list", "--data-dir", data_dir]) == 0
        assert "handler failed" in capsys.readouterr().out
        # and shows it, the raw bytes written to a file on request
        body = kafka.data_dir / "body.bin"
        assert cli.main(["dlq", "show", str(listed["id"]), "--data-dir", data_dir, "--full", str(body)]) == 0
        shown = capsys.readouterr().out
        assert "ce_type: ProductCreated" in shown and '"product_id":"P-7"' in shown
        assert body.read_bytes() == store.dead_letters(consumer=service.name)[0].value
        # and replays it after the fix
        broken.clear()
        assert cli.main(["dlq", "replay", str(listed["id"]), "--data-dir", data_dir]) == 0
        assert f"replayed {listed['id']} to {ProductCreated.topic}" in capsys.readouterr().out
        # then the service handles it
        wait_until(lambda: handled == ["P-7"], what="the replayed event handled")
        # (handled when decided; recorded as processed when that decision commits, a moment later)
        wait_until(lambda: store.is_processed(service.name, stored.event_id), what="the replay committed")
        # and replaying it again changes nothing (idempotent consumer)
        assert DeadLetters(store, kafka).replay(topic=ProductCreated.topic)[0].ok
        wait_until(lambda: loop.stats.duplicates >= 1, what="the second replay skipped")
    finally:
        stop.set()
        thread.join(30)
    assert handled == ["P-7"]
    [letter] = store.dead_letters(consumer=service.name)
    assert letter.replays == 2
    assert cli.main(["dlq", "replay", "--data-dir", data_dir]) == 2  # neither IDs nor --all


def test_a_replay_reaches_only_the_consumer_whose_dead_letter_it_is(kafka, store):
    # given two services reading one topic, and a message neither can decode: a dead letter each
    tag = uuid.uuid4().hex[:6]
    first, second = (f"{name}-{tag}" for name in ("first", "second"))
    topic = ProductCreated.topic
    loops = [
        ServiceLoop(recorder(first, []), store, kafka, peers={topic: [second]}),
        ServiceLoop(recorder(second, []), store, kafka, peers={topic: [first]}),
    ]
    send(kafka, topic, b"not json", headers=poison_headers("poison-r", "ProductCreated"))
    stop = threading.Event()
    threads = [threading.Thread(target=loop.run, args=(stop,)) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: store.dead_letter_counts() == {first: 1, second: 1}, what="a dead letter each")
        # when the first service's is replayed, still poison (nothing was fixed)
        [letter] = store.dead_letters(consumer=first)
        assert DeadLetters(store, kafka).replay([letter.id])[0].ok
        # then the first records it again, and the second moves past it without a second letter
        wait_until(lambda: committed(kafka, second, topic) == 2, what="the second past the replay")
        wait_until(lambda: store.dead_letter_counts().get(first) == 2, what="the first's second letter")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert store.dead_letter_counts() == {first: 2, second: 1}


@pytest.mark.parametrize("named", [b"nobody", None, b""], ids=["a-stranger", "null", "empty"])
def test_a_replay_header_naming_no_consumer_of_the_topic_is_not_trusted(kafka, store, named):
    # given a service whose topic has one other consumer, and poison on it that says it is a
    # dead letter replayed for someone who does not read the topic
    tag = uuid.uuid4().hex[:6]
    service, other = f"svc-{tag}", f"other-{tag}"
    topic = ProductCreated.topic
    loop = ServiceLoop(recorder(service, []), store, kafka, peers={topic: [other]})
    send(kafka, topic, b"not json", headers=[*poison_headers("poison-f", "ProductCreated"), ("dlq_replay_for", named)])
    # when the service reads it, then it is dead-lettered like any poison, not skipped unseen
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: store.dead_letter_counts().get(service) == 1, what="the forged replay dead-lettered")
    finally:
        stop.set()
        thread.join(30)
    [letter] = store.dead_letters(consumer=service)
    assert letter.value == b"not json"


def test_a_body_is_shown_safely_in_a_terminal():
    # given bytes with a terminal escape, a NUL, invalid UTF-8 and a lot of them
    body = b"ok \x1b[2J\x00 \xff\xfe caf\xc3\xa9" + b"z" * 5000
    # when made printable
    shown = printable(body, limit=40)
    # then nothing reaches the terminal raw, text stays text, and the cut says so
    assert "\x1b" not in shown and "\x00" not in shown
    assert shown.startswith("ok \\x1b[2J\\x00 \\xff\\xfe café")
    assert "5,017 bytes in all" in shown


def test_a_failed_delivery_is_an_error_although_flush_returns_zero(tmp_path):
    # given a producer whose broker never answers, and a short delivery timeout
    nowhere = Settings(data_dir=tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}")
    producer = make_producer(nowhere, **{"message.timeout.ms": 300})
    # when a message is produced: flush() says nothing is left...
    producer.produce("anywhere", b"x", b"k")
    assert producer.flush(5) == 0
    # ...but produce_and_wait reads the delivery report and says it failed
    with pytest.raises(BrokerError, match="timed out"):
        produce_and_wait(producer, "anywhere", b"x", b"k", [], timeout=5)


def test_a_dead_letter_is_recorded_once_per_source_message(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        headers = [("ce_id", b"E-1"), ("binary", b"\xff\x00"), ("empty", None)]
        # given a dead letter recorded for a message
        first = store.record_dead_letter("order", "t", 1, 42, b"K", b"\xffbody", headers, "bad", event_id="E-1")
        # when the same message is recorded again (a redelivery after a kill)
        again = store.record_dead_letter("order", "t", 1, 42, b"K", b"\xffbody", headers, "bad again", event_id="E-1")
        # then it is the same record, whole: bytes and headers exactly as they came
        assert again == first and (first.value, first.headers, first.reason) == (b"\xffbody", headers, "bad")
        assert not first.published
        # and another message at the same offset (an embedded broker restarted) is a new record
        other = store.record_dead_letter("order", "t", 1, 42, b"K", b"other", [], "bad")
        # and another consumer's record of the same message is its own
        mine = store.record_dead_letter("payment", "t", 1, 42, b"K", b"\xffbody", headers, "bad")
        assert len({first.id, other.id, mine.id}) == 3
        store.mark_dead_letter_published(first.id)
        assert store.dead_letters(ids=[first.id])[0].published
        assert [x.id for x in store.dead_letters(unpublished=True)] == [other.id, mine.id]
        assert store.dead_letter_counts() == {"order": 2, "payment": 1}


@pytest.mark.parametrize(
    ("column", "damage"), [("headers", "'not json'"), ("recorded_at", "'yesterday'"), ("headers", "'[[1, {}]]'")]
)
def test_a_damaged_dead_letter_row_is_named_in_one_line(tmp_path, capsys, column, damage):
    # given a dead letter whose row was edited by hand (or read from a damaged file)
    with SqliteEventStore(tmp_path / "events.db") as store:
        letter = store.record_dead_letter("order", "t", 0, 7, b"K", b"body", [("ce_id", b"E-1")], "bad")
    with sqlite3.connect(tmp_path / "events.db") as con:
        con.execute(f"UPDATE dead_letters SET {column} = {damage}")
    con.close()
    # then listing and showing it name the row and the column, in one line, instead of a traceback
    for command in (["list"], ["show", str(letter.id)]):
        assert cli.main(["dlq", *command, "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"dead letter {letter.id} is damaged: its {column} cannot be read" in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("target", ["events.db", "events.db-wal", "events.db-shm", "events.db-journal", "link"])
def test_show_full_refuses_to_write_over_the_store_it_reads(tmp_path, capsys, target):
    # given a store with a dead letter, a link to it, and a directory beside it
    with SqliteEventStore(tmp_path / "events.db") as store:
        letter = store.record_dead_letter("order", "t", 0, 7, b"K", b"body", [], "bad")
    (tmp_path / "link").symlink_to(tmp_path / "events.db")
    (tmp_path / "sub").mkdir()
    files = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    # when the body is to be written to the store, a file SQLite keeps beside it, or the store by another name
    full = tmp_path / "sub" / ".." / target
    code = cli.main(["dlq", "show", str(letter.id), "--full", str(full), "--data-dir", str(tmp_path)])
    # then it is refused in one line, and nothing was written (the body overwrote it: 970 KB became 30 bytes)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--full {full}: that is the event store {tmp_path / 'events.db'} or a file SQLite keeps beside it" in err
    assert {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == files


def test_a_replay_against_an_unreachable_broker_stops_at_the_first_letter_and_loses_nothing(
    tmp_path, monkeypatch, capsys
):
    # given three recorded dead letters, and bootstrap servers where no broker listens
    with SqliteEventStore(tmp_path / "events.db") as store:
        for offset in range(3):
            store.record_dead_letter("order", "order.lifecycle.created", 0, offset, b"K", b"{}", [], "bad")
    nowhere = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", nowhere)
    # when every one is replayed with a short wait for the broker
    code = cli.main(["dlq", "replay", "--all", "--timeout", "0.5", "--data-dir", str(tmp_path)])
    # then the replay stops at the first, says the broker (named) is unreachable and nothing is lost
    err = capsys.readouterr().err
    assert code == 1
    assert f"the broker at {nowhere} did not acknowledge dead letter 1 within 0.5 s" in err
    assert "nothing is lost: the 3 dead letters not replayed stay recorded" in err
    # and the letters are all still there, none marked replayed
    with SqliteEventStore(tmp_path / "events.db") as store:
        assert [letter.replays for letter in store.dead_letters()] == [0, 0, 0]
    # and the API raises the same, with how many are left
    with SqliteEventStore(tmp_path / "events.db") as store:
        letters = DeadLetters(store, Settings(data_dir=tmp_path, bootstrap_servers=nowhere))
        with pytest.raises(BrokerUnreachable) as stopped:
            letters.replay(timeout=0.5)
        letters.close()
    assert (stopped.value.left, stopped.value.outcomes) == (3, [])


def test_a_replay_that_the_broker_did_not_acknowledge_releases_its_producer(tmp_path, monkeypatch):
    # given a recorded dead letter, bootstrap servers where no broker listens, and every producer made kept
    made = []

    def kept(*args, **kwargs):
        made.append(make_producer(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("eventlab.dlq.make_producer", kept)
    with SqliteEventStore(tmp_path / "events.db") as store:
        store.record_dead_letter("order", "order.lifecycle.created", 0, 0, b"K", b"{}", [], "bad")
        letters = DeadLetters(store, Settings(data_dir=tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}"))
        # when the replay stops there
        with pytest.raises(BrokerUnreachable):
            letters.replay(timeout=0.3)
        letters.close()
    gc.collect()
    # then nothing but this test holds the producer any more (a purged message's delivery callback held it
    # for good: a leaked client retrying the address, logging every 50 ms, until the process exits)
    assert gc.get_referrers(made[0]) == [made]


def test_a_replay_the_broker_answers_but_never_acknowledges_is_reported_and_the_rest_go_on(
    apache_kafka_factory, tmp_path, monkeypatch, capsys
):
    # given Apache Kafka (no auto-created topics) holding the shop's topics, and two dead letters:
    # one from a topic the broker does not have (librdkafka retries it silently until the wait ends), one from a real one
    broker = apache_kafka_factory()
    settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers, partitions=1)
    ensure_topics(settings)
    with SqliteEventStore(settings.store_path) as store:
        store.record_dead_letter("order", "no.such.topic", 0, 0, b"K", b"{}", [], "bad")
        store.record_dead_letter("order", "order.lifecycle.created", 0, 1, b"K", b"{}", [], "bad")
    # when both are replayed with a short wait
    monkeypatch.setenv("EVENTLAB_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    code = cli.main(["dlq", "replay", "--all", "--timeout", "2", "--data-dir", str(tmp_path)])
    # then the first is reported as refused by a broker that answers (not as a broker that is down)
    out, err = capsys.readouterr()
    assert code == 1, err
    assert (
        "not replayed 1: not acknowledged within 2 s (the broker answers but kept refusing it: "
        "does topic no.such.topic exist?)" in err
    )
    assert "is it running" not in err
    # and the replay went on with the next, which the broker acknowledged
    assert "replayed 2 to order.lifecycle.created" in out
    with SqliteEventStore(settings.store_path) as store:
        assert [letter.replays for letter in store.dead_letters()] == [0, 1]


def test_a_deleted_dead_letter_topic_is_created_again_and_the_loop_goes_on(apache_kafka_factory, tmp_path, caplog):
    # given a loop on Apache Kafka whose dead-letter topic was deleted, and poison followed by a good message
    broker = apache_kafka_factory()
    settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers, partitions=1)
    ensure_topics(settings)
    topic = ProductCreated.topic
    broker.delete_topic(dead_letter_topic(topic))
    send(settings, topic, b"not json", headers=poison_headers("poison-1", "ProductCreated"))
    good = ProductCreated(product_id="P-after", name="After", price_cents=100, initial_stock=0)
    send(settings, topic, good.model_dump_json().encode(), headers=poison_headers("good-1", "ProductCreated"))
    handled: list[str] = []
    with SqliteEventStore(settings.store_path) as store:
        loop = ServiceLoop(recorder(f"deleted-{uuid.uuid4().hex[:6]}", handled), store, settings)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        thread.start()
        try:
            # when the loop meets the poison, then the topic is created again, the copy written, and the good
            # message handled
            wait_until(lambda: handled == ["P-after"], what="the good message handled")
        finally:
            stop.set()
            thread.join(30)
        [letter] = store.dead_letters()
        assert letter.published
    assert f"dead-letter topic {dead_letter_topic(topic)} was deleted: created it again" in caplog.messages
    copies = read_topic(settings, dead_letter_topic(topic), lambda got: len(got) >= 1)
    assert [dict(m.headers())["dlq_id"] for m in copies] == [str(letter.id).encode()]

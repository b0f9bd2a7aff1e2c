"""Facts about the broker that the design relies on (DESIGN.md §1), checked on the embedded broker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from eventlab.errors import BrokerError
from eventlab.events import ProductCreated, StockAdded
from eventlab.kafka import (
    EmbeddedBroker,
    dead_letter_topic,
    ensure_topics,
    from_message,
    make_consumer,
    make_producer,
    to_message,
)
from eventlab.kafka.clients import ALL_TOPICS
from eventlab.kafka.loop import ServiceLoop, _consume
from eventlab.services import inventory
from eventlab.services.runtime import Service, load
from eventlab.settings import Settings
from eventlab.store import NewEvent, SqliteEventStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as broker:
        yield Settings(data_dir=tmp_path_factory.mktemp("data"), bootstrap_servers=broker.bootstrap_servers)


def drain(consumer, count, timeout=30):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is not None and not message.error():
            got.append(message)
    return got


def test_topics_are_created_once(settings):
    first = ensure_topics(settings)
    assert set(first) == set(ALL_TOPICS)
    assert ensure_topics(settings) == []


def test_a_consumer_restarts_from_a_committed_offset_inside_a_batch(settings):
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        Settings(data_dir=settings.data_dir, bootstrap_servers=settings.bootstrap_servers, partitions=1), [topic]
    )
    producer = make_producer(settings)
    for i in range(10):
        producer.produce(topic, str(i).encode(), b"k")
    producer.flush(10)
    group = f"quirk-{uuid.uuid4().hex[:8]}"
    first = make_consumer(settings, group, **{"enable.auto.commit": False})
    first.subscribe([topic])
    batch = drain(first, 10)
    assert [m.value() for m in batch] == [str(i).encode() for i in range(10)]
    first.commit(message=batch[2], asynchronous=False)  # handled 0, 1, 2
    first.close()
    second = make_consumer(settings, group)
    second.subscribe([topic])
    again = drain(second, 7)
    second.close()
    assert [m.value() for m in again] == [str(i).encode() for i in range(3, 10)]


def test_a_consumer_keeps_up_at_the_tail_of_a_partition_of_many_batches(settings):
    # given a partition holding thousands of batches: Tansu lists every batch of a partition from
    # the first on each fetch that finds data, and answers empty once fetch.wait.max.ms is spent
    # listing (about 2,000 batches per millisecond here: fetch.wait.max.ms=1 stalls beyond that)
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        Settings(data_dir=settings.data_dir, bootstrap_servers=settings.bootstrap_servers, partitions=1), [topic]
    )
    batches = 6000
    producer = make_producer(settings, **{"linger.ms": 0, "batch.num.messages": 1})  # one record, one batch
    for i in range(batches):
        while True:
            try:
                producer.produce(topic, str(i).encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(30) == 0
    tail = [TopicPartition(topic, 0, batches - 3)]
    # when a consumer with a wait that short, and one made as the shop makes them, read the tail
    short = make_consumer(settings, f"quirk-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 1})
    short.assign(tail)
    stalled = drain(short, 3, timeout=2)
    short.close()
    shop = make_consumer(settings, f"quirk-{uuid.uuid4().hex[:8]}")
    shop.assign(tail)
    got = drain(shop, 3)
    shop.close()
    # then the short wait receives nothing (the quirk is still there), the shop's wait everything
    assert stalled == []
    assert [m.value() for m in got] == [str(i).encode() for i in range(batches - 3, batches)]


def test_cloudevents_round_trip_through_the_broker(settings, tmp_path):
    store = SqliteEventStore(tmp_path / "events.db")
    [stored] = store.append(
        [
            NewEvent(
                StockAdded(product_id="P001", quantity=3),
                1,
                {
                    "source": "inventory",
                    "correlation_id": "c-9",
                    "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                },
            )
        ]
    )
    key, value, headers = to_message(stored)
    producer = make_producer(settings)
    producer.produce(StockAdded.topic, value, key, headers=headers)
    producer.flush(10)
    consumer = make_consumer(settings, f"ce-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([StockAdded.topic])
    [message] = drain(consumer, 1)
    consumer.close()
    decoded = from_message(message.value(), message.headers())
    assert decoded.event == StockAdded(product_id="P001", quantity=3)
    assert (decoded.event_id, decoded.correlation_id) == (stored.event_id, "c-9")
    header = dict(message.headers())
    assert header["ce_source"] == b"/eventlab/inventory"
    assert header["ce_subject"] == b"P001" and message.key() == b"P001"
    assert header["traceparent"].startswith(b"00-" + b"a" * 32)


def test_a_missing_broker_binary_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerError, match="embedded broker's binary is missing: CALF_TANSU_BIN"):
        EmbeddedBroker(tmp_path).start()


def products_created(settings, tmp_path, store, products, versions=None):
    """``ProductCreated`` of each product stored in ``store``, then sent to a fresh one-partition topic and
    consumed there in one poll: (the stored events, the consumed messages)."""
    created = [ProductCreated(product_id=p, name=p, price_cents=100, initial_stock=0) for p in products]
    versions = versions or [1] * len(created)
    inputs = [store.append([NewEvent(event, version)])[0] for event, version in zip(created, versions)]
    topic = f"batch-{uuid.uuid4().hex[:8]}"
    one_partition = Settings(data_dir=tmp_path, bootstrap_servers=settings.bootstrap_servers, partitions=1)
    ensure_topics(one_partition, [topic, dead_letter_topic(topic)])
    producer = make_producer(settings)
    for stored in inputs:
        key, value, headers = to_message(stored)
        producer.produce(topic, value, key, headers=headers)
    producer.flush(10)
    consumer = make_consumer(settings, f"batch-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    messages = drain(consumer, len(inputs))
    consumer.close()
    return inputs, messages


def stocker(handle):
    """A service adding stock for each product created, deciding with ``handle(event)``."""
    return Service(
        "stocker",
        subscriptions=(ProductCreated,),
        evolvers={"stock": inventory.evolve_stock},
        streams=lambda event: [("stock", event.product_id)],
        handle=lambda event, _states: handle(event),
    )


class RacedStore(SqliteEventStore):
    """A real store where another writer takes version 1 of stock ``P-a`` just before the loop's first
    grouped append (after its decisions)."""

    raced = False

    def append_batch(self, appends):
        if not self.raced:
            self.raced = True
            self.append([NewEvent(StockAdded(product_id="P-a", quantity=5), 1)])
        return super().append_batch(appends)


def test_a_batch_with_a_conflict_commits_the_rest_and_decides_only_the_refused_again(settings, tmp_path):
    # given a service adding one unit of stock per product created, and four products created on Kafka:
    # P-a twice (the second decision builds on the first), P-b and P-c once
    service = stocker(lambda event: [StockAdded(product_id=event.product_id, quantity=1)])
    store = RacedStore(tmp_path / "events.db")
    inputs, messages = products_created(settings, tmp_path, store, ("P-a", "P-b", "P-a", "P-c"), (1, 1, 2, 1))
    # when the loop handles them as one batch and another writer takes stock P-a's version 1 meanwhile
    loop = ServiceLoop(service, store, settings)
    offsets = loop.process(messages)
    # then P-b and P-c commit with the batch; both P-a decisions are refused and decided again, in order
    stock = [(e.aggregate_id, e.version, e.event.quantity) for e in store.read_all(after=4)]
    assert stock == [("P-a", 1, 5), ("P-b", 1, 1), ("P-c", 1, 1), ("P-a", 2, 1), ("P-a", 3, 1)]
    assert load(store, ("stock", "P-a"), inventory.evolve_stock).state == inventory.Stock(available=7)
    # and every message counts as handled once, its offset stored past the batch
    assert (loop.stats.handled, loop.stats.duplicates, loop.stats.retries) == (4, 0, 0)
    assert all(store.is_processed("stocker", stored.event_id) for stored in inputs)
    assert [(o.topic, o.offset) for o in offsets] == [(messages[0].topic(), 4)]
    store.close()


def test_a_failed_decision_ends_the_batch_after_committing_the_ones_before_it(settings, tmp_path):
    # given a service whose decision for P-c fails once (a gateway timing out), and four products on Kafka
    calls = []

    def handle(event):
        calls.append(event.product_id)
        if calls.count("P-c") == 1 and event.product_id == "P-c":
            raise TimeoutError("gateway did not answer")
        return [StockAdded(product_id=event.product_id, quantity=1)]

    store = SqliteEventStore(tmp_path / "events.db")
    _, messages = products_created(settings, tmp_path, store, ("P-a", "P-b", "P-c", "P-d"))
    # when the loop handles them as one batch
    loop = ServiceLoop(stocker(handle), store, settings)
    offsets = loop.process(messages)
    # then P-a and P-b were decided once (never again because P-c failed), P-c again on its own, then P-d
    assert calls == ["P-a", "P-b", "P-c", "P-c", "P-d"]
    assert [e.aggregate_id for e in store.read_all(after=4)] == ["P-a", "P-b", "P-c", "P-d"]
    assert (loop.stats.handled, loop.stats.duplicates) == (4, 0)
    assert [o.offset for o in offsets] == [4]
    store.close()


@pytest.mark.parametrize("failing", ["P-a", "P-c"])
def test_a_decision_that_always_fails_in_a_batch_gets_its_attempts_in_all_then_a_dead_letter(
    settings, tmp_path, failing
):
    # given a service whose decision for one product always fails, first or third in a batch of four
    calls = []

    def handle(event):
        calls.append(event.product_id)
        if event.product_id == failing:
            raise TimeoutError("gateway did not answer")
        return [StockAdded(product_id=event.product_id, quantity=1)]

    store = SqliteEventStore(tmp_path / "events.db")
    _, messages = products_created(settings, tmp_path, store, ("P-a", "P-b", "P-c", "P-d"))
    # when the loop handles them as one batch, with three attempts per message
    loop = ServiceLoop(stocker(handle), store, settings, attempts=3, backoff=0.001)
    loop.process(messages)
    # then it was tried three times in all, the one in the batch included (a circuit breaker counts as many
    # failures as one by one), and dead-lettered; every other product was decided once and committed
    assert calls.count(failing) == 3 and all(calls.count(p) == 1 for p in {"P-a", "P-b", "P-c", "P-d"} - {failing})
    assert (loop.stats.handled, loop.stats.dead_lettered) == (3, 1)
    assert sorted(e.aggregate_id for e in store.read_all(after=4)) == sorted({"P-a", "P-b", "P-c", "P-d"} - {failing})
    store.close()


def test_a_batch_that_decides_slowly_commits_what_it_decided_before_deciding_more(settings, tmp_path):
    # given a service that notes, as it decides, how many of its outcomes are committed already
    store = SqliteEventStore(tmp_path / "events.db")
    committed = []

    def handle(event):
        committed.append(len(list(store.read_all(after=4))))
        return [StockAdded(product_id=event.product_id, quantity=1)]

    _, messages = products_created(settings, tmp_path, store, ("P-a", "P-b", "P-c", "P-d"))
    # when the loop handles them with no time to decide a batch in (a slow gateway: each decision takes it all)
    loop = ServiceLoop(stocker(handle), store, settings, batch_deciding=0)
    offsets = loop.process(messages)
    # then each outcome was committed before the next was decided, each message handled once, in order
    assert committed == [0, 1, 2, 3]
    assert [e.aggregate_id for e in store.read_all(after=4)] == ["P-a", "P-b", "P-c", "P-d"]
    assert (loop.stats.handled, loop.stats.duplicates, [o.offset for o in offsets]) == (4, 0, [4])
    store.close()


def test_a_broker_that_never_answers_is_a_broker_error_saying_so(tmp_path, caplog):
    # given an external broker address where nothing listens
    from conftest import free_port

    nowhere = Settings(data_dir=tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}")
    # when the topics are created there (librdkafka retries the connection every ~50 ms meanwhile)
    with pytest.raises(BrokerError) as refused:
        ensure_topics(nowhere, ["t1"], timeout=1.5)
    # then the error names the address, says it got no answer, and why the connection failed
    said = str(refused.value)
    assert f"on {nowhere.bootstrap_servers}: no answer in 1.5 s (last: " in said and "Connection refused" in said
    # and the connection's trouble was said once while it waited, not once per retry
    waiting = [r.getMessage() for r in caplog.records if r.name == "eventlab.kafka.clients"]
    assert len(waiting) == 1 and waiting[0].startswith(f"no connection to {nowhere.bootstrap_servers} yet (")


def test_a_refused_login_is_a_broker_error_at_once_not_after_the_timeout(settings, tmp_path):
    # given the embedded broker, and a client configured for a login it does not accept
    login = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
    }
    refused_login = Settings(data_dir=tmp_path, bootstrap_servers=settings.bootstrap_servers, kafka_config=login)
    # when the topics are created
    with pytest.raises(BrokerError) as refused:
        ensure_topics(refused_login, ["t1"], timeout=60)
    # then the error is the login's (at once: no retry mends it), not "no answer in 60 s"
    assert f"cannot create topics on {settings.bootstrap_servers}: " in str(refused.value)
    assert "SASL" in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("EVENTLAB_KAFKA_LOG_LEVEL", "0", 'No such configuration property: "log.level"'),
        ("EVENTLAB_KAFKA_SOCKET_TIMEOUT_MS", "soon", 'Invalid value for configuration property "socket.timeout.ms"'),
        # librdkafka says queue.buffering.max.ms, its own name of it: the variable set is named
        ("EVENTLAB_KAFKA_LINGER_MS", "abc", "queue.buffering.max.ms"),
    ],
)
def test_a_librdkafka_setting_it_refuses_is_one_line_naming_the_variable(
    tmp_path, capsys, monkeypatch, variable, value, said
):
    # given an EVENTLAB_KAFKA_* setting librdkafka does not know, or a value it cannot use
    from conftest import free_port

    from eventlab import cli
    from eventlab.settings import SettingsError

    settings = Settings.from_env({variable: value, "EVENTLAB_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    # when any Kafka client is made with it, then it is a settings error naming the variable
    for make in (make_producer, lambda s: make_consumer(s, "order"), lambda s: ensure_topics(s, ["t1"], timeout=1)):
        with pytest.raises(SettingsError) as refused:
            make(settings)
        assert refused.value.variable == variable and said in str(refused.value)
    # and a command says it in one line with exit status 2, not a traceback
    for name, setting in settings.environ().items():
        monkeypatch.setenv(name, setting)
    status = cli.main(["demo", "--orders", "1", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"eventlab: error: {variable}: ") and err.count("\n") == 1


class _QueuedConsumer:
    """A consumer whose client already holds ``queued`` messages: records how long each call may wait."""

    def __init__(self, queued):
        self.queued = list(queued)
        self.waits = []

    def poll(self, timeout):
        self.waits.append(("poll", timeout))
        return self.queued.pop(0) if self.queued else None

    def consume(self, num_messages, timeout):
        self.waits.append(("consume", timeout))
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken


def test_a_batch_is_what_has_arrived_and_never_waits_for_more():
    # given a busy loop: five messages already fetched by the client
    consumer = _QueuedConsumer(["m1", "m2", "m3", "m4", "m5"])
    # when the loop takes a batch of at most 3, then the rest, then finds nothing
    batches = [_consume(consumer, 3, 0.1), _consume(consumer, 3, 0.1), _consume(consumer, 3, 0.1)]
    # then batches grow with what is queued, and only the wait for a first message may last: a wait
    # for more of a batch delayed every message in it (5 ms of a ~13 ms hop on the embedded broker)
    assert batches == [["m1", "m2", "m3"], ["m4", "m5"], []]
    assert consumer.waits == [("poll", 0.1), ("consume", 0), ("poll", 0.1), ("consume", 0), ("poll", 0.1)]

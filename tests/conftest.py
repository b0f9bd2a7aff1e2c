from __future__ import annotations

import itertools
import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eventlab import Settings, Shop

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A fresh domain-flavoured id, so tests sharing a shop never collide."""
    return f"{prefix}{next(_ids):04d}"


def free_port_offset() -> int:
    """An offset that makes the six service ports 8081+offset..8086+offset free right now."""
    start = 20000 + 97 * (os.getpid() % 400)  # runs at the same time start at different places
    for base in [*range(start, 60000, 97), *range(20000, start, 97)]:
        try:
            socks = []
            for port in range(base + 1, base + 7):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base - 8080
    raise RuntimeError("no free ports")


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """One running shop (embedded broker, real SQLite) shared by the end-to-end tests."""
    settings = Settings.from_env(env={}, data_dir=tmp_path_factory.mktemp("shop"), http_port_offset=free_port_offset())
    with Shop(settings, http=True) as running:
        yield running


@pytest.fixture
def customer(shop):
    user_id = unique("U")
    shop.register_user(user_id, "Grace Hopper", f"{user_id.lower()}@example.com")
    return user_id


@pytest.fixture
def make_product(shop):
    def make(stock: int, price_cents: int = 1000) -> str:
        product_id = unique("P")
        shop.create_product(product_id, f"Product {product_id}", price_cents, stock)
        return product_id

    return make


# --- Apache Kafka: the integration tests marked for both brokers run on it too (tests/apache_kafka.py) ---


@pytest.fixture(scope="session")
def apache_kafka_jars():
    """The broker's jars, fetched once with Maven (then offline); fails, not skips, without Java/Maven."""
    from apache_kafka import fetch

    fetch()


@pytest.fixture
def apache_kafka_factory(apache_kafka_jars, tmp_path):
    """Start fresh Apache Kafka brokers for one test (empty topics, empty groups); stopped after it."""
    from apache_kafka import ApacheKafka

    started = []

    def start() -> ApacheKafka:
        started.append(ApacheKafka(tmp_path / f"apache-kafka-{len(started)}").start())
        return started[-1]

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def apache_kafka_shop(apache_kafka_jars, tmp_path_factory):
    """The shared shop of the end-to-end tests, on its own Apache Kafka broker (and real SQLite)."""
    from apache_kafka import ApacheKafka

    with ApacheKafka(tmp_path_factory.mktemp("apache-kafka")) as broker:
        settings = Settings.from_env(
            env={},
            data_dir=tmp_path_factory.mktemp("shop-on-apache-kafka"),
            http_port_offset=free_port_offset(),
            bootstrap_servers=broker.bootstrap_servers,
        )
        with Shop(settings, http=True) as running:
            yield running

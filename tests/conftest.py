from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eventlab import Settings, Shop
from eventlab.application import Commands
from eventlab.events import Event
from eventlab.resilience import wait_until
from eventlab.services import inventory, order
from eventlab.services.runtime import Service, execute, load, trace_metadata
from eventlab.store import EventStore

# `make test ARGS=-x` hands its command-line variables to every make a test runs (through MAKEFLAGS):
# the README's `make demo` would get pytest's options. The tests' makes start from a user's shell.
for _variable in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
    os.environ.pop(_variable, None)

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A fresh domain-flavoured id, so tests sharing a shop never collide."""
    return f"{prefix}{next(_ids):04d}"


def consume(store: EventStore, service: Service, event: Event, event_id: str) -> None:
    """Handle ``event`` as the service's consumer loop does (same call, processed marker included)."""
    execute(
        store,
        service.streams(event),
        service.evolvers,
        lambda states: service.handle(event, states),
        trace_metadata(service.name, event_id),
        processed=(service.name, event_id),
        follow=service.following(event),
    )


def ordering(store: EventStore, **options) -> Commands:
    """Commands on ``store`` with user U1 and products P1, P2 registered and copied by Order."""
    commands = Commands(store, copy_wait=0, **options)
    consume(store, order.SERVICE, commands.register_user(user_id="U1", name="Ada", email="a@example.com"), "e1")
    consume(store, order.SERVICE, commands.register_user(user_id="U2", name="Bob", email="b@example.com"), "e2")
    for n, pid in enumerate(("P1", "P2")):
        consume(store, order.SERVICE, commands.create_product(product_id=pid, name="Pen", price_cents=250), f"p{n}")
    return commands


def files_open_on(path: Path) -> int:
    """How many file descriptors of this process point at the SQLite file ``path``, its WAL or its shared memory."""
    names = {str(path.resolve()) + suffix for suffix in ("", "-wal", "-shm")}
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) in names
        except OSError:  # closed meanwhile
            continue
    return count


def run_python(code: str) -> str:
    """Run ``code`` (dedented) in a new interpreter; its standard output (an error if it fails)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections (Linux's ``ip_local_port_range``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def _own_share(bases: list[int]) -> list[int]:
    """This pytest-xdist worker's share of ``bases``: every n-th of n workers, from its own place. Ports
    found free are free only until something binds them, so two workers picking from the same ones at
    once could both start a server on them."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...; unset without xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count <= 1 or not worker.startswith("gw"):
        return bases
    return bases[int(worker.removeprefix("gw")) % count :: count]


def free_port_offset() -> int:
    """An offset that makes the six service ports 8081+offset..8086+offset free right now.

    The ports stay out of the kernel's ephemeral range: there any outgoing connection (a Kafka client,
    PostgreSQL, a health poll) may take one of them before the shop binds it, or a client connecting
    to a port not bound yet may be connected to itself. They start at 20000: the benchmarks the tests
    run pick theirs below (``benchmarks/replicas.py``, ``benchmarks/saga.py``). Each pytest-xdist
    worker picks from a share of its own (see :func:`_own_share`).
    """
    ephemeral = _ephemeral_ports()
    bases = _own_share([b for b in range(20000, 65430, 97) if b + 1 not in ephemeral and b + 6 not in ephemeral])
    start = os.getpid() % len(bases)  # runs at the same time start at different places
    for base in bases[start:] + bases[:start]:
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
        # create_product waits for Order's copy only: Inventory hears of the product on another topic, and
        # an order it sees first is refused for lack of stock (a cancelled order where a test wants stock)
        if stock:
            wait_until(lambda: load(shop.store, ("stock", product_id), inventory.evolve_stock).state, 30)
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


# --- PostgreSQL: one throwaway cluster per test session, one schema per test -------------------------

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def free_port() -> int:
    """A free port out of the ephemeral range (see :func:`free_port_offset`)."""
    return free_port_offset() + 8081


def _postgres_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPTS / "postgres.sh"), *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for the tests: ``EVENTLAB_TEST_POSTGRES_URL`` if set, else a throwaway
    cluster started by ``scripts/postgres.sh`` (Debian's PostgreSQL) and stopped at the end.

    Fails, never skips, when PostgreSQL cannot be started: the PostgreSQL store is part of the product.
    """
    if url := os.environ.get("EVENTLAB_TEST_POSTGRES_URL"):
        yield url
        return
    cluster = tempfile.mkdtemp(prefix="eventlab-pg-", dir="/tmp")  # short: the socket path must fit in 107 bytes
    started = _postgres_sh("start", cluster, str(free_port()))
    if started.returncode != 0:
        _postgres_sh("stop", cluster)
        pytest.fail(
            "PostgreSQL could not be started for the PostgreSQL store tests (scripts/postgres.sh start): "
            f"{started.stderr.strip() or started.stdout.strip()}\nInstall it with `sh scripts/postgres.sh install` "
            "(Debian's postgresql package), or point EVENTLAB_TEST_POSTGRES_URL at a server you run.",
            pytrace=False,
        )
    try:
        yield started.stdout.strip()
    finally:
        _postgres_sh("stop", cluster)


@pytest.fixture
def postgres_store_url(postgres_url):
    """The URL of an empty schema of its own on the test server, dropped afterwards."""
    import psycopg

    schema = f"test_{unique('s').lower()}_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


# --- the event store contract: one suite, every backend ---------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_backend(request, tmp_path):
    """A fresh store of each kind (see tests/store_contract.py)."""
    from store_contract import backend

    with backend(request.param, tmp_path, request) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store_backend(request, tmp_path):
    """A fresh store of each kind that several processes can share."""
    from store_contract import backend

    with backend(request.param, tmp_path, request) as opened:
        yield opened

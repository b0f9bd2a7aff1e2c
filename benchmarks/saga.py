"""Orders per second through the whole saga (threads mode), and saga latency at fixed rates, next to
raw confluent-kafka throughput on the same embedded broker in the same run; with ``--preload N``
the same again on a store that already holds N events (``benchmarks/restart.py`` grows it), to
show whether cost stays flat as the store grows. The machine's load is printed first.

The same for ``eventlab up --processes`` (``processes_*``: one OS process per service, orders
placed over HTTP, CPU ms/order summed over every child and per child, the broker's included; the
benchmark's HTTP client is not counted). CPU ms/order is the steadier figure on a shared machine.

    python benchmarks/saga.py                         # a table
    python benchmarks/saga.py --json                  # one JSON object
    python benchmarks/saga.py --preload 1000000       # also with a 1M-event store
    python benchmarks/saga.py --tracing               # also: full-speed orders/s with tracing off and on
    python benchmarks/saga.py --switch-interval 0.0005 # also: each rate with a shorter GIL switch interval
    python benchmarks/saga.py --no-processes          # threads mode only

Store layouts (``--layouts``; the first is the baseline, measured in the same run): ``shared`` (one
SQLite file, the default shop), ``split`` (a SQLite file per service, ``EVENTLAB_<SERVICE>_STORE_URL``),
``pg`` (one PostgreSQL schema) and ``pg-split`` (a schema per service); the PostgreSQL ones with
``--postgres URL`` or ``EVENTLAB_TEST_POSTGRES_URL`` (each run gets fresh schemas, dropped at the end).
``kafka`` is the shared SQLite file on Apache Kafka instead of the embedded broker: each run starts
a broker of its own with ``scripts/kafka.sh`` and stops it (Java 17 and the jars it fetches once).
Each layout runs in threads and in process mode, ``--repeat`` times interleaved, and the medians are
reported: the shared layout under the plain keys, the others prefixed (``split_orders_per_s``).

    python benchmarks/saga.py --layouts shared,split,pg,pg-split --postgres postgresql://... \\
        --rates 100 --repeat 3 --raw-messages 0
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from eventlab import Settings, Shop
from eventlab.demo import percentile, recorded_seconds, run_demo
from eventlab.kafka import ensure_topics, make_consumer, make_producer
from eventlab.resilience import wait_until
from eventlab.services import SERVICE_NAMES
from eventlab.settings import SERVICE_PORTS, port_free, service_store_variable
from eventlab.store import open_stores
from eventlab.store.base import EventStore
from eventlab.tables import text_rows


def raw_kafka(settings: Settings, messages: int) -> tuple[float, float]:
    """Produce then consume ``messages`` x 300 B; return (produce msg/s, consume msg/s)."""
    topic = f"bench.raw.{int(time.time())}"
    ensure_topics(settings, [topic])
    producer = make_producer(settings, **{"linger.ms": 5})
    payload = b"x" * 300
    started = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, payload, str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    produce_rate = messages / (time.perf_counter() - started)
    consumer = make_consumer(settings, f"bench-{topic}")
    consumer.subscribe([topic])
    got = 0
    first = None
    deadline = time.monotonic() + 120
    while got < messages and time.monotonic() < deadline:
        batch = consumer.consume(1000, 0.5)
        if batch and first is None:
            first = time.perf_counter()
        got += sum(1 for m in batch if not m.error())
    consume_rate = got / (time.perf_counter() - (first or time.perf_counter()))
    consumer.close()
    return produce_rate, consume_rate


def write_catalogue(directory: Path) -> Path:
    """Ten users and 20 products with stock for any run, so every saga goes the whole way."""
    with (directory / "users.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["user_id", "name", "email"])
        writer.writerows([f"B{i:02d}", f"Bench {i}", f"bench{i}@example.com"] for i in range(10))
    with (directory / "products.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["product_id", "name", "price_cents", "initial_stock"])
        writer.writerows([f"BP{i:02d}", f"Bench product {i}", 100 + i, 1_000_000] for i in range(20))
    return directory


def tracing_cost(orders: int, catalogue: Path, root: Path, rounds: int = 3) -> dict[str, float]:
    """Full-speed runs of fresh shops with tracing off, on (spans to the local file sink) and on for
    one order in ten (``EVENTLAB_TRACE_SAMPLE=0.1``), alternating, best of ``rounds`` each: orders/s,
    and this process's CPU ms per order (steadier on a shared machine: other processes' load does
    not count). A cost is the share of throughput lost, or of CPU added."""
    modes = {"off": ("off", 1.0), "on": ("file", 1.0), "sampled": ("file", 0.1)}
    best = dict.fromkeys(modes, 0.0)
    cpu = dict.fromkeys(modes, float("inf"))
    for round_ in range(rounds):
        for mode, (sink, sample) in modes.items():
            settings = Settings.from_env(data_dir=root / f"tracing-{mode}-{round_}", tracing=sink, trace_sample=sample)
            with Shop(settings, payment_failure_rate=0.0) as shop:
                started = time.process_time()
                report = run_demo(shop, orders, catalogue=catalogue, timeout=600)
                cpu[mode] = min(cpu[mode], (time.process_time() - started) * 1000 / orders)
                best[mode] = max(best[mode], report.orders_per_s)
    found: dict[str, float] = {}
    for mode in modes:
        found[f"tracing_{mode}_orders_per_s"] = best[mode]
        found[f"tracing_{mode}_cpu_ms_per_order"] = round(cpu[mode], 2)
        if mode != "off":
            found[f"tracing_{mode}_cost_pct"] = round(100 * (1 - best[mode] / best["off"]), 1)
            found[f"tracing_{mode}_cpu_cost_pct"] = round(100 * (cpu[mode] / cpu["off"] - 1), 1)
    return found


LAYOUTS = ("shared", "split", "pg", "pg-split", "kafka")
KAFKA_SH = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"


@contextlib.contextmanager
def broker_env(layout: str, directory: Path) -> Iterator[dict[str, str]]:
    """For the ``kafka`` layout, ``EVENTLAB_BOOTSTRAP_SERVERS`` of an Apache Kafka of its own in
    ``directory`` (``scripts/kafka.sh``, the version compose.yaml uses), stopped afterwards; for
    the others nothing (each shop starts its embedded broker)."""
    if layout != "kafka":
        yield {}
        return
    started = subprocess.run(
        ["bash", str(KAFKA_SH), "start", str(directory)], capture_output=True, text=True, check=False
    )
    try:
        if started.returncode:
            raise SystemExit(f"Apache Kafka did not start (scripts/kafka.sh start): {started.stderr.strip()}")
        yield {"EVENTLAB_BOOTSTRAP_SERVERS": started.stdout.strip()}
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(directory)], capture_output=True, check=False)


def layout_env(layout: str, data_dir: Path, postgres: str, tag: str) -> dict[str, str]:
    """The store variables of ``layout`` for a shop in ``data_dir``: none (``shared``, and ``kafka``:
    the one SQLite file), a SQLite file per service, one PostgreSQL schema, or a schema per service
    (schemas named ``tag``..., created by eventlab)."""
    if layout in ("shared", "kafka"):
        return {}
    if layout == "split":
        return {service_store_variable(name): str(data_dir / f"{name}.db") for name in SERVICE_NAMES}
    if not postgres:
        raise SystemExit(f"layout {layout!r} needs --postgres URL or EVENTLAB_TEST_POSTGRES_URL")
    separator = "&" if "?" in postgres else "?"

    def schema(name: str) -> str:
        return f"{postgres}{separator}options=-csearch_path%3D{name}"

    if layout == "pg":
        return {"EVENTLAB_STORE_URL": schema(tag)}
    return {service_store_variable(name): schema(f"{tag}_{name}") for name in SERVICE_NAMES}


def layout_settings(
    layout: str, data_dir: Path, postgres: str, tag: str, broker: dict[str, str], **values: object
) -> Settings:
    """Settings from this process's environment, its store variables replaced by ``layout``'s, and
    ``broker``'s (see :func:`broker_env`)."""
    env = {key: value for key, value in os.environ.items() if not key.endswith("STORE_URL")}
    env.update(layout_env(layout, data_dir, postgres, tag), **broker)
    return Settings.from_env(env=env, data_dir=data_dir, **values)


def drop_schemas(postgres: str, prefix: str) -> None:
    """Drop the schemas this run made (named ``prefix``...)."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as admin:
        rows = admin.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (prefix + "%",)).fetchall()
        for (name,) in rows:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE'.encode())


def medians(runs: list[dict[str, object]]) -> dict[str, object]:
    """The median of each figure over ``runs`` (``stuck`` counts summed)."""
    found: dict[str, object] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        if key.endswith("stuck"):
            found[key] = sum(int(value) for value in values)  # type: ignore[call-overload]
        elif values:
            found[key] = round(statistics.median(values), 2)  # type: ignore[type-var]
    return found


def layout_rows(result: dict[str, object], layouts: list[str], rate: float | None) -> list[tuple[str, str]]:
    """One row per layout and mode: orders/s, CPU ms/order, p50/p99 at ``rate``, and the first
    layout's (the baseline's) ratios."""
    rows = []
    base: dict[str, tuple[object, object]] = {}
    for index, layout in enumerate(layouts):
        prefix = "" if index == 0 else f"{layout}_"
        for mode in ("", "processes_"):
            speed, cpu = result.get(f"{prefix}{mode}orders_per_s"), result.get(f"{prefix}{mode}cpu_ms_per_order")
            if speed is None:
                continue
            base.setdefault(mode, (speed, cpu))
            line = f"{speed} orders/s, {cpu} CPU ms/order"
            if rate is not None:
                p50, p99 = (result.get(f"{prefix}{mode}at_{rate:g}_{p}_ms") for p in ("p50", "p99"))
                line += f", at {rate:g}/s p50 {p50} ms p99 {p99} ms"
            if index:
                speed0, cpu0 = base[mode]
                line += f"  ({float(speed) / float(speed0):.2f}x orders/s, {float(cpu) / float(cpu0):.2f}x CPU)"  # type: ignore[arg-type]
            rows.append((f"{layout} {'processes' if mode else 'threads'}", line))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000, help="orders for the full-speed run (default 2000)")
    parser.add_argument(
        "--rates", default="100,500", help="orders/s of the latency runs, comma-separated (default 100,500)"
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each latency run (default 10)")
    parser.add_argument("--preload", type=int, default=0, help="also run on a store of this many events (default 0)")
    parser.add_argument("--raw-messages", type=int, default=200_000, help="messages for raw Kafka (default 200k)")
    parser.add_argument("--tracing", action="store_true", help="also measure the cost of tracing (file sink)")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="also run each rate (threads) with sys.setswitchinterval(S), e.g. 0.0005 (default 0.005)",
    )
    parser.add_argument(
        "--processes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run 'eventlab up --processes', orders over HTTP (default: yes)",
    )
    parser.add_argument(
        "--layouts",
        default="shared",
        help=f"store layouts, comma-separated, the first the baseline: {', '.join(LAYOUTS)} (default shared)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("EVENTLAB_TEST_POSTGRES_URL", ""),
        help="PostgreSQL server for the pg layouts (default: EVENTLAB_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each layout and mode, interleaved; medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",") if rate]
    layouts = [layout for layout in args.layouts.split(",") if layout]
    if unknown := set(layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts: {', '.join(sorted(unknown))}")
    load_1m, load_5m, _ = os.getloadavg()
    if not args.json:
        print(f"load average at start: {load_1m:.2f} (1 min), {load_5m:.2f} (5 min) on {os.cpu_count()} cores")
    result: dict[str, object] = {"load_1m": round(load_1m, 2), "orders": args.orders}
    prefix = f"eventlab_bench_{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="eventlab-bench-") as tmp:
            root = Path(tmp)
            catalogue = write_catalogue(root)
            runs: dict[str, list[dict[str, object]]] = {layout: [] for layout in layouts}
            for round_ in range(args.repeat):  # interleaved: the machine's load drifts over every layout alike
                for layout in layouts:
                    tag = f"{prefix}_{round_}_{layout.replace('-', '_')}"
                    data_dir = root / f"{layout}-{round_}"
                    with broker_env(layout, data_dir / "kafka-threads") as broker:
                        settings = layout_settings(layout, data_dir / "threads", args.postgres, f"{tag}_t", broker)
                        found = run(settings, catalogue, args.orders, rates, args.seconds, args.switch_interval)
                    if args.processes:
                        with broker_env(layout, data_dir / "kafka-processes") as broker:
                            env = {**layout_env(layout, data_dir / "processes", args.postgres, f"{tag}_p"), **broker}
                            found.update(run_processes(data_dir, args.orders, rates, args.seconds, env))
                    found["load_1m_after"] = round(os.getloadavg()[0], 2)
                    runs[layout].append(found)
            for index, layout in enumerate(layouts):
                result.update({(f"{layout}_" if index else "") + k: v for k, v in medians(runs[layout]).items()})
            if args.raw_messages:
                with Shop(Settings.from_env(data_dir=root / "raw")) as shop:
                    produce, consume = raw_kafka(shop.kafka_settings, args.raw_messages)
                result["raw_produce_msgs_per_s"], result["raw_consume_msgs_per_s"] = round(produce), round(consume)
            if args.preload:
                from restart import preload  # here: restart.py imports this module

                settings = Settings.from_env(data_dir=root / "big")
                result["preloaded_events"] = preload(settings, args.preload, catalogue)
                big = run(settings, catalogue, args.orders, rates, args.seconds)
                result.update({f"preloaded_{key}": value for key, value in big.items()})
            if args.tracing:
                result.update(tracing_cost(args.orders, catalogue, root))
    finally:
        if args.postgres and any(layout.startswith("pg") for layout in layouts):
            drop_schemas(args.postgres, prefix)
    stuck = [value for key, value in result.items() if key.endswith("stuck")]
    if args.json:
        print(json.dumps(result))
    else:
        print(text_rows(result.items()))
        if len(layouts) > 1 or args.repeat > 1:
            print(f"\nmedians of {args.repeat}, {layouts[0]} the baseline:")
            print(text_rows(layout_rows(result, layouts, rates[0] if rates else None)))
    return 0 if not any(stuck) else 1


@contextlib.contextmanager
def full_collections(found: dict[str, object]) -> Iterator[None]:
    """Count the interpreter's full (oldest-generation) collections while the block runs, and the
    longest: each stops every thread of the shop (see :mod:`eventlab.collector`)."""
    pauses: list[float] = []
    began: list[float] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began.append(time.perf_counter())
            elif began:
                pauses.append(time.perf_counter() - began.pop())

    gc.callbacks.append(watch)
    try:
        yield
    finally:
        gc.callbacks.remove(watch)
        found["full_collections"] = len(pauses)
        found["full_collection_max_ms"] = round(max(pauses, default=0.0) * 1000, 1)


def run(
    settings: Settings,
    catalogue: Path,
    orders: int,
    rates: list[float],
    seconds: float,
    switch_interval: float | None = None,
) -> dict[str, object]:
    """Full speed, then each paced rate, on one shop: orders/s, p50/p99 of order -> terminal, CPU
    ms/order, and the full collections of the interpreter's heap meanwhile; with ``switch_interval``,
    each rate also with ``sys.setswitchinterval`` set to it."""
    found: dict[str, object] = {}
    with Shop(settings, payment_failure_rate=0.0) as shop, full_collections(found):
        # the deadline sweeper reads the whole log once at start (to find unfinished orders): measured
        # on its own, so that the runs below show the steady state
        head, began = shop.store.head(), time.perf_counter()
        wait_until(lambda: shop.sweeper is not None and shop.sweeper.position >= head, 600, interval=0.1)
        found["sweeper_catch_up_s"] = round(time.perf_counter() - began, 2)
        cpu = time.process_time()
        full = run_demo(shop, orders, catalogue=catalogue, timeout=600)
        found["orders_per_s"] = full.orders_per_s
        # CPU time of this process (every service, relay and the order placement) per order: steadier
        # than orders/s on a shared machine, since other processes' load does not count
        found["cpu_ms_per_order"] = round((time.process_time() - cpu) * 1000 / orders, 2)
        found["full_speed_p50_ms"] = full.saga_latency_ms["p50"]
        found["events_per_order"] = round(full.events / orders, 1)
        stuck = full.stuck
        default_interval = sys.getswitchinterval()
        for seed, rate in enumerate(rates, start=1):
            intervals = [(default_interval, "")]
            if switch_interval:  # each rate twice on the same shop: the interval as it is, then shorter
                intervals.append((switch_interval, "_short_switch"))
            for interval, suffix in intervals:
                sys.setswitchinterval(interval)
                cpu = time.process_time()
                paced = run_demo(shop, int(rate * seconds), rate=rate, seed=seed, catalogue=catalogue)
                found[f"at_{rate:g}{suffix}_p50_ms"] = paced.saga_latency_ms["p50"]
                found[f"at_{rate:g}{suffix}_p99_ms"] = paced.saga_latency_ms["p99"]
                found[f"at_{rate:g}{suffix}_cpu_ms_per_order"] = round(
                    (time.process_time() - cpu) * 1000 / paced.orders, 2
                )
                stuck += paced.stuck
            sys.setswitchinterval(default_interval)
    found["stuck"] = stuck
    return found


# --- process mode: `eventlab up --processes`, orders over HTTP --------------------------------


def _post(port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:  # 503: degraded, still an answer
        degraded: dict[str, object] = json.loads(exc.read())
        return degraded
    except (urllib.error.URLError, ConnectionError):
        return None


def _free_offset() -> int:
    """An HTTP port offset whose six service ports are free now: ports 15081 to 19936, apart from those
    of the tests (20000 up, tests/conftest.py) and of ``benchmarks/replicas.py`` (10081 to 14986)."""
    for offset in range(7_000, 11_901, 97):
        if all(port_free(base + offset) for base in SERVICE_PORTS.values()):
            return offset
    raise RuntimeError("no free HTTP port offset")


def _children_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of every descendant of ``pid`` and of ``pid`` itself, by name
    (``relay``, ``order``, ..., ``broker``, ``supervisor``); standbys count with their service."""
    found: dict[str, float] = {}
    for child, command in _descendants(pid):
        name = "supervisor" if child == pid else _process_name(command)
        found[name] = found.get(name, 0.0) + _cpu_seconds(child)
    return found


def _process_name(command: list[str]) -> str:
    if "run" in command and command.index("run") + 1 < len(command):
        return command[command.index("run") + 1]
    return "broker" if any("tansu" in part for part in command) else Path(command[0]).name if command else "?"


def _descendants(pid: int) -> list[tuple[int, list[str]]]:
    """``pid`` and its descendants with their command lines (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    # the field after the parenthesised name: state, then the parent's pid
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        tree, frontier = [pid], [pid]
        while frontier:
            frontier = [child for child, parent in parents.items() if parent in frontier]
            tree += frontier
        found = []
        for member in tree:
            with contextlib.suppress(OSError):
                found.append((member, Path(f"/proc/{member}/cmdline").read_text().split("\0")[:-1]))
        return found
    root = psutil.Process(pid)
    return [(member.pid, member.cmdline()) for member in [root, *root.children(recursive=True)]]


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _orders(seed: int, count: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {
            "user_id": f"B{rng.randrange(10):02d}",
            "lines": [
                {"product_id": pid, "quantity": rng.randint(1, 3)}
                for pid in rng.sample([f"BP{i:02d}" for i in range(20)], rng.choice((1, 1, 2, 2, 3)))
            ],
        }
        for _ in range(count)
    ]


def _place_and_wait(
    store: EventStore, port: int, orders: list[dict[str, object]], rate: float | None, clients: int, timeout: float
) -> tuple[float, list[float], int]:
    """POST every order (``rate`` per second from one client, or as fast as ``clients`` allow) and
    wait until each saga is terminal in the store; return (elapsed s, latencies ms, stuck)."""
    seen = store.head()
    placed: set[str] = set()
    created: dict[str, float] = {}
    finished: dict[str, float] = {}
    started = time.monotonic()

    def place(index: int) -> str:
        if rate:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        return str(_post(port, "/orders", orders[index])["order_id"])

    with ThreadPoolExecutor(1 if rate else clients) as pool:
        placed.update(pool.map(place, range(len(orders))))
    deadline = time.monotonic() + timeout
    while len(finished) < len(placed) and time.monotonic() < deadline:
        for record in store.read_records(after=seen):
            seen = record.position
            if record.aggregate_id not in placed:
                continue
            if record.event_type == "OrderCreated":
                created[record.aggregate_id] = recorded_seconds(record.recorded_at)
            elif record.event_type in ("OrderCompleted", "OrderCancelled"):
                finished[record.aggregate_id] = recorded_seconds(record.recorded_at)
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    latencies = [(finished[o] - created[o]) * 1000 for o in finished if o in created]
    return elapsed, latencies, len(placed) - len(finished)


def run_processes(
    root: Path,
    orders: int,
    rates: list[float],
    seconds: float,
    stores: dict[str, str] | None = None,
    clients: int = 8,
    timeout: float = 600,
) -> dict[str, object]:
    """The same figures as :func:`run` for ``eventlab up --processes`` (one OS process per service,
    plus the relay and the broker), orders placed over HTTP; CPU ms/order per process and in total
    (this benchmark's own HTTP client not counted). ``stores``: the store variables (see :func:`layout_env`)."""
    offset = _free_offset()
    data_dir = root / "processes"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    env.update(stores or {}, EVENTLAB_DATA_DIR=str(data_dir), EVENTLAB_HTTP_PORT_OFFSET=str(offset))
    settings = Settings.from_env(env=env)
    port = {name: settings.port(name) for name in SERVICE_PORTS}
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--processes", "--payment-failure-rate", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    found: dict[str, object] = {}
    try:
        wait_until(lambda: all(_health(p) is not None for p in port.values()), 120, interval=0.2)
        for i in range(10):
            _post(port["user"], "/users", {"user_id": f"B{i:02d}", "name": f"Bench {i}", "email": f"b{i}@example.com"})
        for i in range(20):
            product = {"product_id": f"BP{i:02d}", "name": f"Bench product {i}", "price_cents": 100 + i}
            _post(port["product"], "/products", {**product, "initial_stock": 1_000_000})

        def stocked() -> bool:  # every service caught up (user and product consume nothing)
            return all((h := _health(p)) is not None and h.get("lag", 0) == 0 for p in port.values())

        wait_until(stocked, 120, interval=0.2)
        shop_stores = open_stores(settings, create=False)
        store = shop_stores.of("order")  # where orders are created and end
        try:
            cpu = _children_cpu(up.pid)
            elapsed, latencies, stuck = _place_and_wait(
                store, port["order"], _orders(0, orders), None, clients, timeout
            )
            spent = _children_cpu(up.pid)
            found["processes_orders_per_s"] = round(orders / elapsed, 1)
            found["processes_full_speed_p50_ms"] = round(percentile(latencies, 50), 1)
            found["processes_cpu_ms_per_order"] = round((sum(spent.values()) - sum(cpu.values())) * 1000 / orders, 2)
            for name in sorted(spent, key=lambda name: -(spent[name] - cpu.get(name, 0.0))):
                found[f"processes_cpu_ms_per_order_{name}"] = round(
                    (spent[name] - cpu.get(name, 0.0)) * 1000 / orders, 2
                )
            for seed, rate in enumerate(rates, start=1):
                _, paced, more = _place_and_wait(
                    store, port["order"], _orders(seed, int(rate * seconds)), rate, clients, timeout
                )
                found[f"processes_at_{rate:g}_p50_ms"] = round(percentile(paced, 50), 1)
                found[f"processes_at_{rate:g}_p99_ms"] = round(percentile(paced, 99), 1)
                stuck += more
            found["processes_stuck"] = stuck
        finally:
            shop_stores.close()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    return found


if __name__ == "__main__":
    sys.exit(main())

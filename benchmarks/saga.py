"""Orders per second through the whole saga (threads mode), and saga latency at fixed rates, next to
raw confluent-kafka throughput on the same embedded broker in the same run; with ``--preload N``
the same again on a store that already holds N events (``benchmarks/restart.py`` grows it), to
show whether cost stays flat as the store grows. The machine's load is printed first.

    python benchmarks/saga.py                         # a table
    python benchmarks/saga.py --json                  # one JSON object
    python benchmarks/saga.py --preload 1000000       # also with a 1M-event store
    python benchmarks/saga.py --tracing               # also: full-speed orders/s with tracing off and on
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from eventlab import Settings, Shop
from eventlab.demo import run_demo
from eventlab.kafka import ensure_topics, make_consumer, make_producer
from eventlab.resilience import wait_until
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",") if rate]
    load_1m, load_5m, _ = os.getloadavg()
    if not args.json:
        print(f"load average at start: {load_1m:.2f} (1 min), {load_5m:.2f} (5 min) on {os.cpu_count()} cores")
    result: dict[str, object] = {"load_1m": round(load_1m, 2), "orders": args.orders}
    with tempfile.TemporaryDirectory(prefix="eventlab-bench-") as tmp:
        root = Path(tmp)
        catalogue = write_catalogue(root)
        result.update(run(Settings.from_env(data_dir=root / "data"), catalogue, args.orders, rates, args.seconds))
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
    stuck = [value for key, value in result.items() if key.endswith("stuck")]
    print(json.dumps(result) if args.json else text_rows(result.items()))
    return 0 if not any(stuck) else 1


def run(settings: Settings, catalogue: Path, orders: int, rates: list[float], seconds: float) -> dict[str, object]:
    """Full speed, then each paced rate, on one shop: orders/s, p50/p99 of order -> terminal."""
    found: dict[str, object] = {}
    with Shop(settings, payment_failure_rate=0.0) as shop:
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
        for seed, rate in enumerate(rates, start=1):
            paced = run_demo(shop, int(rate * seconds), rate=rate, seed=seed, catalogue=catalogue)
            found[f"at_{rate:g}_p50_ms"] = paced.saga_latency_ms["p50"]
            found[f"at_{rate:g}_p99_ms"] = paced.saga_latency_ms["p99"]
            stuck += paced.stuck
    found["stuck"] = stuck
    return found


if __name__ == "__main__":
    sys.exit(main())

"""Orders per second through the whole saga, and saga latency at a fixed rate, next to raw
confluent-kafka throughput on the same embedded broker in the same run.

    python benchmarks/saga.py            # a table
    python benchmarks/saga.py --json     # one JSON object
    python benchmarks/saga.py --tracing  # also: full-speed orders/s with tracing off and on (file sink)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from eventlab import Settings, Shop
from eventlab.demo import run_demo
from eventlab.kafka import ensure_topics, make_consumer, make_producer
from eventlab.tracing import tracing_for


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


def tracing_cost(orders: int, catalogue: Path, root: Path, rounds: int = 2) -> dict[str, float]:
    """Full-speed orders/s of fresh shops with tracing off, on (spans to the local file sink) and on
    for one order in ten (``EVENTLAB_TRACE_SAMPLE=0.1``), alternating, best of ``rounds`` each; a
    cost is the share of throughput lost."""
    modes = {"off": ("off", 1.0), "on": ("file", 1.0), "sampled": ("file", 0.1)}
    best = dict.fromkeys(modes, 0.0)
    for round_ in range(rounds):
        for mode, (sink, sample) in modes.items():
            settings = Settings.from_env(data_dir=root / f"tracing-{mode}-{round_}", tracing=sink, trace_sample=sample)
            with Shop(settings, payment_failure_rate=0.0) as shop:
                best[mode] = max(best[mode], run_demo(shop, orders, catalogue=catalogue, timeout=600).orders_per_s)
            if (traced := tracing_for(settings)) is not None:
                traced.shutdown()  # its last spans written before the directory goes
    return {
        "tracing_off_orders_per_s": best["off"],
        "tracing_on_orders_per_s": best["on"],
        "tracing_on_cost_pct": round(100 * (1 - best["on"] / best["off"]), 1),
        "tracing_sampled_orders_per_s": best["sampled"],
        "tracing_sampled_cost_pct": round(100 * (1 - best["sampled"] / best["off"]), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000, help="orders for the full-speed run (default 2000)")
    parser.add_argument("--rate", type=float, default=100, help="orders/s for the latency run (default 100)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency run (default 10)")
    parser.add_argument("--raw-messages", type=int, default=200_000, help="messages for raw Kafka (default 200k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tracing", action="store_true", help="also measure the cost of tracing (file sink)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eventlab-bench-") as tmp:
        root = Path(tmp)
        catalogue = write_catalogue(root)
        settings = Settings.from_env(data_dir=root / "data")
        with Shop(settings, payment_failure_rate=0.0) as shop:
            full = run_demo(shop, args.orders, catalogue=catalogue, timeout=600)
            paced = run_demo(shop, int(args.rate * args.seconds), rate=args.rate, seed=1, catalogue=catalogue)
            produce, consume = raw_kafka(shop.relay.settings, args.raw_messages)
        cost = tracing_cost(args.orders, catalogue, root) if args.tracing else {}
    result = {
        "orders": args.orders,
        "orders_per_s": full.orders_per_s,
        "full_speed_p50_ms": full.saga_latency_ms["p50"],
        "rate": args.rate,
        "p50_ms": paced.saga_latency_ms["p50"],
        "p99_ms": paced.saga_latency_ms["p99"],
        "raw_produce_msgs_per_s": round(produce),
        "raw_consume_msgs_per_s": round(consume),
        "events_per_order": round(full.events / args.orders, 1),
        "stuck": full.stuck + paced.stuck,
        **cost,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
    return 0 if result["stuck"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

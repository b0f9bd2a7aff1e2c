"""How long a service consumes nothing after its process is killed (``kill -9``), in process mode.

The gap is the time from the kill to the first new event written by that service (``source`` in
the event's metadata) while orders keep arriving. The supervisor restarts the process after 0.2 s;
the rest is the consumer group handing the dead member's partitions to its successor. Two
configurations of the embedded broker's consumer group, in the same run:

- ``before``: ``session.timeout.ms=6000`` (eventlab until now; Apache Kafka's minimum by default),
  a fresh process per restart;
- ``session``: ``session.timeout.ms=1000`` (what the embedded broker uses now), fresh processes;
- ``after``: ``session.timeout.ms=1000`` and a warm standby per process (the supervisor's default).

Static membership (``group.instance.id``), which makes the successor take over at once on Apache
Kafka, is not measured here: on the embedded broker (Tansu) a static member's join takes ~6 s.

Measured here (2 cores shared with other work, load average 12.7 at start; 20 orders/s; 5 kills
per service; seconds, median / max over the four consuming services' medians and maxima):
before 12.0-12.2 / 13.7, session 1.9-2.1 / 2.4, after 1.26-1.35 / 1.40.

    python benchmarks/consumer_gap.py                 # 5 kills per service, 20 orders/s
    python benchmarks/consumer_gap.py --kills 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from eventlab import Settings
from eventlab.application import Commands
from eventlab.kafka.broker import EmbeddedBroker
from eventlab.resilience import wait_until
from eventlab.store import EventStore, open_store
from eventlab.supervisor import Supervisor

CONSUMERS = ("order", "payment", "inventory", "notification")
#: name -> (session timeout ms, warm standby)
CONFIGS = {
    "before": (6000, False),
    "session": (EmbeddedBroker.SESSION_TIMEOUT_MS, False),
    "after": (EmbeddedBroker.SESSION_TIMEOUT_MS, True),
}


def place_orders(settings: Settings, rate: float, stop: threading.Event) -> None:
    """Place ``rate`` orders per second until ``stop`` is set."""
    with open_store(settings) as store:
        commands = Commands(store)
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            commands.place_order(user_id="GAP1", lines=[{"product_id": "GAP-P1", "quantity": 1}])
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))


def first_event_after(store: EventStore, service: str, after: int, timeout: float) -> float | None:
    """Wall-clock time of the first event ``service`` writes after position ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in store.read_all(after=after):
            after = event.position
            if event.metadata.get("source") == service and event.event_type != "OrderCreated":
                return event.recorded_at.timestamp()
        time.sleep(0.01)
    return None


def measure(session_ms: int, standby: bool, kills: int, rate: float, settle: float) -> dict[str, list[float]]:
    """Gaps in seconds per service, ``kills`` kills each, under ``session_ms``, with or without standbys."""
    EmbeddedBroker.SESSION_TIMEOUT_MS = session_ms
    with tempfile.TemporaryDirectory(prefix="eventlab-gap-") as tmp:
        settings = Settings.from_env(data_dir=Path(tmp), http_port_offset=_free_offset())
        supervisor = Supervisor(settings, ["--payment-failure-rate", "0"])
        supervisor.standby = standby
        supervisor.start()
        stop = threading.Event()
        threads = [threading.Thread(target=supervisor.run, args=(stop,), daemon=True)]
        store = open_store(settings)
        try:
            threads[0].start()
            commands = Commands(store)
            commands.register_user(user_id="GAP1", name="Gap", email="gap@example.com")
            commands.create_product(product_id="GAP-P1", name="Gap", price_cents=100, initial_stock=1_000_000)
            copies = [("order_customer", "GAP1"), ("order_price", "GAP-P1")]  # Order's own, recorded via Kafka
            wait_until(lambda: all(store.read_stream(*key) for key in copies), 120)
            threads.append(threading.Thread(target=place_orders, args=(settings, rate, stop), daemon=True))
            threads[-1].start()
            for service in CONSUMERS:  # every service is handling orders before the first kill
                if first_event_after(store, service, 0, 120) is None:
                    raise SystemExit(f"{service} never handled an order")
            gaps: dict[str, list[float]] = {service: [] for service in CONSUMERS}
            for _ in range(kills):
                for service in CONSUMERS:
                    time.sleep(settle)
                    head = store.head()
                    killed_at = time.time()
                    os.kill(supervisor.pids()[service], signal.SIGKILL)
                    handled_at = first_event_after(store, service, head, 120)
                    if handled_at is None:
                        raise SystemExit(f"{service} handled nothing for 120 s after a kill")
                    gaps[service].append(round(handled_at - killed_at, 2))
            return gaps
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            store.close()
            supervisor.stop()


def _free_offset() -> int:
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from conftest import free_port_offset

    return free_port_offset()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="kills per service and configuration (default 5)")
    parser.add_argument("--rate", type=float, default=20, help="orders per second during the run (default 20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between kills (default 3)")
    parser.add_argument("--only", choices=sorted(CONFIGS), help="measure one configuration")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    load = os.getloadavg()
    if not args.json:
        print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    result: dict[str, object] = {"load_at_start": load[0], "rate": args.rate, "kills": args.kills}
    for name, (session_ms, standby) in CONFIGS.items():
        if args.only and name != args.only:
            continue
        gaps = measure(session_ms, standby, args.kills, args.rate, args.settle)
        summary = {
            service: {"median_s": statistics.median(values), "max_s": max(values), "gaps_s": values}
            for service, values in gaps.items()
        }
        result[name] = {"session_timeout_ms": session_ms, "standby": standby, "services": summary}
        if not args.json:
            print(f"\n{name}: session.timeout.ms={session_ms}, warm standby {'yes' if standby else 'no'}")
            print(f"  {'service':<13} {'median s':>9} {'max s':>7}  gaps")
            for service, row in summary.items():
                print(f"  {service:<13} {row['median_s']:>9.2f} {row['max_s']:>7.2f}  {row['gaps_s']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

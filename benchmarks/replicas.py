"""Replicas and the relay lease, end to end: ``eventlab up --processes --replicas inventory=3,relay=2``
takes orders over HTTP at a fixed rate while the active relay is killed (``kill -9``) mid-run.

    python benchmarks/replicas.py                                   # 2,000 orders at 50/s, a table
    python benchmarks/replicas.py --orders 100 --rate 100 --json    # the fast version (tests/test_replicas.py)
    EVENTLAB_STORE_URL=postgresql://... EVENTLAB_BOOTSTRAP_SERVERS=host:9092 python benchmarks/replicas.py

The broker and the stores come from the environment (default: the embedded broker and a SQLite file
in a new temporary directory; ``EVENTLAB_<SERVICE>_STORE_URL`` gives services stores of their own,
and then the relay killed is the one holding the lease of Order's store). Printed: orders placed, terminal, stuck; the audit; saga latency
p50/p99 (OrderCreated to its end, from the store's times); how long after the kill another relay held
the lease; and what reached Kafka: every stored event of the shop's topics found (none lost), none out
of store order per key within a partition (republished ones after a takeover are counted, not faults);
each replica's ``/health`` (port, handled events).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from eventlab.adapters.mailer import MAILBOX
from eventlab.demo import percentile, recorded_seconds
from eventlab.events import EVENT_TYPES
from eventlab.kafka import make_consumer
from eventlab.kafka.relay import unpublished
from eventlab.projections.audit import audit
from eventlab.resilience import wait_until
from eventlab.services import SERVICE_NAMES
from eventlab.settings import Settings
from eventlab.store import EventStore, ShopStores, open_stores
from eventlab.supervisor import parse_replicas
from eventlab.tables import text_rows

TERMINAL = {"OrderCompleted", "OrderCancelled"}


def free_offset() -> int:
    """An HTTP port offset whose service ports (and 9 replica steps above them) are free now: ports
    10081 to 14986, below those the tests pick (from 20000, tests/conftest.py) and those of
    ``benchmarks/saga.py`` (15081 to 19936), so that they run beside each other."""
    for base in range(10000, 15000, 1000):
        try:
            for port in [base + 81 + i + 100 * k for i in range(6) for k in range(10)]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base - 8000
    raise RuntimeError("no free ports")


def http(port: int, method: str, path: str, body: object = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def healthy(port: int) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = http(port, "GET", "/health")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return answer


def relay_holder(settings: Settings, store: EventStore) -> int | None:
    """The pid of the relay holding the relay lease of ``store`` (the one ``settings`` name; None:
    nobody), as the lease records it."""
    if settings.store_backend == "postgresql":
        rows = store._rows(  # type: ignore[attr-defined]
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted"
            " AND l.classid::bigint = %s AND a.application_name LIKE %s",  # this store's: its key's first half
            (store.write_lock & 0xFFFFFFFF, "eventlab relay lease, pid %"),  # type: ignore[attr-defined]
        )
        return int(rows[0][0].rsplit(" ", 1)[1]) if rows else None
    path = settings.store_path.with_name(f"{settings.store_path.name}.relay.lease")
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and _locked(path) else None


def _locked(path: Path) -> bool:
    """Whether someone holds the ``flock`` on ``path`` right now."""
    import fcntl

    with path.open() as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False


def kafka_check(settings: Settings, stores: ShopStores, timeout: float = 60.0) -> dict[str, int]:
    """Read every topic the shop's events go to from the start; compare with the stores (a topic's
    events come from one store, its owner's: positions compare within it)."""
    records = [record for store in stores for record in store.read_records()]
    position = {r.event_id: r.position for r in records}
    topics = sorted({EVENT_TYPES[r.event_type].topic for r in records})
    consumer = make_consumer(settings, f"replicas-bench-{os.getpid()}-{time.time_ns()}")
    metadata = consumer.list_topics(timeout=30).topics
    consumer.assign(
        [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(len(metadata[t].partitions))]
    )
    seen: set[str] = set()
    last: dict[tuple[str, int, bytes], int] = {}
    messages = out_of_order = 0
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < len(position) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            ce_id = next((v.decode() for k, v in message.headers() or [] if k == "ce_id" and v), "")
            if ce_id not in position:
                continue  # an earlier run's message on a cluster that keeps its topics
            messages += 1
            if ce_id in seen:
                continue  # a republication (after a takeover): consumers skip it
            seen.add(ce_id)
            where = (message.topic(), message.partition(), message.key() or b"")
            if position[ce_id] < last.get(where, 0):
                out_of_order += 1
            last[where] = position[ce_id]
    finally:
        consumer.close()
    return {
        "stored": len(position),
        "lost": len(position) - len(seen),
        "out_of_order": out_of_order,
        "republished": messages - len(seen),
    }


class Sagas:
    """Each order's creation and end time (seconds since the epoch), read from the store as it grows:
    each event once, however often the benchmark asks."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.created: dict[str, float] = {}
        self.ended: dict[str, str] = {}  # order -> its terminal event type
        self.ended_at: dict[str, float] = {}
        self._after = 0

    def read(self) -> Sagas:
        for record in self.store.read_records(after=self._after):
            self._after = record.position
            if record.event_type == "OrderCreated":
                self.created[record.aggregate_id] = recorded_seconds(record.recorded_at)
            elif record.event_type in TERMINAL:
                self.ended[record.aggregate_id] = record.event_type
                self.ended_at[record.aggregate_id] = recorded_seconds(record.recorded_at)
        return self


def run(orders: int, rate: float, replicas: Mapping[str, int], kill_relay: bool, timeout: float) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="eventlab-replicas-"))
    offset = free_offset()
    env = {k: v for k, v in os.environ.items() if k != "EVENTLAB_DATA_DIR"}
    env.update(EVENTLAB_DATA_DIR=str(data_dir), EVENTLAB_HTTP_PORT_OFFSET=str(offset))
    settings = Settings.from_env(env)
    existing = open_stores(settings)  # their users and orders would clash with this run's
    try:
        for name, store in existing.names.items():
            if store.head():
                raise SystemExit(f"replicas.py: {name} already holds events: give it an empty store")
    finally:
        existing.close()
    spec = ",".join(f"{name}={count}" for name, count in replicas.items())
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--processes", "--payment-failure-rate", "0", "--replicas", spec],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(up.stdout or []), daemon=True).start()
    result: dict[str, Any] = {"orders": orders, "rate": rate, "replicas": spec}
    stores: ShopStores | None = None
    try:
        ports = {
            (name if k == 0 else f"{name}.{k}"): settings.port(name, k)
            for name in SERVICE_NAMES
            for k in range(replicas.get(name, 1))
        }
        started = time.monotonic()
        for port in ports.values():
            # up, and consuming: each replica owns its partitions before any order (else one that joins late
            # may sit out the whole run)
            wait_until(
                lambda port=port: healthy(port),
                timeout=300,
                until=lambda h: h is not None and not any("not consuming" in p for p in h.get("problems") or []),
            )
        result["start_s"] = round(time.monotonic() - started, 1)
        stores = open_stores(settings)
        store = stores.of("order")  # the orders' events, and the store whose relay is killed
        order_settings = settings.store_of("order")
        users = [f"U{i:02d}" for i in range(10)]
        products = [f"P{i:02d}" for i in range(20)]
        for user in users:
            http(
                ports["user"], "POST", "/users", {"user_id": user, "name": user, "email": f"{user.lower()}@example.com"}
            )
        for product in products:
            http(
                ports["product"],
                "POST",
                "/products",
                {"product_id": product, "name": product, "price_cents": 500, "initial_stock": 1_000_000},
            )
        order_ports = [ports[name] for name in ports if name.split(".")[0] == "order"]
        # inventory stocked every product before the first order (else it would be out of stock)
        wait_until(
            lambda: healthy(ports["inventory"]) or {},
            timeout=120,
            until=lambda h: h.get("lag") == 0 and (h.get("handled") or 0) >= len(products),
        )

        def place(n: int) -> str:
            line = {"product_id": products[n % len(products)], "quantity": 1}
            body = {"user_id": users[n % len(users)], "lines": [line]}
            order_id: str = http(order_ports[n % len(order_ports)], "POST", "/orders", body)["order_id"]
            return order_id

        wait_until(lambda: _placed_first(place), timeout=60)
        killed: dict[str, float | int] = {}
        begun = time.monotonic()
        # Open loop: each order is sent at its time, by a small pool, however long the previous one took.
        with ThreadPoolExecutor(max_workers=16) as pool:
            placed = []
            for n in range(1, orders):
                time.sleep(max(0.0, begun + n / rate - time.monotonic()))
                placed.append(pool.submit(place, n))
                if kill_relay and n == orders // 2:
                    killed = kill_active_relay(order_settings, store)
            for order in placed:
                order.result()  # a refused order fails the run
        result["placed_s"] = round(time.monotonic() - begun, 1)
        result["placed_per_s"] = round((orders - 1) / result["placed_s"], 1)
        seen = Sagas(store)
        wait_until(lambda: len(seen.read().ended) >= orders, timeout=timeout)
        settle(stores, timeout=timeout)
        result.update(killed)
        created, ended = seen.created, seen.ended_at
        latencies = [ended[o] - created[o] for o in ended if o in created]
        result["terminal"], result["stuck"] = len(ended), len(set(created) - set(ended))
        result["completed"] = sum(1 for kind in seen.ended.values() if kind == "OrderCompleted")
        result["p50_ms"] = round(1000 * percentile(latencies, 50), 1)
        result["p99_ms"] = round(1000 * percentile(latencies, 99), 1)
        result["health"] = {
            name: {k: answer.get(k) for k in ("replica", "replicas", "port", "handled_here", "pid")}
            for name, port in ports.items()
            if (answer := healthy(port))
        }
        result["kafka"] = kafka_check(settings.with_bootstrap(_bootstrap(output, settings)), stores)
    except BaseException:
        print("".join(output[-60:]), file=sys.stderr)  # what 'eventlab up' said, for the failure
        raise
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    assert stores is not None
    report = audit(stores, grace=timedelta(0), mailbox=data_dir / MAILBOX)
    result["audit_ok"] = report.ok
    result["audit_failed"] = {name: report[name].as_dict() for name in report if not report[name].ok}
    result["stores"] = list(stores.names)
    stores.close()
    result["load"] = [round(x, 2) for x in os.getloadavg()]
    return result


def settle(stores: ShopStores, timeout: float, quiet: float = 1.0) -> None:
    """Wait until every stored event is published and no store has grown for ``quiet`` s: what
    follows the last sagas (stock commits, emails) is stored and sent before Kafka is read and the
    shop stopped."""
    heads: dict[str, int] = {}
    changed = time.monotonic()

    def settled() -> bool:
        nonlocal heads, changed
        now = {name: store.head() for name, store in stores.names.items()}
        if now != heads or any(unpublished(store) for store in stores):
            heads, changed = now, time.monotonic()
        return time.monotonic() - changed >= quiet

    wait_until(settled, timeout, interval=0.1)


def _placed_first(place: Any) -> bool:
    try:
        place(0)
    except urllib.error.HTTPError:
        return False
    return True


def _bootstrap(output: list[str], settings: Settings) -> str:
    """The broker the shop runs on: the external one, else the embedded one ``up`` printed."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    for line in output:
        if line.startswith("eventlab: broker "):
            return line.split()[2].rstrip(",")
    raise RuntimeError("'eventlab up' did not say where its broker is")


def kill_active_relay(settings: Settings, store: EventStore) -> dict[str, float | int]:
    """``kill -9`` the relay holding the lease; measure how long until another one holds it."""
    pid = wait_until(lambda: relay_holder(settings, store), timeout=30)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_until(lambda: relay_holder(settings, store), timeout=60, until=lambda holder: holder not in (None, pid))
    return {"killed_relay_pid": pid, "new_relay_pid": new, "takeover_s": round(time.monotonic() - killed_at, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0, help="orders per second")
    parser.add_argument("--replicas", type=parse_replicas, default=parse_replicas("inventory=3,relay=2"))
    parser.add_argument("--no-kill", action="store_true", help="do not kill the active relay mid-run")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for the last saga")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.orders, args.rate, args.replicas, not args.no_kill, args.timeout)
    if args.json:
        print(json.dumps(result))
    else:
        rows = [(key, json.dumps(value)) for key, value in result.items() if key != "health"]
        rows += [(f"health {name}", json.dumps(value)) for name, value in result["health"].items()]
        print(text_rows(rows))
    ok = (
        result["stuck"] == 0
        and result["audit_ok"]
        and not result["kafka"]["lost"]
        and not result["kafka"]["out_of_order"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

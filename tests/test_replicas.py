"""N processes per service (``eventlab up --processes --replicas inventory=3,relay=2``): the option is
checked strictly, the order service's deadline sweepers may run side by side, and the shop takes
orders with three inventory replicas while the active relay is killed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port_offset

from eventlab.cli import main
from eventlab.events import OrderCreated, OrderLine
from eventlab.restarts import STATUS_FILE
from eventlab.services.deadlines import Deadlines
from eventlab.services.runtime import trace_metadata
from eventlab.settings import REPLICA_PORT_STEP, PortInUse, Settings
from eventlab.store import NewEvent, SqliteEventStore
from eventlab.supervisor import Supervisor, parse_replicas
from eventlab.sweeper import DeadlineSweeper

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "replicas.py"


# --- the option -------------------------------------------------------------------------------------


def test_replicas_are_counted_per_service():
    assert parse_replicas("inventory=3,order=2") == {"inventory": 3, "order": 2}
    assert parse_replicas(" relay = 2 ") == {"relay": 2}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("warehouse=2", "unknown service 'warehouse'"),
        ("inventory=0", "'inventory=0': the count must be a whole number from 1 to 10"),
        ("inventory=-1", "'inventory=-1'"),
        ("inventory=11", "from 1 to 10"),
        ("inventory=99999999999999999999", "'inventory=99999999999999999999'"),
        ("inventory=three", "'inventory=three'"),
        ("inventory=2.5", "'inventory=2.5'"),
        ("inventory", "'inventory' is not NAME=COUNT"),
        ("inventory=2,,order=2", "'' is not NAME=COUNT"),
        ("inventory=2,inventory=3", "inventory is given twice"),
        ("=3", "'=3' is not NAME=COUNT"),
    ],
)
def test_a_bad_replicas_option_is_one_line_naming_the_bad_part(text, named, capsys):
    # when 'eventlab up' is given a bad --replicas, then it exits 2 before starting anything, naming the part
    with pytest.raises(SystemExit) as exited:
        main(["up", "--processes", "--replicas", text])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1 and error.startswith("eventlab up: error: argument --replicas")


def test_replicas_need_processes(capsys, tmp_path):
    assert main(["up", "--data-dir", str(tmp_path), "--replicas", "inventory=2"]) == 2
    assert "--replicas needs --processes" in capsys.readouterr().err


def test_replica_ports_are_100_apart_and_documented(capsys):
    settings = Settings(http_port_offset=1000)
    assert [settings.port("inventory", k) for k in range(3)] == [9085, 9185, 9285]
    # and 'eventlab up --help' states the rule, with the ports it gives
    with pytest.raises(SystemExit) as exited:
        main(["up", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as one line, however argparse wrapped it
    rule = f"replica k listens on the service's port + {REPLICA_PORT_STEP}*k"
    assert rule in text
    assert f"(inventory: {', '.join(str(Settings().port('inventory', k)) for k in range(3))})" in text


def test_a_replica_port_taken_on_the_configured_host_is_refused_before_anything_starts(tmp_path):
    # given services bound to another address than 127.0.0.1, and the second inventory replica's port
    # taken there by another program
    settings = Settings.from_env(env={}, data_dir=tmp_path, http_port_offset=free_port_offset(), http_host="127.0.0.2")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.2", settings.port("inventory", 1)))
        squatter.listen()
        # when the supervisor starts three inventory replicas, then it refuses, naming that replica's port
        supervisor = Supervisor(settings, names=["inventory"], replicas={"inventory": 3})
        try:
            with pytest.raises(
                PortInUse, match=f"port {settings.port('inventory', 1)} of the inventory \\(replica 1\\)"
            ):
                supervisor.start()
            # and it started nothing
            assert supervisor.pids() == {} and not (tmp_path / STATUS_FILE).exists()
        finally:
            supervisor.stop()


# --- the order service's deadline sweepers, one per order replica -----------------------------------


def test_sweepers_of_several_order_replicas_cancel_each_overdue_order_once(tmp_path):
    # given 30 orders past their reservation deadline, in one store
    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        for n in range(30):
            order_id = f"O-{n}"
            lines = (OrderLine(product_id="P001", quantity=1, unit_price_cents=500),)
            created = OrderCreated(order_id=order_id, user_id="U001", lines=lines, total_cents=500)
            store.append([NewEvent(created, 1, trace_metadata("order", order_id))])
    # when four sweepers (as in four order replicas, each with its own store) sweep at the same time
    later = datetime.now(UTC) + timedelta(seconds=60)
    stores = [SqliteEventStore(path) for _ in range(4)]
    sweepers = [DeadlineSweeper(s, Deadlines.scaled(10), clock=lambda: later) for s in stores]
    start = threading.Barrier(len(sweepers))
    cancelled: list[list[str]] = []

    def sweep(sweeper: DeadlineSweeper) -> None:
        start.wait(10)
        cancelled.append(sweeper.sweep())

    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # then every order is cancelled exactly once: the version-checked append lets one sweeper win
    assert sorted(order for each in cancelled for order in each) == sorted(f"O-{n}" for n in range(30))
    endings = [e for e in stores[0].read_all() if e.event_type == "OrderCancelled"]
    assert len(endings) == 30 == len({e.aggregate_id for e in endings})
    for s in stores:
        s.close()


# --- the whole shop: replicas, and the active relay killed mid-run ----------------------------------


def run_benchmark(env_extra: dict[str, str], orders: int = 100, rate: float = 100.0) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTLAB_", "OTEL_"))}
    env.update(env_extra, PYTHONPATH=os.pathsep.join([str(BENCHMARK.parents[1]), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--orders", str(orders), "--rate", str(rate), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_replicated_run(result: dict, orders: int) -> None:
    # then every order ended, every audit check holds, nothing was lost or reordered on Kafka
    assert (result["terminal"], result["stuck"]) == (orders, 0)
    assert result["completed"] == orders  # stock and payment never fail here
    assert result["audit_ok"], result["audit_failed"]
    assert result["kafka"]["lost"] == 0 and result["kafka"]["out_of_order"] == 0
    # and the relay that held the lease was killed, and another one took over
    assert result["killed_relay_pid"] != result["new_relay_pid"]
    # and the three inventory replicas answer on their own ports, each saying which replica it is
    health = result["health"]
    assert [(health[n]["replica"], health[n]["replicas"]) for n in ("inventory", "inventory.1", "inventory.2")] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    assert health["inventory.1"]["port"] == health["inventory"]["port"] + 100
    assert len({health[n]["pid"] for n in health}) == len(health)
    # and they shared the work: each handled some of the orders' events
    assert all(health[n]["handled_here"] for n in ("inventory", "inventory.1", "inventory.2"))


@pytest.mark.integration
def test_orders_complete_on_three_inventory_replicas_while_the_active_relay_is_killed():
    # given the shop in processes on the embedded broker and SQLite, three inventory replicas and two relays,
    # when 100 orders come in over HTTP and the relay holding the lease is killed (kill -9) half way
    result = run_benchmark({})
    check_replicated_run(result, 100)

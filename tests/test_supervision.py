"""Supervision: whatever dies is restarted with backoff and reported, never silently; children die
with their supervisor; a port that is taken is one clear error, not a crash loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import free_port_offset

from eventlab import Settings, Shop
from eventlab.adapters.mailer import MAILBOX
from eventlab.application import Commands
from eventlab.http import service_health
from eventlab.kafka.loop import ServiceLoop
from eventlab.projections import audit
from eventlab.restarts import STATUS_FILE, Backoff, read_status, supervision_problems, write_status
from eventlab.settings import port_free
from eventlab.store.sqlite import SqliteEventStore
from eventlab.supervisor import Supervisor


def settings_for(tmp_path, offset=None, **overrides):
    return Settings.from_env(env={}, data_dir=tmp_path, http_port_offset=offset or free_port_offset(), **overrides)


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)
    return result


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def supervised(tmp_path):
    """A Supervisor running in a background thread, as the chaos command uses it."""
    running = []

    def start(names, extra_args=(), **settings):
        supervisor = Supervisor(settings_for(tmp_path, **settings), extra_args, names).start()
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
        thread.start()
        running.append((supervisor, stop, thread))
        return supervisor

    yield start
    for supervisor, stop, thread in running:
        stop.set()
        thread.join(10)
        supervisor.stop()


# --- backoff: pure logic -------------------------------------------------------------------------


def test_a_crash_loop_backs_off_exponentially_up_to_a_ceiling():
    backoff = Backoff(initial=0.2, maximum=1.0)
    assert [backoff.died() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.restarts == 5 and backoff.crash_looping


def test_a_child_that_ran_for_a_while_is_restarted_quickly_again():
    backoff = Backoff(initial=0.2, reset_after=0.0)
    backoff.died()
    backoff.started()
    assert backoff.died() == 0.2 and not backoff.crash_looping


def test_problems_are_added_to_a_services_health(tmp_path):
    with SqliteEventStore(tmp_path / "events.db") as store:
        health = service_health(None, store, lambda: ["relay is crash-looping"], list)
        assert health() == {"events": 0, "problems": ["relay is crash-looping"]}
        assert service_health(None, store, list)() == {"events": 0, "problems": []}


def process_state(service, replica, *, crash_looping=False, gave_up=""):
    """One process as the supervisor's status file describes it."""
    return {
        "service": service,
        "replica": replica,
        "port": None,
        "pid": None if gave_up else 4242,
        "standby_pid": None,
        "restarts": 5 if crash_looping or gave_up else 0,
        "backoff": 3.2 if crash_looping else 0.2,
        "crash_looping": crash_looping,
        "restart_at": None,
        "last_exit": 1 if crash_looping or gave_up else None,
        "gave_up": bool(gave_up),
        "reason": gave_up,
    }


def test_a_services_health_has_a_relay_problem_only_when_no_relay_replica_runs(tmp_path):
    def problems(relay, relay_1):
        processes = {"order": process_state("order", 0), "relay": relay, "relay.1": relay_1}
        write_status(tmp_path, {"pid": os.getpid(), "updated": time.time(), "processes": processes})
        return supervision_problems(tmp_path, "order", replicated=["relay"])

    # given the shop with two relays (--replicas relay=2): one publishes, the other stands by
    running, looping = process_state("relay", 0), process_state("relay", 0, crash_looping=True)
    # when one of them crash-loops while the other runs, then publishing goes on: no problem
    assert problems(looping, process_state("relay", 1)) == []
    assert problems(running, process_state("relay", 1, crash_looping=True)) == []
    # when the first gave up and the second crash-loops, then both are reported, the second included
    gone = process_state("relay", 0, gave_up="configuration error (exit 2)")
    found = problems(gone, process_state("relay", 1, crash_looping=True))
    assert len(found) == 2
    assert found[0] == "relay is not running: configuration error (exit 2)"
    assert found[1].startswith("relay.1 is crash-looping: 5 restarts")


# --- process mode ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path):
    # Given `eventlab up --processes` with every service answering
    settings = settings_for(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    env.update(settings.environ())
    env.pop("EVENTLAB_BOOTSTRAP_SERVERS")
    up = subprocess.Popen(
        [sys.executable, "-m", "eventlab", "up", "--processes"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    status = tmp_path / STATUS_FILE
    wait_for(lambda: status.exists(), what="supervisor status file")
    wait_for(lambda: not port_free(settings.port("notification")), what="notification listening")

    def with_standbys():
        processes = read_status(tmp_path)["processes"]  # the supervisor is running: its status is there
        return processes if all(p["standby_pid"] for p in processes.values()) else None

    processes = wait_for(with_standbys, what="standbys started")
    children = [pid for p in processes.values() for pid in (p["pid"], p["standby_pid"])]
    # When the supervisor is killed without a chance to clean up
    up.kill()
    up.wait()
    # Then every child (standbys included) stops, so its port is free for the next `eventlab up`
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=30, what="children gone")


@pytest.mark.integration
def test_up_refuses_to_start_when_a_port_is_taken(tmp_path):
    # Given something already listening on the order service's port
    settings = settings_for(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.port("order")))
        squatter.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
        env.update(EVENTLAB_DATA_DIR=str(tmp_path), EVENTLAB_HTTP_PORT_OFFSET=str(settings.http_port_offset))
        # When `eventlab up --processes` starts
        done = subprocess.run(
            [sys.executable, "-m", "eventlab", "up", "--processes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # Then it refuses with one line naming the port, and starts nothing
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and str(settings.port("order")) in done.stderr
    assert not (tmp_path / STATUS_FILE).exists()


@pytest.mark.integration
def test_the_supervisor_gives_up_on_a_child_whose_port_is_taken(supervised):
    # Given a supervised user service
    supervisor = supervised(["user"])
    port = supervisor.settings.port("user")
    wait_for(lambda: not port_free(port), what="user listening")
    # When it dies and something else takes its port before the restart
    pid = supervisor.pids()["user"]
    with socket.socket() as squatter:
        # (the supervisor's round waits for its lock: its warm standby, told to go 0.2 s after the death,
        # would otherwise bind the port first when this thread is slow to run on a loaded machine)
        with supervisor._lock:
            os.kill(pid, signal.SIGKILL)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            wait_for(lambda: port_free(port), what="port released")
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
        # Then the restarted child exits with a configuration error and is not restarted again
        data_dir = supervisor.settings.data_dir
        wait_for(lambda: read_status(data_dir)["processes"]["user"]["gave_up"], what="supervisor gives up")
        restarts = supervisor.restarts["user"]
        time.sleep(1.0)
        assert supervisor.restarts["user"] == restarts == 1
        problems = supervision_problems(supervisor.settings.data_dir, "user")
        assert problems and "configuration error" in problems[0]


def test_a_status_file_that_cannot_be_written_is_reported_once_and_the_shop_runs_on(supervised):
    # Given a supervised user service, whose status file becomes a directory (as a full disk, it fails)
    supervisor = supervised(["user"])
    reports: list[str] = []
    supervisor.report = reports.append
    status = supervisor.settings.data_dir / STATUS_FILE
    pid = wait_for(lambda: read_status(status.parent) and supervisor.pids().get("user"), what="user started")
    status.unlink()
    status.mkdir()
    wait_for(lambda: reports, what="the failure reported")
    # When the child dies meanwhile
    os.kill(pid, signal.SIGKILL)
    # Then the supervisor, still running, restarts it, and said once why the file is not written
    wait_for(lambda: supervisor.pids().get("user") not in (None, pid), what="user restarted")
    assert reports[0].startswith("cannot write supervisor.json (Is a directory)")
    assert not any(line.startswith("cannot write") for line in reports[1:])
    # and once it can be written again, it is, with the restart, and nothing half-written is left
    status.rmdir()
    wait_for(lambda: (found := read_status(status.parent)) and found["processes"]["user"]["restarts"] == 1)
    assert reports[-1] == "supervisor.json is written again"
    assert [p.name for p in status.parent.iterdir() if p.name.startswith(".supervisor")] == []


@pytest.mark.integration
def test_a_crash_looping_child_backs_off_and_is_reported(supervised):
    # Given a relay that cannot start (a bad option makes it exit at once)
    supervisor = supervised(["relay"], extra_args=["--seed", "not-a-number"])
    # When it keeps dying
    data_dir = supervisor.settings.data_dir

    def backed_off():
        status = read_status(data_dir)
        relay = status["processes"]["relay"] if status else None
        return relay if relay and relay["backoff"] >= 0.8 else None

    # Then the delay doubles with each quick death (0.2, 0.4, 0.8 s), as the status file says
    # (each restart is a new interpreter importing eventlab before it fails, seconds each on a loaded
    # machine; one that took 10 s would count as a healthy run and start the delays again)
    status = wait_for(backed_off, timeout=180, what="a backoff of 0.8 s")
    assert status["crash_looping"] and status["restarts"] >= 3
    # and the health of every service says the relay is crash-looping
    problems = supervision_problems(data_dir, "order", replicated=["relay"])
    assert len(problems) == 1 and problems[0].startswith("relay is crash-looping")


@pytest.fixture
def shop_in_processes(supervised):
    """The whole shop in processes, a product in stock and an order completed: (supervisor, commands).
    Its sagas wait 10 minutes, not 30 s: a loaded machine takes longer than that to start it again."""
    names = ["relay", "user", "product", "order", "payment", "inventory", "notification"]
    supervisor = supervised(names, extra_args=["--payment-failure-rate", "0"], saga_timeout_s=600)
    with SqliteEventStore(supervisor.settings.store_path) as store:
        commands = Commands(store)
        commands.register_user(user_id="U1", name="Ada", email="ada@example.com")
        commands.create_product(product_id="P1", name="Lamp", price_cents=2750, initial_stock=10)
        copies = [("order_customer", "U1"), ("order_price", "P1")]  # Order's own copies, recorded via Kafka
        wait_for(lambda: all(store.read_stream(*key) for key in copies), what="order's copies")
        first = commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
        wait_for(lambda: commands.get_order(first).terminal, what="first order")
        yield supervisor, commands


@pytest.mark.integration
def test_a_killed_consumer_process_is_replaced_and_handles_new_orders(shop_in_processes):
    supervisor, commands = shop_in_processes
    # When the inventory and order processes are killed
    for name in ("inventory", "order"):
        standby = wait_for(lambda name=name: supervisor.standby_pids().get(name), what=f"{name} standby")
        victim = supervisor.pids()[name]
        os.kill(victim, signal.SIGKILL)
        # (their warm standbys take over)
        wait_for(lambda victim=victim, name=name: supervisor.pids()[name] != victim, what=f"{name} restarted")
        assert supervisor.pids()[name] == standby
    # Then orders placed afterwards complete
    later = commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 1}])
    assert wait_for(lambda: commands.get_order(later).terminal, what="order after kills")
    assert commands.get_order(later).status == "completed"
    assert supervisor.restarts["inventory"] == supervisor.restarts["order"] == 1


@pytest.mark.integration
def test_a_killed_embedded_broker_is_started_again_with_every_process_and_nothing_is_lost(shop_in_processes):
    supervisor, commands = shop_in_processes
    reports: list[str] = []
    supervisor.report = reports.append
    broker, pids = supervisor.broker_pid, supervisor.pids()
    # When the broker is killed (its topics, offsets and groups were in its memory only), and an order
    # is placed meanwhile
    os.kill(broker, signal.SIGKILL)
    during = commands.place_order(user_id="U1", lines=[{"product_id": "P1", "quantity": 2}])
    # Then a new broker runs, every process is new, and the order completes
    wait_for(lambda: supervisor.broker_pid not in (None, broker), timeout=120, what="a new broker")
    assert wait_for(lambda: commands.get_order(during).terminal, timeout=120, what="the order placed meanwhile")
    assert commands.get_order(during).status == "completed", reports
    assert not set(supervisor.pids().values()) & set(pids.values())
    assert reports[0].startswith("the embedded broker died") and "started again" in reports[-1]
    assert set(supervisor.restarts.values()) == {0}  # nothing failed but the broker
    # and nothing was done twice: the rewound relay published the first order again, to no effect
    report = audit(supervisor.settings.store_path, mailbox=supervisor.settings.data_dir / MAILBOX)
    assert report.ok, report.table()


# --- threads mode ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_loop_thread_that_raises_is_restarted_and_reported(tmp_path, monkeypatch):
    # Given a shop whose inventory loop fails three times as it starts
    failures = iter([True, True, True])
    real_run = ServiceLoop.run

    def flaky_run(self, stop, *args, **kwargs):
        if self.service.name == "inventory" and next(failures, False):
            raise RuntimeError("inventory exploded")
        return real_run(self, stop, *args, **kwargs)

    monkeypatch.setattr(ServiceLoop, "run", flaky_run)
    settings = settings_for(tmp_path)
    with Shop(settings, http=True) as shop:
        # When the thread dies and dies again
        wait_for(lambda: shop.restarts["inventory"] == 3, what="three restarts")
        # Then it is reported as crash-looping in the service's health, and in the end it works again
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.port('inventory')}/health", timeout=10) as answer:
                health = json.loads(answer.read())
        except urllib.error.HTTPError as degraded:  # 503 when /health renders problems as "degraded"
            health = json.loads(degraded.read())
        assert any("inventory" in p and "inventory exploded" in p for p in health["problems"])
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.create_product("P1", "Lamp", 2750, 5)
        shop.wait_idle()
        assert shop.wait(shop.place_order("U1", {"P1": 1})).status == "completed"
        assert shop.restarts == {**dict.fromkeys(shop.restarts, 0), "inventory": 3}


@pytest.mark.integration
def test_a_killed_embedded_broker_is_started_again_in_threads_mode_and_nothing_is_lost(tmp_path, monkeypatch, caplog):
    # Given a shop in one process with an order completed, looking at its broker every 2 s
    monkeypatch.setattr("eventlab.shop.BROKER_CHECK_S", 2.0)  # so the moment it is down can be seen
    settings = settings_for(tmp_path)
    with Shop(settings, http=True) as shop:
        shop.register_user("U1", "Ada", "ada@example.com")
        shop.create_product("P1", "Lamp", 2750, 5)
        shop.wait_idle()  # stocked by Inventory
        before = shop.place_order("U1", {"P1": 1})
        assert shop.wait(before).status == "completed"
        health = f"http://127.0.0.1:{settings.port('user')}/health"
        broker = shop._require().broker.pid
        # When its broker dies (its topics, offsets and groups were in its memory only), and an order
        # is placed meanwhile
        os.kill(broker, signal.SIGKILL)
        during = shop.place_order("U1", {"P1": 2})
        # Then every service says so at once, instead of "ok"
        with pytest.raises(urllib.error.HTTPError) as degraded:
            wait_for(lambda: urllib.request.urlopen(health, timeout=10).close(), what="user's health degraded")
        problems = json.loads(degraded.value.read())["problems"]
        assert problems == [f"the embedded broker {shop.bootstrap_servers} is not running; starting a new one"]
        # and a new broker runs on its port, the order placed meanwhile completes, health is ok again
        wait_for(lambda: shop._require().broker.pid not in (None, broker), what="a new broker")
        assert shop.wait(during, timeout=60).status == "completed"
        assert shop.wait(shop.place_order("U1", {"P1": 1})).status == "completed"
        with urllib.request.urlopen(health, timeout=10) as answer:
            assert json.loads(answer.read())["problems"] == []
        assert set(shop.restarts.values()) == {0}, shop.restarts  # nothing failed but the broker
        said = [r.getMessage() for r in caplog.records if "embedded broker" in r.getMessage()]
        assert "died; starting a new one" in said[0] and "runs again" in said[-1], said
    # and nothing was done twice: the rewound relay published the first order again, to no effect
    report = audit(settings.store_path, mailbox=settings.data_dir / MAILBOX)
    assert report.ok, report.table()
    assert [e.event_type for e in SqliteEventStore(settings.store_path).read_stream("order", before)].count(
        "OrderCompleted"
    ) == 1

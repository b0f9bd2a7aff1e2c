"""Microservice mode: one OS process per service, the way they are deployed.

``eventlab run NAME`` runs one service (or the ``relay``) against a running broker;
``eventlab up --processes`` starts the broker (unless external) and supervises one process per
service plus the relay, restarting any that dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from eventlab.adapters import SimulatedGateway
from eventlab.application import Commands
from eventlab.errors import BrokerError
from eventlab.http import ServiceHttp, service_health
from eventlab.kafka.clients import ensure_topics
from eventlab.relay import Relay
from eventlab.services import SERVICE_NAMES
from eventlab.services.deadlines import Deadlines, DeadlineSweeper
from eventlab.services.loop import ServiceLoop
from eventlab.settings import Settings
from eventlab.shop import ShopInfrastructure, build_services
from eventlab.store.sqlite import SqliteEventStore

__all__ = ["run_one", "supervise", "stop_on_signals", "PROCESS_NAMES"]

log = logging.getLogger(__name__)

PROCESS_NAMES: tuple[str, ...] = ("relay", *SERVICE_NAMES)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_one(name: str, settings: Settings, gateway: SimulatedGateway) -> int:
    """Run service ``name`` (or ``relay``) in this process until SIGINT/SIGTERM."""
    if settings.embedded:
        raise BrokerError(
            f"'eventlab run {name}' joins a running shop: set EVENTLAB_BOOTSTRAP_SERVERS, "
            "or start everything with 'eventlab up --processes'"
        )
    stop = stop_on_signals()
    store = SqliteEventStore(settings.store_path)
    ensure_topics(settings)
    try:
        if name == "relay":
            Relay(store, settings).run(stop)
            return 0
        service = build_services(settings, gateway)[name]
        loop = ServiceLoop(service, store, settings) if service.subscriptions else None
        server = ServiceHttp(name, settings.port(name), service_health(loop, store), Commands(store)).start()
        log.info("%s serving http://127.0.0.1:%d", name, server.port)
        if name == "order":  # the saga's deadlines run beside the saga
            sweeper = DeadlineSweeper(store, Deadlines.scaled(settings.saga_timeout_s))
            threading.Thread(target=sweeper.run, args=(stop,), name="eventlab-deadlines", daemon=True).start()
        if loop is not None:
            loop.run(stop)
        else:
            stop.wait()
        server.stop()
        return 0
    finally:
        store.close()


def supervise(settings: Settings, extra_args: Sequence[str] = (), names: Sequence[str] = PROCESS_NAMES) -> int:
    """Start the infrastructure and one child process per name; restart children that die."""
    stop = stop_on_signals()
    infra = ShopInfrastructure(settings)
    settings = infra.start()
    env = {**os.environ, **settings.environ()}

    def spawn(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "eventlab", "run", name, *extra_args], env=env)

    children = {name: spawn(name) for name in names}
    print(f"eventlab: broker {settings.bootstrap_servers}, store {settings.store_path}", flush=True)
    for name in SERVICE_NAMES:
        if name in names:
            print(f"  {name:<13} pid {children[name].pid:<7} http://127.0.0.1:{settings.port(name)}", flush=True)
    try:
        while not stop.wait(0.5):
            for name, child in children.items():
                if child.poll() is not None:
                    log.warning("%s exited with %s; restarting", name, child.returncode)
                    time.sleep(0.5)
                    children[name] = spawn(name)
    finally:
        for child in children.values():
            child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        infra.stop()
    return 0

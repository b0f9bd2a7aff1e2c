"""Microservice mode: one OS process per service, the way they are deployed, supervised.

``eventlab run NAME`` runs one service (or the ``relay``) against a running broker;
``eventlab up --processes`` starts the broker (unless external) and a :class:`Supervisor` that runs
one child process per service plus the relay:

- a child that dies is restarted after 0.2 s, doubling up to 30 s while it keeps dying (reset once
  it has run for 10 s); restarts and backoff are printed and written to ``<data_dir>/supervisor.json``,
  which each service's ``/health`` reads to report a crash-looping service or relay as ``problems``;
- ``--replicas inventory=3,order=2`` (:func:`parse_replicas`) runs N processes of a service, all in
  the service's consumer group, so they share its partitions (topics get at least as many
  partitions as the largest count); replica ``k`` listens on the service's port + 100 x ``k``
  (:data:`~eventlab.settings.REPLICA_PORT_STEP`: inventory 8085, 8185, 8285), says who it is in
  ``/health`` (``replica``, ``replicas``, ``port``) and is supervised on its own (``inventory.1`` in
  the status file). Every service is safe to replicate: consumers are idempotent and version-checked,
  and the deadline sweeper beside each order replica cancels an order only through a version-checked
  append that re-decides on the latest state (``tests/test_replicas.py`` races several). ``relay=2``
  adds a standby relay: one relay publishes per store, the holder of the store's relay lease
  (:meth:`~eventlab.store.base.EventStore.lease`), and the standby takes over when it dies (where
  services have stores of their own, a relay process runs a relay per store, a thread each, so
  every store has its standby);
- each service writes to its own store where ``EVENTLAB_<SERVICE>_STORE_URL`` gives it one (printed
  at start, passwords hidden); the others share ``EVENTLAB_STORE_URL``;
- a child that exits with :data:`CONFIG_ERROR` (3: e.g. its HTTP port is taken) is not restarted;
- an embedded broker that dies is started again on its port, and every child with it, the relays
  rewound (:meth:`~eventlab.shop.ShopInfrastructure.restart_broker`): the broker's topics, offsets
  and groups were in its memory only;
- children die with the supervisor, however it dies (``kill -9`` included): on Linux the kernel
  kills them (``PR_SET_PDEATHSIG`` with SIGKILL, set between fork and exec); everywhere each child
  also checks every 0.5 s that its parent is still the supervisor and stops when it is not, the
  kernel ending it 5 s later (``alarm``) if the clean stop hangs. On macOS, which has no
  parent-death signal, that check is all there is: an orphaned child stops within about a second
  once it has started (while it is still importing, it notices when its start-up ends).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from eventlab import collector
from eventlab.adapters import SimulatedGateway
from eventlab.bootstrap import Wiring, aggregates, build_services, subscriptions
from eventlab.errors import BrokerError, EventlabError
from eventlab.kafka.broker import die_with_parent
from eventlab.kafka.clients import ensure_topics
from eventlab.kafka.relay import IDLE_WAIT_IN_PROCESS, Relay, watch_heads
from eventlab.restarts import STATUS_FILE, Backoff, supervision_problems, write_status
from eventlab.services import SERVICE_NAMES
from eventlab.services.payment import Gateway
from eventlab.services.runtime import Service
from eventlab.settings import REPLICA_PORT_STEP, PortInUse, Settings, SettingsError, port_free
from eventlab.shop import ShopInfrastructure, check_service_stores
from eventlab.store import ShopStores, open_store, open_stores
from eventlab.store.base import RELAY_CONSUMER
from eventlab.tracing import open_tracing

__all__ = [
    "CONFIG_ERROR",
    "MAX_REPLICAS",
    "PROCESS_NAMES",
    "Supervisor",
    "parse_replicas",
    "run_one",
    "stop_on_signals",
    "supervise",
]

log = logging.getLogger(__name__)

PROCESS_NAMES: tuple[str, ...] = (RELAY_CONSUMER, *SERVICE_NAMES)

#: A child's exit status for "misconfigured, restarting cannot help" (e.g. its port is taken).
CONFIG_ERROR = 3

#: Tells a child which process supervises it (it stops when its parent is another).
_SUPERVISOR_PID = "EVENTLAB_SUPERVISOR_PID"
#: Set for a warm standby child: it starts, then waits for "go" on stdin before it works.
_STANDBY = "EVENTLAB_STANDBY"
#: How long an orphaned child may take to stop cleanly before it exits hard.
_ORPHAN_GRACE = 5.0
#: Tell a replica its number (0 for the first) and how many replicas its service has.
_REPLICA = "EVENTLAB_REPLICA"
_REPLICAS = "EVENTLAB_REPLICAS"
#: Set when the supervisor runs the embedded broker (the relay then warns as its partitions fill up).
_EMBEDDED = "EVENTLAB_EMBEDDED_BROKER"
#: The most processes of one service ``--replicas`` starts (their ports stay 100 apart below the next thousand).
MAX_REPLICAS = 10


def _whole_from(text: str, low: int, high: int) -> int | None:
    """``text`` as a whole number from ``low`` to ``high``, in ASCII digits; else None."""
    return int(text) if text.isascii() and text.isdigit() and low <= int(text) <= high else None


def _told(variable: str, default: int, high: int) -> int:
    """The whole number from ``default`` to ``high`` that the supervisor put in ``variable`` for its child
    (``default`` when unset); a shell may carry a stale or garbled one: :class:`SettingsError`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    number = _whole_from(text, default, high)
    if number is None:
        raise SettingsError(
            variable, f"set by the supervisor for its processes: a whole number from {default} to {high}"
        )
    return number


def parse_replicas(text: str) -> dict[str, int]:
    """``inventory=3,order=2`` as ``{"inventory": 3, "order": 2}``: processes per service (or ``relay``).

    Raises :class:`ValueError` naming the part that is wrong: an unknown name, a count that is not a
    whole number from 1 to :data:`MAX_REPLICAS`, a name given twice, an empty part.

    Example:
        >>> parse_replicas("inventory=3, order=2")
        {'inventory': 3, 'order': 2}
        >>> parse_replicas("inventory=0")
        Traceback (most recent call last):
        ...
        ValueError: 'inventory=0': the count must be a whole number from 1 to 10
    """
    counts: dict[str, int] = {}
    for part in text.split(","):
        name, equals, count = (piece.strip() for piece in part.partition("="))
        if not equals or not name:
            raise ValueError(f"{part.strip()!r} is not NAME=COUNT (e.g. inventory=3)")
        if name not in PROCESS_NAMES:
            raise ValueError(f"{part.strip()!r}: unknown service {name!r}; use one of {', '.join(PROCESS_NAMES)}")
        if name in counts:
            raise ValueError(f"{part.strip()!r}: {name} is given twice")
        number = _whole_from(count, 1, MAX_REPLICAS)
        if number is None:
            raise ValueError(f"{part.strip()!r}: the count must be a whole number from 1 to {MAX_REPLICAS}")
        counts[name] = number
    return counts


def _child_name(service: str, replica: int) -> str:
    """How the supervisor names replica ``replica`` of ``service``: ``inventory``, ``inventory.1``, ..."""
    return service if replica == 0 else f"{service}.{replica}"


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _die_with_supervisor() -> None:
    """Between fork and exec of a child: SIGKILL when the supervisor's spawner thread ends.

    SIGKILL, not SIGTERM: an orphan's clean stop can hang for ever (a consumer closing against
    the embedded broker that died too was seen to), and everything a child does is safe to cut
    off at any point (atomic appends, idempotent consumers). A clean stop is the supervisor's
    job, which terminates its children before it exits.
    """
    die_with_parent(signal.SIGKILL)


def _orphaned(supervisor_pid: int) -> bool:
    return os.getppid() != supervisor_pid


def _watch_parent(stop: threading.Event, supervisor_pid: int, interval: float = 0.5) -> None:
    """Stop when the supervisor is gone (whatever killed it), and exit hard if stopping hangs.

    The fallback where the kernel sends no parent-death signal (macOS). SIGALRM's default action
    ends the process after the grace period without needing Python to run.
    """

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(interval)
        signal.alarm(int(_ORPHAN_GRACE))  # the kernel ends this process then, even if Python hangs
        log.warning("supervisor %d is gone; stopping", supervisor_pid)
        stop.set()

    threading.Thread(target=watch, name="eventlab-parent-watch", daemon=True).start()


def _promoted(stop: threading.Event) -> bool:
    """A warm standby: wait, imported and wired, until the supervisor says go on stdin.

    True when promoted; False when stopped or when stdin closed (the supervisor is gone).
    """
    line: list[str] = []
    answered = threading.Event()

    def read() -> None:
        line.append(sys.stdin.readline())
        answered.set()

    threading.Thread(target=read, name="eventlab-standby", daemon=True).start()
    while not answered.wait(0.2):
        if stop.is_set():
            return False
    return line[0].strip() == "go"


def _open_stores(name: str, settings: Settings, consumes: bool) -> ShopStores:
    """The stores process ``name`` opens: the relay every store (a relay per store), a service that
    only takes commands its own store alone; a consuming service writes only to its own store, but
    also opens the others to read them: its lag counts their events it has not handled, and the
    order service's ``GET /orders/{id}`` shows the saga's events from every store."""
    if name == RELAY_CONSUMER or consumes:
        return open_stores(settings)
    return ShopStores.one(open_store(settings.store_of(name)))


def _check_stores(name: str, settings: Settings, services: Mapping[str, Service]) -> None:
    """Refuse, as ``eventlab up`` does, a store that does not hold the past of service ``name`` (of
    every service for the relay): :func:`~eventlab.shop.check_service_stores`, over every store."""
    owned = aggregates(services)
    stores = open_stores(settings)
    try:
        check_service_stores(settings, stores, owned if name == RELAY_CONSUMER else {name: owned[name]})
    finally:
        stores.close()


def _run_relays(relays: Iterable[Relay], stop: threading.Event) -> None:
    """Run each relay (one per store, each holding its store's lease) in a thread of its own until ``stop``;
    relays that poll (several SQLite stores: no commit signal across processes) are woken by one
    :func:`~eventlab.kafka.relay.watch_heads` thread instead."""
    relays = list(relays)
    threads = [
        threading.Thread(target=relay.run, args=(stop,), name=f"eventlab-relay-{index}", daemon=True)
        for index, relay in enumerate(relays)
    ]
    polled = [relay for relay in relays if relay.idle_wait < IDLE_WAIT_IN_PROCESS]
    if len(polled) > 1:
        for relay in polled:
            relay.idle_wait = IDLE_WAIT_IN_PROCESS  # the watcher wakes it; this only bounds a missed wake-up
        stores = [relay.store for relay in polled]
        threads.append(
            threading.Thread(target=watch_heads, args=(stores, stop), name="eventlab-relay-heads", daemon=True)
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_one(name: str, settings: Settings, gateway: Gateway) -> int:
    """Run service ``name`` (or ``relay``) in this process until SIGINT/SIGTERM.

    The service writes to its own store (``EVENTLAB_<SERVICE>_STORE_URL``, else the shared one); the
    relay publishes every store, a relay per store (see :func:`_open_stores` for what each opens).
    Returns :data:`CONFIG_ERROR` when the service's HTTP port is taken.
    """
    if settings.embedded:
        raise BrokerError(
            f"'eventlab run {name}' joins a running shop: set EVENTLAB_BOOTSTRAP_SERVERS, "
            "or start everything with 'eventlab up --processes'"
        )
    stop = stop_on_signals()
    replica = _told(_REPLICA, 0, MAX_REPLICAS - 1)
    replicas = _told(_REPLICAS, 1, MAX_REPLICAS)
    if replica and name != RELAY_CONSUMER:  # replica k listens k steps above the service's port
        settings = replace(settings, http_port_offset=settings.http_port_offset + REPLICA_PORT_STEP * replica)
    supervised = bool(os.environ.get(_SUPERVISOR_PID))
    if supervised:
        supervisor_pid = _told(_SUPERVISOR_PID, 1, 2**31 - 1)
        if _orphaned(supervisor_pid):
            log.warning("supervisor %d is gone; not starting %s", supervisor_pid, name)
            return 1
        _watch_parent(stop, supervisor_pid)
    tracing = open_tracing(settings)  # this process's spans, exported until it stops
    services = build_services(settings, gateway, tracing=tracing)
    stores = _open_stores(name, settings, name != RELAY_CONSUMER and bool(services[name].subscriptions))
    try:
        if not supervised:  # the supervisor checked the stores and created the topics before starting it
            _check_stores(name, settings, services)
            ensure_topics(settings)
        if tracing is not None:
            tracing.open()
        wiring = Wiring(settings, stores, services, tracing=tracing, embedded=bool(os.environ.get(_EMBEDDED)))
        loop = None if name == RELAY_CONSUMER else wiring.loop(name)
        collector.tune()  # as in the in-process shop: no collection walks the start-up heap
        if os.environ.get(_STANDBY) and not _promoted(stop):
            return 0
        if name == RELAY_CONSUMER:
            _run_relays(wiring.relays().values(), stop)
            return 0
        me = _child_name(name, replica)
        health = wiring.health(
            name, loop, lambda: supervision_problems(settings.data_dir, me, replicated=[RELAY_CONSUMER])
        )
        health.identity.update(replica=replica, replicas=replicas, port=settings.port(name))
        try:
            server = wiring.http(name, health).start()
        except PortInUse as exc:
            print(f"eventlab: error: {exc}", file=sys.stderr, flush=True)
            return CONFIG_ERROR
        if name == "order":  # the saga's deadlines run beside the saga
            threading.Thread(target=wiring.sweeper().run, args=(stop,), name="eventlab-deadlines", daemon=True).start()
        if loop is not None:
            loop.run(stop)
        else:
            stop.wait()
        server.stop()
        return 0
    finally:
        collector.restore()
        if tracing is not None:
            tracing.shutdown()
        stores.close()


@dataclass
class _Child:
    """One supervised process (replica ``replica`` of ``service``), its warm standby and its restart history."""

    name: str
    service: str = ""
    replica: int = 0
    port: int | None = None  # its HTTP port (None: the relay)
    env: dict[str, str] = field(default_factory=dict)  # its environment, the same for its standby
    process: subprocess.Popen[bytes] | None = None
    standby: subprocess.Popen[bytes] | None = None
    standby_at: float | None = None  # monotonic time to start a new standby
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None  # monotonic time of the next start while it is down
    last_exit: int | None = None
    gave_up: str = ""  # why it is not restarted any more

    def status(self) -> dict[str, object]:
        restart_at = None if self.restart_at is None else time.time() + self.restart_at - time.monotonic()
        return {
            "service": self.service,
            "replica": self.replica,
            "port": self.port,
            "pid": self.process.pid if self.process is not None else None,
            "standby_pid": self.standby.pid if self.standby is not None else None,
            "restarts": self.backoff.restarts,
            "backoff": self.backoff.delay,
            "crash_looping": self.backoff.crash_looping,
            "restart_at": restart_at,
            "last_exit": self.last_exit,
            "gave_up": bool(self.gave_up),
            "reason": self.gave_up,
        }

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.process, self.standby) if p is not None]


class Supervisor:
    """Runs the broker (unless external) and one child process per name; restarts children that die.

    Each child has a *warm standby*: a second process, started, imported and wired, waiting on its
    stdin. When a child dies, its standby is told to go (after the backoff delay) and a new standby
    is started a little later, so a restart costs no interpreter start-up. Set ``standby = False``
    before :meth:`start` for plain restarts.

    Usable from any thread (it installs no signal handlers). Children are started from one
    dedicated thread that lives as long as the supervisor, because Linux delivers the
    parent-death signal when the *thread* that started a child ends.

    Example:
        >>> sup = Supervisor(settings).start()  # doctest: +SKIP
        >>> threading.Thread(target=sup.run, args=(stop,)).start()  # doctest: +SKIP
        >>> os.kill(sup.pids()["order"], signal.SIGKILL)  # its standby takes over  # doctest: +SKIP
        >>> stop.set(); sup.stop()  # doctest: +SKIP
    """

    #: Seconds after a start or a promotion before a new standby is started (not to compete for CPU).
    STANDBY_DELAY = 2.0

    def __init__(
        self,
        settings: Settings,
        extra_args: Sequence[str] = (),
        names: Sequence[str] = PROCESS_NAMES,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.extra_args = tuple(extra_args)
        self.names = tuple(names)
        #: Processes per name (1 where not given); see :func:`parse_replicas`.
        self.replicas = {name: (replicas or {}).get(name, 1) for name in self.names}
        unknown = set(replicas or {}) - set(self.names)
        if unknown:
            raise EventlabError(f"--replicas names {', '.join(sorted(unknown))}, which this supervisor does not run")
        self.standby = True
        self.report: Callable[[str], None] = lambda line: log.warning("%s", line)
        self._infra: ShopInfrastructure | None = None
        self._spawner: ThreadPoolExecutor | None = None
        self._children: dict[str, _Child] = {}
        self._env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._status_trouble = ""  # why the status file could not be written, reported once
        self._broker_down = False  # the embedded broker died, and the processes are stopped
        self._broker_backoff = Backoff()
        self._broker_retry_at = 0.0  # monotonic time of the next try to start it again

    def __repr__(self) -> str:
        return f"<Supervisor {self.settings.bootstrap_servers or 'embedded'} pids={self.pids()}>"

    @property
    def broker_pid(self) -> int | None:
        """The embedded broker's pid (None when the broker is external or not running)."""
        broker = self._infra.broker if self._infra is not None else None
        return broker.pid if broker is not None else None

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per process name."""
        with self._lock:
            return {name: child.backoff.restarts for name, child in self._children.items()}

    def pids(self) -> dict[str, int]:
        """Process name -> the pid of its current child (running or just exited, not yet restarted)."""
        with self._lock:
            return {n: c.process.pid for n, c in self._children.items() if c.process is not None}

    def urls(self) -> dict[str, str]:
        """Process name (``inventory``, ``inventory.1``, ...) -> where its HTTP API answers ("" for the relay)."""
        with self._lock:
            return {
                name: self.settings.url(child.service, child.replica) if child.port is not None else ""
                for name, child in self._children.items()
            }

    def standby_pids(self) -> dict[str, int]:
        """Process name -> the pid of its warm standby, where one is ready."""
        with self._lock:
            return {n: c.standby.pid for n, c in self._children.items() if c.standby is not None}

    def start(self) -> Supervisor:
        """Check the ports, start the broker (unless external), the topics and every child.

        Raises :class:`~eventlab.settings.PortInUse` before starting anything if a port is taken
        (:class:`~eventlab.settings.SettingsError` if a replica's port would pass 65535), and
        :class:`~eventlab.errors.StoreError` if a service's store does not hold its past
        (:func:`~eventlab.shop.check_service_stores`). Topics get at least as many partitions as the
        service with the most replicas, so none sits idle.
        """
        self._check_ports()
        most = max(self.replicas.values(), default=1)
        if most > self.settings.partitions:
            log.info("%d partitions per topic for %d replicas", most, most)
            self.settings = replace(self.settings, partitions=most)
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="eventlab-spawner")
        # a restart with the embedded broker republishes only what some service has not handled
        services = build_services(self.settings, SimulatedGateway())
        self._infra = ShopInfrastructure(self.settings, consumers=subscriptions(services), owned=aggregates(services))
        try:
            settings = self._spawner.submit(self._infra.start).result()
        except BaseException:
            self.stop()
            raise
        if not self.settings.embedded:
            # Static membership: on Apache Kafka a restarted child takes over its predecessor's
            # partitions at once. Not on Tansu, where a static member's join takes ~6 s (measured).
            settings = replace(settings, group_instance=settings.group_instance or "0")
        self.settings = settings
        self._env = {**os.environ, **settings.environ(), _SUPERVISOR_PID: str(os.getpid())}
        self._env.pop(_STANDBY, None)
        self._env.pop(_EMBEDDED, None)
        if self._infra.broker is not None:
            self._env[_EMBEDDED] = "1"
        standby_at = time.monotonic() + self.STANDBY_DELAY if self.standby else None
        with self._lock:
            for name in self.names:
                for replica in range(self.replicas[name]):
                    child = self._child(name, replica, standby_at)
                    self._children[child.name] = child
                    child.process = self._spawn(child)
        self._write_status()
        return self

    def _check_ports(self) -> None:
        for name in self.names:
            for replica in range(self.replicas[name] if name in SERVICE_NAMES else 0):
                port = self.settings.port(name, replica)
                if port > 65535:
                    raise SettingsError(
                        "EVENTLAB_HTTP_PORT_OFFSET",
                        f"{self.settings.http_port_offset} puts replica {replica} of {name} at port {port}, above 65535",
                    )
                if not port_free(port, self.settings.http_host):
                    where = name if replica == 0 else f"{name} (replica {replica})"
                    raise PortInUse(where, port, self.settings.http_port_offset)

    def _child(self, name: str, replica: int, standby_at: float | None) -> _Child:
        """Replica ``replica`` of ``name``, with its environment: its number, and on an external
        broker a static group membership of its own (replicas sharing one would fence each other)."""
        env = {**self._env, _REPLICA: str(replica), _REPLICAS: str(self.replicas[name])}
        if replica and self.settings.group_instance:
            env["EVENTLAB_GROUP_INSTANCE"] = f"{self.settings.group_instance}-{replica}"
        port = self.settings.port(name, replica) if name in SERVICE_NAMES else None
        return _Child(_child_name(name, replica), name, replica, port, env, standby_at=standby_at)

    def run(self, stop: threading.Event, interval: float = 0.05) -> None:
        """Restart children that die (with backoff), and the whole shop around a new embedded broker
        when the broker dies, until ``stop`` is set.

        The status file is rewritten on every change and at least once a second (so a child that
        stopped crash-looping is no longer reported).
        """
        written = time.monotonic()
        while not stop.wait(interval):
            changed = self._restart_around_broker() if self._broker_died() else self.check()
            if changed or time.monotonic() - written >= 1.0:
                self._write_status()
                written = time.monotonic()

    def check(self) -> bool:
        """One round of supervision: note deaths, start what is due; True when something changed."""
        changed = False
        now = time.monotonic()
        with self._lock:
            for name, child in self._children.items():
                if child.gave_up:
                    continue
                if child.standby is not None and child.standby.poll() is not None:
                    log.info("%s standby exited with %s", name, child.standby.returncode)
                    delay = max(self.STANDBY_DELAY, child.backoff.delay)
                    child.standby, child.standby_at, changed = None, now + delay, True
                if child.standby_at is not None and now >= child.standby_at and child.restart_at is None:
                    child.standby, child.standby_at, changed = self._spawn(child, standby=True), None, True
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.process = self._promote(child) or self._spawn(child)
                        child.backoff.started()
                        child.restart_at = None
                        child.standby_at = now + self.STANDBY_DELAY if self.standby else None
                        changed = True
                    continue
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                changed = True
                child.last_exit = code
                if code == CONFIG_ERROR:
                    child.gave_up = f"configuration error (exit {code}), see its message above; not restarting"
                    self.report(f"{name} exited with a configuration error (exit {code}); not restarting it")
                    self._retire(child.standby)
                    child.standby = None
                    continue
                delay = child.backoff.died()
                child.restart_at = now + delay
                loop_note = " (crash-looping)" if child.backoff.crash_looping else ""
                self.report(
                    f"{name} (pid {child.process.pid}) exited with {code}; "
                    f"restart {child.backoff.restarts} in {delay:.1f} s{loop_note}"
                )
        return changed

    def _broker_died(self) -> bool:
        """Whether the embedded broker is not running (an external one is not watched)."""
        broker = self._infra.broker if self._infra is not None else None
        return broker is not None and not broker.running

    def _restart_around_broker(self) -> bool:
        """The embedded broker died: stop every process, start a new broker, then the processes again.

        The broker keeps topics, offsets and groups in memory only, so the shop starts again as
        ``eventlab up`` would: the broker on its port, the relays rewound to what some consumer has
        not handled, new processes (not counted as restarts: none of them failed). A broker that
        cannot start is tried again with backoff, the processes stopped meanwhile. True when
        something changed.
        """
        now = time.monotonic()
        if now < self._broker_retry_at:
            return False
        assert self._spawner is not None and self._infra is not None and self._infra.broker is not None
        if not self._broker_down:
            self.report("the embedded broker died; stopping every process, starting a new broker, then them")
            with self._lock:
                processes = [p for c in self._children.values() for p in c.processes()]
            # Killed soon: a consumer closing against a dead broker can hang, and the new broker
            # republishes whatever they were doing (every step is safe to cut off; see _die_with_supervisor).
            self._end(processes, grace=1.0)
            self._broker_down = True
        try:  # from the spawner thread, as the first start: the broker dies with that thread
            self._spawner.submit(self._infra.restart_broker).result()
        except (EventlabError, OSError) as exc:
            delay = self._broker_backoff.died()
            self._broker_retry_at = now + delay
            self.report(f"cannot start the broker again ({exc}); next try in {delay:.1f} s")
            return True
        self._broker_down = False
        self._broker_backoff.started()
        with self._lock:
            for child in self._children.values():
                if not child.gave_up:
                    child.process, child.standby, child.restart_at = self._spawn(child), None, None
                    child.standby_at = now + self.STANDBY_DELAY if self.standby else None
        broker = self._infra.broker
        self.report(f"broker {broker.bootstrap_servers} started again (pid {broker.pid}), and every process")
        return True

    def stop(self) -> None:
        """Terminate the children and standbys (SIGTERM, then SIGKILL after 20 s) and stop the broker."""
        with self._lock:
            processes = [p for c in self._children.values() for p in c.processes()]
            for child in self._children.values():
                child.gave_up = child.gave_up or "supervisor stopped"
        self._end(processes)
        if self._infra is not None:
            self._infra.stop()
            self._infra = None
        if self._spawner is not None:
            self._spawner.shutdown()
            self._spawner = None
        try:
            (self.settings.data_dir / STATUS_FILE).unlink(missing_ok=True)
        except OSError as exc:  # e.g. a directory in its place: the stop is done all the same
            log.warning("cannot remove %s: %s", STATUS_FILE, exc)

    def _spawn(self, child: _Child, standby: bool = False) -> subprocess.Popen[bytes]:
        """Start a child (or a standby) from the spawner thread (see the class docstring for why)."""
        assert self._spawner is not None
        command = [sys.executable, "-m", "eventlab", "run", child.service, *self.extra_args]
        return self._spawner.submit(
            subprocess.Popen,
            command,
            env={**child.env, _STANDBY: "1"} if standby else child.env,
            stdin=subprocess.PIPE if standby else subprocess.DEVNULL,
            preexec_fn=_die_with_supervisor if sys.platform == "linux" else None,
        ).result()

    @staticmethod
    def _promote(child: _Child) -> subprocess.Popen[bytes] | None:
        """Tell ``child``'s standby to go; None when there is no live standby."""
        standby, child.standby = child.standby, None
        if standby is None or standby.poll() is not None or standby.stdin is None:
            return None
        try:
            standby.stdin.write(b"go\n")
            standby.stdin.close()
        except OSError:
            return None
        return standby

    @classmethod
    def _end(cls, processes: Iterable[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
        """Stop ``processes``: SIGTERM, then SIGKILL after ``grace`` seconds; return once all have exited."""
        processes = list(processes)
        for process in processes:
            cls._retire(process)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @staticmethod
    def _retire(process: subprocess.Popen[bytes] | None) -> None:
        """Ask a child or standby to stop (a standby also stops when its stdin closes)."""
        if process is None or process.poll() is not None:
            return
        if process.stdin is not None and not process.stdin.closed:
            try:
                process.stdin.close()
            except OSError:
                log.debug("stdin of %d already closed", process.pid)
        process.terminate()

    def _write_status(self) -> None:
        """Write the status file; a failure (a full disk) is reported once and retried, never fatal:
        the shop runs on, and ``/health`` cannot show restarts until the file is written again."""
        with self._lock:
            processes = {name: child.status() for name, child in self._children.items()}
        try:
            write_status(self.settings.data_dir, {"pid": os.getpid(), "updated": time.time(), "processes": processes})
        except OSError as exc:
            trouble = f"cannot write {STATUS_FILE} ({exc.strerror or exc}); /health shows no restarts until it can"
            if trouble != self._status_trouble:
                self.report(trouble)
            self._status_trouble = trouble
            return
        if self._status_trouble:
            self.report(f"{STATUS_FILE} is written again")
            self._status_trouble = ""


def _store_lines(settings: Settings) -> list[str]:
    """Which store each service writes to (passwords hidden), when they do not all share one."""
    if not settings.service_store_urls:
        return []
    return [f"{service:<15} store {settings.store_of(service).store_shown}" for service in SERVICE_NAMES]


def supervise(
    settings: Settings,
    extra_args: Sequence[str] = (),
    names: Sequence[str] = PROCESS_NAMES,
    replicas: Mapping[str, int] | None = None,
) -> int:
    """``eventlab up --processes [--replicas ...]``: a :class:`Supervisor` with the CLI's signals and
    output around it.

    Exit status 2 (one line on stderr) when a service's port is taken before anything starts.
    """
    stop = stop_on_signals()
    supervisor = Supervisor(settings, extra_args, names, replicas)
    supervisor.report = lambda line: print(f"eventlab: {line}", flush=True)
    supervisor.start()
    settings = supervisor.settings
    pids = supervisor.pids()
    print(f"eventlab: broker {settings.bootstrap_servers}, store {settings.store_shown}", flush=True)
    for line in _store_lines(settings):
        print(f"  {line}", flush=True)
    for name, url in supervisor.urls().items():
        print(f"  {name:<15} pid {pids[name]:<7} {url}".rstrip(), flush=True)
    try:
        supervisor.run(stop)
    finally:
        supervisor.stop()
    return 0

"""The in-process shop: broker, event store, relay and the six services as threads, behind one facade.

The parts are wired by :mod:`eventlab.bootstrap`; this module owns their lifecycle (start, stop,
restarting a thread that dies, and the loops and relays around a new embedded broker when it dies)
and the command/wait facade. Nothing connects at import time;
:meth:`Shop.start` starts everything, :meth:`Shop.stop` stops it cleanly (a ``with`` block does both).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from eventlab import collector
from eventlab.adapters import SimulatedGateway
from eventlab.application import Commands, OrderView
from eventlab.arguments import is_number
from eventlab.bootstrap import Wiring, aggregates, build_services, subscriptions
from eventlab.catalogue import load_products, load_users
from eventlab.errors import BrokerError, EventlabError, SagaTimeout, StoreError
from eventlab.events import EVENT_TYPES, Event, ProductCreated, UserCreated
from eventlab.faults import Faults
from eventlab.http import ServiceHttp
from eventlab.ids import new_id
from eventlab.kafka.broker import EmbeddedBroker
from eventlab.kafka.clients import ensure_topics
from eventlab.kafka.loop import ServiceLoop
from eventlab.kafka.relay import Relay, rewind, unpublished
from eventlab.resilience import CircuitBreaker, wait_until
from eventlab.restarts import Backoff
from eventlab.services import SERVICE_NAMES
from eventlab.settings import Settings, service_store_variable
from eventlab.store import (
    ShopStores,
    open_store,
    open_stores,
    own_store_checkpoint,
    record_own_store,
    refuse_another_own_store,
)
from eventlab.store.base import RELAY_CONSUMER, EventStore
from eventlab.sweeper import DeadlineSweeper
from eventlab.tracing import open_tracing

if TYPE_CHECKING:
    from eventlab.tracing.spans import Tracing

__all__ = ["Shop", "ShopInfrastructure", "StoreFactory", "check_service_stores", "subscriptions"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: The services that keep their own copy of users and products (a command may depend on it).
_KEEPS_COPIES: frozenset[str] = frozenset({"order"})

#: How often a shop looks whether its embedded broker still runs (seconds).
BROKER_CHECK_S = 0.5

#: Opens an event store the settings name (:func:`eventlab.store.open_store` unless a test injects one).
StoreFactory = Callable[[Settings], EventStore]


class ShopInfrastructure:
    """The broker (embedded unless configured), the topics and the event stores (one, or each
    service's own: :func:`~eventlab.store.open_stores`).

    Starting an embedded broker rewinds the relay of each store: the new broker has no topics, so
    the stored events some consumer has not handled yet are published again (from the lowest of the
    ``consumers``' tracking positions on that store, their markers read from each consumer's own
    store; every event when ``consumers`` is not given), and the idempotent consumers skip what they
    already handled. Stopping records the tracking positions.

    Given ``owned`` (each service's aggregate types: :func:`~eventlab.bootstrap.aggregates`), starting
    first refuses stores that do not hold a service's past (:func:`check_service_stores`).
    """

    def __init__(
        self,
        settings: Settings,
        store_factory: StoreFactory = open_store,
        consumers: Mapping[str, Iterable[str]] | None = None,
        owned: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.stores = open_stores(settings, opener=None if store_factory is open_store else store_factory)
        self.consumers = consumers
        self.owned = owned
        self._started = False

    @property
    def store(self) -> EventStore:
        """The order service's store (the only one unless services have stores of their own)."""
        return self.stores.of("order")

    def start(self) -> Settings:
        """Start what is needed and return settings pointing at the broker in use (after
        :func:`check_service_stores`, given ``owned``)."""
        if self.owned is not None:
            check_service_stores(self.settings, self.stores, self.owned)
        self._started = True
        if self.settings.embedded:
            self.broker = EmbeddedBroker(self.settings.data_dir).start()
            self.settings = replace(
                self.settings.with_bootstrap(self.broker.bootstrap_servers),
                session_timeout_ms=EmbeddedBroker.SESSION_TIMEOUT_MS,
            )
            self._rewind_relays()
        ensure_topics(self.settings)
        return self.settings

    def restart_broker(self) -> None:
        """Start the embedded broker again, on its port, after it died; rewind every relay as
        :meth:`start` does (the new broker has no topics): call it with no relay publishing."""
        assert self.broker is not None, "an external broker is not ours to restart"
        self.broker.stop()
        self.broker.start()
        self._rewind_relays()
        ensure_topics(self.settings)

    def _rewind_relays(self) -> None:
        """A new embedded broker has no topics: each store's relay publishes again what some consumer
        has not handled (see the class docstring)."""
        for store in self.stores:
            rewind(store, self.consumers, self.stores.of_each(self.consumers or {}))

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        try:
            for store in self.stores if self._started else ():  # so the next start scans only what comes after
                for name, types in (self.consumers or {}).items():
                    store.tracking_position_across(name, types, self.stores.of(name))
        except StoreError as exc:
            log.warning("cannot record the tracking positions: %s", exc)
        self.stores.close()


def check_service_stores(settings: Settings, stores: ShopStores, owned: Mapping[str, Iterable[str]]) -> None:
    """Refuse stores that do not hold a service's past: a store of its own that holds nothing of the
    service (no event of its aggregate types ``owned``, no processed marker) while the shared store
    (``EVENTLAB_STORE_URL``) holds some, since ``EVENTLAB_<SERVICE>_STORE_URL`` was set on a shop that
    had run; or the reverse, the variable unset later (recorded as :func:`~eventlab.store.own_store_checkpoint`
    in the shared store). Data is not moved between stores: the service would handle its whole past
    again against empty state. Raises :class:`~eventlab.errors.StoreError` naming the way out.

    A shop on one store reads one checkpoint per service.
    """
    shared = next((stores.of(name) for name in stores.by_service if name not in settings.service_store_urls), None)
    if shared is not None:
        _check_stores(settings, stores, owned, shared)
        return
    try:  # every service has a store of its own: is there a shared one they ran on before?
        shared = open_store(settings, create=False)
    except StoreError as exc:
        log.debug("no shared store to check the services' stores against: %s", exc)
        return
    try:
        _check_stores(settings, stores, owned, shared)
    finally:
        shared.close()


def _check_stores(
    settings: Settings, stores: ShopStores, owned: Mapping[str, Iterable[str]], shared: EventStore
) -> None:
    """:func:`check_service_stores` against the shared store ``shared``."""
    for service, types in owned.items():
        if service in settings.service_store_urls:
            _check_own_store(settings, service, types, stores.of(service), shared)
        elif shared.checkpoint(own_store_checkpoint(service)) and not _holds(shared, service, types):
            variable = service_store_variable(service)
            raise StoreError(
                f"{service} ran on a store of its own ({variable} was set), and the shared store"
                f" {settings.store_shown} holds nothing of it: set {variable} again, or start with a new data"
                " directory (or empty stores); moving a service's data between stores is not supported"
            )


def _check_own_store(
    settings: Settings, service: str, types: Iterable[str], own: EventStore, shared: EventStore
) -> None:
    """Refuse ``service``'s own store ``own`` if it holds nothing of it while ``shared`` does; else
    record in ``shared`` that ``service`` has a store of its own."""
    if own is shared:
        return
    if not _holds(own, service, types) and _holds(shared, service, types):
        variable, shown = (
            service_store_variable(service),
            settings.store_of(service).store_shown,
        )
        raise StoreError(
            f"{service} has a store of its own ({variable}: {shown}) that holds nothing of it, but the shared"
            f" store {settings.store_shown} holds its events or processed markers: start with a new data directory"
            f" (or empty stores), or unset {variable}; moving a service's data between stores is not supported"
        )
    refuse_another_own_store(settings, service, own, shared)
    record_own_store(service, own, shared)


def _holds(store: EventStore, service: str, aggregate_types: Iterable[str]) -> bool:
    """Whether ``store`` holds anything of ``service``: an event of its aggregate types, or a processed marker."""
    kinds = set(aggregate_types)
    event_types = [name for name, cls in EVENT_TYPES.items() if cls.aggregate_type in kinds]
    return bool(event_types and store.stream_ages(event_types, limit=1)) or store.processed_count(service) > 0


class Shop:
    """The whole online shop in one process: six services as threads around one event store (or a
    store per service, where ``EVENTLAB_<SERVICE>_STORE_URL`` gives one: :attr:`stores`, with a relay
    thread per store).

    Example:
        >>> with Shop(data_dir="/tmp/my-shop") as shop:  # doctest: +SKIP
        ...     shop.seed_catalogue()
        ...     order_id = shop.place_order("U001", {"P001": 1})
        ...     shop.wait(order_id).status
        'completed'
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        data_dir: str | Path | None = None,
        payment_failure_rate: float = 0.0,
        gateway_latency_ms: float = 0.0,
        seed: int = 0,
        http: bool = False,
        id_factory: Callable[[], str] = new_id,
        store_factory: StoreFactory = open_store,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(data_dir=data_dir)
        #: This shop's spans (``tracing``, else the sinks its settings name; None: off), opened by
        #: :meth:`start` and flushed and shut down by :meth:`stop`.
        self.tracing = tracing if tracing is not None else open_tracing(self.settings)
        self.gateway = SimulatedGateway(
            payment_failure_rate, gateway_latency_ms, seed, self.settings.data_dir / "gateway.jsonl"
        )
        self.breaker = CircuitBreaker()
        self.services = build_services(self.settings, self.gateway, self.breaker, tracing=self.tracing)
        self.http = http
        self._id_factory = id_factory
        self._store_factory = store_factory
        self._infra: ShopInfrastructure | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: The Kafka workers (a thread per relay and per service loop) and what stops them: set by
        #: stop(), and to start them again around a new embedded broker (under ``_lifecycle``).
        self._workers: list[threading.Thread] = []
        self._workers_stop = threading.Event()
        self._lifecycle = threading.Lock()
        self._tuned = False  # the interpreter's collector tuned for this shop (collector.tune)
        self._servers: list[ServiceHttp] = []
        self._backoff: dict[str, Backoff] = {}
        self._errors: dict[str, str] = {}
        self.loops: dict[str, ServiceLoop] = {}
        #: A relay per distinct store, by the store's name (one unless services have stores of their own).
        self.relays: dict[str, Relay] = {}
        self.relay: Relay | None = None
        self.sweeper: DeadlineSweeper | None = None
        self.commands: Commands | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._infra is not None

    @property
    def store(self) -> EventStore:
        """The event store (with stores per service, the order service's: :attr:`stores` has them all)."""
        return self._require().store

    @property
    def stores(self) -> ShopStores:
        """Each service's event store (all the same one unless ``EVENTLAB_<SERVICE>_STORE_URL`` split them)."""
        return self._require().stores

    @property
    def bootstrap_servers(self) -> str:
        """Where the running shop's broker listens."""
        return self._require().settings.bootstrap_servers

    @property
    def kafka_settings(self) -> Settings:
        """The settings in use, pointing at the running broker (for your own Kafka clients)."""
        return self._require().settings

    def __repr__(self) -> str:
        if not self.running:
            return f"<Shop stopped data_dir={str(self.settings.data_dir)!r}>"
        broker = "embedded" if self.settings.embedded else "external"
        stores = self.stores
        if not stores.split:
            where = f"store={str(self.settings.store_path)!r} events={self.store.head()}"
        else:
            where = "stores=" + ", ".join(
                f"{'+'.join(stores.services_of(store))}: {name!r} events={store.head()}"
                for name, store in stores.names.items()
            )
        return f"<Shop running broker={self.bootstrap_servers} ({broker}) {where}>"

    def start(self, timeout: float = 60.0) -> Self:
        """Start broker, topics, relay and service loops; return once every consumer has joined."""
        if self.running:
            return self
        infra = ShopInfrastructure(
            self.settings, self._store_factory, subscriptions(self.services), aggregates(self.services)
        )
        try:
            settings = infra.start()
        except BaseException:
            infra.stop()
            raise
        self._infra = infra
        self._stop.clear()
        self._backoff.clear()
        if self.tracing is not None:
            self.tracing.open()
        embedded = infra.broker is not None
        wiring = Wiring(settings, infra.stores, self.services, self._id_factory, self.tracing, embedded=embedded)
        self.commands = wiring.commands
        self.relays = wiring.relays(in_process=True)  # every writer is a thread here: commits wake them
        self.relay = next(iter(self.relays.values()))
        self.loops = wiring.loops()
        self._workers_stop = threading.Event()
        self._start_workers()
        self.sweeper = wiring.sweeper()
        self._threads.append(self._spawn("deadlines", self.sweeper.run))
        if embedded:
            self._threads.append(self._spawn("broker", self._keep_broker))
        try:
            if self.http:
                for name in SERVICE_NAMES:
                    problems = functools.partial(self.problems, name, *map(_relay_thread, range(len(self.relays))))
                    health = wiring.health(name, self.loops.get(name), problems)
                    self._servers.append(wiring.http(name, health).start())
            wait_until(
                lambda: [name for name, loop in self.loops.items() if not loop.assigned.is_set()],
                timeout,
                until=lambda waiting: not waiting,
                interval=0.01,
                timeout_error=lambda waiting: BrokerError(
                    f"{', '.join(waiting)} did not join its consumer group in {timeout} s"
                ),
            )
        except BaseException:  # a port taken, a group not joined, Ctrl-C: nothing is left running
            self.stop()
            raise
        collector.tune()  # the start-up heap frozen, fewer collections: no 0.1 s pauses of every thread
        self._tuned = True
        log.info("shop started: %r", self)
        return self

    def stop(self) -> None:
        """Stop every loop, the HTTP servers and the embedded broker."""
        if self._infra is None:
            return
        if self._tuned:
            self._tuned = False
            collector.restore()
        if "faults" in vars(self):  # its producer, if any, would keep calling the stopped broker
            self.faults.close()
        with self._lifecycle:  # no new broker's workers start after this
            self._stop.set()
            self._workers_stop.set()
        self.gateway.wake()  # a payment waiting out the gateway's latency
        for thread in [*self._workers, *self._threads]:
            thread.join(timeout=30)
        for server in self._servers:
            server.stop()
        if self.tracing is not None:
            self.tracing.shutdown()  # the last spans exported before the broker and store go
        self._infra.stop()
        self._threads.clear()
        self._workers.clear()
        self._servers.clear()
        self.loops.clear()
        self.relays.clear()
        self._infra = None

    @property
    def restarts(self) -> dict[str, int]:
        """How often each thread (``relay``, the consuming services, ``deadlines`` and ``broker``, which
        watches an embedded broker) died and was restarted; a new broker restarts none of them."""
        return {name: backoff.restarts for name, backoff in self._backoff.items()}

    def problems(self, *names: str) -> list[str]:
        """Threads among ``names`` that are down or crash-looping, and an embedded broker that died
        (until :meth:`_keep_broker` has started a new one), as ``/health`` reports them."""
        broker = self._infra.broker if self._infra is not None else None
        found = []
        if broker is not None and not broker.running:
            found.append(f"the embedded broker {broker.bootstrap_servers} is not running; starting a new one")
        for name in names:
            backoff = self._backoff.get(name)
            if backoff is not None and (backoff.down or backoff.crash_looping):
                state = "restarting" if backoff.down else "crash-looping"
                found.append(f"{name} thread {state}: {backoff.restarts} restarts, last error {self._errors[name]}")
        if RELAY_CONSUMER in names:
            for relay in self.relays.values():
                found += relay.problems()  # e.g. the store or the broker failing, retried with backoff
        return found

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- commands --------------------------------------------------------------------------

    def register_user(self, user_id: str, name: str, email: str) -> UserCreated:
        """Register a customer (see :class:`eventlab.commands.RegisterUser`) and wait until Order
        has recorded its own copy, so an order may follow."""
        created = self._commands().register_user(user_id=user_id, name=name, email=email)
        self._wait_recorded(created)
        return created

    def create_product(self, product_id: str, name: str, price_cents: int, initial_stock: int = 0) -> ProductCreated:
        """Add a product and wait until Order has recorded its price; Inventory stocks
        ``initial_stock`` units when it hears of it."""
        created = self._commands().create_product(
            product_id=product_id, name=name, price_cents=price_cents, initial_stock=initial_stock
        )
        self._wait_recorded(created)
        return created

    def place_order(
        self, user_id: str, lines: Mapping[str, int] | Iterable[Mapping[str, Any]], *, order_id: str | None = None
    ) -> str:
        """Place an order (``{"P001": 2}`` or ``[{"product_id": "P001", "quantity": 2}]``); return its id.

        The shop makes the id unless you give one; placing the same order under the same id again
        places nothing (see :meth:`eventlab.application.Commands.place_order`).
        """
        if isinstance(lines, Mapping):
            lines = [{"product_id": pid, "quantity": qty} for pid, qty in lines.items()]
        return self._commands().place_order(user_id=user_id, lines=lines, order_id=order_id)

    def order(self, order_id: str) -> OrderView:
        """An order's state and the events of its saga, in order."""
        return self._commands().get_order(order_id)

    def seed_catalogue(self, directory: Path | None = None, timeout: float = 60.0) -> tuple[int, int]:
        """Register the users and products of ``data/`` that do not exist yet and wait (at most
        ``timeout`` seconds) until Inventory has stocked them; return (users, products) created.

        Every row is checked before any is written: a bad one raises
        :class:`~eventlab.errors.InvalidCommand` naming the field, the file and the line."""
        users, products = self._commands().seed(load_users(directory), load_products(directory))
        self.wait_idle(timeout)
        return users, products

    # --- waiting ---------------------------------------------------------------------------

    def wait(self, order_id: str, timeout: float = 30.0) -> OrderView:
        """Wait until the order's saga is terminal (completed or cancelled) and return it."""
        return self._wait_for_commits(
            lambda: self.order(order_id),
            timeout,
            until=lambda view: view.terminal,
            timeout_error=lambda view: SagaTimeout(f"order {order_id} still {view.status} after {timeout} s"),
        )

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every stored event is published and every service has handled its events."""
        self._wait_for_commits(
            self.idle,
            timeout,
            until=bool,
            timeout_error=lambda _: SagaTimeout(f"shop not idle after {timeout} s: {self.lag()}"),
        )

    def _wait_for_commits(
        self,
        probe: Callable[[], _T],
        timeout: float,
        until: Callable[[_T], object],
        timeout_error: Callable[[_T], BaseException],
    ) -> _T:
        """:func:`wait_until`, probing again as soon as the store commits (else every 50 ms); ValueError
        for a ``timeout`` that is not a finite number of seconds, 0 or more (``None`` included: a wait
        without a limit would hang the notebook on a stopped shop)."""
        if not is_number(timeout) or not 0 <= timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds, 0 or more, not {timeout!r:.40}")
        store = self.store
        seen = [store.commits]

        def look() -> _T:
            seen[0] = store.commits
            return probe()

        def pause(interval: float) -> None:
            store.wait_for_commit(seen[0], interval)

        return wait_until(look, timeout, until=until, interval=0.05, sleep=pause, timeout_error=timeout_error)

    def _wait_recorded(self, event: Event, timeout: float = 30.0) -> None:
        """Wait until every running service subscribed to ``event`` has written the streams its
        decision on it reads (its own copy, e.g. Order's ``order_customer``): read-your-writes for
        the next command. Inventory's stock is not awaited (``seed_catalogue`` waits for it)."""
        keys = [
            (loop.store, key)
            for name, loop in self.loops.items()
            if type(event) in loop.service.subscriptions and name in _KEEPS_COPIES
            for key in loop.service.streams(event)
        ]
        if not keys:
            return
        self._wait_for_commits(
            lambda: [key for store, key in keys if not store.read_stream(*key)],
            timeout,
            until=lambda missing: not missing,
            timeout_error=lambda missing: SagaTimeout(f"{missing} not recorded after {timeout} s"),
        )

    def lag(self) -> dict[str, int]:
        """Events not yet published (``relay``) or not yet handled, per service: O(1) in the store's size."""
        lag = {RELAY_CONSUMER: self._unpublished()}
        lag.update({name: loop.lag() for name, loop in self.loops.items()})
        return lag

    def idle(self) -> bool:
        """True when nothing is waiting to be published or handled.

        The relays and loops are read one after another while they run: a loop read as idle can get
        work from one read later (a handler appending events it subscribes to). So the shop is idle
        only if no store's head moved while it was being read.
        """
        heads = [store.head() for store in self.stores]
        if self._unpublished() or any(loop.lag() for loop in self.loops.values()):
            return False
        return heads == [store.head() for store in self.stores]

    def _unpublished(self) -> int:
        """The relays' own counts (their checkpoints are saved lazily), else the stores'."""
        if self.relays and self.running:
            return sum(relay.store.head() - relay.position for relay in self.relays.values())
        return sum(unpublished(store) for store in self.stores)

    # --- internals -------------------------------------------------------------------------

    def _require(self) -> ShopInfrastructure:
        if self._infra is None:
            raise BrokerError("the shop is not running: call start() or use it in a with block")
        return self._infra

    def _commands(self) -> Commands:
        self._require()
        assert self.commands is not None
        return self.commands

    def _start_workers(self) -> None:
        """A thread for each relay and each service loop, stopped by ``_workers_stop``."""
        for index, relay in enumerate(self.relays.values()):
            self._workers.append(self._spawn(_relay_thread(index), relay.run, self._workers_stop))
        for name, loop in self.loops.items():
            self._workers.append(self._spawn(name, loop.run, self._workers_stop))

    def _keep_broker(self, stop: threading.Event) -> None:
        """Start the embedded broker again when it dies, as ``eventlab up --processes`` does.

        The broker kept its topics, offsets and groups in memory only. So the loops and relays stop
        (a consumer never sees its topics vanish: that crashes librdkafka), a new broker starts on the
        same port, and the relays are rewound to what some consumer has not handled
        (:meth:`ShopInfrastructure.restart_broker`). Then the loops and relays start again, and the
        consumers skip what they had already handled. A broker that cannot start is tried again with
        backoff. A new broker is this thread's child and ends with it, so the thread ends after the
        loops and relays when the shop stops.
        """
        infra = self._require()
        assert infra.broker is not None
        broker, backoff = infra.broker, Backoff()
        while not stop.wait(BROKER_CHECK_S):
            if broker.running:
                continue
            log.warning(
                "the embedded broker %s died; starting a new one, the loops and relays stopped meanwhile",
                broker.bootstrap_servers,
            )
            self._stop_workers()
            try:
                infra.restart_broker()
            except (EventlabError, OSError) as exc:
                delay = backoff.died()
                log.warning("cannot start the embedded broker again (%s); next try in %.1f s", exc, delay)
                stop.wait(delay)
                continue
            backoff.started()
            with self._lifecycle:
                if stop.is_set():
                    return
                self._workers_stop = threading.Event()
                for loop in self.loops.values():
                    loop.assigned.clear()  # /health says "no partitions" until it has joined the new broker's group
                self._start_workers()
            log.warning(
                "the embedded broker %s runs again (pid %s), and the loops and relays",
                broker.bootstrap_servers,
                broker.pid,
            )
        for thread in self._workers:  # a new broker ends with this thread: not before they closed their clients
            thread.join(timeout=30)

    def _stop_workers(self, timeout: float = 30.0) -> None:
        """Stop the loops and relays of a broker that died, without waiting on it: the loops drop their
        consumers unclosed, and a relay waiting for acknowledgements is interrupted (again until it
        ends: it may have sent a batch after the first time)."""
        for loop in self.loops.values():
            loop.abandon_broker()
        with self._lifecycle:
            self._workers_stop.set()
            workers, self._workers = self._workers, []
        deadline = time.monotonic() + timeout
        for thread in workers:
            while thread.is_alive() and time.monotonic() < deadline:
                for relay in self.relays.values():
                    relay.abandon_broker()
                thread.join(timeout=0.5)

    def _spawn(
        self, name: str, target: Callable[[threading.Event], None], stop: threading.Event | None = None
    ) -> threading.Thread:
        """Run ``target(stop)`` in a thread that restarts it, with backoff, whenever it raises, until
        ``stop`` (default: the shop's) is set."""
        stop = stop or self._stop
        backoff = self._backoff.setdefault(name, Backoff())  # kept across a new broker's restart of the workers

        def supervised() -> None:
            while not stop.is_set():
                backoff.started()
                try:
                    target(stop)
                except Exception as exc:  # restarted and reported, never silent
                    log.exception("%s thread failed", name)
                    self._errors[name] = f"{type(exc).__name__}: {exc}"
                else:
                    if stop.is_set():
                        return
                    self._errors[name] = "returned before the shop stopped"
                delay = backoff.died()
                log.warning(
                    "%s thread died (%s); restart %d in %.1f s", name, self._errors[name], backoff.restarts, delay
                )
                stop.wait(delay)

        thread = threading.Thread(target=supervised, name=f"eventlab-{name}", daemon=True)
        thread.start()
        return thread

    # --- the failure lab ---------------------------------------------------------------------

    @functools.cached_property
    def faults(self) -> Faults:
        """Faults to inject (gateway outage, declines, latency, redelivery, poison) and each service's counters."""
        return Faults(self)


def _relay_thread(index: int) -> str:
    """The name of the thread of the shop's relay number ``index``: ``relay``, ``relay.1``, ... (one per store)."""
    return RELAY_CONSUMER if index == 0 else f"{RELAY_CONSUMER}.{index}"

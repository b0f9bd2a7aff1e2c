"""The composition root: one object that wires broker, event store, relay and the six services.

Nothing connects at import time; :meth:`Shop.start` starts everything, :meth:`Shop.stop` stops
it cleanly (a ``with`` block does both).
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from eventlab.adapters import FileMailer, SimulatedGateway
from eventlab.application import Commands, OrderView
from eventlab.catalogue import load_products, load_users
from eventlab.errors import AlreadyExists, BrokerError, SagaTimeout
from eventlab.events import ProductCreated, UserCreated
from eventlab.faults import Faults
from eventlab.http import ServiceHttp, service_health
from eventlab.ids import new_id
from eventlab.kafka.broker import EmbeddedBroker
from eventlab.kafka.clients import ensure_topics
from eventlab.relay import Relay, rewind, unpublished
from eventlab.resilience import CircuitBreaker
from eventlab.restarts import Backoff
from eventlab.services import SERVICE_NAMES, inventory, notification, order, payment, product, user
from eventlab.services.deadlines import Deadlines, DeadlineSweeper
from eventlab.services.loop import ServiceLoop
from eventlab.services.runtime import Service
from eventlab.settings import PortInUse, Settings
from eventlab.store.sqlite import SqliteEventStore

__all__ = ["Shop", "ShopInfrastructure", "build_services", "serve_http"]

log = logging.getLogger(__name__)


def build_services(
    settings: Settings, gateway: payment.Gateway, breaker: CircuitBreaker | None = None
) -> dict[str, Service]:
    """The six services, with the payment gateway and the mailer they call."""
    mailer = FileMailer(settings.data_dir / "mailbox.jsonl")
    services = [
        user.SERVICE,
        product.SERVICE,
        order.SERVICE,
        payment.service(gateway, breaker),
        inventory.SERVICE,
        notification.service(mailer),
    ]
    return {s.name: s for s in services}


def serve_http(name: str, settings: Settings, health: Callable[[], dict[str, Any]], commands: Commands) -> ServiceHttp:
    """Start service ``name``'s HTTP endpoints on its port; :class:`PortInUse` when it is taken."""
    try:
        server = ServiceHttp(name, settings.port(name), health, commands)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(name, settings.port(name), settings.http_port_offset) from None
        raise
    log.info("%s serving http://127.0.0.1:%d", name, server.port)
    return server.start()


class ShopInfrastructure:
    """The broker (embedded unless configured), the topics and the event store.

    Starting an embedded broker rewinds the relay: the new broker has no topics, so every stored
    event is published again and the idempotent consumers skip what they already handled.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.store = SqliteEventStore(settings.store_path)

    def start(self) -> Settings:
        """Start what is needed and return settings pointing at the broker in use."""
        if self.settings.embedded:
            self.broker = EmbeddedBroker(self.settings.data_dir).start()
            self.settings = replace(
                self.settings.with_bootstrap(self.broker.bootstrap_servers),
                session_timeout_ms=EmbeddedBroker.SESSION_TIMEOUT_MS,
            )
            rewind(self.store)
        ensure_topics(self.settings)
        return self.settings

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        self.store.close()


class Shop:
    """The whole online shop in one process: six services as threads around one event store.

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
    ) -> None:
        self.settings = settings or Settings.from_env(data_dir=data_dir)
        self.gateway = SimulatedGateway(
            payment_failure_rate, gateway_latency_ms, seed, self.settings.data_dir / "gateway.jsonl"
        )
        self.breaker = CircuitBreaker()
        self.services = build_services(self.settings, self.gateway, self.breaker)
        self.http = http
        self._id_factory = id_factory
        self._infra: ShopInfrastructure | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._servers: list[ServiceHttp] = []
        self._backoff: dict[str, Backoff] = {}
        self._errors: dict[str, str] = {}
        self.loops: dict[str, ServiceLoop] = {}
        self.relay: Relay | None = None
        self.sweeper: DeadlineSweeper | None = None
        self.commands: Commands | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._infra is not None

    @property
    def store(self) -> SqliteEventStore:
        return self._require().store

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
        return (
            f"<Shop running broker={self.bootstrap_servers} ({broker}) "
            f"store={str(self.settings.store_path)!r} events={self.store.head()}>"
        )

    def start(self, timeout: float = 60.0) -> Shop:
        """Start broker, topics, relay and service loops; return once every consumer has joined."""
        if self.running:
            return self
        infra = ShopInfrastructure(self.settings)
        settings = infra.start()
        self._infra = infra
        self._stop.clear()
        self._backoff.clear()
        self.commands = Commands(infra.store, self._id_factory)
        self.relay = Relay(infra.store, settings)
        self._spawn("relay", self.relay.run)
        for name, service in self.services.items():
            if service.subscriptions:
                loop = ServiceLoop(service, infra.store, settings)
                self.loops[name] = loop
                self._spawn(name, loop.run)
        self.sweeper = DeadlineSweeper(infra.store, Deadlines.scaled(settings.saga_timeout_s))
        self._spawn("deadlines", self.sweeper.run)
        try:
            if self.http:
                for name in SERVICE_NAMES:
                    problems = functools.partial(self.problems, name, "relay")
                    health = service_health(self.loops.get(name), infra.store, problems)
                    self._servers.append(serve_http(name, settings, health, self.commands))
            deadline = time.monotonic() + timeout
            for loop in self.loops.values():
                if not loop.assigned.wait(max(0.0, deadline - time.monotonic())):
                    raise BrokerError(f"{loop.service.name} did not join its consumer group in {timeout} s")
        except BaseException:  # a port taken, a group not joined, Ctrl-C: nothing is left running
            self.stop()
            raise
        log.info("shop started: %r", self)
        return self

    def stop(self) -> None:
        """Stop every loop, the HTTP servers and the embedded broker."""
        if self._infra is None:
            return
        if "faults" in vars(self):  # its producer, if any, would keep calling the stopped broker
            self.faults.close()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for server in self._servers:
            server.stop()
        self._infra.stop()
        self._threads.clear()
        self._servers.clear()
        self.loops.clear()
        self._infra = None

    @property
    def restarts(self) -> dict[str, int]:
        """How often each thread (``relay`` and the consuming services) died and was restarted."""
        return {name: backoff.restarts for name, backoff in self._backoff.items()}

    def problems(self, *names: str) -> list[str]:
        """Threads among ``names`` that are down or crash-looping, as ``/health`` reports them."""
        found = []
        for name in names:
            backoff = self._backoff.get(name)
            if backoff is not None and (backoff.down or backoff.crash_looping):
                state = "restarting" if backoff.down else "crash-looping"
                found.append(f"{name} thread {state}: {backoff.restarts} restarts, last error {self._errors[name]}")
        if "relay" in names and self.relay is not None:
            found += self.relay.problems()  # e.g. the store or the broker failing, retried with backoff
        return found

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- commands --------------------------------------------------------------------------

    def register_user(self, user_id: str, name: str, email: str) -> UserCreated:
        """Register a customer (see :class:`eventlab.commands.RegisterUser`)."""
        return self._commands().register_user(user_id=user_id, name=name, email=email)

    def create_product(self, product_id: str, name: str, price_cents: int, initial_stock: int = 0) -> ProductCreated:
        """Add a product; Inventory stocks ``initial_stock`` units when it hears of it."""
        return self._commands().create_product(
            product_id=product_id, name=name, price_cents=price_cents, initial_stock=initial_stock
        )

    def place_order(self, user_id: str, lines: Mapping[str, int] | Iterable[Mapping[str, Any]]) -> str:
        """Place an order (``{"P001": 2}`` or ``[{"product_id": "P001", "quantity": 2}]``); return its id."""
        if isinstance(lines, Mapping):
            lines = [{"product_id": pid, "quantity": qty} for pid, qty in lines.items()]
        return self._commands().place_order(user_id=user_id, lines=list(lines))

    def order(self, order_id: str) -> OrderView:
        """An order's state and the events of its saga, in order."""
        return self._commands().get_order(order_id)

    def seed_catalogue(self, directory: Path | None = None, timeout: float = 60.0) -> tuple[int, int]:
        """Register the users and products of ``data/`` that do not exist yet and wait (at most
        ``timeout`` seconds) until Inventory has stocked them; return (users, products) created."""
        commands = self._commands()
        users = sum(_create_if_new(commands.register_user, row) for row in load_users(directory))
        products = sum(_create_if_new(commands.create_product, row) for row in load_products(directory))
        self.wait_idle(timeout)
        return users, products

    # --- waiting ---------------------------------------------------------------------------

    def wait(self, order_id: str, timeout: float = 30.0) -> OrderView:
        """Wait until the order's saga is terminal (completed or cancelled) and return it."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.order(order_id)
            if view.terminal:
                return view
            if time.monotonic() > deadline:
                raise SagaTimeout(f"order {order_id} still {view.status} after {timeout} s")
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every stored event is published and every service has handled its events."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                raise SagaTimeout(f"shop not idle after {timeout} s: {self.lag()}")
            time.sleep(0.05)

    def lag(self) -> dict[str, int]:
        """Events not yet published (``relay``) or not yet handled, per service."""
        lag = {"relay": unpublished(self.store)}
        lag.update({name: loop.lag() for name, loop in self.loops.items()})
        return lag

    def idle(self) -> bool:
        """True when nothing is waiting to be published or handled."""
        return not unpublished(self.store) and not any(loop.lag() for loop in self.loops.values())

    # --- internals -------------------------------------------------------------------------

    def _require(self) -> ShopInfrastructure:
        if self._infra is None:
            raise BrokerError("the shop is not running: call start() or use it in a with block")
        return self._infra

    def _commands(self) -> Commands:
        self._require()
        assert self.commands is not None
        return self.commands

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """Run ``target`` in a thread that restarts it, with backoff, whenever it raises."""
        backoff = self._backoff[name] = Backoff()

        def supervised() -> None:
            while not self._stop.is_set():
                backoff.started()
                try:
                    target(self._stop)
                except Exception as exc:  # restarted and reported, never silent
                    log.exception("%s thread failed", name)
                    self._errors[name] = f"{type(exc).__name__}: {exc}"
                else:
                    if self._stop.is_set():
                        return
                    self._errors[name] = "returned before the shop stopped"
                delay = backoff.died()
                log.warning(
                    "%s thread died (%s); restart %d in %.1f s", name, self._errors[name], backoff.restarts, delay
                )
                self._stop.wait(delay)

        thread = threading.Thread(target=supervised, name=f"eventlab-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- the failure lab ---------------------------------------------------------------------

    @functools.cached_property
    def faults(self) -> Faults:
        """Faults to inject (gateway outage, declines, latency, redelivery, poison) and each service's counters."""
        return Faults(self)


def _create_if_new(command: Callable[..., object], row: Mapping[str, Any]) -> bool:
    try:
        command(**row)
    except AlreadyExists:
        return False
    return True

"""The composition root: the one place that wires services, store, Kafka adapters and HTTP together.

Pure wiring, used by every entry point alike — the in-process :class:`~eventlab.shop.Shop` (every
service a thread) and each service process of :func:`eventlab.supervisor.run_one`. Every dependency
comes in as an argument (settings, store, gateway, mailer, circuit breaker, id factory), so a test
can hand in its own. Nothing here starts a thread or connects: the callers own the lifecycle.

Example:
    >>> services = build_services(settings, SimulatedGateway())  # doctest: +SKIP
    >>> wiring = Wiring(settings, open_stores(settings), services)  # doctest: +SKIP
    >>> loop = wiring.loop("order")  # run it: loop.run(stop)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventlab.adapters.mailer import MAILBOX, FileMailer
from eventlab.application import Commands
from eventlab.http import ServiceHealth, ServiceHttp, service_health
from eventlab.ids import new_id
from eventlab.kafka.broker import EmbeddedBroker
from eventlab.kafka.loop import ServiceLoop
from eventlab.kafka.relay import IDLE_WAIT, IDLE_WAIT_IN_PROCESS, Relay
from eventlab.metrics import LatencyHistogram
from eventlab.resilience import CircuitBreaker
from eventlab.services import inventory, notification, order, payment, product, user
from eventlab.services.deadlines import Deadlines
from eventlab.services.runtime import Service
from eventlab.settings import PortInUse, Settings
from eventlab.store import ShopStores
from eventlab.store.base import EventStore
from eventlab.sweeper import DeadlineSweeper

if TYPE_CHECKING:
    from eventlab.tracing.spans import Tracing

__all__ = ["Wiring", "aggregates", "build_services", "subscriptions"]

log = logging.getLogger(__name__)


def build_services(
    settings: Settings,
    gateway: payment.Gateway,
    breaker: CircuitBreaker | None = None,
    mailer: notification.Mailer | None = None,
    tracing: Tracing | None = None,
) -> dict[str, Service]:
    """The six services by name, with the payment gateway and the mailer (by default the data
    directory's mailbox) they call; with ``tracing`` (the shop's, see
    :func:`~eventlab.tracing.open_tracing`), each call of either is a span."""
    mailer = mailer or FileMailer(settings.data_dir / MAILBOX)
    if tracing is not None:
        gateway, mailer = tracing.gateway(gateway), tracing.mailer(mailer)
    services = [
        user.SERVICE,
        product.SERVICE,
        order.SERVICE,
        payment.service(gateway, breaker),
        inventory.SERVICE,
        notification.service(mailer),
    ]
    return {s.name: s for s in services}


def subscriptions(services: Mapping[str, Service]) -> dict[str, set[str]]:
    """Each consuming service's subscribed event types, by name (what :func:`rewind` needs)."""
    return {name: {cls.__name__ for cls in s.subscriptions} for name, s in services.items() if s.subscriptions}


def aggregates(services: Mapping[str, Service]) -> dict[str, set[str]]:
    """Each service's aggregate types, by name: the streams it folds, and the only ones it writes
    (what tells whether a store holds a service's data)."""
    return {name: set(s.evolvers) for name, s in services.items()}


@dataclass(frozen=True)
class Wiring:
    """Builds the parts that run against the shop's store(s) and one broker (``settings`` points at it).

    ``store``: one store for every service, or :class:`~eventlab.store.ShopStores` (each service's
    own, see :func:`~eventlab.store.open_stores`), kept as :attr:`stores`. Each method makes a new
    part, not started: the consuming loop of a service (writing to its store), a relay per store,
    the deadline sweeper (on the order service's store), a service's health and HTTP server.
    ``commands`` is the shop's command side. ``tracing`` is the shop's
    (:func:`~eventlab.tracing.open_tracing`; None when off), handed to every part that makes spans;
    whoever made it opens it and shuts it down. ``embedded``: the broker is eventlab's own
    (:class:`~eventlab.kafka.broker.EmbeddedBroker`, which ``settings`` point at like any other), so
    each relay warns when a partition nears what it can serve.
    """

    settings: Settings
    store: EventStore | ShopStores
    services: Mapping[str, Service]
    id_factory: Callable[[], str] = new_id
    tracing: Tracing | None = None
    embedded: bool = False
    commands: Commands = field(init=False)
    stores: ShopStores = field(init=False)
    _relay_histograms: list[LatencyHistogram] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        stores = self.store if isinstance(self.store, ShopStores) else ShopStores.one(self.store)
        object.__setattr__(self, "stores", stores)
        tracing = self.tracing
        commands = Commands(stores, self.id_factory) if tracing is None else tracing.commands(stores, self.id_factory)
        object.__setattr__(self, "commands", commands)

    def loop(self, name: str) -> ServiceLoop | None:
        """The Kafka loop of service ``name`` (writing to its store; its lag counts every store's
        events); None for a service that only takes commands."""
        service = self.services[name]
        if not service.subscriptions:
            return None
        peers = {
            topic: {other for other, each in self.services.items() if other != name and topic in each.topics}
            for topic in service.topics
        }
        return ServiceLoop(
            service, self.stores.of(name), self.settings, tracing=self.tracing, sources=list(self.stores), peers=peers
        )

    def loops(self) -> dict[str, ServiceLoop]:
        """A loop per consuming service, in start-up order."""
        return {name: loop for name in self.services if (loop := self.loop(name)) is not None}

    def relay(self, store: EventStore | None = None, *, in_process: bool = False) -> Relay:
        """The outbox relay of ``store`` (default: the only one): publishes it to Kafka (the latency of
        every relay of this process shows on the order service's ``/metrics`` when both run here), first
        going back for events of types a service subscribes to since it last ran (e.g. after an upgrade).
        ``in_process``: every writer shares this store object (the in-process shop), so each commit wakes
        the relay and its idle poll can be slow (as on a store that wakes it for other processes' commits
        too)."""
        if store is None:
            (store,) = self.stores
        consumed = {cls.topic for service in self.services.values() for cls in service.subscriptions}
        idle_wait = IDLE_WAIT_IN_PROCESS if in_process or store.wakes_across_processes else IDLE_WAIT
        consumers = subscriptions(self.services)
        relay = Relay(
            store,
            self.settings,
            tracing=self.tracing,
            traced_topics=consumed,
            consumers=consumers,
            idle_wait=idle_wait,
            markers=self.stores.of_each(consumers),
            partition_warning=EmbeddedBroker.PARTITION_WARNING if self.embedded else None,
        )
        if self._relay_histograms:  # one histogram for every relay of the process (one series)
            relay.publish_seconds = self._relay_histograms[0]
        else:
            self._relay_histograms.append(relay.publish_seconds)
        return relay

    def relays(self, *, in_process: bool = False) -> dict[str, Relay]:
        """A relay per distinct store, by the store's name (see :attr:`~eventlab.store.ShopStores.names`)."""
        return {name: self.relay(store, in_process=in_process) for name, store in self.stores.names.items()}

    def sweeper(self) -> DeadlineSweeper:
        """The saga deadlines' sweeper on the order service's store, with the deadlines the settings scale."""
        return DeadlineSweeper(self.stores.of("order"), Deadlines.scaled(self.settings.saga_timeout_s))

    def health(self, name: str, loop: ServiceLoop | None, *problems: Callable[[], list[str]]) -> ServiceHealth:
        """What service ``name``'s ``GET /health`` reports (its loop's, else its store's) plus ``problems``."""
        return service_health(loop, self.stores.of(name), *problems)

    def http(self, name: str, health: ServiceHealth) -> ServiceHttp:
        """Service ``name``'s HTTP endpoints, bound to its port (not serving until ``start()``).

        Raises :class:`~eventlab.settings.PortInUse` when the port is taken.
        """
        port = self.settings.port(name)
        try:
            histograms = self._relay_histograms[-1:] if name == "order" else []
            server = ServiceHttp(
                name,
                port,
                health,
                self.commands,
                histograms=histograms,
                tracing=self.tracing,
                host=self.settings.http_host,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(name, port, self.settings.http_port_offset) from None
            raise
        log.info("%s bound to http://%s:%d", name, self.settings.http_host, server.port)
        return server

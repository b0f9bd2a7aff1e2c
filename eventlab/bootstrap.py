"""The composition root: the one place that wires services, store, Kafka adapters and HTTP together.

Pure wiring, used by every entry point alike — the in-process :class:`~eventlab.shop.Shop` (every
service a thread) and each service process of :func:`eventlab.supervisor.run_one`. Every dependency
comes in as an argument (settings, store, gateway, mailer, circuit breaker, id factory), so a test
can hand in its own. Nothing here starts a thread or connects: the callers own the lifecycle.

Example:
    >>> services = build_services(settings, SimulatedGateway())  # doctest: +SKIP
    >>> wiring = Wiring(settings, open_store(settings), services)  # doctest: +SKIP
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
from eventlab.kafka.loop import ServiceLoop
from eventlab.kafka.relay import IDLE_WAIT, IDLE_WAIT_IN_PROCESS, Relay
from eventlab.metrics import LatencyHistogram
from eventlab.resilience import CircuitBreaker
from eventlab.services import inventory, notification, order, payment, product, user
from eventlab.services.deadlines import Deadlines
from eventlab.services.runtime import Service
from eventlab.settings import PortInUse, Settings
from eventlab.store.base import EventStore
from eventlab.sweeper import DeadlineSweeper

if TYPE_CHECKING:
    from eventlab.tracing.spans import Tracing

__all__ = ["Wiring", "build_services", "subscriptions"]

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


@dataclass(frozen=True)
class Wiring:
    """Builds the parts that run against one store and one broker (``settings`` points at it).

    Each method makes a new part, not started: the consuming loop of a service, the relay, the
    deadline sweeper, a service's health and HTTP server. ``commands`` is the shop's command side.
    ``tracing`` is the shop's (:func:`~eventlab.tracing.open_tracing`; None when off), handed to
    every part that makes spans; whoever made it opens it and shuts it down.
    """

    settings: Settings
    store: EventStore
    services: Mapping[str, Service]
    id_factory: Callable[[], str] = new_id
    tracing: Tracing | None = None
    commands: Commands = field(init=False)
    _relay_histograms: list[LatencyHistogram] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        tracing = self.tracing
        commands = (
            Commands(self.store, self.id_factory) if tracing is None else tracing.commands(self.store, self.id_factory)
        )
        object.__setattr__(self, "commands", commands)

    def loop(self, name: str) -> ServiceLoop | None:
        """The Kafka loop of service ``name``; None for a service that only takes commands."""
        service = self.services[name]
        if not service.subscriptions:
            return None
        return ServiceLoop(service, self.store, self.settings, tracing=self.tracing)

    def loops(self) -> dict[str, ServiceLoop]:
        """A loop per consuming service, in start-up order."""
        return {name: loop for name in self.services if (loop := self.loop(name)) is not None}

    def relay(self, *, in_process: bool = False) -> Relay:
        """The outbox relay: publishes the store to Kafka (its latency shows on the order service's
        ``/metrics`` when both run in this process), first going back for events of types a service
        subscribes to since it last ran (e.g. after an upgrade). ``in_process``: every writer shares this
        store object (the in-process shop), so each commit wakes the relay and its idle poll can be slow
        (as on a store that wakes it for other processes' commits too)."""
        consumed = {cls.topic for service in self.services.values() for cls in service.subscriptions}
        idle_wait = IDLE_WAIT_IN_PROCESS if in_process or self.store.wakes_across_processes else IDLE_WAIT
        relay = Relay(
            self.store,
            self.settings,
            tracing=self.tracing,
            traced_topics=consumed,
            consumers=subscriptions(self.services),
            idle_wait=idle_wait,
        )
        self._relay_histograms.append(relay.publish_seconds)
        return relay

    def sweeper(self) -> DeadlineSweeper:
        """The saga deadlines' sweeper, with the deadlines the settings scale."""
        return DeadlineSweeper(self.store, Deadlines.scaled(self.settings.saga_timeout_s))

    def health(self, loop: ServiceLoop | None, *problems: Callable[[], list[str]]) -> ServiceHealth:
        """What a service's ``GET /health`` reports (its loop's, else the store's) plus ``problems``."""
        return service_health(loop, self.store, *problems)

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

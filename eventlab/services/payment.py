"""Payment service (port 8084): charges confirmed orders through a (simulated) gateway.

The gateway call is the one side effect in a decision, so it is wrapped: retries with backoff
for transient outages, and a circuit breaker so a dead gateway fails fast. An order is charged
at most once: a payment stream that already has an outcome is never charged again, and the
processed marker makes redelivered ``OrderConfirmed`` events no-ops.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Literal

from eventlab.errors import EventlabError
from eventlab.events import Event, OrderConfirmed, PaymentCompleted
from eventlab.resilience import CircuitBreaker, CircuitOpen, retry
from eventlab.services.runtime import Service, States, StreamKey

__all__ = ["Payment", "SimulatedGateway", "GatewayUnavailable", "ChargeResult", "evolve", "service"]


class GatewayUnavailable(EventlabError):
    """The gateway did not answer (a transient failure worth retrying)."""


@dataclass(frozen=True, slots=True)
class ChargeResult:
    approved: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Payment:
    status: Literal["COMPLETED", "FAILED"]
    amount_cents: int


class SimulatedGateway:
    """A card processor stand-in: seeded declines and latency, and an outage switch.

    Whether an order is declined depends only on ``seed`` and the order id, so a run is
    reproducible whatever the thread timing. Like real gateways, it takes the order id as an
    idempotency key: charging the same order again returns the first answer and moves no money.

    Example:
        >>> gateway = SimulatedGateway(failure_rate=0.0, latency_ms=0)
        >>> gateway.charge("order-1", 1999)
        ChargeResult(approved=True, reason='')
    """

    def __init__(self, failure_rate: float = 0.0, latency_ms: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.failure_rate = failure_rate
        self.latency_ms = latency_ms
        self.seed = seed
        self.available = threading.Event()
        self.available.set()
        self._answers: dict[str, ChargeResult] = {}
        self._lock = threading.Lock()

    @property
    def charges(self) -> int:
        """How many orders were charged (declines included)."""
        return len(self._answers)

    def __repr__(self) -> str:
        state = "up" if self.available.is_set() else "DOWN"
        return (
            f"<SimulatedGateway {state} failure_rate={self.failure_rate} "
            f"latency_ms={self.latency_ms} charges={self.charges}>"
        )

    def charge(self, order_id: str, amount_cents: int) -> ChargeResult:
        """Charge ``amount_cents`` for ``order_id``; raise :class:`GatewayUnavailable` during an outage."""
        if self.latency_ms:
            jitter = random.Random(f"{self.seed}:{order_id}:latency").uniform(0.5, 1.5)
            time.sleep(jitter * self.latency_ms / 1000)
        if not self.available.is_set():
            raise GatewayUnavailable("payment gateway unavailable")
        approved = random.Random(f"{self.seed}:{order_id}").random() >= self.failure_rate
        with self._lock:
            return self._answers.setdefault(order_id, ChargeResult(approved, "" if approved else "card declined"))


def evolve(state: Payment | None, event: Event) -> Payment | None:
    match event:
        case PaymentCompleted():
            return Payment(event.status, event.amount_cents)
    return state


def streams(event: Event) -> list[StreamKey]:
    return [("payment", event.order_id)]  # type: ignore[attr-defined]


def decide(event: OrderConfirmed, result: ChargeResult) -> list[Event]:
    """The gateway's answer as an event."""
    status = "COMPLETED" if result.approved else "FAILED"
    return [
        PaymentCompleted(order_id=event.order_id, amount_cents=event.total_cents, status=status, reason=result.reason)
    ]


def service(gateway: SimulatedGateway, breaker: CircuitBreaker | None = None) -> Service:
    """The payment service charging through ``gateway`` behind ``breaker``."""
    breaker = breaker or CircuitBreaker()

    def charge(event: OrderConfirmed) -> ChargeResult:
        try:
            return breaker.call(
                lambda: retry(lambda: gateway.charge(event.order_id, event.total_cents), retry_on=(GatewayUnavailable,))
            )
        except (GatewayUnavailable, CircuitOpen) as exc:
            return ChargeResult(False, str(exc))

    def handle(event: Event, states: States) -> list[Event]:
        if not isinstance(event, OrderConfirmed) or states[("payment", event.order_id)] is not None:
            return []
        return decide(event, charge(event))

    return Service(
        name="payment",
        subscriptions=(OrderConfirmed,),
        evolvers={"payment": evolve},
        streams=streams,
        handle=handle,
        batch=False,
    )

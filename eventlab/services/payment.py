"""Payment service (port 8084): charges confirmed orders through a payment gateway.

The gateway call is the one side effect in a decision, so it is wrapped: retries with backoff
for transient outages, and a circuit breaker so a dead gateway fails fast. An order is charged
at most once: a payment stream that already has an outcome is never charged again, the
processed marker makes redelivered ``OrderConfirmed`` events no-ops, and the gateway itself
answers a second charge of an order with its first answer.

Money is never left taken for a cancelled order: a cancellation that finds the order charged
refunds it (``PaymentRefunded``; while the gateway is down, the cancellation is held and tried
again until it is back); an order that timed out before it was charged is voided
(``PaymentVoided``), so a late ``OrderConfirmed`` charges nothing (if a charge raced the void,
it is refunded). The gateway adapter is :class:`eventlab.adapters.gateway.SimulatedGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from eventlab.errors import Unavailable
from eventlab.events import Event, OrderCancelled, OrderConfirmed, PaymentCompleted, PaymentRefunded, PaymentVoided
from eventlab.resilience import CircuitBreaker, CircuitOpen, retry
from eventlab.services.runtime import Service, States, StreamKey, state_of

__all__ = [
    "ChargeResult",
    "Gateway",
    "GatewayUnavailable",
    "Payment",
    "RefundResult",
    "decide",
    "evolve",
    "service",
    "settle",
]


class GatewayUnavailable(Unavailable):
    """The gateway did not answer (a transient failure worth retrying)."""


@dataclass(frozen=True, slots=True)
class ChargeResult:
    approved: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RefundResult:
    """What the gateway gave back (0 when nothing had been taken)."""

    refunded_cents: int


class Gateway(Protocol):
    """What Payment needs from a card processor; both calls are idempotent per order id."""

    def charge(self, order_id: str, amount_cents: int) -> ChargeResult: ...

    def refund(self, order_id: str) -> RefundResult: ...


@dataclass(frozen=True, slots=True)
class Payment:
    status: Literal["COMPLETED", "FAILED", "VOIDED", "REFUNDED"]
    amount_cents: int


def evolve(state: Payment | None, event: Event) -> Payment | None:
    match event:
        case PaymentCompleted():
            return Payment(event.status, event.amount_cents)
        case PaymentVoided():
            return Payment("VOIDED", 0)
        case PaymentRefunded():
            return Payment("REFUNDED", event.amount_cents)
    return state


def streams(event: Event) -> list[StreamKey]:
    match event:
        case OrderConfirmed() | OrderCancelled():
            return [("payment", event.order_id)]
    return []


def decide(event: OrderConfirmed, result: ChargeResult) -> list[Event]:
    """The gateway's answer as an event."""
    status: Literal["COMPLETED", "FAILED"] = "COMPLETED" if result.approved else "FAILED"
    return [
        PaymentCompleted(order_id=event.order_id, amount_cents=event.total_cents, status=status, reason=result.reason)
    ]


Settlement = Literal["charge", "refund", "void", "ignore"]


def settle(event: OrderConfirmed | OrderCancelled, payment: Payment | None) -> Settlement:
    """What an order event asks of Payment, given the order's payment so far.

    - a confirmed order not yet paid is charged; one voided meanwhile is refunded in case a
      racing attempt charged it (a refund of nothing moves nothing);
    - a cancelled order that was charged is refunded; one that timed out unpaid is voided;
    - anything else (a settled payment, a redelivery) is ignored.
    """
    match event, payment:
        case OrderConfirmed(), None:
            return "charge"
        case OrderConfirmed(), Payment(status="VOIDED"):
            return "refund"
        case OrderCancelled(), Payment(status="COMPLETED"):
            return "refund"
        case OrderCancelled(reason="timeout"), None:
            return "void"
    return "ignore"


def refunded(order_id: str, result: RefundResult) -> list[Event]:
    """The gateway's refund as an event (none when nothing was taken)."""
    return [PaymentRefunded(order_id=order_id, amount_cents=result.refunded_cents)] if result.refunded_cents else []


def service(gateway: Gateway, breaker: CircuitBreaker | None = None) -> Service:
    """The payment service charging and refunding through ``gateway`` behind ``breaker``."""
    breaker = breaker or CircuitBreaker()

    def charge(event: OrderConfirmed) -> ChargeResult:
        try:
            return breaker.call(
                lambda: retry(lambda: gateway.charge(event.order_id, event.total_cents), retry_on=(GatewayUnavailable,))
            )
        except (GatewayUnavailable, CircuitOpen) as exc:
            return ChargeResult(False, str(exc))

    def refund(order_id: str) -> RefundResult:
        # No fallback: the money must go back, so a refund the gateway cannot take now raises
        # GatewayUnavailable, and the loop holds the message and tries it again until it can.
        return retry(lambda: gateway.refund(order_id), retry_on=(GatewayUnavailable,))

    def handle(event: Event, states: States) -> list[Event]:
        if not isinstance(event, OrderConfirmed | OrderCancelled):
            return []
        match settle(event, state_of(states, ("payment", event.order_id), Payment)):
            case "charge":
                assert isinstance(event, OrderConfirmed)
                return decide(event, charge(event))
            case "refund":
                return refunded(event.order_id, refund(event.order_id))
            case "void":
                return [PaymentVoided(order_id=event.order_id)]
        return []

    return Service(
        name="payment",
        subscriptions=(OrderConfirmed, OrderCancelled),
        evolvers={"payment": evolve},
        streams=streams,
        handle=handle,
    )

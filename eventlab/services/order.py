"""Order service (port 8083): places orders and runs the order saga.

The saga (the seed's ``OrderSagaOrchestrator``) is :func:`decide`: Inventory's answer confirms or
cancels the order; Payment's answer completes it or cancels it, and the cancellation makes
Inventory release the stock (compensation). A step that misses its deadline ends the saga too:
:func:`time_out` cancels with reason ``timeout`` (the sweeper in :mod:`.deadlines` decides when).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from eventlab.commands import PlaceOrder
from eventlab.errors import NotFound
from eventlab.events import (
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ReservationConfirmed,
    ReservationRejected,
)
from eventlab.services import product, user
from eventlab.services.runtime import Service, States, StreamKey, state_of

__all__ = ["SERVICE", "TERMINAL", "Order", "OrderStatus", "decide", "evolve", "place", "time_out"]

OrderStatus = Literal["created", "confirmed", "completed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    status: OrderStatus = "created"
    reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def evolve(state: Order | None, event: Event) -> Order | None:
    match event:
        case OrderCreated():
            return Order(event.order_id, event.user_id, event.lines, event.total_cents)
        case OrderConfirmed() if state:
            return Order(state.order_id, state.user_id, state.lines, state.total_cents, "confirmed")
        case OrderCompleted() if state:
            return Order(state.order_id, state.user_id, state.lines, state.total_cents, "completed")
        case OrderCancelled() if state:
            return Order(state.order_id, state.user_id, state.lines, state.total_cents, "cancelled", event.reason)
    return state


def place(
    command: PlaceOrder,
    order_id: str,
    customer: user.User | None,
    catalogue: Mapping[str, product.Product | None],
) -> list[Event]:
    """Decide on a new order: the user and every product must exist; prices come from the catalogue."""
    if customer is None:
        raise NotFound("user_id", f"unknown user {command.user_id}")
    lines = []
    for index, request in enumerate(command.lines):
        item = catalogue.get(request.product_id)
        if item is None:
            raise NotFound(f"lines.{index}.product_id", f"unknown product {request.product_id}")
        lines.append(
            OrderLine(product_id=item.product_id, quantity=request.quantity, unit_price_cents=item.price_cents)
        )
    total = sum(line.amount_cents for line in lines)
    return [OrderCreated(order_id=order_id, user_id=customer.user_id, lines=tuple(lines), total_cents=total)]


def streams(event: Event) -> list[StreamKey]:
    match event:
        case ReservationConfirmed() | ReservationRejected() | PaymentCompleted():
            return [("order", event.order_id)]
    return []


def decide(event: Event, states: States) -> list[Event]:
    """The saga: react to Inventory's and Payment's answers."""
    if not isinstance(event, ReservationConfirmed | ReservationRejected | PaymentCompleted):
        return []
    order = state_of(states, ("order", event.order_id), Order)
    if order is None:
        return []
    ids = {"order_id": order.order_id, "user_id": order.user_id}
    match event:
        case ReservationConfirmed() if order.status == "created":
            return [OrderConfirmed(**ids, total_cents=order.total_cents)]
        case ReservationRejected() if order.status == "created":
            detail = f"{event.product_id}: {event.requested} requested, {event.available} available"
            return [OrderCancelled(**ids, reason="out_of_stock", detail=detail, lines=order.lines)]
        case PaymentCompleted(status="COMPLETED") if order.status == "confirmed":
            return [OrderCompleted(**ids, total_cents=order.total_cents, lines=order.lines)]
        case PaymentCompleted(status="FAILED") if order.status == "confirmed":
            return [OrderCancelled(**ids, reason="payment_failed", detail=event.reason, lines=order.lines)]
    return []


def time_out(order: Order | None, waiting_at: OrderStatus, detail: str) -> list[Event]:
    """Cancel an order still waiting at step ``waiting_at`` (``created`` or ``confirmed``) past its deadline.

    Nothing when the order moved on meanwhile (a real answer won the race) or is already over.
    """
    if order is None or order.status != waiting_at or order.terminal:
        return []
    ids = {"order_id": order.order_id, "user_id": order.user_id}
    return [OrderCancelled(**ids, reason="timeout", detail=detail, lines=order.lines)]


SERVICE = Service(
    name="order",
    subscriptions=(ReservationConfirmed, ReservationRejected, PaymentCompleted),
    evolvers={"order": evolve, "user": user.evolve, "product": product.evolve},
    streams=streams,
    handle=decide,
)

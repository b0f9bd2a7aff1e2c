"""Order service (port 8083): places orders and runs the order saga.

The saga (the seed's ``OrderSagaOrchestrator``) is :func:`decide`: Inventory's answer confirms or
cancels the order; Payment's answer completes it or cancels it, and the cancellation makes
Inventory release the stock (compensation). A step that misses its deadline ends the saga too:
:func:`time_out` cancels with reason ``timeout`` (the sweeper in :mod:`.deadlines` decides when).

Order owns its data: it never reads the User or Product service's streams. It keeps its own copy
of what placing an order needs — which customers exist and their email (``CustomerRecorded``) and
each product's price (``PriceRecorded``) — recorded by :func:`decide` as it consumes ``UserCreated``
and ``ProductCreated``. An order for a user or product Order has not heard of yet is rejected.
The order's events carry the customer's email, so Notification needs no copy of the users: an
order's events may reach it before the ``UserCreated`` does (topics are not ordered with each
other), and an email that waited on that copy could be lost. An order placed before its events
carried the email (in flight at the upgrade) gets it from Order's copy of its customer on the
saga's next step (:func:`follow` names that copy), so its later events carry it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, TypedDict

from eventlab.commands import PlaceOrder
from eventlab.errors import AlreadyExists, NotFound
from eventlab.events import (
    CustomerRecorded,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    PriceRecorded,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    UserCreated,
)
from eventlab.services.runtime import Service, States, StreamKey, state_of

__all__ = [
    "SERVICE",
    "TERMINAL",
    "Customer",
    "Order",
    "OrderStatus",
    "Price",
    "customer_of",
    "decide",
    "evolve",
    "evolve_customer",
    "evolve_price",
    "follow",
    "place",
    "time_out",
]

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
    email: str | None = None  # the customer's, as Order knew it when the order was placed

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def evolve(state: Order | None, event: Event) -> Order | None:
    match event:
        case OrderCreated():
            return Order(event.order_id, event.user_id, event.lines, event.total_cents, email=event.email)
        case OrderConfirmed() if state:
            return replace(state, status="confirmed")
        case OrderCompleted() if state:
            return replace(state, status="completed")
        case OrderCancelled() if state:
            return replace(state, status="cancelled", reason=event.reason)
    return state


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer Order has heard of (from ``UserCreated``), with the address its order events carry."""

    user_id: str
    email: str


@dataclass(frozen=True, slots=True)
class Price:
    """A product's price as Order recorded it (from ``ProductCreated``)."""

    product_id: str
    price_cents: int


def evolve_customer(state: Customer | None, event: Event) -> Customer | None:
    match event:
        case CustomerRecorded():
            return Customer(event.user_id, event.email)
    return state


def evolve_price(state: Price | None, event: Event) -> Price | None:
    match event:
        case PriceRecorded():
            return Price(event.product_id, event.price_cents)
    return state


def place(
    command: PlaceOrder,
    order_id: str,
    state: Order | None,
    customer: Customer | None,
    prices: Mapping[str, Price | None],
) -> list[Event]:
    """Decide on a new order from Order's own copies: ``order_id`` must be new (``state`` is its
    stream's), the user and every product known to Order (registered, and heard of through Kafka);
    prices come from Order's price list.

    A client's retry decides nothing: the command names the order's id itself, and the same user and
    lines (a repeat of a request whose answer was lost). Any other use of an existing id is refused.
    """
    if state is not None:
        if command.order_id is None:
            raise AlreadyExists("order_id", f"order {order_id} already exists (the id factory gave an id in use)")
        if not _same_request(state, command):
            raise AlreadyExists("order_id", f"order {order_id} already exists with another user or other lines")
        return []
    if customer is None:
        raise NotFound("user_id", f"unknown user {command.user_id} (the order service has not heard of it)")
    lines = []
    for index, request in enumerate(command.lines):
        item = prices.get(request.product_id)
        if item is None:
            raise NotFound(
                f"lines.{index}.product_id",
                f"unknown product {request.product_id} (the order service has not heard of it)",
            )
        lines.append(
            OrderLine(product_id=item.product_id, quantity=request.quantity, unit_price_cents=item.price_cents)
        )
    total = sum(line.amount_cents for line in lines)
    return [
        OrderCreated(
            order_id=order_id, user_id=customer.user_id, email=customer.email, lines=tuple(lines), total_cents=total
        )
    ]


def _same_request(state: Order, command: PlaceOrder) -> bool:
    """Whether ``command`` asks for the order ``state`` holds: the same user, products and quantities."""
    placed = [(line.product_id, line.quantity) for line in state.lines]
    return state.user_id == command.user_id and placed == [(line.product_id, line.quantity) for line in command.lines]


def streams(event: Event) -> list[StreamKey]:
    match event:
        case ReservationConfirmed() | ReservationRejected() | PaymentCompleted():
            return [("order", event.order_id)]
        case UserCreated():
            return [("order_customer", event.user_id)]
        case ProductCreated():
            return [("order_price", event.product_id)]
    return []


def customer_of(order: Order | None) -> list[StreamKey]:
    """The stream of Order's copy of ``order``'s customer when the order lacks the email (it was
    placed before order events carried it); else nothing more to read."""
    return [("order_customer", order.user_id)] if order is not None and order.email is None else []


def follow(event: Event, states: States) -> list[StreamKey]:
    """More streams a decision on ``event`` reads, once its order is loaded: :func:`customer_of`."""
    if isinstance(event, ReservationConfirmed | ReservationRejected | PaymentCompleted):
        return customer_of(state_of(states, ("order", event.order_id), Order))
    return []


def _with_email(order: Order, states: States) -> Order:
    """``order`` with its customer's email from Order's copy when it has none (and the copy was read)."""
    if order.email is not None:
        return order
    key = ("order_customer", order.user_id)
    customer = state_of(states, key, Customer) if key in states else None
    return order if customer is None else replace(order, email=customer.email)


def decide(event: Event, states: States) -> list[Event]:
    """The saga: react to Inventory's and Payment's answers; keep Order's copy of customers and prices."""
    match event:
        case UserCreated():
            known = state_of(states, ("order_customer", event.user_id), Customer)
            return [] if known else [CustomerRecorded(user_id=event.user_id, email=event.email)]
        case ProductCreated():
            price = state_of(states, ("order_price", event.product_id), Price)
            return [] if price else [PriceRecorded(product_id=event.product_id, price_cents=event.price_cents)]
    if not isinstance(event, ReservationConfirmed | ReservationRejected | PaymentCompleted):
        return []
    order = state_of(states, ("order", event.order_id), Order)
    if order is None:
        return []
    ids = _ids(_with_email(order, states))
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


class _Ids(TypedDict):
    """What every event of an order carries: its id and its customer (id and email)."""

    order_id: str
    user_id: str
    email: str | None


def _ids(order: Order) -> _Ids:
    return {"order_id": order.order_id, "user_id": order.user_id, "email": order.email}


def time_out(order: Order | None, waiting_at: OrderStatus, detail: str, states: States | None = None) -> list[Event]:
    """Cancel an order still waiting at step ``waiting_at`` (``created`` or ``confirmed``) past its deadline.

    Nothing when the order moved on meanwhile (a real answer won the race) or is already over.
    ``states`` may hold Order's copy of the customer (:func:`customer_of`), for an order without email.
    """
    if order is None or order.status != waiting_at or order.terminal:
        return []
    order = _with_email(order, states or {})
    return [OrderCancelled(**_ids(order), reason="timeout", detail=detail, lines=order.lines)]


SERVICE = Service(
    name="order",
    subscriptions=(ReservationConfirmed, ReservationRejected, PaymentCompleted, UserCreated, ProductCreated),
    evolvers={"order": evolve, "order_customer": evolve_customer, "order_price": evolve_price},
    streams=streams,
    handle=decide,
    follow=follow,
)

"""Inventory service (port 8085): stock per product; reserves, releases and sells it.

An order is reserved all-or-nothing: one decision checks every line and writes either a
``StockReserved`` per line plus ``ReservationConfirmed``, or a single ``ReservationRejected``.
Each product is its own stream, so two orders racing for the last unit conflict on its version
and the loser decides again on fresh stock: stock never goes negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eventlab.events import (
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderCreated,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    StockAdded,
    StockReleased,
    StockReserved,
    StockSold,
)
from eventlab.services.runtime import Service, States, StreamKey

__all__ = ["Stock", "Reservation", "evolve_stock", "evolve_reservation", "decide", "SERVICE"]


@dataclass(frozen=True, slots=True)
class Stock:
    available: int = 0
    reserved: int = 0
    sold: int = 0


@dataclass(frozen=True, slots=True)
class Reservation:
    status: Literal["confirmed", "rejected"]


def evolve_stock(state: Stock | None, event: Event) -> Stock:
    s = state or Stock()
    match event:
        case StockAdded():
            return Stock(s.available + event.quantity, s.reserved, s.sold)
        case StockReserved():
            return Stock(s.available - event.quantity, s.reserved + event.quantity, s.sold)
        case StockReleased():
            return Stock(s.available + event.quantity, s.reserved - event.quantity, s.sold)
        case StockSold():
            return Stock(s.available, s.reserved - event.quantity, s.sold + event.quantity)
    return s


def evolve_reservation(state: Reservation | None, event: Event) -> Reservation | None:
    match event:
        case ReservationConfirmed():
            return Reservation("confirmed")
        case ReservationRejected():
            return Reservation("rejected")
    return state


def streams(event: Event) -> list[StreamKey]:
    match event:
        case ProductCreated():
            return [("stock", event.product_id)]
        case OrderCreated() | OrderCancelled() | OrderCompleted():
            return [("reservation", event.order_id)] + [("stock", line.product_id) for line in event.lines]
    return []


def decide(event: Event, states: States) -> list[Event]:
    """Reserve all-or-nothing on a new order; release on cancellation; sell on completion."""
    match event:
        case ProductCreated(initial_stock=quantity) if quantity > 0:
            return [StockAdded(product_id=event.product_id, quantity=quantity)]
        case OrderCreated():
            if states[("reservation", event.order_id)] is not None:
                return []
            for line in event.lines:
                available = (states[("stock", line.product_id)] or Stock()).available
                if line.quantity > available:
                    return [
                        ReservationRejected(
                            order_id=event.order_id,
                            product_id=line.product_id,
                            requested=line.quantity,
                            available=available,
                        )
                    ]
            reserved: list[Event] = [
                StockReserved(product_id=line.product_id, order_id=event.order_id, quantity=line.quantity)
                for line in event.lines
            ]
            return [*reserved, ReservationConfirmed(order_id=event.order_id, lines=event.lines)]
        case OrderCancelled() | OrderCompleted():
            reservation: Reservation | None = states[("reservation", event.order_id)]
            if reservation is None or reservation.status != "confirmed":
                return []
            follow_up = StockReleased if isinstance(event, OrderCancelled) else StockSold
            return [
                follow_up(product_id=line.product_id, order_id=event.order_id, quantity=line.quantity)
                for line in event.lines
            ]
    return []


SERVICE = Service(
    name="inventory",
    subscriptions=(ProductCreated, OrderCreated, OrderCancelled, OrderCompleted),
    evolvers={"stock": evolve_stock, "reservation": evolve_reservation},
    streams=streams,
    handle=decide,
)

"""Notification service (port 8086): emails about orders.

Order events become ``EmailRequested``; the service's own consumer of those committed requests
hands them to a mailer (:class:`eventlab.adapters.mailer.FileMailer` by default) and records
``EmailSent``. The mailer is idempotent per order and kind, so a request handled again after a
kill or a rolled-back batch is recorded as sent without a second email.

Notification owns its data: the address an email goes to comes from its own copy of the
customers' emails (``RecipientRecorded``, recorded as it consumes ``UserCreated``), never from the
User service's streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eventlab.events import (
    EmailKind,
    EmailRequested,
    EmailSent,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    RecipientRecorded,
    UserCreated,
)
from eventlab.services.runtime import Service, States, StreamKey, state_of

__all__ = ["Mailbox", "Mailer", "Recipient", "decide", "evolve", "evolve_recipient", "service"]

#: Delivers an email at most once per order and kind (returns whether it delivered it now).
Mailer = Callable[[EmailRequested], object]

_SUBJECTS: dict[EmailKind, str] = {
    "order_confirmed": "We have your order {order_id}",
    "order_completed": "Order {order_id} is paid and on its way",
    "order_cancelled": "Order {order_id} was cancelled",
}
_KINDS: dict[type[Event], EmailKind] = {
    OrderConfirmed: "order_confirmed",
    OrderCompleted: "order_completed",
    OrderCancelled: "order_cancelled",
}


@dataclass(frozen=True, slots=True)
class Mailbox:
    """Emails of one order: kinds requested and kinds sent."""

    requested: frozenset[str] = frozenset()
    sent: frozenset[str] = frozenset()


def evolve(state: Mailbox | None, event: Event) -> Mailbox:
    box = state or Mailbox()
    match event:
        case EmailRequested():
            return Mailbox(box.requested | {event.kind}, box.sent)
        case EmailSent():
            return Mailbox(box.requested, box.sent | {event.kind})
    return box


@dataclass(frozen=True, slots=True)
class Recipient:
    """A customer's email address as Notification recorded it (from ``UserCreated``)."""

    user_id: str
    email: str


def evolve_recipient(state: Recipient | None, event: Event) -> Recipient | None:
    match event:
        case RecipientRecorded():
            return Recipient(event.user_id, event.email)
    return state


def streams(event: Event) -> list[StreamKey]:
    match event:
        case EmailRequested():
            return [("notification", event.order_id)]
        case OrderConfirmed() | OrderCompleted() | OrderCancelled():
            return [("notification", event.order_id), ("notification_recipient", event.user_id)]
        case UserCreated():
            return [("notification_recipient", event.user_id)]
    return []


def decide(event: Event, states: States) -> list[Event]:
    """Keep the customers' addresses; request one email per order event kind; record a requested
    email as sent."""
    if isinstance(event, UserCreated):
        known = state_of(states, ("notification_recipient", event.user_id), Recipient)
        return [] if known else [RecipientRecorded(user_id=event.user_id, email=event.email)]
    if not isinstance(event, EmailRequested | OrderConfirmed | OrderCompleted | OrderCancelled):
        return []
    box = state_of(states, ("notification", event.order_id), Mailbox) or Mailbox()
    if isinstance(event, EmailRequested):
        if event.kind in box.sent:
            return []
        return [EmailSent(order_id=event.order_id, kind=event.kind, to=event.to)]
    kind = _KINDS[type(event)]
    customer = state_of(states, ("notification_recipient", event.user_id), Recipient)
    if kind in box.requested or customer is None:
        return []  # one email per kind: a duplicated order event requests nothing
    subject = _SUBJECTS[kind].format(order_id=event.order_id)
    return [EmailRequested(order_id=event.order_id, kind=kind, to=customer.email, subject=subject)]


def service(mailer: Mailer) -> Service:
    """The notification service, delivering through an idempotent ``mailer``, then recording ``EmailSent``."""

    def handle(event: Event, states: States) -> list[Event]:
        events = decide(event, states)
        if isinstance(event, EmailRequested) and events:
            mailer(event)
        return events

    return Service(
        name="notification",
        subscriptions=(OrderConfirmed, OrderCompleted, OrderCancelled, EmailRequested, UserCreated),
        evolvers={"notification": evolve, "notification_recipient": evolve_recipient},
        streams=streams,
        handle=handle,
    )

"""Notification service (port 8086): emails about orders.

Order events become ``EmailRequested``; the service's own consumer of those committed requests
hands them to a mailer (:class:`eventlab.adapters.mailer.FileMailer` by default) and records
``EmailSent``. The mailer is idempotent per order and kind, so a request handled again after a
kill or a rolled-back batch is recorded as sent without a second email.

Notification reads no other service's streams and keeps no copy of the users: the address an
email goes to travels in the order's events (event-carried state: Order knew the customer, email
included, before it accepted the order). Topics are not ordered with each other, so a copy built
from ``UserCreated`` could still lack an address when the order's events arrive — the email would
wait or be lost; carried in the event, it is there whenever the event is. An order event without
an address (an order placed before the email was carried, whose customer Order had no copy of)
requests no email, and says so in a warning: it is not dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from eventlab.events import EmailKind, EmailRequested, EmailSent, Event, OrderCancelled, OrderCompleted, OrderConfirmed
from eventlab.services.runtime import Service, States, StreamKey, state_of

__all__ = ["Mailbox", "Mailer", "decide", "evolve", "service"]

log = logging.getLogger(__name__)

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


def streams(event: Event) -> list[StreamKey]:
    match event:
        case EmailRequested() | OrderConfirmed() | OrderCompleted() | OrderCancelled():
            return [("notification", event.order_id)]
    return []


def decide(event: Event, states: States) -> list[Event]:
    """Request one email per order event kind, to the address the event carries; record a
    requested email as sent."""
    if not isinstance(event, EmailRequested | OrderConfirmed | OrderCompleted | OrderCancelled):
        return []
    box = state_of(states, ("notification", event.order_id), Mailbox) or Mailbox()
    if isinstance(event, EmailRequested):
        if event.kind in box.sent:
            return []
        return [EmailSent(order_id=event.order_id, kind=event.kind, to=event.to)]
    kind = _KINDS[type(event)]
    if kind in box.requested or event.email is None:
        return []  # one email per kind: a duplicated order event requests nothing (None: see service())
    subject = _SUBJECTS[kind].format(order_id=event.order_id)
    return [EmailRequested(order_id=event.order_id, kind=kind, to=event.email, subject=subject)]


def service(mailer: Mailer) -> Service:
    """The notification service, delivering through an idempotent ``mailer``, then recording ``EmailSent``."""

    def handle(event: Event, states: States) -> list[Event]:
        events = decide(event, states)
        if isinstance(event, EmailRequested) and events:
            mailer(event)
        elif isinstance(event, OrderConfirmed | OrderCompleted | OrderCancelled) and event.email is None:
            log.warning(
                "notification: %s of order %s carries no email (placed before order events carried it,"
                " customer %s unknown to Order): no %s email requested",
                event.event_type,
                event.order_id,
                event.user_id,
                _KINDS[type(event)],
            )
        return events

    return Service(
        name="notification",
        subscriptions=(OrderConfirmed, OrderCompleted, OrderCancelled, EmailRequested),
        evolvers={"notification": evolve},
        streams=streams,
        handle=handle,
    )

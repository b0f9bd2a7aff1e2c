"""A small shop history written straight into a real SQLite store, as the services would write it.

Every saga step is one ``append`` (one batch, as a service's decision is), 10 ms after the
previous one on a controlled clock, so times and durations can be computed by hand.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventlab.events import (
    EmailRequested,
    EmailSent,
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentCompleted,
    ProductCreated,
    ReservationConfirmed,
    ReservationRejected,
    StockAdded,
    StockReleased,
    StockReserved,
    StockSold,
    UserCreated,
)
from eventlab.store import EventStore, SqliteEventStore, StoredEvent
from eventlab.store.base import NewEvent

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=10)

_SOURCE = {
    "user": "user",
    "product": "product",
    "order": "order",
    "stock": "inventory",
    "reservation": "inventory",
    "payment": "payment",
    "notification": "notification",
}


class ShopStory:
    """Writes users, products and order sagas; ``positions`` remembers where each step landed.

    Example:
        >>> story = ShopStory(tmp_path / "events.db")
        >>> story.product("P1", price_cents=1000, stock=10)
        >>> story.completed_order("O1", "U1", {"P1": 2})
    """

    def __init__(self, path: Path | str, start: datetime = START) -> None:
        """``path``: a SQLite file, or a ``postgresql://`` URL for the same story on PostgreSQL."""
        self.now = start
        self.store: EventStore
        if isinstance(path, str) and path.startswith("postgresql://"):
            from eventlab.store.postgres import PostgresEventStore

            self.store = PostgresEventStore(path, clock=lambda: self.now)
        else:
            self.store = SqliteEventStore(path, clock=lambda: self.now)
        self.versions: dict[tuple[str, str], int] = defaultdict(int)
        self.prices: dict[str, int] = {}
        self.positions: dict[str, int] = {}

    def write(self, *events: Event, label: str | None = None) -> list[StoredEvent]:
        """Append ``events`` as one batch, one step (10 ms) after the previous batch."""
        self.now += STEP
        batch = []
        for event in events:
            key = (event.aggregate_type, event.aggregate_id)
            self.versions[key] += 1
            metadata = {"source": _SOURCE[event.aggregate_type], "correlation_id": event.aggregate_id}
            batch.append(NewEvent(event, self.versions[key], metadata))
        stored = self._append(_SOURCE[events[0].aggregate_type], batch)
        if label:
            self.positions[label] = stored[-1].position
        return stored

    def _append(self, service: str, batch: list[NewEvent]) -> list[StoredEvent]:
        """Store the batch ``service`` wrote."""
        return self.store.append(batch)

    def user(self, user_id: str) -> None:
        self.write(UserCreated(user_id=user_id, name=user_id.title(), email=f"{user_id.lower()}@example.com"))

    def product(self, product_id: str, price_cents: int, stock: int) -> None:
        self.prices[product_id] = price_cents
        self.write(
            ProductCreated(
                product_id=product_id, name=f"Product {product_id}", price_cents=price_cents, initial_stock=stock
            )
        )
        self.write(StockAdded(product_id=product_id, quantity=stock))

    def lines(self, quantities: dict[str, int]) -> tuple[OrderLine, ...]:
        return tuple(
            OrderLine(product_id=p, quantity=q, unit_price_cents=self.prices[p]) for p, q in quantities.items()
        )

    # -- the saga, step by step ------------------------------------------------------------------

    def place(self, order_id: str, user_id: str, quantities: dict[str, int]) -> OrderCreated:
        lines = self.lines(quantities)
        created = OrderCreated(
            order_id=order_id, user_id=user_id, lines=lines, total_cents=sum(line.amount_cents for line in lines)
        )
        self.write(created, label=f"{order_id}:created")
        return created

    def reserve(self, order: OrderCreated) -> None:
        reserved = [
            StockReserved(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity) for ln in order.lines
        ]
        self.write(
            *reserved,
            ReservationConfirmed(order_id=order.order_id, lines=order.lines),
            label=f"{order.order_id}:reserved",
        )
        self.write(
            OrderConfirmed(order_id=order.order_id, user_id=order.user_id, total_cents=order.total_cents),
            label=f"{order.order_id}:confirmed",
        )
        self.email(order, "order_confirmed")

    def pay(self, order: OrderCreated, approved: bool = True) -> None:
        status = "COMPLETED" if approved else "FAILED"
        self.write(
            PaymentCompleted(
                order_id=order.order_id,
                amount_cents=order.total_cents,
                status=status,
                reason="" if approved else "card declined",
            ),
            label=f"{order.order_id}:paid",
        )

    def complete(self, order: OrderCreated) -> None:
        self.write(
            OrderCompleted(
                order_id=order.order_id, user_id=order.user_id, total_cents=order.total_cents, lines=order.lines
            ),
            label=f"{order.order_id}:completed",
        )
        self.write(
            *[StockSold(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity) for ln in order.lines]
        )
        self.email(order, "order_completed")

    def cancel(self, order: OrderCreated, reason: str, detail: str, release: bool) -> None:
        self.write(
            OrderCancelled(
                order_id=order.order_id,
                user_id=order.user_id,
                reason=reason,  # type: ignore[arg-type]
                detail=detail,
                lines=order.lines,
            ),
            label=f"{order.order_id}:cancelled",
        )
        if release:
            self.write(
                *[
                    StockReleased(product_id=ln.product_id, order_id=order.order_id, quantity=ln.quantity)
                    for ln in order.lines
                ]
            )
        self.email(order, "order_cancelled")

    def email(self, order: OrderCreated, kind: str, sent: bool = True) -> None:
        to = f"{order.user_id.lower()}@example.com"
        self.write(EmailRequested(order_id=order.order_id, kind=kind, to=to, subject=f"{kind} {order.order_id}"))  # type: ignore[arg-type]
        if sent:
            self.write(EmailSent(order_id=order.order_id, kind=kind, to=to))  # type: ignore[arg-type]

    # -- whole sagas -------------------------------------------------------------------------------

    def completed_order(self, order_id: str, user_id: str, quantities: dict[str, int]) -> None:
        order = self.place(order_id, user_id, quantities)
        self.reserve(order)
        self.pay(order)
        self.complete(order)

    def out_of_stock_order(self, order_id: str, user_id: str, quantities: dict[str, int], available: int) -> None:
        order = self.place(order_id, user_id, quantities)
        short = order.lines[0]
        self.write(
            ReservationRejected(
                order_id=order_id, product_id=short.product_id, requested=short.quantity, available=available
            ),
            label=f"{order_id}:rejected",
        )
        detail = f"{short.product_id}: {short.quantity} requested, {available} available"
        self.cancel(order, "out_of_stock", detail, release=False)

    def declined_order(self, order_id: str, user_id: str, quantities: dict[str, int]) -> None:
        order = self.place(order_id, user_id, quantities)
        self.reserve(order)
        self.pay(order, approved=False)
        self.cancel(order, "payment_failed", "card declined", release=True)

    def publish(self) -> None:
        """What the outbox relay records once it has published everything."""
        self.store.set_checkpoint("relay", self.store.head())


#: A split shop: user and product events in one store, order events in another, payment, inventory
#: and notification events in a third (file names in a data directory).
SPLIT = {"user": "catalogue.db", "product": "catalogue.db", "order": "order.db"}
SPLIT_REST = "events.db"


class SplitShopStory(ShopStory):
    """The same story, each service's events in its own store (:data:`SPLIT`, the rest in
    :data:`SPLIT_REST`), as a shop with ``EVENTLAB_<SERVICE>_STORE_URL`` writes it: each step marks
    the previous step's last event processed by the writing service, in the writer's store (so the
    markers of a consumer sit in its store while the events it handled are in another).

    ``store`` is the default store (``events.db``, or the ``postgresql://`` URL ``rest``); ``stores``
    every store by file name.
    """

    def __init__(self, directory: Path, start: datetime = START, rest: str | None = None) -> None:
        super().__init__(rest or directory / SPLIT_REST, start)
        self.directory = directory
        self.rest = rest
        self.stores: dict[str, EventStore] = {SPLIT_REST: self.store}
        for name in sorted(set(SPLIT.values())):
            self.stores[name] = SqliteEventStore(directory / name, clock=lambda: self.now)
        self._previous: StoredEvent | None = None

    def store_of(self, service: str) -> EventStore:
        return self.stores[SPLIT.get(service, SPLIT_REST)]

    def _append(self, service: str, batch: list[NewEvent]) -> list[StoredEvent]:
        handled = None if self._previous is None else (service, self._previous.event_id)
        stored = self.store_of(service).append(batch, processed=handled)
        self._previous = stored[-1]
        return stored

    def publish(self) -> None:
        for store in self.stores.values():
            store.set_checkpoint("relay", store.head())

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    @property
    def paths(self) -> list[Path | str]:
        """Where each store is: its SQLite file, or the ``rest`` URL."""
        return [self.rest if self.rest and name == SPLIT_REST else self.directory / name for name in self.stores]


def standard_story(path: Path | str) -> ShopStory:
    """Two customers, two products and five orders covering every saga outcome.

    - ``O1`` (U1): P1 x2 + P2 x1 = 2250 cents, completed on day 1;
    - ``O2`` (U2): P2 x10, rejected (4 available), cancelled out_of_stock;
    - ``O3`` (U2): P1 x3 = 3000 cents, payment declined, cancelled and released;
    - ``O4`` (U1): P1 x1 = 1000 cents, completed on day 2;
    - ``O5`` (U1): P2 x1 = 250 cents, confirmed, waiting for payment (its email not sent yet).
    """
    return tell_standard_story(ShopStory(path))


def tell_healthy_story(story: ShopStory) -> ShopStory:
    """Every saga outcome, every saga finished, every email sent, everything published."""
    story.user("U1")
    story.product("P1", price_cents=1000, stock=10)
    story.product("P2", price_cents=250, stock=5)
    story.completed_order("O1", "U1", {"P1": 2, "P2": 1})
    story.out_of_stock_order("O2", "U1", {"P2": 10}, available=4)
    story.declined_order("O3", "U1", {"P1": 3})
    story.publish()
    return story


def tell_standard_story(story: ShopStory) -> ShopStory:
    """:func:`standard_story` told to ``story`` (one store, or a :class:`SplitShopStory`)."""
    story.user("U1")
    story.user("U2")
    story.product("P1", price_cents=1000, stock=10)
    story.product("P2", price_cents=250, stock=5)
    story.completed_order("O1", "U1", {"P1": 2, "P2": 1})
    story.out_of_stock_order("O2", "U2", {"P2": 10}, available=4)
    story.declined_order("O3", "U2", {"P1": 3})
    story.now += timedelta(days=1)
    story.completed_order("O4", "U1", {"P1": 1})
    o5 = story.place("O5", "U1", {"P2": 1})
    reserved = [StockReserved(product_id="P2", order_id="O5", quantity=1)]
    story.write(*reserved, ReservationConfirmed(order_id="O5", lines=o5.lines), label="O5:reserved")
    story.write(OrderConfirmed(order_id="O5", user_id="U1", total_cents=250), label="O5:confirmed")
    story.email(o5, "order_confirmed", sent=False)
    story.publish()
    return story

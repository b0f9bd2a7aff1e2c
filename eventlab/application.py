"""The command side: register users, create products, place and read orders.

Used by the Python API (:class:`eventlab.Shop`) and by the services' HTTP endpoints alike.
Commands are validated first (:func:`eventlab.commands.parse`); a rejected command writes nothing.
"""

from __future__ import annotations

import heapq
import html
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from eventlab.commands import Command, CreateProduct, PlaceOrder, RegisterUser, parse, valid_id
from eventlab.errors import AlreadyExists, NotFound
from eventlab.events import Event, ProductCreated, UserCreated
from eventlab.ids import new_id
from eventlab.services import order, product, user
from eventlab.services.runtime import Evolve, StreamCache, StreamKey, execute, load, trace_metadata
from eventlab.store import ShopStores
from eventlab.store.base import EventStore, StoredEvent
from eventlab.tables import html_table

__all__ = ["Commands", "OrderView", "money"]

_Created = TypeVar("_Created", bound=Event)
_Command = TypeVar("_Command", bound=Command)


def money(cents: int) -> str:
    """Format integer cents as ``12.34``."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


@dataclass(frozen=True)
class OrderView:
    """An order's current state and every event of its saga, in order."""

    order_id: str
    user_id: str
    status: str
    total_cents: int
    reason: str
    lines: tuple[Any, ...]
    events: tuple[StoredEvent, ...]

    @property
    def terminal(self) -> bool:
        return self.status in order.TERMINAL

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "user_id": self.user_id,
            "status": self.status,
            "total_cents": self.total_cents,
            "reason": self.reason,
            "lines": [line.model_dump() for line in self.lines],
            "events": [e.event_type for e in self.events],
        }

    def __repr__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        steps = " -> ".join(e.event_type for e in self.events)
        return f"<Order {self.order_id} {self.status}{reason} total={money(self.total_cents)} | {steps}>"

    def _repr_html_(self) -> str:
        rows = [
            (e.position, e.metadata.get("source", ""), e.event_type, f"{e.aggregate_type}:{e.aggregate_id}")
            for e in self.events
        ]
        return (
            f"<b>Order {html.escape(self.order_id)}</b>: {html.escape(self.status)} {html.escape(self.reason)} "
            f"— total {money(self.total_cents)}" + html_table(["position", "service", "event", "stream"], rows)
        )


class Commands:
    """Validates and executes the shop's commands against the event store (or each service's own:
    pass :class:`~eventlab.store.ShopStores`): a user is written to the user service's store, a
    product to the product service's, an order to the order service's; an order's saga is read
    from every store.

    Example:
        >>> from eventlab.store import SqliteEventStore
        >>> commands = Commands(SqliteEventStore(store_path))
        >>> commands.register_user(user_id="u-1", name="Ada", email="ada@example.com").user_id
        'u-1'
    """

    def __init__(
        self, store: EventStore | ShopStores, id_factory: Callable[[], str] = new_id, copy_wait: float = 2.0
    ) -> None:
        self.stores = store if isinstance(store, ShopStores) else ShopStores.one(store)
        #: The order service's store: where orders are placed and their sagas' ends are recorded.
        self.store = self.stores.of("order")
        self.new_id = id_factory
        #: Seconds an order for a user or product Order has not heard of waits for Order's copy (a
        #: registration a moment ago is still on its way through Kafka) before it is rejected.
        self.copy_wait = copy_wait
        self._cache = StreamCache()

    def register_user(self, data: Mapping[str, Any] | None = None, /, **fields: Any) -> UserCreated:
        """Register a user; raises :class:`~eventlab.errors.InvalidCommand` naming the bad field.

        Pass the command as one mapping (as HTTP does: client JSON never becomes keyword arguments)
        or as keywords; every command method takes both. A repeat of a registration (the same id,
        name and email) writes nothing and returns the same event; the same id with another name or
        email raises :class:`~eventlab.errors.AlreadyExists`.
        """
        return self._register_user(parse(RegisterUser, _input(data, fields)))[0]

    def create_product(self, data: Mapping[str, Any] | None = None, /, **fields: Any) -> ProductCreated:
        """Add a product to the catalogue (its initial stock reaches Inventory through Kafka); a
        repeat writes nothing, as for :meth:`register_user`."""
        return self._create_product(parse(CreateProduct, _input(data, fields)))[0]

    def seed(self, users: Iterable[Mapping[str, Any]], products: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
        """Register the ``users`` and create the ``products`` whose ids are not taken yet (a taken id
        is left as it is, whatever its details); return how many of each were new."""
        registrations = [parse(RegisterUser, row) for row in users]  # every row checked before any is written
        catalogue = [parse(CreateProduct, row) for row in products]
        return (
            sum(self._if_new(self._register_user, command) for command in registrations),
            sum(self._if_new(self._create_product, command) for command in catalogue),
        )

    def _register_user(self, command: RegisterUser) -> tuple[UserCreated, bool]:
        return self._create(
            "user",
            ("user", command.user_id),
            user.evolve,
            lambda state: user.register(command, state),
            UserCreated.model_validate(command.model_dump()),
        )

    def _create_product(self, command: CreateProduct) -> tuple[ProductCreated, bool]:
        return self._create(
            "product",
            ("product", command.product_id),
            product.evolve,
            lambda state: product.create(command, state),
            ProductCreated.model_validate(command.model_dump()),
        )

    def place_order(self, data: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """Place an order and return its id; the saga then runs through Kafka.

        The user and products are checked against the Order service's own copies, which it records
        when it consumes ``UserCreated`` and ``ProductCreated``. Right after a registration the copy
        may still be on its way: the order waits for it up to :attr:`copy_wait` seconds (woken by
        each commit to the store), then is rejected with :class:`~eventlab.errors.NotFound` naming
        the field.

        Pass your own ``order_id`` to retry safely: a repeat of the same order (same id, user and
        lines) returns the id and places nothing; the same id with another user or other lines raises
        :class:`~eventlab.errors.AlreadyExists`.
        """
        command = parse(PlaceOrder, _input(data, fields))
        order_id = command.order_id or valid_id("order_id", self.new_id())
        # Order's own copies of the customer and the prices (never the User or Product streams)
        customer = ("order_customer", command.user_id)
        items = [("order_price", line.product_id) for line in command.lines]
        key = ("order", order_id)

        def decide(states: Mapping[tuple[str, str], Any]) -> list[Event]:
            prices = {pid: states[("order_price", pid)] for _, pid in items}
            return order.place(command, order_id, states[key], states[customer], prices)

        deadline = time.monotonic() + self.copy_wait
        while True:
            commits = self.store.commits
            try:
                execute(
                    self.store,
                    [key, customer, *items],
                    order.SERVICE.evolvers,
                    decide,
                    self._meta("order", order_id),
                    cache=self._cache,
                )
                return order_id
            except NotFound:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                # a commit in this process (Order's consumer) wakes it; another process's after 50 ms
                self.store.wait_for_commit(commits, min(left, 0.05))

    def get_order(self, order_id: str) -> OrderView:
        """The order's state and its saga's events; :class:`~eventlab.errors.NotFound` if unknown."""
        state = load(self.store, ("order", order_id), order.evolve).state
        if state is None:
            raise NotFound("order_id", f"unknown order {order_id!r:.80}")
        return OrderView(
            order_id=state.order_id,
            user_id=state.user_id,
            status=state.status,
            total_cents=state.total_cents,
            reason=state.reason,
            lines=state.lines,
            events=tuple(self.read_correlated(order_id)),
        )

    def read_correlated(self, correlation_id: str) -> list[StoredEvent]:
        """Every event of one saga, from every store, merged as the read side merges stores: each
        store in its own position order, interleaved by the latest time each has reached, then store
        (one store: its position order)."""
        if not self.stores.split:
            return self.store.read_correlated(correlation_id)
        stores = [
            _by_time_reached(index, store.read_correlated(correlation_id)) for index, store in enumerate(self.stores)
        ]
        return [event for *_, event in heapq.merge(*stores)]

    def _create(
        self,
        service: str,
        key: StreamKey,
        evolve: Evolve,
        decide: Callable[[Any], list[Event]],
        created: _Created,
    ) -> tuple[_Created, bool]:
        """Decide on a new entity from its stream's state in ``service``'s store; return the event
        that created it (``created``, which a repeat already wrote) and whether it is new."""
        aggregate_type = key[0]
        stored = execute(
            self.stores.of(service),
            [key],
            {aggregate_type: evolve},
            lambda states: decide(states[key]),
            self._meta(aggregate_type),
            cache=self._cache,
        )
        assert [e.event for e in stored] in ([], [created]), f"{key} wrote {stored}, not {created}"
        return created, bool(stored)

    @staticmethod
    def _if_new(create: Callable[[_Command], tuple[Event, bool]], command: _Command) -> bool:
        try:
            return create(command)[1]
        except AlreadyExists:
            return False

    def _meta(self, source: str, correlation_id: str = "") -> dict[str, str]:
        # ``new_id`` (not the injected factory): the factory names orders only, so a counter-based
        # factory gives order-001 to the first order even after the catalogue was registered.
        return trace_metadata(source, correlation_id or new_id())


def _input(data: Mapping[str, Any] | Any, fields: dict[str, Any]) -> Mapping[str, Any] | Any:
    """The command's input: the mapping given (checked by :func:`parse`), or the keywords."""
    if data is None:
        return fields
    if fields:
        raise TypeError("pass a command as one mapping or as keywords, not both")
    return data


def _by_time_reached(index: int, events: list[StoredEvent]) -> Iterator[tuple[datetime, int, int, StoredEvent]]:
    """One store's ``events`` (in position order) keyed by the latest recorded time reached so far,
    then the store's ``index`` and the position: keys that never go down, so merging several stores'
    by them keeps each store's order (``recorded_at`` is taken before the write lock, so it can)."""
    reached: datetime | None = None
    for event in events:
        reached = event.recorded_at if reached is None else max(reached, event.recorded_at)
        yield reached, index, event.position, event

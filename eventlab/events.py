"""Domain events: immutable facts, named in the past tense.

Every event belongs to one *stream* (``aggregate_type``, ``aggregate_id``) and is published to one
Kafka topic. Money is integer cents. ``EVENT_TYPES`` maps a type name to its class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "EVENT_TYPES",
    "MAX_ID_LENGTH",
    "MAX_PRICE_CENTS",
    "MAX_STOCK",
    "TOPICS",
    "CustomerRecorded",
    "EmailRequested",
    "EmailSent",
    "Event",
    "Id",
    "OrderCancelled",
    "OrderCompleted",
    "OrderConfirmed",
    "OrderCreated",
    "OrderLine",
    "PaymentCompleted",
    "PaymentRefunded",
    "PaymentVoided",
    "PriceRecorded",
    "ProductCreated",
    "ReservationConfirmed",
    "ReservationRejected",
    "ReservationVoided",
    "StockAdded",
    "StockReleased",
    "StockReserved",
    "StockSold",
    "UserCreated",
    "beyond_64_bits",
    "distinct_products",
    "fields",
    "readable_versions",
]


#: The longest id an event may carry, in characters. PostgreSQL indexes ids (a stream's, a message's,
#: a correlation's) and an index entry holds at most 2,704 bytes: a longer id would fail every write
#: there, on every retry. 255 characters of UTF-8 are at most 1,020 bytes.
MAX_ID_LENGTH = 255
#: An id (of an order, a user, a product): text of at most :data:`MAX_ID_LENGTH` characters.
Id = Annotated[str, Field(max_length=MAX_ID_LENGTH)]
#: The highest price and initial stock of a product (the Product service's commands take no more):
#: an order's total then fits in 64 bits however many lines and units it has. A ``ProductCreated``
#: forged with a price of 2^63 - 1 made the next order's total overflow what Inventory can read.
MAX_PRICE_CENTS = 100_000_000
MAX_STOCK = 1_000_000


class Event(BaseModel):
    """Base of all events: frozen, strict about unknown fields, versioned.

    ``schema_version`` is the shape this code writes (stored with each event, sent as the
    ``ce_dataschemaversion`` header); a class still reads every version from
    ``first_schema_version`` on (see :func:`readable_versions`), so events stored by an older
    eventlab load and fold unchanged. Fields are only ever added, with a default, so an older
    version's data validates as the newer class.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    aggregate_type: ClassVar[str]
    id_field: ClassVar[str]
    topic: ClassVar[str]
    schema_version: ClassVar[int] = 1
    first_schema_version: ClassVar[int] = 1

    @property
    def aggregate_id(self) -> str:
        """The id of the stream this event belongs to."""
        return str(getattr(self, self.id_field))

    @property
    def event_type(self) -> str:
        """The registered type name (the class name)."""
        return type(self).__name__


class OrderLine(BaseModel):
    """One line of an order, priced from the catalogue when the order was placed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Id
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)

    @property
    def amount_cents(self) -> int:
        return self.quantity * self.unit_price_cents


_Lines = TypeVar("_Lines", bound=tuple[Any, ...])


def distinct_products(lines: _Lines) -> _Lines:
    """``lines`` unchanged, or ValueError naming a product on two of them: stock is checked line by
    line, so two lines of one product could each take what is left.

    Example:
        >>> distinct_products((OrderLine(product_id="P1", quantity=1, unit_price_cents=5),) * 2)
        Traceback (most recent call last):
        ...
        ValueError: product P1 appears twice; put the quantity on one line
    """
    seen: set[str] = set()
    for line in lines:
        if line.product_id in seen:
            raise ValueError(f"product {line.product_id} appears twice; put the quantity on one line")
        seen.add(line.product_id)
    return lines


#: An order's lines: one per product.
Lines = Annotated[tuple[OrderLine, ...], AfterValidator(distinct_products)]


class _UserEvent(Event):
    aggregate_type: ClassVar[str] = "user"
    id_field: ClassVar[str] = "user_id"


class UserCreated(_UserEvent):
    """A customer registered."""

    topic: ClassVar[str] = "user.profile.created"
    user_id: Id
    name: str
    email: str


class ProductCreated(Event):
    """A product entered the catalogue with a price and its initial stock."""

    aggregate_type: ClassVar[str] = "product"
    id_field: ClassVar[str] = "product_id"
    topic: ClassVar[str] = "product.catalog.created"
    product_id: Id
    name: str
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS)
    initial_stock: int = Field(ge=0, le=MAX_STOCK)


class _ByOrder(Event):
    """An event of a stream keyed by the order it is about (the order's own, its reservation,
    payment and emails)."""

    id_field: ClassVar[str] = "order_id"
    order_id: Id


class _OrderEvent(_ByOrder):
    """An event of an order's own stream. It carries the customer's ``email`` (event-carried state,
    from Order's copy of the customer) so that Notification mails without ever reading the users:
    topics are not ordered with each other, so a copy of its own could still lack the address
    when the order's events arrive.

    Schema version 2 added ``email``: version 1 (stored before it was carried) still loads, with
    ``email`` None. The version tells the shapes apart: a consumer that knows only version 1
    (``extra="forbid"``) refuses version 2 with the version in the message's headers."""

    aggregate_type: ClassVar[str] = "order"
    schema_version: ClassVar[int] = 2
    user_id: Id
    email: str | None = None


class OrderCreated(_OrderEvent):
    """An order was placed; the saga starts."""

    topic: ClassVar[str] = "order.lifecycle.created"
    lines: Lines
    total_cents: int = Field(ge=0)


class OrderConfirmed(_OrderEvent):
    """Every line is reserved; the order waits for payment."""

    topic: ClassVar[str] = "order.lifecycle.confirmed"
    total_cents: int = Field(ge=0)


#: ``timeout``: a saga step missed its deadline (see :mod:`eventlab.services.deadlines`).
CancelReason = Literal["out_of_stock", "payment_failed", "timeout"]


class OrderCancelled(_OrderEvent):
    """The saga failed; ``reason`` is a code, ``detail`` says what happened.

    It carries the lines so Inventory can release them without asking anyone.
    """

    topic: ClassVar[str] = "order.lifecycle.cancelled"
    reason: CancelReason
    detail: str
    lines: Lines


class OrderCompleted(_OrderEvent):
    """Paid for and done; reserved stock is now sold."""

    topic: ClassVar[str] = "order.lifecycle.completed"
    total_cents: int = Field(ge=0)
    lines: Lines


class CustomerRecorded(Event):
    """Order heard of a registered customer (its own copy of ``UserCreated``): orders name known
    users, and their events carry the customer's ``email`` on to Notification."""

    aggregate_type: ClassVar[str] = "order_customer"
    id_field: ClassVar[str] = "user_id"
    topic: ClassVar[str] = "order.customer.recorded"
    user_id: Id
    email: str


class PriceRecorded(Event):
    """Order heard of a product's price (its own copy of ``ProductCreated``: orders are priced from it)."""

    aggregate_type: ClassVar[str] = "order_price"
    id_field: ClassVar[str] = "product_id"
    topic: ClassVar[str] = "order.price.recorded"
    product_id: Id
    price_cents: int = Field(ge=0)


class _StockEvent(Event):
    aggregate_type: ClassVar[str] = "stock"
    id_field: ClassVar[str] = "product_id"
    product_id: Id
    quantity: int = Field(gt=0)


class StockAdded(_StockEvent):
    """Units of a product arrived in the warehouse."""

    topic: ClassVar[str] = "inventory.stock.added"


class _OrderStockEvent(_StockEvent):
    """Stock of one product moved for one order line."""

    order_id: Id


class StockReserved(_OrderStockEvent):
    """Units of one product were set aside for one order line."""

    topic: ClassVar[str] = "inventory.stock.reserved"


class StockReleased(_OrderStockEvent):
    """Reserved units went back on the shelf (compensation)."""

    topic: ClassVar[str] = "inventory.stock.released"


class StockSold(_OrderStockEvent):
    """Reserved units left with a completed order."""

    topic: ClassVar[str] = "inventory.stock.sold"


class _ReservationEvent(_ByOrder):
    aggregate_type: ClassVar[str] = "reservation"


class ReservationConfirmed(_ReservationEvent):
    """Inventory's answer to an order: every line is reserved."""

    topic: ClassVar[str] = "inventory.reservation.confirmed"
    lines: Lines


class ReservationRejected(_ReservationEvent):
    """Inventory's answer to an order: nothing reserved, because ``product_id`` is short."""

    topic: ClassVar[str] = "inventory.reservation.rejected"
    product_id: Id
    requested: int
    available: int


class _PaymentEvent(_ByOrder):
    aggregate_type: ClassVar[str] = "payment"


class PaymentCompleted(_PaymentEvent):
    """The gateway answered; ``status`` says whether money moved."""

    topic: ClassVar[str] = "payment.transaction.completed"
    amount_cents: int = Field(ge=0)
    status: Literal["COMPLETED", "FAILED"]
    reason: str = ""


class ReservationVoided(_ReservationEvent):
    """Inventory heard the order was cancelled before it reserved anything: it never will."""

    topic: ClassVar[str] = "inventory.reservation.voided"


class PaymentVoided(_PaymentEvent):
    """The order was cancelled before it was charged: it never will be."""

    topic: ClassVar[str] = "payment.transaction.voided"


class PaymentRefunded(_PaymentEvent):
    """Money taken for an order that was cancelled went back to the customer (compensation)."""

    topic: ClassVar[str] = "payment.transaction.refunded"
    amount_cents: int = Field(ge=0)


EmailKind = Literal["order_confirmed", "order_completed", "order_cancelled"]


class _EmailEvent(_ByOrder):
    aggregate_type: ClassVar[str] = "notification"
    kind: EmailKind
    to: str


class EmailRequested(_EmailEvent):
    """An email about an order should go out."""

    topic: ClassVar[str] = "notification.email.requested"
    subject: str


class EmailSent(_EmailEvent):
    """The mailer accepted the email."""

    topic: ClassVar[str] = "notification.email.sent"


def readable_versions(cls: type[Event]) -> range:
    """The schema versions of ``cls`` this code reads: from its first to the one it writes.

    Example:
        >>> list(readable_versions(OrderCreated)), list(readable_versions(UserCreated))
        ([1, 2], [1])
    """
    return range(cls.first_schema_version, cls.schema_version + 1)


def beyond_64_bits(event: BaseModel) -> list[str]:
    """The integer fields of ``event`` (its lines' too) outside the 64-bit range every reader of the
    log holds (DuckDB's BIGINT, PostgreSQL's bigint): Python reads any size, the projections would not.

    Example:
        >>> beyond_64_bits(StockAdded(product_id="P1", quantity=10**20)), beyond_64_bits(StockAdded(product_id="P1", quantity=1))
        (['quantity'], [])
    """
    return [path for path, value in fields(event) if isinstance(value, int) and not -(2**63) <= value < 2**63]


def fields(event: BaseModel) -> Iterator[tuple[str, object]]:
    """Each field of ``event`` as (its path, its value), its lines' fields too (``lines.0.quantity``).

    Example:
        >>> list(fields(ReservationConfirmed(order_id="O1", lines=(OrderLine(product_id="P1", quantity=2, unit_price_cents=5),))))
        [('order_id', 'O1'), ('lines.0.product_id', 'P1'), ('lines.0.quantity', 2), ('lines.0.unit_price_cents', 5)]
    """
    for name, value in event.__dict__.items():
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from ((f"{name}.{i}.{path}", leaf) for path, leaf in fields(item))
                else:
                    yield f"{name}.{i}", item
        else:
            yield name, value


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        UserCreated,
        ProductCreated,
        OrderCreated,
        OrderConfirmed,
        OrderCancelled,
        OrderCompleted,
        StockAdded,
        StockReserved,
        StockReleased,
        StockSold,
        ReservationConfirmed,
        ReservationRejected,
        PaymentCompleted,
        EmailRequested,
        EmailSent,
        ReservationVoided,
        PaymentVoided,
        PaymentRefunded,
        CustomerRecorded,
        PriceRecorded,
    )
}

#: Every topic an event is published to, in registry order.
TOPICS: tuple[str, ...] = tuple(dict.fromkeys(cls.topic for cls in EVENT_TYPES.values()))

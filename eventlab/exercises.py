"""Checks for the notebooks' "your turn" exercises.

Each notebook ends with one or two exercises: a cell holding a placeholder (``answer = None``)
for the attendee to replace, then a cell calling one check from this module. A check

- given the placeholder (``None`` or ``...``) prints ``not yet — <hint>`` and returns, so a
  notebook committed with its placeholders still runs to the end (CI runs it that way);
- given a wrong answer raises :class:`WrongAnswer` (an ``AssertionError``) saying what is wrong;
- given a right answer prints ``✓ <what it proves>``.

The checks read the shop through its public API (``shop.order``, the event store, Kafka,
:class:`~eventlab.projections.Projections`, :func:`~eventlab.projections.audit`) and fold with the
services' own ``evolve`` functions, so they judge the answer against the shop itself. The worked
answers are in ``notebooks/solutions/``.

Example:
    >>> check_first_order(None, None)
    not yet — place an order for U002 (one P002, one P005), wait for it, and set the answer to its order id
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from eventlab.adapters.mailer import MAILBOX
from eventlab.application import OrderView, money
from eventlab.errors import ConcurrencyError, EventlabError, NotFound
from eventlab.services import order
from eventlab.store.base import StoredEvent

if TYPE_CHECKING:  # pragma: no cover
    from eventlab.projections import Projections
    from eventlab.shop import Shop
    from eventlab.tracing.waterfall import SpanRecord
    from eventlab.workshop import Record

__all__ = [
    "WrongAnswer",
    "check_cancelled_for_stock",
    "check_compensation_cause",
    "check_conflict",
    "check_first_order",
    "check_fold",
    "check_lost_revenue_query",
    "check_order_message",
    "check_outage_nothing_lost",
    "check_payment_parent",
    "check_stock_when_declined",
]

_LOST_REVENUE_COLUMNS = ("cancel_reason", "orders", "lost_cents")
T = TypeVar("T")


class WrongAnswer(EventlabError, AssertionError):
    """An exercise's answer is wrong; the message says what and how to look again.

    An ``AssertionError``, so a notebook run (nbval, nbclient) or a test reports it as a failed check.
    """


def _not_yet(answer: object, hint: str) -> bool:
    """Print the hint and return True while ``answer`` is still the placeholder."""
    if answer is None or answer is Ellipsis:
        print(f"not yet — {hint}")
        return True
    return False


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise WrongAnswer(message)


def _answer(answer: object, kind: type[T], what: str) -> T:
    """``answer`` if it is a ``kind``; else a wrong answer saying it should be ``what``."""
    if not isinstance(answer, kind):
        raise WrongAnswer(f"the answer should be {what}, not {type(answer).__name__}")
    return answer


def _passed(message: str) -> None:
    print(f"✓ {message}")


def _order(shop: Shop, order_id: object) -> OrderView:
    """The order ``order_id`` names, or a wrong answer saying why there is none."""
    if not isinstance(order_id, str):
        raise WrongAnswer(f"the answer should be an order id (a str like 'order-001'), not {order_id!r}")
    try:
        return shop.order(order_id)
    except NotFound:
        raise WrongAnswer(
            f"there is no order {order_id!r} in the store: use the id that place_order (or run_order(...).order_id) "
            "returned"
        ) from None


def _ended(view: OrderView) -> None:
    _expect(
        view.terminal,
        f"{view.order_id} is still {view.status}: its saga has not ended yet — wait for it with "
        f"shop.wait({view.order_id!r}) (or place it with run_order, which waits)",
    )


def _lines(view: OrderView) -> dict[str, int]:
    return {line.product_id: line.quantity for line in view.lines}


# --- 01 · Quickstart ----------------------------------------------------------------------------


def check_first_order(shop: Shop, order_id: str | None) -> None:
    """Notebook 01: an order of your own — U002 buys one P002 and one P005 — placed and completed."""
    if _not_yet(
        order_id, "place an order for U002 (one P002, one P005), wait for it, and set the answer to its order id"
    ):
        return
    view = _order(shop, order_id)
    _expect(view.user_id == "U002", f"{view.order_id} was placed by {view.user_id}; place one for customer U002")
    wanted = {"P002": 1, "P005": 1}
    _expect(
        _lines(view) == wanted,
        f"{view.order_id} has the lines {_lines(view)}; the task asks for {wanted}: "
        'shop.place_order("U002", {"P002": 1, "P005": 1})',
    )
    _ended(view)
    _expect(view.status == "completed", f"{view.order_id} was cancelled ({view.reason}); place it again")
    _passed(
        f"{view.order_id} completed: {len(view.lines)} lines, total {money(view.total_cents)}, "
        f"{len(view.events)} events in its saga"
    )


# --- 02 · Event sourcing ------------------------------------------------------------------------


def check_fold(shop: Shop, order_id: str, state: order.Order | None) -> None:
    """Notebook 02: the state of ``order_id`` folded from its stream with ``order.evolve``."""
    if _not_yet(state, f'fold the events of shop.store.read_stream("order", "{order_id}") with order.evolve'):
        return
    state = _answer(
        state,
        order.Order,
        "the state order.evolve returns (an eventlab.services.order.Order; fold the stored events' .event, "
        "starting from None)",
    )
    _expect(state.order_id == order_id, f"that is the state of {state.order_id}; fold the stream of {order_id}")
    stream = shop.store.read_stream("order", order_id)
    states: list[order.Order | None] = []  # the state after each version
    for stored in stream:
        states.append(order.evolve(states[-1] if states else None, stored.event))
    expected = states[-1] if states else None
    if expected is None:
        raise NotFound("order_id", f"unknown order {order_id}")
    if state != expected:
        fields = [
            f
            for f in ("status", "reason", "total_cents", "lines", "user_id")
            if getattr(state, f) != getattr(expected, f)
        ]
        early = (
            f" — that is its state as of version {states.index(state) + 1} of {len(stream)}: fold every event"
            if state in states
            else ""
        )
        raise WrongAnswer(f"your state differs in {', '.join(fields)} (status {state.status!r}){early}")
    _passed(
        f"{order_id} is {expected.status}{f' ({expected.reason})' if expected.reason else ''}: "
        f"{len(stream)} events folded, the same state the Order service computes"
    )


def check_conflict(shop: Shop, error: BaseException | None) -> None:
    """Notebook 02: a ``ConcurrencyError`` provoked by appending at a version already taken."""
    hint = (
        "append a StockAdded for P005 at a version its stream already has (shop.store.read_stream('stock', 'P005')), "
        "catch the ConcurrencyError and keep it as the answer (if the append went through, the version was free)"
    )
    if _not_yet(error, hint):
        return
    _expect(
        not isinstance(error, StoredEvent | list),
        "that is what a successful append returns: the version you chose was free. Choose one already in the stream",
    )
    error = _answer(error, BaseException, "the error you caught (except ConcurrencyError as error)")
    _expect(
        isinstance(error, ConcurrencyError),
        f"that is a {type(error).__name__} ({error}), not a ConcurrencyError: build a NewEvent(StockAdded(...), version) "
        "with a version the stream already has and append it",
    )
    version = shop.store.read_stream("stock", "P005")[-1].version
    _passed(
        f"{type(error).__name__}: the store refused an event at a version already taken; stock:P005 still ends at "
        f"version {version} — a rejected append writes nothing"
    )


# --- 03 · The order saga ------------------------------------------------------------------------


def check_cancelled_for_stock(shop: Shop, order_id: str | None) -> None:
    """Notebook 03: an order the saga cancelled because Inventory could not reserve it."""
    if _not_yet(order_id, "place an order for more units than Inventory has, wait for it, set the answer to its id"):
        return
    view = _order(shop, order_id)
    _ended(view)
    _expect(
        view.status == "cancelled",
        f"{view.order_id} completed: Inventory had enough of {_lines(view)}. Ask for more than in stock "
        "(the inventory of a product: load(shop.store, ('stock', 'P004'), inventory.evolve_stock).state)",
    )
    _expect(
        view.reason == "out_of_stock",
        f"{view.order_id} was cancelled, but because of {view.reason}, not lack of stock: ask for more units than "
        "Inventory has (and keep the gateway up)",
    )
    rejected = next(e for e in view.events if e.event_type == "ReservationRejected")
    _passed(
        f"{view.order_id} cancelled (out_of_stock): {rejected.data['product_id']}: {rejected.data['requested']} "
        f"requested, {rejected.data['available']} available — nothing was reserved, so nothing to compensate"
    )


def check_compensation_cause(shop: Shop, order_id: str, cause: StoredEvent | str | None) -> None:
    """Notebook 03: the stored event that made Inventory release ``order_id``'s stock."""
    hint = (
        f"find the StockReleased among shop.order({order_id!r}).events, then the event whose event_id is its "
        "metadata['causation_id']"
    )
    if _not_yet(cause, hint):
        return
    events = shop.order(order_id).events
    released = [e for e in events if e.event_type == "StockReleased"]
    _expect(bool(released), f"{order_id} released no stock: the exercise needs the declined order")
    by_id = {e.event_id: e for e in events}
    expected = by_id[released[0].metadata["causation_id"]]
    if isinstance(cause, StoredEvent):
        answer: StoredEvent | None = cause
    elif isinstance(cause, str):
        answer = by_id.get(cause)
    else:
        raise WrongAnswer(f"the answer should be a StoredEvent (or its event_id), not {type(cause).__name__}")
    if answer is None:
        raise WrongAnswer(f"{cause!r} is not the id of an event of {order_id}'s saga")
    if answer.event_id != expected.event_id:
        if answer.event_type == "StockReleased":
            raise WrongAnswer(
                "that is the compensation itself; which event caused it? follow its metadata['causation_id']"
            )
        caused = [e.event_type for e in events if e.metadata.get("causation_id") == answer.event_id]
        what = f"it caused {', '.join(caused)}" if caused else "it caused nothing in this saga"
        raise WrongAnswer(
            f"that is {answer.event_type} (written by {answer.metadata.get('source', '?')}); {what}, not the "
            "StockReleased: follow the StockReleased's metadata['causation_id']"
        )
    _passed(
        f"{expected.event_type} ({expected.data.get('reason', '')}) by {expected.metadata.get('source')} caused "
        "StockReleased: Inventory compensates by reacting to the cancellation — nobody calls it"
    )


# --- 04 · Kafka underneath ----------------------------------------------------------------------


def check_order_message(shop: Shop, order_id: str | None, record: Record | None) -> None:
    """Notebook 04: the ``OrderCreated`` message of ``order_id``, read back from Kafka."""
    from confluent_kafka import TopicPartition

    from eventlab.kafka.clients import make_consumer
    from eventlab.workshop import Record

    if _not_yet(order_id, "place an order with run_order(...) and keep its order id"):
        return
    if _not_yet(record, f"read order.lifecycle.created with read_topic(...) and keep the record keyed {order_id!r}"):
        return
    view = _order(shop, order_id)
    record = _answer(record, Record, "a Record from read_topic")
    _expect(record.key == order_id, f"that message is keyed {record.key!r}; find the one keyed {order_id!r}")
    kind = record.headers.get("ce_type")
    _expect(
        record.topic == "order.lifecycle.created" and kind == "OrderCreated",
        f"that is a {kind} from {record.topic}: {order_id}'s OrderCreated travels on order.lifecycle.created",
    )
    created = next(e for e in view.events if e.event_type == "OrderCreated")
    _expect(
        record.headers.get("ce_id") == created.event_id,
        f"its ce_id {record.headers.get('ce_id')} is not the event id of {order_id}'s OrderCreated in the store",
    )
    consumer = make_consumer(shop.kafka_settings, "exercises", **{"enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(record.topic, record.partition, record.offset)])
        message = consumer.poll(10)
    finally:
        consumer.close()
    on_kafka = message is not None and not message.error() and message.value() == record.value
    _expect(
        on_kafka,
        f"Kafka has no such message at offset {record.offset} of partition {record.partition}: read it with read_topic",
    )
    _passed(
        f"{order_id}'s OrderCreated is at offset {record.offset} of partition {record.partition} of {record.topic}: "
        f"the key picks the partition, so every message keyed {order_id}, on every topic, is in partition "
        f"{record.partition}"
    )


# --- 05 · Projections ---------------------------------------------------------------------------


def check_lost_revenue_query(projections: Projections, query: str | None) -> None:
    """Notebook 05: SQL giving, per cancellation reason, the orders and the money lost, biggest first."""
    hint = (
        "write a SELECT over orders with the columns cancel_reason, orders and lost_cents (the sum of total_cents of "
        "cancelled orders), one row per reason, biggest loss first"
    )
    if _not_yet(query, hint):
        return
    query = _answer(query, str, "the SQL text (a str)")
    try:
        result = projections.sql(query)
    except EventlabError as exc:
        raise WrongAnswer(f"the query did not run: {exc}") from None
    missing = [c for c in _LOST_REVENUE_COLUMNS if c not in result.columns]
    _expect(
        not missing, f"missing column(s) {', '.join(missing)} (you have {', '.join(result.columns)}): name them with AS"
    )
    rows = [tuple(row) for row in result.select(", ".join(_LOST_REVENUE_COLUMNS)).fetchall()]
    cancelled = projections.pl("orders").filter(status="cancelled")
    lost: dict[str, list[int]] = {}
    for reason, total in cancelled.select("cancel_reason", "total_cents").iter_rows():
        lost.setdefault(reason, []).append(total)
    expected = sorted(((r, len(t), sum(t)) for r, t in lost.items()), key=lambda row: (-row[2], row[0]))
    _expect(
        len(rows) == len(expected),
        f"{len(rows)} rows, expected {len(expected)} (one per cancel_reason of the cancelled orders): "
        "keep only status = 'cancelled' and GROUP BY cancel_reason",
    )
    by_reason = {row[0]: row for row in rows}
    for reason, count, cents in expected:
        _expect(reason in by_reason, f"no row for cancel_reason {reason!r}")
        _, got_count, got_cents = by_reason[reason]
        _expect(got_count == count, f"{reason}: orders is {got_count}, expected {count}: count(*) per reason")
        _expect(
            got_cents == cents,
            f"{reason}: lost_cents is {got_cents}, expected {cents}: sum(total_cents) of the cancelled orders",
        )
    _expect(
        [row[0] for row in rows] == [row[0] for row in expected],
        "the rows are right but not biggest loss first: ORDER BY lost_cents DESC",
    )
    _passed(
        "lost to cancellations: "
        + ", ".join(f"{reason} {count} orders, {money(cents)}" for reason, count, cents in expected)
    )


# --- 06 · Time travel ---------------------------------------------------------------------------


def _stock_numbers(answer: object) -> tuple[int, ...] | None:
    """(available, reserved, sold) from a mapping, a Stock-like object or a 3-tuple; None if none of those."""
    names = ("available", "reserved", "sold")
    if isinstance(answer, Mapping) and all(n in answer for n in names):
        values: Iterable[Any] = [answer[n] for n in names]
    elif all(hasattr(answer, n) for n in names):
        values = [getattr(answer, n) for n in names]
    elif isinstance(answer, tuple | list) and len(answer) == 3:
        values = answer
    else:
        return None
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        return None


def check_stock_when_declined(shop: Shop, projections: Projections, order_id: str, product_id: str, stock: Any) -> None:
    """Notebook 06: ``product_id``'s stock as of the position where ``order_id``'s payment was declined."""
    hint = (
        f"find the position of {order_id}'s PaymentCompleted, then {product_id}'s available, reserved and sold in "
        "projections.as_of(position=...).pl('inventory')"
    )
    if _not_yet(stock, hint):
        return
    numbers = _stock_numbers(stock)
    _expect(
        numbers is not None,
        f"the answer should hold available, reserved and sold (a dict, a row, or a 3-tuple), not {stock!r}",
    )
    declined = next(e for e in shop.order(order_id).events if e.event_type == "PaymentCompleted")

    def as_of(position: int) -> tuple[int, ...]:
        frame = projections.as_of(position=position).pl("inventory").filter(product_id=product_id)
        return tuple(frame.select("available", "reserved", "sold").row(0))

    expected = as_of(declined.position)
    if numbers != expected:
        now = as_of(projections.checkpoint)
        if numbers == now:
            raise WrongAnswer(
                f"that is {product_id} now, after the compensation released the stock; as of position "
                f"{declined.position} (the PaymentCompleted) the units were still reserved"
            )
        raise WrongAnswer(
            f"(available, reserved, sold) = {numbers}, but as of the PaymentCompleted of {order_id} it was different: "
            "use as_of(position=...) with that event's position"
        )
    _passed(
        f"as of position {declined.position}, {product_id} had {expected[0]} available, {expected[1]} reserved, "
        f"{expected[2]} sold: the payment had failed but the stock was not yet released"
    )


# --- 07 · Failure lab ---------------------------------------------------------------------------


def check_outage_nothing_lost(shop: Shop, order_ids: Iterable[str] | None) -> None:
    """Notebook 07: orders placed while the gateway was down, and proof that nothing was lost."""
    from eventlab.projections import audit
    from eventlab.workshop import nothing_lost

    hint = (
        "take the gateway down (panel.outage.value = True), place orders with run_order, bring it back up, "
        "and set the answer to the list of their ids"
    )
    if _not_yet(order_ids, hint):
        return
    if isinstance(order_ids, str) or not isinstance(order_ids, Iterable):
        raise WrongAnswer(f"the answer should be a list of order ids, not {order_ids!r}")
    views = [_order(shop, order_id) for order_id in order_ids]
    _expect(bool(views), "the list is empty: place at least one order while the gateway is down")
    for view in views:
        _ended(view)
    hit = [
        v.order_id
        for v in views
        if any(
            e.event_type == "PaymentCompleted" and e.data["status"] == "FAILED" and e.data["reason"] != "card declined"
            for e in v.events
        )
    ]
    _expect(
        bool(hit),
        "none of these orders met a broken gateway: set panel.outage.value = True (or "
        "shop.gateway.available.clear()) before placing them",
    )
    _expect(
        shop.gateway.available.is_set(),
        "the gateway is still down: bring it back (panel.outage.value = False) — later orders would all fail",
    )
    checks = nothing_lost(shop, [v.order_id for v in views])
    failed = [name for name, ok in checks.items() if not ok]
    _expect(not failed, f"something was lost or applied twice: {', '.join(failed)} failed ({checks})")
    report = audit(shop.stores, mailbox=shop.settings.data_dir / MAILBOX)
    broken = [name for name, result in report.items() if not result.ok]
    _expect(report.ok, f"the invariant audit fails: {', '.join(broken)}\n{report.table()}")
    _passed(
        f"{len(hit)} of {len(views)} orders met the outage and were cancelled with their stock released; "
        f"{', '.join(checks)} and the audit all hold"
    )


# --- 08 · Tracing ------------------------------------------------------------------------------


def check_payment_parent(spans: Sequence[SpanRecord], parent: SpanRecord | None) -> None:
    """The parent of Payment's handler span is the relay's span that published the message it handled."""
    hint = (
        "find Payment's CONSUMER span among spans, then the span whose span_id is its parent_id "
        "(a SpanRecord; the structure table shows which it is)"
    )
    if _not_yet(parent, hint):
        return
    from eventlab.tracing.waterfall import SpanRecord

    found = _answer(parent, SpanRecord, "a SpanRecord, one of spans")
    payment = next((s for s in spans if s.service == "payment" and s.kind == "CONSUMER"), None)
    _expect(payment is not None, "these spans have no Payment handler span: use the spans of a completed order")
    assert payment is not None
    _expect(
        found.span_id == payment.parent_id,
        f"{found.service}'s {found.name!r} is not the parent of Payment's {payment.name!r}: its parent_id is "
        f"{payment.parent_id}",
    )
    _passed(
        f"{found.service}'s {found.name!r} ({found.kind}) is the parent: Payment's handler continues the trace "
        "from the traceparent header the relay put on the message"
    )

"""The shop's invariants as SQL over the projections: each check is a query listing its violations.

One check needs Python: ``event_data_valid`` validates every stored event's data against its
class (pydantic), reading the raw rows in batches; the others are SQL. Before any check, the
store's schema is checked as opening a store checks it, so a broken or newer store is refused
with the same :class:`~eventlab.errors.StoreError` instead of passing an audit of what is left.

Over several stores (a service with a store of its own) the checks read the merged log (see
:class:`~eventlab.projections.Projections`): the saga's facts span stores, so most checks run
unchanged over it. The checks about stores themselves run per store, naming it (each store has
its own relay and its own positions): ``all_events_published``, ``relay_checkpoint_within_log``,
``known_event_types``, ``known_schema_versions`` and ``event_data_valid`` (their ``split_sql``).

Cross-service facts take a moment to become true (Inventory releases stock a few milliseconds
after Order cancels), so checks about what *should follow* only look at what is older than a
grace period; anything younger is in flight. Checks about what must *never* happen (negative
stock, a second charge) look at everything.

Example:
    >>> report = audit(store_path)
    >>> report["no_double_charge"].ok, report["no_double_charge"].violations
    (True, ())
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eventlab.adapters.mailer import MAILBOX, email_key
from eventlab.errors import StoreError
from eventlab.events import EVENT_TYPES, beyond_64_bits, readable_versions
from eventlab.projections.engine import Projections, Source
from eventlab.projections.sources import store_location
from eventlab.services.deadlines import Deadlines
from eventlab.store import ShopStores, SqliteEventStore
from eventlab.store.base import RELAY_CONSUMER, EventStore
from eventlab.store.sqlite import check_schema, is_file, verify_event_store
from eventlab.tables import Html, html_table

__all__ = [
    "CHECKS",
    "MAILBOX_CHECKS",
    "NO_MAILBOX",
    "AuditReport",
    "Check",
    "CheckResult",
    "MailboxCheck",
    "audit",
    "jsonable",
    "read_mailbox",
]


@dataclass(frozen=True)
class Check:
    """One invariant: a ``SELECT`` returning one row per violation (none when it holds).

    The query may use ``$now``, ``$cutoff`` (now minus the grace period), ``$relay`` (the relay's
    checkpoint), ``$relay_before`` (that checkpoint read before the projections caught up),
    ``$head`` (the last position audited), ``$known_types`` and ``$known_versions`` (every event
    type this code defines and its schema version) or ``$known_events`` (the same as
    ``Type:version`` texts), and reads the projections' relations and the raw ``store.*`` tables.
    A check that SQL cannot express gives ``find`` instead: a function of the projections and
    those values returning the violations.

    ``split_sql``, when given, replaces ``sql`` over several stores, where ``$stores``, ``$heads``,
    ``$relays`` and ``$relays_before`` list each store's name, last audited position and relay
    checkpoints (in the same order), ``events`` has ``store`` and ``store_position``, and the raw
    ``store.*`` tables a ``store`` column.

    Example:
        >>> CHECKS[0].name
        'orders_terminal'
    """

    name: str
    description: str
    sql: str = ""
    find: Callable[[Projections, Mapping[str, Any]], list[dict[str, Any]]] | None = None
    split_sql: str = ""


#: The first positions listed in a violation that concerns many events.
_POSITIONS_SHOWN = 20
#: Rows validated per batch by :func:`_invalid_event_data`.
_BATCH = 10_000
#: Each store with its last audited position (``head``) and relay checkpoints, over several stores.
_STORES = (
    "(SELECT unnest($stores) AS store, unnest($heads) AS head, unnest($relays) AS relay,"
    " unnest($relays_before) AS relay_before)"
)
#: A raw row of a split shop's ``store.*`` table that was audited (its store's head bounds it).
_AUDITED = "position <= $heads[list_position($stores, store)]"


#: Whether a document repeats a key, at its top or in a line: the services (pydantic) take the last
#: value, the projections (DuckDB) the first, so the two would disagree on what the event says.
_REPEATS_A_KEY = (
    "CASE WHEN json_valid(data) AND json_type(data) = 'OBJECT'"
    " THEN len(json_keys(data)) <> len(list_distinct(json_keys(data)))"
    " OR coalesce(list_bool_or([len(k) <> len(list_distinct(k)) FOR k IN json_keys(data, '$.lines[*]')]), false)"
    " ELSE false END"
)


def _invalid_event_data(source: Projections, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every event of a known type and schema version whose data its class rejects, that the services
    and the projections would read differently (a repeated key, an integer beyond 64 bits), or whose
    row names another stream than its data: one pass over the raw rows in batches, each validated by
    pydantic."""
    known = "list_contains($known_events, event_type || ':' || schema_version)"
    columns = f"position, event_type, aggregate_type, aggregate_id, data, {_REPEATS_A_KEY} AS repeats"
    if source.split:  # each store's rows, named by store and position there
        relation = source.sql(
            f"SELECT store, {columns} FROM store.events WHERE {_AUDITED} AND {known}",
            {name: values[name] for name in ("stores", "heads", "known_events")},
        )
    else:
        relation = source.sql(
            f"SELECT NULL AS store, {columns} FROM store.events WHERE position <= $head AND {known}",
            {"head": values["head"], "known_events": values["known_events"]},
        )
    violations = []
    while batch := relation.fetchmany(_BATCH):
        for store, position, event_type, aggregate_type, aggregate_id, data, repeats in batch:
            cls = EVENT_TYPES[event_type]
            try:
                event = cls.model_validate_json(data, strict=True)
            except ValidationError as exc:
                problem = "; ".join(
                    f"{'.'.join(map(str, error['loc'])) or 'data'}: {error['msg']}" for error in exc.errors()[:3]
                )
            else:
                if repeats:
                    problem = "data repeats a key: the services read its last value, the projections its first"
                elif too_large := beyond_64_bits(event):
                    problem = f"{', '.join(too_large)}: beyond 64-bit integers, which the projections hold"
                elif (aggregate_type, aggregate_id) == (event.aggregate_type, event.aggregate_id):
                    continue
                else:
                    problem = (
                        f"stored in stream {aggregate_type}:{aggregate_id} but its data belongs to "
                        f"{event.aggregate_type}:{event.aggregate_id}"
                    )
            where = {"position": position} if store is None else {"store": store, "position": position}
            violations.append({**where, "event_type": event_type, "problem": problem})
    return sorted(violations, key=lambda v: (v.get("store", ""), v["position"]))


#: Emails sent (``EmailSent``) whose order, kind and address no stored ``EmailRequested`` names,
#: read from the raw events (the ``events`` relation has no address); ``{bound}``: the audited rows.
_SENT_AS_REQUESTED = """
    WITH emails AS (
        SELECT event_type, position,
               json_extract_string(data, '$.order_id') AS order_id,
               json_extract_string(data, '$.kind') AS kind,
               json_extract_string(data, '$.to') AS sent_to
        FROM store.events
        WHERE event_type IN ('EmailRequested', 'EmailSent') AND {bound}
    )
    SELECT s.order_id, s.kind, s.sent_to, s.position,
           list(DISTINCT r.sent_to) FILTER (r.sent_to IS NOT NULL) AS requested_for
    FROM emails AS s
    LEFT JOIN emails AS r ON r.event_type = 'EmailRequested' AND r.order_id = s.order_id AND r.kind = s.kind
    WHERE s.event_type = 'EmailSent'
    GROUP BY s.order_id, s.kind, s.sent_to, s.position
    HAVING NOT coalesce(list_contains(list(r.sent_to), s.sent_to), false)
    ORDER BY s.order_id, s.position
"""

CHECKS: tuple[Check, ...] = (
    Check(
        "orders_terminal",
        "Every order is completed or cancelled, or has waited at its step (for Inventory since it was "
        "placed, for Payment since it was confirmed) for less than the grace period (a stuck order "
        "shows what it waits for, and since when).",
        """
        SELECT order_id, status, created_at,
               round(date_diff('millisecond', created_at, $now) / 1000, 3) AS age_s,
               CASE status WHEN 'created' THEN 'Inventory''s reservation (OrderCreated not answered)'
                           ELSE 'Payment''s answer (OrderConfirmed not answered)' END AS waiting_for,
               coalesce(confirmed_at, created_at) AS last_step_at,
               round(date_diff('millisecond', coalesce(confirmed_at, created_at), $now) / 1000, 3) AS step_age_s
        FROM orders
        WHERE status NOT IN ('completed', 'cancelled') AND coalesce(confirmed_at, created_at) <= $cutoff
        ORDER BY created_at, order_id
        """,
    ),
    Check(
        "stock_never_negative",
        "No product's available, reserved or sold stock is below zero at any position of the log.",
        """
        SELECT product_id,
               min(position) AS first_position,
               arg_min(available, position) AS available,
               arg_min(reserved, position) AS reserved,
               arg_min(sold, position) AS sold,
               count(*) AS negative_positions
        FROM inventory_history
        WHERE available < 0 OR reserved < 0 OR sold < 0
        GROUP BY product_id
        ORDER BY product_id
        """,
    ),
    Check(
        "stock_conserved",
        "Every unit is accounted for: per product, initial stock = available + reserved + sold; per "
        "settled order, the units reserved were all sold (completed) or all released (cancelled), "
        "and no order releases or sells more than it reserved.",
        """
        WITH per_order AS (
            SELECT order_id, product_id,
                   coalesce(sum(quantity) FILTER (event_type = 'StockReserved'), 0)::BIGINT AS reserved,
                   coalesce(sum(quantity) FILTER (event_type = 'StockReleased'), 0)::BIGINT AS released,
                   coalesce(sum(quantity) FILTER (event_type = 'StockSold'), 0)::BIGINT AS sold
            FROM events
            WHERE event_type IN ('StockReserved', 'StockReleased', 'StockSold')
            GROUP BY order_id, product_id
        )
        SELECT product_id, NULL AS order_id, NULL AS status,
               'initial stock ' || initial_stock || ' but available + reserved + sold = '
                   || (available + reserved + sold) AS problem
        FROM inventory
        WHERE initial_stock <> available + reserved + sold
          AND (created_at IS NULL OR created_at <= $cutoff)
        UNION ALL
        SELECT p.product_id, p.order_id, o.status,
               'reserved ' || p.reserved || ', released ' || p.released || ', sold ' || p.sold AS problem
        FROM per_order AS p LEFT JOIN orders AS o USING (order_id)
        WHERE p.released + p.sold > p.reserved
           OR (coalesce(o.completed_at, o.cancelled_at) <= $cutoff
               AND NOT (o.status = 'completed' AND p.sold = p.reserved AND p.released = 0
                        OR o.status = 'cancelled' AND p.released = p.reserved AND p.sold = 0))
        ORDER BY product_id, order_id NULLS FIRST
        """,
    ),
    Check(
        "no_double_charge",
        "No order is charged twice: at most one successful PaymentCompleted per order.",
        """
        SELECT order_id,
               count(*) AS charges,
               sum(amount_cents)::BIGINT AS charged_cents,
               list(position ORDER BY position) AS positions
        FROM events
        WHERE event_type = 'PaymentCompleted' AND status = 'COMPLETED'
        GROUP BY order_id
        HAVING count(*) > 1
        ORDER BY order_id
        """,
    ),
    Check(
        "failed_payments_compensated",
        "Every failed payment's order is cancelled and releases exactly the units reserved for it "
        "(before the failure too: a timeout may cancel the order while the gateway still answers).",
        """
        WITH failed AS (
            SELECT order_id, min(position) AS failed_position, min(recorded_at) AS failed_at
            FROM events
            WHERE event_type = 'PaymentCompleted' AND status = 'FAILED'
            GROUP BY order_id
        ), settled AS (
            SELECT * FROM failed WHERE failed_at <= $cutoff
        ), compensation AS (
            SELECT e.order_id, e.event_type, e.product_id, e.quantity
            FROM events AS e JOIN settled AS f USING (order_id)
            WHERE e.event_type IN ('OrderCancelled', 'StockReleased')
        ), reserved AS (
            SELECT order_id, product_id, sum(quantity)::BIGINT AS reserved
            FROM events
            WHERE event_type = 'StockReserved' AND order_id IN (SELECT order_id FROM settled)
            GROUP BY order_id, product_id
        ), released AS (
            SELECT order_id, product_id, sum(quantity)::BIGINT AS released
            FROM compensation
            WHERE event_type = 'StockReleased'
            GROUP BY order_id, product_id
        )
        SELECT f.order_id, f.failed_position, NULL AS product_id, NULL::BIGINT AS reserved,
               NULL::BIGINT AS released, 'the order was not cancelled' AS problem
        FROM settled AS f
        WHERE NOT EXISTS (
            SELECT 1 FROM compensation AS c WHERE c.order_id = f.order_id AND c.event_type = 'OrderCancelled'
        )
        UNION ALL
        SELECT f.order_id, f.failed_position, r.product_id, r.reserved, coalesce(d.released, 0),
               'released ' || coalesce(d.released, 0) || ' of ' || r.reserved || ' reserved units'
        FROM settled AS f
        JOIN reserved AS r USING (order_id)
        LEFT JOIN released AS d USING (order_id, product_id)
        WHERE coalesce(d.released, 0) <> r.reserved
        ORDER BY order_id, product_id NULLS FIRST
        """,
    ),
    Check(
        "all_events_published",
        "The outbox relay has published every stored event (its checkpoint has reached them).",
        """
        SELECT $relay AS relay_checkpoint,
               max(position) AS last_position,
               count(*) AS unpublished,
               min(position) AS first_unpublished,
               min(recorded_at) AS first_unpublished_at
        FROM events
        WHERE position > $relay AND recorded_at <= $cutoff
        HAVING count(*) > 0
        """,
        split_sql=f"""
        SELECT s.store,
               s.relay AS relay_checkpoint,
               max(e.store_position) AS last_position,
               count(*) AS unpublished,
               min(e.store_position) AS first_unpublished,
               min(e.recorded_at) AS first_unpublished_at
        FROM events AS e JOIN {_STORES} AS s USING (store)
        WHERE e.store_position > s.relay AND e.recorded_at <= $cutoff
        GROUP BY s.store, s.relay
        ORDER BY s.store
        """,
    ),
    Check(
        "one_terminal_event_per_order",
        "An order ends once: at most one OrderCompleted or OrderCancelled per order (a second one "
        "would make Inventory sell or release its stock again).",
        """
        SELECT order_id,
               count(*) AS terminal_events,
               list(event_type ORDER BY position) AS event_types,
               list(position ORDER BY position) AS positions
        FROM events
        WHERE event_type IN ('OrderCompleted', 'OrderCancelled')
        GROUP BY order_id
        HAVING count(*) > 1
        ORDER BY order_id
        """,
    ),
    Check(
        "relay_checkpoint_within_log",
        "The outbox relay's checkpoint is not beyond the last stored event (else events appended "
        "later would never be published).",
        """
        SELECT $relay_before AS relay_checkpoint, $head AS last_position
        WHERE $relay_before > $head
        """,
        split_sql=f"""
        SELECT store, relay_before AS relay_checkpoint, head AS last_position
        FROM {_STORES}
        WHERE relay_before > head
        ORDER BY store
        """,
    ),
    Check(
        "known_event_types",
        "Every stored event has a type this code defines (an unknown one cannot be decoded or published).",
        f"""
        SELECT event_type,
               count(*) AS events,
               list(position ORDER BY position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM store.events
        WHERE position <= $head AND NOT list_contains($known_types, event_type)
        GROUP BY event_type
        ORDER BY min(position)
        """,
        split_sql=f"""
        SELECT store,
               event_type,
               count(*) AS events,
               list(position ORDER BY position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM store.events
        WHERE {_AUDITED} AND NOT list_contains($known_types, event_type)
        GROUP BY store, event_type
        ORDER BY store, min(position)
        """,
    ),
    Check(
        "known_schema_versions",
        "Every stored event of a known type has a schema version its class reads (the one it writes or an older one).",
        f"""
        SELECT event_type,
               schema_version,
               $known_versions[list_position($known_types, event_type)] AS declared_version,
               count(*) AS events,
               list(position ORDER BY position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM store.events
        WHERE position <= $head
          AND list_contains($known_types, event_type)
          AND NOT list_contains($known_events, event_type || ':' || schema_version)
        GROUP BY event_type, schema_version
        ORDER BY min(position)
        """,
        split_sql=f"""
        SELECT store,
               event_type,
               schema_version,
               $known_versions[list_position($known_types, event_type)] AS declared_version,
               count(*) AS events,
               list(position ORDER BY position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM store.events
        WHERE {_AUDITED}
          AND list_contains($known_types, event_type)
          AND NOT list_contains($known_events, event_type || ':' || schema_version)
        GROUP BY store, event_type, schema_version
        ORDER BY store, min(position)
        """,
    ),
    Check(
        "event_data_valid",
        "Every stored event's data validates against its class, reads the same to the services and to the "
        "projections (no repeated key, no integer beyond 64 bits), and belongs to the stream it is stored in.",
        find=_invalid_event_data,
    ),
    Check(
        "cancelled_orders_not_charged",
        "No money stays taken for a cancelled order: a successful charge of a cancelled order is "
        "followed by a PaymentRefunded of the same amount.",
        """
        WITH charged AS (
            SELECT order_id, min(position) AS charge_position, sum(amount_cents)::BIGINT AS charged_cents
            FROM events
            WHERE event_type = 'PaymentCompleted' AND status = 'COMPLETED'
            GROUP BY order_id
        ), refunded AS (
            SELECT order_id, sum(amount_cents)::BIGINT AS refunded_cents
            FROM events
            WHERE event_type = 'PaymentRefunded'
            GROUP BY order_id
        )
        SELECT c.order_id, c.charge_position, c.charged_cents, coalesce(r.refunded_cents, 0) AS refunded_cents,
               o.cancel_reason, o.cancelled_at
        FROM charged AS c
        JOIN orders AS o USING (order_id)
        LEFT JOIN refunded AS r USING (order_id)
        WHERE o.status = 'cancelled' AND o.cancelled_at <= $cutoff
          AND coalesce(r.refunded_cents, 0) <> c.charged_cents
        ORDER BY c.order_id
        """,
    ),
    Check(
        "effects_match_outcome",
        "What the services did for a finished order matches how it ended: a completed order is not "
        "refunded and gets no cancellation email, a cancelled one gets no completion email (a terminal "
        "event forged on a topic would make them do so unseen).",
        f"""
        SELECT o.order_id, o.status,
               list(e.event_type || coalesce(' ' || e.kind, '') ORDER BY e.position) AS effects,
               list(e.position ORDER BY e.position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM events AS e JOIN orders AS o USING (order_id)
        WHERE o.status = 'completed'
              AND (e.event_type = 'PaymentRefunded' OR e.event_type = 'EmailRequested' AND e.kind = 'order_cancelled')
           OR o.status = 'cancelled' AND e.event_type = 'EmailRequested' AND e.kind = 'order_completed'
        GROUP BY o.order_id, o.status
        ORDER BY o.order_id
        """,
    ),
    Check(
        "charges_match_order_totals",
        "Every successful charge is of its order's total as placed (an OrderConfirmed forged on a topic "
        "with another total would have Payment charge that instead, unseen).",
        """
        SELECT p.order_id, p.position AS charge_position, p.amount_cents AS charged_cents, o.total_cents
        FROM events AS p JOIN orders AS o USING (order_id)
        WHERE p.event_type = 'PaymentCompleted' AND p.status = 'COMPLETED' AND p.amount_cents <> o.total_cents
        ORDER BY p.order_id, p.position
        """,
    ),
    Check(
        "completed_orders_sold_lines",
        "A completed order sold, per product, the units it was placed with (a ReservationConfirmed "
        "forged on a topic would complete, and charge, an order Inventory rejected or never saw).",
        """
        WITH ordered AS (
            SELECT order_id, product_id, sum(quantity)::BIGINT AS ordered FROM order_lines GROUP BY ALL
        ), sold AS (
            SELECT order_id, product_id, sum(quantity)::BIGINT AS sold
            FROM events WHERE event_type = 'StockSold' GROUP BY ALL
        )
        SELECT o.order_id, l.product_id, l.ordered, coalesce(s.sold, 0) AS sold, o.completed_at
        FROM orders AS o JOIN ordered AS l USING (order_id) LEFT JOIN sold AS s USING (order_id, product_id)
        WHERE o.status = 'completed' AND o.completed_at <= $cutoff AND coalesce(s.sold, 0) <> l.ordered
        ORDER BY o.order_id, l.product_id
        """,
    ),
    Check(
        "emails_sent_as_requested",
        "Every email sent went where a stored EmailRequested of its order and kind said (an EmailRequested "
        "forged on a topic would send an order's email elsewhere, and the customer's would never go).",
        _SENT_AS_REQUESTED.format(bound="position <= $head"),
        split_sql=_SENT_AS_REQUESTED.format(bound=_AUDITED),
    ),
    Check(
        "effects_of_placed_orders",
        "Every event about an order (a reservation, a payment, an email) concerns one the log shows placed: "
        "a message forged on a topic for an order nobody placed would move stock or money unseen.",
        f"""
        SELECT order_id, list(DISTINCT event_type ORDER BY event_type) AS event_types, count(*) AS events,
               list(position ORDER BY position)[1:{_POSITIONS_SHOWN}] AS positions
        FROM events
        ANTI JOIN (SELECT order_id FROM events WHERE event_type = 'OrderCreated') AS placed USING (order_id)
        WHERE order_id IS NOT NULL
        GROUP BY order_id
        ORDER BY order_id
        """,
    ),
)

#: How long a saga step may take by default: the payment step's deadline at the default saga timeout.
DEFAULT_GRACE = Deadlines().payment

_PARAMETER = re.compile(r"\$(\w+)")

#: An email as the mailbox holds it, plus its ``line`` number (``error`` for an unreadable line).
Email = dict[str, Any]
#: (order id, kind, address) of every stored EmailRequested.
Requested = set[tuple[str, str, str]]


@dataclass(frozen=True)
class MailboxCheck:
    """An invariant of the mailbox file (the mailer's own record, outside the store): ``find``
    lists the violations among the emails, given what the store requested."""

    name: str
    description: str
    find: Callable[[Sequence[Email], Requested], list[dict[str, Any]]]


#: Why the mailbox checks were skipped: the audit had no mailbox file to read (e.g. a PostgreSQL
#: store audited from a host where the notification service does not write its mailbox).
NO_MAILBOX = "no mailbox"


def read_mailbox(path: Path) -> list[Email]:
    """Every line of the mailbox at ``path`` (none when it does not exist), numbered from 1."""
    if not path.exists():
        return []
    emails = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                email = json.loads(raw)
                if not isinstance(email, dict):
                    raise TypeError("not an object")
            except (ValueError, TypeError, RecursionError) as exc:
                email = {"error": f"unreadable line: {exc}"}
            emails.append({**email, "line": number})
    return emails


def _key(email: Email) -> str:
    return str(email.get("key") or email_key(str(email.get("order_id")), str(email.get("kind"))))


def _duplicate_emails(emails: Sequence[Email], _requested: Requested) -> list[dict[str, Any]]:
    lines: dict[str, list[int]] = {}
    for email in emails:
        if "error" not in email:
            lines.setdefault(_key(email), []).append(email["line"])
    return [{"key": key, "deliveries": len(found), "lines": found} for key, found in lines.items() if len(found) > 1]


def _emails_without_events(emails: Sequence[Email], requested: Requested) -> list[dict[str, Any]]:
    return [
        {
            "line": email["line"],
            "key": None if "error" in email else _key(email),
            "problem": email.get("error", "no stored EmailRequested for this order, kind and address"),
        }
        for email in emails
        if "error" in email or (email.get("order_id"), email.get("kind"), email.get("to")) not in requested
    ]


MAILBOX_CHECKS: tuple[MailboxCheck, ...] = (
    MailboxCheck(
        "no_duplicate_email",
        "No email was delivered twice: each idempotency key (order and kind) is in the mailbox at most once.",
        _duplicate_emails,
    ),
    MailboxCheck(
        "emails_backed_by_events",
        "Every email in the mailbox was requested, to its address, by a stored EmailRequested (and every line "
        "is readable).",
        _emails_without_events,
    ),
)


def jsonable(value: Any) -> Any:
    """A JSON-friendly copy of ``value``: times as ISO strings, decimals as strings (exact money),
    bytes as text with ``\\xff`` for what is not UTF-8, the floats JSON lacks as ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"``, a map's keys as text (a key that is not text as its JSON).

    Example:
        >>> jsonable({date(2020, 1, 2): time(3, 4), 1.5: float("nan"), "k": b"\\xff"})
        {'2020-01-02': '03:04:00', '1.5': 'NaN', 'k': '\\\\xff'}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    return value


def _json_key(key: Any) -> str:
    plain = jsonable(key)
    return plain if isinstance(plain, str) else json.dumps(plain)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``count`` violations, the first of them in ``violations``.

    Example:
        >>> audit(store_path)["stock_never_negative"].ok
        True
    """

    name: str
    description: str
    violations: tuple[dict[str, Any], ...]
    count: int
    #: Why the check was not run (e.g. ``"no mailbox"``), None when it ran.
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        """The check ran and found no violation (a skipped check is not ok, nor a violation)."""
        return self.skipped is None and self.count == 0

    def as_dict(self) -> dict[str, Any]:
        """``{"ok": …, "violations": [...]}`` with JSON-friendly values; a skipped check has
        ``"ok": null`` and says why in ``"skipped"``."""
        if self.skipped is not None:
            return {"ok": None, "skipped": self.skipped, "violations": []}
        return {"ok": self.ok, "violations": [jsonable(v) for v in self.violations]}

    @property
    def verdict(self) -> str:
        """``ok``, ``VIOLATED (n)`` or ``skipped: why``, for text."""
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        return "ok" if self.ok else f"VIOLATED ({self.count})"

    def __repr__(self) -> str:
        return f"<CheckResult {self.name}: {self.verdict}>"


class AuditReport(Mapping[str, CheckResult]):
    """Every check's result by name, for the log up to ``position``; ``ok`` when all hold.

    Example:
        >>> report = audit(store_path)  # one order still waits for its payment
        >>> report.ok, [result.name for result in report.values() if result.count]
        (False, ['orders_terminal'])
    """

    def __init__(self, results: Sequence[CheckResult], position: int, now: datetime, grace: timedelta) -> None:
        self._results = {r.name: r for r in results}
        self.position = position
        self.now = now
        self.grace = grace

    def __getitem__(self, name: str) -> CheckResult:
        return self._results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def ok(self) -> bool:
        """No check found a violation (skipped checks, listed in :attr:`skipped`, do not fail it)."""
        return all(r.count == 0 for r in self._results.values())

    @property
    def skipped(self) -> list[str]:
        """The checks that were not run (see each one's ``skipped`` for why)."""
        return [r.name for r in self._results.values() if r.skipped is not None]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{check name: {"ok": …, "violations": [...]}}``, ready for ``json.dumps``."""
        return {name: r.as_dict() for name, r in self._results.items()}

    def table(self) -> str:
        """A plain-text table: one line per check, then its first violations."""
        width = max(len(name) for name in self._results)
        lines = [f"audit of the log up to position {self.position} (grace {self.grace.total_seconds():g} s)"]
        for r in self._results.values():
            lines.append(f"{r.name:<{width}}  {r.verdict}")
            lines += [f"{'':<{width}}    {jsonable(v)}" for v in r.violations[:5]]
            if r.count > 5:
                lines.append(f"{'':<{width}}    … {r.count - 5} more")
        return "\n".join(lines)

    def __repr__(self) -> str:
        failed = [name for name, r in self._results.items() if r.count]
        return f"<AuditReport at position {self.position}: {'ok' if not failed else 'VIOLATED ' + ', '.join(failed)}>"

    def _repr_html_(self) -> str:
        rows = [
            (
                _code(r.name),
                "✅" if r.ok else f"⏭ {r.verdict}" if r.skipped else f"❌ {r.count}",
                r.description,
                _code(str(jsonable(r.violations[0])) if r.violations else ""),
            )
            for r in self._results.values()
        ]
        columns = ("check", "holds", "invariant", "first violation")
        return html_table(columns, rows, caption=f"Audit of the log up to position {self.position}")


def _code(text: str) -> Html:
    return Html(f"<code>{html.escape(text)}</code>")


def audit(
    source: Projections | Source | ShopStores | Sequence[Source],
    *,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
    limit: int = 100,
    mailbox: str | Path | None = None,
) -> AuditReport:
    """Run every check of :data:`CHECKS` on an event store (a SQLite path, a ``postgresql://`` URL or
    any open store), on a shop's several stores (a :class:`~eventlab.store.ShopStores` or a list of
    those) or on open projections (refreshed first), then every check of :data:`MAILBOX_CHECKS` on
    the mailbox.

    ``grace``: how long a saga step may take before its absence is a violation (default 60 s, the
    payment step's deadline at the default ``EVENTLAB_SAGA_TIMEOUT_S``: past it the shop cancels the
    order, so a saga waiting longer is stuck); ``now`` (default:
    the clock, naive = UTC) is when the audit happens; at most ``limit`` violations are kept per
    check (``count`` has them all); ``mailbox``: the mailer's file (default: ``mailbox.jsonl``
    beside the SQLite store, in the data directory — over several stores, beside the first SQLite
    store given; none for another store unless given). The checks run without a time limit (Ctrl-C
    stops them), except on open projections, which keep their own.
    """
    if not isinstance(source, Projections):
        if mailbox is None:
            mailbox = _mailbox_beside(source)
        # A SQLite file through sqlite3: both check the schema. No time limit: the checks are eventlab's
        # own reads of the whole log, and the 5 s meant for ad-hoc queries failed a demo's audit on a busy
        # machine (open projections given by the caller keep their own limit).
        with Projections(source, timeout=None) as projections:
            return audit(projections, grace=grace, now=now, limit=limit, mailbox=mailbox)
    _check_schema(source)
    relays_before = _relay_checkpoints(source)
    # Read the mailbox before the log: every email in it was requested by an event stored by now.
    if mailbox is None and source.store_path is not None:
        mailbox = source.store_path.parent / MAILBOX
    # No mailbox file is no evidence either way: its checks are skipped, never passed on nothing.
    emails = None if mailbox is None or not is_file(Path(mailbox)) else read_mailbox(Path(mailbox))
    source.refresh()
    now = now or datetime.now(UTC)
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    relays, heads = _relay_checkpoints(source), source.store_heads
    values = {
        "now": now,
        "cutoff": now - grace,
        "relay": relays.get(source.source, 0),
        "relay_before": relays_before.get(source.source, 0),
        "head": source.checkpoint,
        "stores": list(source.stores),
        "heads": [heads[name] for name in source.stores],
        "relays": [relays.get(name, 0) for name in source.stores],
        "relays_before": [relays_before.get(name, 0) for name in source.stores],
        "known_types": list(EVENT_TYPES),
        "known_versions": [cls.schema_version for cls in EVENT_TYPES.values()],
        "known_events": [f"{name}:{v}" for name, cls in EVENT_TYPES.items() for v in readable_versions(cls)],
    }
    results = []
    for check in CHECKS:
        if check.find is not None:
            found = check.find(source, values)
            violations, count = tuple(found[:limit]), len(found)
        else:
            sql = check.split_sql if source.split and check.split_sql else check.sql
            params = {name: values[name] for name in set(_PARAMETER.findall(sql))}
            relation = source.sql(sql, params or None)
            rows = relation.fetchall()
            columns = relation.columns
            violations = tuple(dict(zip(columns, row, strict=True)) for row in rows[:limit])
            count = len(rows)
        results.append(CheckResult(check.name, check.description, violations, count))
    results += _check_mailbox(source, emails, limit)
    return AuditReport(results, source.checkpoint, now, grace)


def _mailbox_beside(source: Source | ShopStores | Sequence[Source]) -> Path | None:
    """The mailbox beside the first SQLite store of several (one store: the projections know it)."""
    if isinstance(source, str | Path | EventStore):
        return None
    for one in source:
        if isinstance(one, SqliteEventStore):
            return one.path.parent / MAILBOX
        if isinstance(one, str | Path):
            location = store_location(one)
            if isinstance(location, Path):
                return location.parent / MAILBOX
    return None


def _relay_checkpoints(source: Projections) -> dict[str, int]:
    """The outbox relay's checkpoint in each store, by store name."""
    if source.split:
        rows = source.sql(
            "SELECT store, position FROM store.checkpoints WHERE name = $relay", {"relay": RELAY_CONSUMER}
        ).fetchall()
        return {str(store): int(position) for store, position in rows}
    relay = source.sql(
        "SELECT position FROM store.checkpoints WHERE name = $relay", {"relay": RELAY_CONSUMER}
    ).fetchone()
    return {source.source: int(relay[0])} if relay else {}


def _check_schema(source: Projections) -> None:
    """Refuse a store whose schema is broken or newer, as opening it would (same :class:`StoreError`).

    An attached store is inspected through DuckDB's catalogue: opening it with Python's
    ``sqlite3`` next to DuckDB's SQLite in one process could reset its WAL index under DuckDB.
    Stores read through their port checked their schema when they opened.
    """
    for name, path in source.store_files.items():
        if not source.attached:  # mirrored: this process reads the store through sqlite3 anyway
            verify_event_store(path)
            continue
        columns, version = source.attached_schema(name if source.split else None)
        if check_schema(path, columns, version) == 0:
            raise StoreError(f"{path} is not an eventlab event store: it has no tables")


def _check_mailbox(source: Projections, emails: Sequence[Email] | None, limit: int) -> list[CheckResult]:
    if emails is None:
        return [CheckResult(check.name, check.description, (), 0, skipped=NO_MAILBOX) for check in MAILBOX_CHECKS]
    rows = source.sql(
        "SELECT DISTINCT json_extract_string(data, '$.order_id'), json_extract_string(data, '$.kind'),"
        " json_extract_string(data, '$.to') FROM store.events WHERE event_type = 'EmailRequested'"
    ).fetchall()
    requested = {(str(order_id), str(kind), str(to)) for order_id, kind, to in rows}
    results = []
    for check in MAILBOX_CHECKS:
        found = check.find(emails, requested)
        results.append(CheckResult(check.name, check.description, tuple(found[:limit]), len(found)))
    return results

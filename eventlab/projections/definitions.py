"""The projections: named sets of DuckDB relations, each a pure SQL function of the event log.

Every relation is one ``SELECT`` over the typed ``events`` relation (see
:mod:`eventlab.projections.engine`) and, for the derived ones, over other relations. Inputs are
written as placeholders (``{events}``, ``{orders}``, …) that the engine fills in: the whole log
for a rebuild, the events of the orders a new batch touched for an incremental update, or the
events up to a position for an "as of" snapshot. The same SQL text serves all three, which is
why a rebuild and an incremental update cannot disagree.

A relation with a ``key`` is materialised as a table and kept up to date per key: every output
row depends only on the events with the same key (for example ``order_id``), so recomputing the
keys a batch touched is exact. A relation without a key is a view, computed when read.
Materialising more of them does not pay: at 1M events, building ``saga_timeline``,
``order_lines`` and ``payment_attempts`` as tables added ~0.6 s to a rebuild and saved about as
much on one read (writing a DuckDB table costs about what computing it does), and made a
refresh ~40 % slower; a per-product table would recompute most of the stock history on every
refresh, since each product sees a share of every batch.

Money columns come in pairs: ``*_cents`` (``BIGINT``, exact) and the same amount as
``DECIMAL(18,2)`` through the ``money(cents)`` macro. Durations are milliseconds (``DOUBLE``);
timestamps are UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PROJECTIONS", "RELATIONS", "Projection", "Relation"]


@dataclass(frozen=True)
class Relation:
    """One table or view of a projection.

    - ``sql``: a ``SELECT`` whose inputs are ``{events}`` and other relations' ``{name}``;
    - ``key``: a column of ``events``; set, the relation is a table updated incrementally by it;
    - ``order_by``: the order :meth:`Projections.relation` returns rows in (deterministic).

    Example:
        >>> RELATIONS["orders"].key
        'order_id'
    """

    name: str
    doc: str
    sql: str
    order_by: str
    key: str | None = None

    @property
    def kind(self) -> str:
        """``"table"`` (materialised, incremental) or ``"view"`` (computed when read)."""
        return "table" if self.key else "view"

    def render(self, inputs: Mapping[str, str]) -> str:
        """The SQL with every ``{input}`` replaced by the relation text in ``inputs``."""
        return self.sql.format_map(inputs)

    def __repr__(self) -> str:
        return f"<Relation {self.name} ({self.kind}{', key ' + self.key if self.key else ''})>"


@dataclass(frozen=True)
class Projection:
    """A named, documented set of relations answering one question about the shop.

    Example:
        >>> [r.name for r in PROJECTIONS["revenue"].relations]
        ['revenue', 'revenue_by_product', 'revenue_by_user']
    """

    name: str
    doc: str
    relations: tuple[Relation, ...]

    def __repr__(self) -> str:
        return f"<Projection {self.name}: {', '.join(r.name for r in self.relations)}>"


_STOCK_DELTAS = """
    SELECT position, recorded_at, product_id, event_type, order_id, quantity,
           CASE event_type WHEN 'StockAdded' THEN quantity WHEN 'StockReserved' THEN -quantity
                           WHEN 'StockReleased' THEN quantity ELSE 0 END AS d_available,
           CASE event_type WHEN 'StockReserved' THEN quantity WHEN 'StockReleased' THEN -quantity
                           WHEN 'StockSold' THEN -quantity ELSE 0 END AS d_reserved,
           CASE event_type WHEN 'StockSold' THEN quantity ELSE 0 END AS d_sold
    FROM {events}
    WHERE event_type IN ('StockAdded', 'StockReserved', 'StockReleased', 'StockSold')
"""

ORDERS = Relation(
    name="orders",
    key="order_id",
    order_by="created_at, order_id",
    doc="One row per order: status (created, confirmed, completed, cancelled), customer, total, "
    "lines, the time of every saga step, the cancellation reason, the saga's duration, and the "
    "position and time of its last step (emails are in notifications).",
    sql="""
    WITH steps AS (
        SELECT
            order_id,
            arg_min(user_id, position) FILTER (event_type = 'OrderCreated') AS user_id,
            bool_or(event_type = 'OrderCompleted') AS is_completed,
            bool_or(event_type = 'OrderCancelled') AS is_cancelled,
            bool_or(event_type = 'OrderConfirmed') AS is_confirmed,
            arg_min(total_cents, position) FILTER (event_type = 'OrderCreated') AS order_total_cents,
            arg_min(len(lines), position) FILTER (event_type = 'OrderCreated') AS line_count,
            arg_min(list_sum([line.quantity FOR line IN lines]), position)
                FILTER (event_type = 'OrderCreated') AS units,
            min(recorded_at) FILTER (event_type = 'OrderCreated') AS created_at,
            min(recorded_at) FILTER (event_type = 'ReservationConfirmed') AS reserved_at,
            min(recorded_at) FILTER (event_type = 'ReservationRejected') AS rejected_at,
            min(recorded_at) FILTER (event_type = 'OrderConfirmed') AS confirmed_at,
            min(recorded_at) FILTER (event_type = 'PaymentCompleted' AND status = 'COMPLETED') AS paid_at,
            min(recorded_at) FILTER (event_type = 'PaymentCompleted' AND status = 'FAILED') AS payment_failed_at,
            min(recorded_at) FILTER (event_type = 'OrderCompleted') AS completed_at,
            min(recorded_at) FILTER (event_type = 'OrderCancelled') AS cancelled_at,
            max(recorded_at) FILTER (event_type = 'StockReleased') AS stock_released_at,
            max(recorded_at) FILTER (event_type = 'StockSold') AS stock_sold_at,
            arg_min(reason, position) FILTER (event_type = 'OrderCancelled') AS cancel_reason,
            arg_min(detail, position) FILTER (event_type = 'OrderCancelled') AS cancel_detail,
            max(position) AS last_position,
            max(recorded_at) AS updated_at
        FROM {events}
        WHERE event_type IN ('OrderCreated', 'ReservationConfirmed', 'ReservationRejected', 'OrderConfirmed',
                             'PaymentCompleted', 'OrderCompleted', 'OrderCancelled', 'StockReleased', 'StockSold')
          AND order_id IS NOT NULL
        GROUP BY order_id
        HAVING bool_or(event_type = 'OrderCreated')
    )
    SELECT
        order_id,
        user_id,
        CASE WHEN is_completed THEN 'completed' WHEN is_cancelled THEN 'cancelled'
             WHEN is_confirmed THEN 'confirmed' ELSE 'created' END AS status,
        order_total_cents AS total_cents,
        money(order_total_cents) AS total,
        line_count,
        units,
        created_at, reserved_at, rejected_at, confirmed_at, paid_at, payment_failed_at,
        completed_at, cancelled_at, stock_released_at, stock_sold_at,
        cancel_reason,
        cancel_detail,
        date_diff('microsecond', created_at, coalesce(completed_at, cancelled_at)) / 1000 AS duration_ms,
        last_position,
        updated_at
    FROM steps
    """,
)

ORDER_LINES = Relation(
    name="order_lines",
    order_by="position, line_no",
    doc="One row per line of every order as placed: product, quantity, unit price and amount.",
    sql="""
    WITH numbered AS (
        SELECT order_id, user_id, position, recorded_at, lines, generate_subscripts(lines, 1) AS line_no
        FROM {events}
        WHERE event_type = 'OrderCreated'
    )
    SELECT order_id, user_id, position, recorded_at AS created_at, line_no,
           lines[line_no].product_id AS product_id,
           lines[line_no].quantity AS quantity,
           lines[line_no].unit_price_cents AS unit_price_cents,
           lines[line_no].quantity * lines[line_no].unit_price_cents AS amount_cents,
           money(lines[line_no].quantity * lines[line_no].unit_price_cents) AS amount
    FROM numbered
    """,
)

SAGA_TIMELINE = Relation(
    name="saga_timeline",
    order_by="order_id, step",
    doc="One row per saga step of every order (each event carrying its order id): the event, "
    "the service that wrote it, its position and time, and milliseconds since the previous step "
    "and since the order was placed.",
    # detail is made before the window, so the window sorts one string instead of the six it is made of
    sql="""
    SELECT
        order_id,
        row_number() OVER w AS step,
        position,
        recorded_at,
        event_type,
        service,
        detail,
        date_diff('microsecond', lag(recorded_at) OVER w, recorded_at) / 1000 AS since_previous_ms,
        date_diff('microsecond', first_value(recorded_at) OVER w, recorded_at) / 1000 AS since_start_ms
    FROM (
        SELECT order_id, position, recorded_at, event_type, source AS service,
            CASE
                WHEN event_type = 'PaymentCompleted' THEN status || coalesce(': ' || nullif(reason, ''), '')
                WHEN event_type = 'OrderCancelled' THEN reason
                WHEN kind IS NOT NULL THEN kind
                WHEN quantity IS NOT NULL THEN product_id || ' x' || quantity
                WHEN product_id IS NOT NULL THEN product_id
            END AS detail
        FROM {events}
        WHERE order_id IS NOT NULL
    )
    WINDOW w AS (PARTITION BY order_id ORDER BY position)
    """,
)

INVENTORY_HISTORY = Relation(
    name="inventory_history",
    order_by="position",
    doc="Stock of a product after every stock event, by position: available, reserved and sold "
    "(available = added - reserved + released; reserved = reserved - released - sold).",
    # A running sum per product is a running sum over all products in (product, position) order
    # minus what the products before it add up to: one window over every row, ~2x faster than a
    # window partitioned by product (few, big partitions). The counts keep SQL's NULLs: a product's
    # sum is NULL while every delta it has seen is NULL (a stock event without a quantity).
    sql=f"""
    WITH running AS (
        SELECT *,
               coalesce(sum(d_available) OVER g, 0) AS available_so_far,
               coalesce(sum(d_reserved) OVER g, 0) AS reserved_so_far,
               coalesce(sum(d_sold) OVER g, 0) AS sold_so_far,
               count(d_available) OVER g AS available_seen,
               count(d_reserved) OVER g AS reserved_seen,
               count(d_sold) OVER g AS sold_seen
        FROM ({_STOCK_DELTAS})
        WINDOW g AS (ORDER BY product_id, position ROWS UNBOUNDED PRECEDING)
    ), before AS (
        SELECT product_id,
               arg_min({{{{'available': available_so_far - coalesce(d_available, 0),
                        'reserved': reserved_so_far - coalesce(d_reserved, 0),
                        'sold': sold_so_far - coalesce(d_sold, 0),
                        'available_seen': available_seen - (d_available IS NOT NULL)::BIGINT,
                        'reserved_seen': reserved_seen - (d_reserved IS NOT NULL)::BIGINT,
                        'sold_seen': sold_seen - (d_sold IS NOT NULL)::BIGINT}}}}, position) AS b
        FROM running
        GROUP BY product_id
    )
    SELECT r.position, r.recorded_at, r.product_id, r.event_type, r.order_id, r.quantity,
           CASE WHEN r.available_seen > b.available_seen THEN CAST(r.available_so_far - b.available AS BIGINT) END
               AS available,
           CASE WHEN r.reserved_seen > b.reserved_seen THEN CAST(r.reserved_so_far - b.reserved AS BIGINT) END
               AS reserved,
           CASE WHEN r.sold_seen > b.sold_seen THEN CAST(r.sold_so_far - b.sold AS BIGINT) END AS sold
    FROM running AS r JOIN (SELECT product_id, unnest(b) FROM before) AS b
        ON r.product_id IS NOT DISTINCT FROM b.product_id
    """,
)

INVENTORY = Relation(
    name="inventory",
    order_by="product_id",
    doc="Stock per product now: the catalogue's initial stock and price, units available, "
    "reserved for open orders and sold, when the product was created and the position of its "
    "last stock event.",
    sql=f"""
    WITH products AS (
        SELECT product_id,
               arg_min(name, position) AS name,
               arg_min(price_cents, position) AS price_cents,
               sum(initial_stock)::BIGINT AS initial_stock,
               min(recorded_at) AS created_at
        FROM {{events}}
        WHERE event_type = 'ProductCreated'
        GROUP BY product_id
    ), stock AS (
        SELECT product_id,
               sum(d_available)::BIGINT AS available,
               sum(d_reserved)::BIGINT AS reserved,
               sum(d_sold)::BIGINT AS sold,
               max(position) AS last_position
        FROM ({_STOCK_DELTAS})
        GROUP BY product_id
    )
    SELECT product_id, p.name, p.price_cents, money(p.price_cents) AS price,
           coalesce(p.initial_stock, 0) AS initial_stock,
           coalesce(s.available, 0) AS available,
           coalesce(s.reserved, 0) AS reserved,
           coalesce(s.sold, 0) AS sold,
           p.created_at,
           s.last_position
    FROM products AS p FULL OUTER JOIN stock AS s USING (product_id)
    """,
)

REVENUE = Relation(
    name="revenue",
    order_by="day",
    doc="Revenue per UTC day of completion: completed orders only, exact (cents and DECIMAL).",
    sql="""
    SELECT completed_at::DATE AS day,
           count(*) AS orders,
           sum(total_cents)::BIGINT AS revenue_cents,
           money(sum(total_cents)::BIGINT) AS revenue
    FROM {orders}
    WHERE status = 'completed'
    GROUP BY day
    """,
)

REVENUE_BY_PRODUCT = Relation(
    name="revenue_by_product",
    order_by="revenue_cents DESC, product_id",
    doc="Revenue per product from the lines of completed orders: orders, units sold, amount.",
    sql="""
    SELECT l.product_id,
           count(DISTINCT l.order_id) AS orders,
           sum(l.quantity)::BIGINT AS units,
           sum(l.amount_cents)::BIGINT AS revenue_cents,
           money(sum(l.amount_cents)::BIGINT) AS revenue
    FROM {order_lines} AS l JOIN {orders} AS o USING (order_id)
    WHERE o.status = 'completed'
    GROUP BY l.product_id
    """,
)

REVENUE_BY_USER = Relation(
    name="revenue_by_user",
    order_by="revenue_cents DESC, user_id",
    doc="Revenue per customer from completed orders, with the first and last completion.",
    sql="""
    SELECT user_id,
           count(*) AS orders,
           sum(total_cents)::BIGINT AS revenue_cents,
           money(sum(total_cents)::BIGINT) AS revenue,
           min(completed_at) AS first_completed_at,
           max(completed_at) AS last_completed_at
    FROM {orders}
    WHERE status = 'completed'
    GROUP BY user_id
    """,
)

FUNNEL = Relation(
    name="funnel",
    order_by="step",
    doc="Orders reaching each saga stage (created, reserved, confirmed, paid, completed); of those "
    "that reached the previous stage but not this one, how many were cancelled (with the reasons) "
    "and how many are still in flight.",
    sql="""
    WITH stages(step, stage) AS (
        VALUES (1, 'created'), (2, 'reserved'), (3, 'confirmed'), (4, 'paid'), (5, 'completed')
    ), progress AS (
        SELECT cancel_reason,
               status IN ('completed', 'cancelled') AS terminal,
               CASE WHEN completed_at IS NOT NULL THEN 5 WHEN paid_at IS NOT NULL THEN 4
                    WHEN confirmed_at IS NOT NULL THEN 3 WHEN reserved_at IS NOT NULL THEN 2
                    ELSE 1 END AS reached
        FROM {orders}
    ), counted AS (
        SELECT s.step, s.stage,
               count(p.reached) FILTER (p.reached >= s.step) AS orders,
               count(p.reached) FILTER (p.reached = s.step - 1 AND p.terminal) AS dropped,
               count(p.reached) FILTER (p.reached = s.step - 1 AND NOT p.terminal) AS in_flight,
               histogram(p.cancel_reason) FILTER (p.reached = s.step - 1 AND p.terminal) AS drop_reasons
        FROM stages AS s LEFT JOIN progress AS p ON true
        GROUP BY s.step, s.stage
    )
    SELECT step, stage, orders, dropped, in_flight, drop_reasons,
           round(orders / nullif(lag(orders) OVER (ORDER BY step), 0), 4) AS conversion,
           round(orders / nullif(first_value(orders) OVER (ORDER BY step), 0), 4) AS of_created
    FROM counted
    """,
)

PAYMENT_ATTEMPTS = Relation(
    name="payment_attempts",
    order_by="position",
    doc="One row per answer of the payment gateway: order, attempt number, status, reason, amount.",
    sql="""
    SELECT position, recorded_at, order_id,
           row_number() OVER (PARTITION BY order_id ORDER BY position) AS attempt,
           status,
           nullif(reason, '') AS reason,
           amount_cents,
           money(amount_cents) AS amount
    FROM {events}
    WHERE event_type = 'PaymentCompleted'
    """,
)

PAYMENTS = Relation(
    name="payments",
    order_by="minute",
    doc="Payments per minute: attempts, failures, failure rate, money charged, and the running "
    "totals and failure rate since the start.",
    sql="""
    WITH per_minute AS (
        SELECT date_trunc('minute', recorded_at) AS minute,
               count(*) AS attempts,
               count(*) FILTER (status = 'FAILED') AS failures,
               coalesce(sum(amount_cents) FILTER (status = 'COMPLETED'), 0)::BIGINT AS charged_cents
        FROM {payment_attempts}
        GROUP BY minute
    ), running AS (
        SELECT *,
               CAST(sum(attempts) OVER t AS BIGINT) AS total_attempts,
               CAST(sum(failures) OVER t AS BIGINT) AS total_failures
        FROM per_minute
        WINDOW t AS (ORDER BY minute)
    )
    SELECT minute, attempts, failures,
           round(failures / attempts, 4) AS failure_rate,
           charged_cents,
           money(charged_cents) AS charged,
           total_attempts, total_failures,
           round(total_failures / total_attempts, 4) AS cumulative_failure_rate
    FROM running
    """,
)

NOTIFICATIONS = Relation(
    name="notifications",
    key="order_id",
    order_by="order_id",
    doc="Emails per order: how many were requested and sent, the kinds requested and sent (sorted), "
    "the kinds still unsent, and when the first was requested and the last sent.",
    sql="""
    WITH emails AS (
        SELECT order_id,
               count(*) FILTER (event_type = 'EmailRequested') AS requested,
               count(*) FILTER (event_type = 'EmailSent') AS sent,
               coalesce(list_sort(list(kind) FILTER (event_type = 'EmailRequested')), []::VARCHAR[])
                   AS kinds_requested,
               coalesce(list_sort(list(kind) FILTER (event_type = 'EmailSent')), []::VARCHAR[]) AS kinds_sent,
               min(recorded_at) FILTER (event_type = 'EmailRequested') AS first_requested_at,
               max(recorded_at) FILTER (event_type = 'EmailSent') AS last_sent_at
        FROM {events}
        WHERE event_type IN ('EmailRequested', 'EmailSent') AND order_id IS NOT NULL
        GROUP BY order_id
    )
    SELECT order_id, requested, sent, kinds_requested, kinds_sent,
           [k FOR k IN kinds_requested IF NOT list_contains(kinds_sent, k)] AS unsent,
           first_requested_at, last_sent_at
    FROM emails
    """,
)

#: Every projection by name, in the order they are built.
PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection("orders", "Order status and saga step times, and the lines as placed.", (ORDERS, ORDER_LINES)),
        Projection("saga_timeline", "Every step of every order's saga, with durations.", (SAGA_TIMELINE,)),
        Projection("inventory", "Stock per product now, and after every stock event.", (INVENTORY, INVENTORY_HISTORY)),
        Projection(
            "revenue",
            "Money from completed orders by day, product and customer.",
            (REVENUE, REVENUE_BY_PRODUCT, REVENUE_BY_USER),
        ),
        Projection("funnel", "How far orders get through the saga, and why they drop out.", (FUNNEL,)),
        Projection("payments", "Payment attempts and the failure rate over time.", (PAYMENTS, PAYMENT_ATTEMPTS)),
        Projection("notifications", "Emails requested and sent per order.", (NOTIFICATIONS,)),
    )
}

#: Every relation by name, in build order: the tables (with a key), then each view after its inputs.
RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        ORDERS,
        NOTIFICATIONS,
        ORDER_LINES,
        SAGA_TIMELINE,
        INVENTORY_HISTORY,
        INVENTORY,
        REVENUE,
        REVENUE_BY_PRODUCT,
        REVENUE_BY_USER,
        FUNNEL,
        PAYMENT_ATTEMPTS,
        PAYMENTS,
    )
}

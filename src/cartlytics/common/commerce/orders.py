"""Distinct orders: the one definition every figure and export about orders uses.

An order is (project, orderId); its first ``order_completed`` by (timestamp, event id) wins, over
all time: its time, total, currency, visitor and line items are the order's. Later duplicates of
an orderId never count, whatever they carry.

Every relation here has the columns of ``ORDER_COLUMNS``: ``order_id, first_ts, order_total,
order_currency, order_visitor, first_event_id``, one row per distinct order.

``FIRST_ORDERS`` reads the narrow ``orders`` table (order events only, kept by a materialized
view) over all time. A window's orders need not look at other orders: an orderId not listed in
``order_dups`` has one stored event row (ingest lists every orderId with more than one), which is
therefore its winner; only the listed orderIds need the per-order computation, over their rows in
``order_index`` (the same rows sorted by orderId). ``orders_between`` does this: at 10 million
events it reads ~30k rows for 30 days, where FIRST_ORDERS reads every order (~300k).
"""

from __future__ import annotations

from cartlytics.common.storage.sql import EMPTY, Sql, when

ORDER_COLUMN_NAMES = (
    "order_id", "first_ts", "order_total", "order_currency", "order_visitor", "first_event_id"
)  # fmt: skip
ORDER_COLUMNS = Sql(", ".join(ORDER_COLUMN_NAMES))

# Among the orderIds {ids} of {project}, those with more than one stored event row: ingest lists
# them in order_dups after storing their events (what the rest of this module relies on).
NEWLY_DUPLICATED_IDS = Sql("""
    SELECT order_id FROM order_index
    WHERE project_id = {project} AND order_id IN {ids}
    GROUP BY order_id HAVING count() > 1
""")
# The orderIds of {project} with more than one stored event row, and (a scalar subquery) how many.
DUPLICATE_IDS = Sql("SELECT order_id FROM order_dups WHERE project_id = {project}")
DUPLICATE_COUNT = Sql("(SELECT count() FROM order_dups WHERE project_id = {project})")

# An order's count and revenue over a relation of distinct orders (revenue in Decimal128).
ORDER_COUNT = Sql("count()")
ORDER_REVENUE = Sql("sum(toDecimal128(order_total, 0))")

# The rule: per orderId of {project} among {order_rows} (a table of order event rows) restricted
# by {which_orders}, its first event by (timestamp, event id) and that event's fields.
_FIRST_EVENTS = Sql("""
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id{also}
    FROM {order_rows}
    WHERE project_id = {project}{which_orders}
    GROUP BY order_id{which_firsts}
""")

# Order event rows as orders: the distinct orders exactly when no orderId among them is listed
# in order_dups (as below, or when the project has none: DUPLICATE_COUNT is 0).
_ORDER_ROWS = Sql("""
    SELECT order_id,
           ts AS first_ts,
           total AS order_total,
           currency AS order_currency,
           visitor_id AS order_visitor,
           event_id AS first_event_id
    FROM orders
    WHERE project_id = {project}{which_rows}
""")
_NOT_DUPLICATED = Sql("\n      AND order_id NOT IN ({duplicate_ids})").fill(
    duplicate_ids=DUPLICATE_IDS
)


def first_events(
    order_rows: Sql, which_orders: Sql = EMPTY, having: Sql = EMPTY, also: Sql = EMPTY
) -> Sql:
    """One row per orderId of ``order_rows`` (``orders`` or ``order_index``) whose rows pass
    ``which_orders`` (`` AND ...``): its first event, over all those rows; ``having``
    (`` HAVING ...``) filters the orders on their first event; ``also`` (``, ...``) adds
    columns (aggregates over the order's rows)."""
    return _FIRST_EVENTS.fill(
        order_rows=order_rows, which_orders=which_orders, which_firsts=having, also=also
    )


def order_rows(start: bool = True, end: bool = True, by_currency: bool = True) -> Sql:
    """Every order event row in [{start}, {end}) (and {currency}) as an order. These are the
    distinct orders only when the project has no duplicated orderId (DUPLICATE_COUNT = 0): the
    caller checks, and otherwise reads ``orders_between``."""
    return _ORDER_ROWS.fill(which_rows=_window(start, end, by_currency))


def _window(start: bool, end: bool, by_currency: bool) -> Sql:
    in_currency = [Sql("currency = {currency}")] if by_currency else []
    return _and(in_currency + _bounds("ts", start, end))


# One row per distinct order of {project}, over all time. Filter the outer query on first_ts etc.
FIRST_ORDERS = first_events(Sql("orders"))

# FIRST_ORDERS' rows for the orderIds listed in order_dups only, over all time (order_index is
# sorted by orderId, so this reads those orders' rows, not every order).
DUPLICATED_ORDERS = first_events(
    Sql("order_index"), Sql(" AND order_id IN ({duplicate_ids})").fill(duplicate_ids=DUPLICATE_IDS)
)


def _bounds(column: str, start: bool, end: bool) -> list[Sql]:
    return [
        *([Sql(f"{column} >= {{start}}")] if start else []),
        *([Sql(f"{column} < {{end}}")] if end else []),
    ]


def _and(conditions: list[Sql]) -> Sql:
    return Sql.join("", (Sql(" AND ") + c for c in conditions))


def duplicated_between(
    start: bool = True, end: bool = True, by_currency: bool = True, seen_in_window: bool = True
) -> Sql:
    """The first events of the orderIds listed in order_dups whose first event is in [{start},
    {end}) (each bound optional) and, when ``by_currency``, in {currency}, each over all its rows
    in order_index (sorted by orderId). Such an order has an event row in the window (its
    first), so with ``seen_in_window`` only the listed orderIds seen there are looked up (reads
    the window's orderIds once more: the choice for a period read once); without it, every
    listed orderId is (reads nothing more: the choice for many consecutive pages)."""
    firsts = _bounds("first_ts", start, end and not seen_in_window)
    if by_currency:
        firsts.append(Sql("order_currency = {currency}"))
    which = Sql(" AND order_id IN ({duplicate_ids})")
    if seen_in_window:
        # A first event in the window ends before {end}: only its start is checked below.
        which = Sql("""
      AND order_id IN (
          SELECT order_id FROM orders
          WHERE project_id = {project}{in_window}
            AND order_id IN ({duplicate_ids})
      )""").fill(in_window=_and(_bounds("ts", start, end)))
    return first_events(
        Sql("order_index"),
        which.fill(duplicate_ids=DUPLICATE_IDS),
        when(bool(firsts), Sql("\n    HAVING ") + Sql.join(" AND ", firsts)),
    )


def orders_between(
    start: bool = True, end: bool = True, by_currency: bool = True, seen_in_window: bool = True
) -> Sql:
    """FIRST_ORDERS' rows of the orders whose first event is in [{start}, {end}) (without
    ``start`` or ``end``: unbounded on that side), in {currency} when ``by_currency``, exactly,
    reading only that window of ``orders``: the single row of every orderId not in order_dups,
    then the first events of the listed ones (``duplicated_between``)."""
    single = _ORDER_ROWS.fill(which_rows=_window(start, end, by_currency) + _NOT_DUPLICATED)
    return Sql("""{single}
    UNION ALL
    SELECT {columns}
    FROM ({duplicated})
""").fill(
        single=single,
        columns=ORDER_COLUMNS,
        duplicated=duplicated_between(start, end, by_currency, seen_in_window),
    )


# Each order with an event at or after {since}: its first event over all time (as FIRST_ORDERS
# picks it), whatever its time.
ORDERS_SEEN_SINCE = first_events(
    Sql("orders"),
    Sql("""
      AND order_id IN (
          SELECT order_id FROM orders
          WHERE project_id = {project} AND ts >= {since} AND toDate(ts) >= toDate({since})
      )"""),
)

# The distinct orders whose first event is in [{start}, {end}) and in {currency}; the same in
# every currency; the duplicated orderIds' ones among the first.
PERIOD_ORDERS = orders_between(by_currency=True)
PERIOD_ORDERS_ANY_CURRENCY = orders_between(by_currency=False)
PERIOD_DUPLICATED_ORDERS = duplicated_between(by_currency=True)

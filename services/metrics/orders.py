"""Distinct orders: the one definition every figure about orders uses.

An order is (project, orderId); its first ``order_completed`` by (timestamp, event id) wins, over
all time: its time, total, currency, visitor and line items are the order's. Later duplicates of an
orderId never count, whatever they carry.

Both subqueries read the narrow ``orders`` table (order events only, kept by a materialized view).
"""

# One row per distinct order of {project}, over all time: order_id, first_ts, order_total,
# order_currency, order_visitor, first_event_id. Filter the outer query on first_ts etc.
FIRST_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM orders
    WHERE project_id = {project}
    GROUP BY order_id
"""

# The same rows, only for orders whose first event is in [{since}, {until}); cost grows with the
# orders of the window, not with all orders. An order with any event before {since} has its first
# event before the window, so it is left out; for every other order with an event in the window,
# the earliest event (the winner) is in the window, and later rows cannot change it.
WINDOW_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM orders
    WHERE project_id = {project} AND ts >= {since} AND ts < {until}
      AND order_id NOT IN (
          SELECT order_id FROM orders
          WHERE project_id = {project} AND ts < {since}
            AND order_id IN (
                SELECT order_id FROM orders
                WHERE project_id = {project} AND ts >= {since} AND ts < {until}))
    GROUP BY order_id
"""


def first_orders() -> str:
    """The FIRST_ORDERS subquery, to embed as ``FROM ({first_orders})``."""
    return FIRST_ORDERS

"""Distinct orders: the one definition every figure about orders uses.

An order is (project, orderId); its first ``order_completed`` by (timestamp, event id) wins, over
all time: its time, total, currency, visitor and line items are the order's. Later duplicates of an
orderId never count, whatever they carry.
"""

# One row per distinct order of {project}: order_id, first_ts, order_total, order_currency,
# order_visitor, first_event_id. Filter the outer query on first_ts / order_currency.
FIRST_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM events
    WHERE project_id = {project} AND event = 'order_completed' AND order_id != ''
    GROUP BY order_id
"""


def first_orders() -> str:
    """The FIRST_ORDERS subquery, to embed as ``FROM ({first_orders})``."""
    return FIRST_ORDERS

"""Line items and a product's figures.

A line item is a line of an order's first event (``order_items``: one row per (event, line),
its event's order, time, currency and visitor beside the product, name, category, price and
quantity). A retried event may have its lines stored twice: each (event, line) counts once.

A relation of line items has the ``item_*`` columns of ``line_items``; over any such relation
(grouped by product, or by anything else) a product's figures are the ``Sql`` expressions below,
the same for metrics (top sellers, the custom query) and the products export.
"""

from __future__ import annotations

from cartlytics.common.storage.sql import Sql

# revenue = sum(price * quantity), in Decimal128 (cannot wrap); units = sum(quantity); orders =
# the distinct orders listing the product (a product on two lines of one order: one order);
# buyers = the distinct visitors of those orders.
LINE_REVENUE = Sql("sum(toDecimal128(item_price, 0) * item_quantity)")
UNITS_SOLD = Sql("sum(item_quantity)")
ORDERS_LISTING = Sql("uniqExact(item_order)")
BUYERS = Sql("uniqExact(item_visitor)")

# The latest non-empty category among the lines (by the order's time, event id and line; ''
# when none has one), and that line's key, so that partial results (pages) can be combined.
LATEST_CATEGORY = Sql(
    "argMaxIf(item_category, tuple(item_ts, event_id, line), item_category != '')"
)

_LINE_ITEMS = Sql("""
    SELECT event_id, line,
           any(order_id) AS item_order,
           any(ts) AS item_ts,
           any(currency) AS item_currency,
           any(visitor_id) AS item_visitor,
           any(product_id) AS item_product,
           any(name) AS item_name,
           any(category) AS item_category,
           any(price) AS item_price,
           any(quantity) AS item_quantity
    FROM order_items
    WHERE project_id = {project}{which_lines}
    GROUP BY event_id, line
""")


LINE_ITEM_COLUMNS = (
    "event_id", "line", "item_order", "item_ts", "item_currency", "item_visitor", "item_product",
    "item_name", "item_category", "item_price", "item_quantity",
)  # fmt: skip


def line_items(which_lines: Sql) -> Sql:
    """The line items of {project}'s ``order_items`` rows that pass ``which_lines``
    (`` AND ...``), each (event, line) once: ``event_id``, ``line`` and ``item_order``,
    ``item_ts``, ``item_currency``, ``item_visitor``, ``item_product``, ``item_name``,
    ``item_category``, ``item_price``, ``item_quantity``. Restrict them to the first events of
    orders (``first_events_of``) for the lines of distinct orders."""
    return _LINE_ITEMS.fill(which_lines=which_lines)


def first_events_of(orders: Sql) -> Sql:
    """`` AND event_id IN (...)``: only the lines of the first events of ``orders`` (a relation
    of commerce.orders' columns). An item's time and currency are its event's, so the window and
    currency conditions of ``orders`` may also bound the lines read (fewer rows scanned)."""
    return Sql(" AND event_id IN (SELECT first_event_id FROM ({orders}))").fill(orders=orders)


# A product's name: the latest non-empty name seen for it anywhere in the project, over all time
# (a line item's or a product_view's; the product_names_latest rollup keeps it per product, latest
# by (time, event id, line)), for the products in {products}.
LATEST_NAMES = Sql("""
    SELECT product_id, argMaxMerge(latest) AS name
    FROM product_names_latest
    WHERE project_id = {project} AND product_id IN {products}
    GROUP BY product_id
""")

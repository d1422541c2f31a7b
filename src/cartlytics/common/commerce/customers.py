"""Customers: the visitors of distinct orders, and their figures.

A customer is the person (commerce.visitors) of the visitor of an order's first event
(commerce.orders). Over a set of distinct
orders (a relation of ``orders.ORDER_COLUMNS``), per customer and currency: ``orders`` their
count, ``revenue`` the sum of their totals (Decimal128, cannot wrap), ``first_order_ts`` and
``last_order_ts`` the first and last of their times. Metrics (GET /analytics/customers) and the
customers export both read ``customer_figures``.

A customer's first order ever (new or returning) is its earliest distinct order in any currency
over all time; services/metrics/customers.py reads it from the ``customer_first`` rollup, with the
correction for duplicated orderIds it explains.
"""

from __future__ import annotations

from cartlytics.common.storage.sql import Sql

from .orders import ORDER_COLUMN_NAMES
from .visitors import as_people

_CUSTOMER_FIGURES = Sql("""
    SELECT order_visitor AS customer,
           order_currency AS customer_currency,
           count() AS orders,
           sum(toDecimal128(order_total, 0)) AS revenue,
           min(first_ts) AS first_order_ts,
           max(first_ts) AS last_order_ts
    FROM ({customer_orders})
    GROUP BY customer, customer_currency
""")


def customer_figures(orders: Sql) -> Sql:
    """One row per (customer, currency) of ``orders`` with the figures above, each customer a
    person (an order's visitor stitched to its user)."""
    return _CUSTOMER_FIGURES.fill(
        customer_orders=as_people(orders, ORDER_COLUMN_NAMES, "order_visitor")
    )

"""GET /analytics/customers: who bought in a period, how often, for how much.

A customer is a visitor with at least one of the period's distinct orders in the currency (each
order's first ``order_completed``, see orders.py; its visitor is that event's). docs/semantics.md
defines each figure:

- totalCustomers: those visitors;
- newCustomers: those whose first order ever (any currency, all time) is in the period;
- returningCustomers: totalCustomers - newCustomers (they had ordered before the period);
- repeatPurchaseRate: customers with two or more orders in the period / totalCustomers * 100,
  one decimal (0 without customers);
- revenuePerCustomer: the period's revenue / totalCustomers, rounded half up (0 without);
- topCustomers: by revenue descending, then customer id, with their orders and revenue.

One query reads the period's orders (``orders``, by time) and, for "returning", each visitor's
earliest order event row (``customer_first``, kept by a materialized view) instead of every
order ever stored.
"""

from __future__ import annotations

from cartlytics.common.money import average, percent
from cartlytics.common.storage import Row

from .base import OrdersReader
from .orders import (
    DUPLICATE_COUNT,
    DUPLICATE_IDS,
    PERIOD_ORDERS,
)
from .products import parse_limit
from .reports import CustomerRow, CustomersQuery, CustomersReport

# "Had an order before the period": a customer's first order ever is before {start} when one of
# its orders' winning events is. customer_first keeps each visitor's earliest order event row of
# any kind, which is a winner unless its orderId is listed in order_dups (it may be a later
# duplicate, or another visitor's order). So a customer with no row of a duplicated orderId
# before {start} is returning exactly when customer_first has a row of it before {start}.
EARLIER_VISITORS = """
    SELECT visitor_id FROM customer_first
    WHERE project_id = {project} AND finalizeAggregation(first_ts) < {start}
"""

# Without duplicated orderIds: each order's single row is its winner.
PLAIN_CUSTOMERS = """
    SELECT visitor_id AS customer, count() AS orders, sum(toDecimal128(total, 0)) AS revenue,
           customer IN ({earlier}) AS returning, 0 AS unsure
    FROM orders
    WHERE project_id = {project} AND currency = {currency} AND ts >= {start} AND ts < {end}
    GROUP BY visitor_id
""".replace("{earlier}", EARLIER_VISITORS)

# With duplicated orderIds (see orders.py for PERIOD_ORDERS): the earliest row customer_first
# keeps may be a row that lost (a later duplicate). When the winner of that order is the same
# visitor's, the winner is earlier still, so "customer_first before {start}" stays exact. Only
# rows before {start} of a duplicated orderId whose winner is *another* visitor's break it.
# DUPLICATE_VISITORS_BEFORE: per visitor with rows before {start} of duplicated orderIds, whether
# one is a winner (returning, then) and whether one is another visitor's order. A customer with
# the latter only is unsure: returning when it has a row before {start} of an orderId not listed
# (UNSURE_RETURNING reads `orders` for those; rare, as it takes an orderId reused by another
# visitor).
DUPLICATE_VISITORS_BEFORE = (
    """
    SELECT visitor AS customer,
           max(visitor = winner) AS dup_winner,
           max(visitor != winner) AS dup_other
    FROM (
        SELECT argMin(visitor_id, tuple(ts, event_id)) AS winner,
               groupArrayIf(visitor_id, ts < {start}) AS visitors_before
        FROM order_index
        WHERE project_id = {project} AND order_id IN ("""
    + DUPLICATE_IDS
    + """)
        GROUP BY order_id
    )
    ARRAY JOIN visitors_before AS visitor
    GROUP BY visitor
"""
)
CUSTOMERS_WITH_DUPLICATES = (
    """
    SELECT customer, orders, revenue,
           dup_winner OR (NOT dup_other AND customer IN ("""
    + EARLIER_VISITORS
    + """)) AS returning,
           dup_other AND NOT dup_winner AS unsure
    FROM (
        SELECT order_visitor AS customer, count() AS orders,
               sum(toDecimal128(order_total, 0)) AS revenue
        FROM ("""
    + PERIOD_ORDERS
    + """)
        GROUP BY order_visitor
    ) AS period_customers
    ANY LEFT JOIN ("""
    + DUPLICATE_VISITORS_BEFORE
    + """) AS duplicates USING customer
"""
)

# Customers, repeat customers, returning and unsure ones, revenue, the first {limit} customers by
# revenue descending then customer id, and whether the project has duplicated orderIds. Revenue
# enters the array as text (exact) and as a double (the sort key, exact wherever the figure can be
# answered at all: up to 2^53): ClickHouse 18.16 crashes on a Decimal128 inside groupArray.
SUMMARY = (
    """
    SELECT count(),
           countIf(orders >= 2),
           countIf(returning),
           countIf(unsure),
           sum(revenue),
           arraySlice(
               arraySort(
                   x -> (-x.4, x.1),
                   groupArray((customer, orders, toString(revenue), toFloat64(revenue)))),
               1, {limit}),
           """
    + DUPLICATE_COUNT
    + """
    FROM ({customers})
"""
)

UNSURE_RETURNING = (
    """
    SELECT count() FROM ("""
    + CUSTOMERS_WITH_DUPLICATES
    + """)
    WHERE unsure AND customer IN (
        SELECT visitor_id FROM orders
        WHERE project_id = {project} AND ts < {start}
          AND order_id NOT IN ("""
    + DUPLICATE_IDS
    + """)
          AND visitor_id IN (SELECT customer FROM ("""
    + DUPLICATE_VISITORS_BEFORE
    + """) WHERE dup_other))
"""
)


class CustomersReader(OrdersReader):
    async def customers(self, project_id: str, query: CustomersQuery) -> CustomersReport:
        window = self._window(query.period, query.timezone)
        limit = parse_limit(query.limit)
        currency = self._currency(query.currency)
        params = {
            "project": project_id,
            "currency": currency,
            "start": window.start,
            "end": window.end,
            "limit": limit,
        }
        duplicated = self._duplicated.known(project_id)
        summary = await self._summary(params, duplicated)
        if int(summary[6]) and not duplicated:
            self._duplicated.add(project_id)
            summary = await self._summary(params, duplicated=True)
        total, repeaters, returning, unsure, revenue = (int(v or 0) for v in summary[:5])
        if unsure:
            returning += int((await self._storage.query(UNSURE_RETURNING, params))[0][0])
        return CustomersReport(
            period=window.label,
            currency=currency,
            total_customers=total,
            new_customers=total - returning,
            returning_customers=returning,
            repeat_purchase_rate=percent(repeaters, total),
            revenue_per_customer=average(revenue, total),
            top_customers=[
                CustomerRow(customer_id=str(customer), orders=int(orders), revenue=int(revenue))
                for customer, orders, revenue, _ in summary[5]
            ],
        )

    async def _summary(self, params: dict[str, object], duplicated: bool) -> Row:
        customers = CUSTOMERS_WITH_DUPLICATES if duplicated else PLAIN_CUSTOMERS
        rows = await self._storage.query(SUMMARY.replace("{customers}", customers), params)
        return rows[0]

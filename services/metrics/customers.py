"""GET /analytics/customers: who bought in a period, how often, for how much.

A customer is a person (a visitor stitched to its user, cartlytics.common.commerce.visitors) with
at least one of the period's distinct orders in the currency (each order's first
``order_completed``, see cartlytics.common.commerce; its visitor is that event's). Every visitor
id below is read as its person, so "before the period" looks at every id of the person.
docs/semantics.md defines each figure:

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

from cartlytics.common.commerce.customers import customer_figures
from cartlytics.common.commerce.orders import (
    DUPLICATE_COUNT,
    DUPLICATE_IDS,
    PERIOD_ORDERS,
    first_events,
    order_rows,
)
from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.money import average, percent
from cartlytics.common.storage import Row, Sql

from .base import OrdersReader
from .products import parse_limit
from .reports import CustomerRow, CustomersQuery, CustomersReport

# "Had an order before the period": a customer's first order ever is before {start} when one of
# its orders' winning events is. customer_first keeps each visitor's earliest order event row of
# any kind, which is a winner unless its orderId is listed in order_dups (it may be a later
# duplicate, or another visitor's order). So a customer with no row of a duplicated orderId
# before {start} is returning exactly when customer_first has a row of it before {start}.
# The people are hashed (commerce.visitors: cheaper to carry and look up than their ids), and so
# is each customer when it is looked up among them (IS_EARLIER).
EARLIER_VISITORS = as_people(
    Sql("""
    SELECT visitor_id FROM customer_first
    WHERE project_id = {project} AND finalizeAggregation(first_ts) < {start}
"""),
    ("visitor_id",),
    "visitor_id",
    hashed=True,
)
IS_EARLIER = Sql("cityHash64({project}, customer) IN ({earlier})").fill(earlier=EARLIER_VISITORS)

# Without duplicated orderIds: each order event row of the period is a distinct order.
PLAIN_CUSTOMERS = Sql("""
    SELECT customer, orders, revenue, {is_earlier} AS returning, 0 AS unsure
    FROM ({period_customers})
""").fill(is_earlier=IS_EARLIER, period_customers=customer_figures(order_rows()))

# With duplicated orderIds (PERIOD_ORDERS, commerce/orders.py): the earliest row customer_first
# keeps may be a row that lost (a later duplicate). When the winner of that order is the same
# visitor's, the winner is earlier still, so "customer_first before {start}" stays exact. Only
# rows before {start} of a duplicated orderId whose winner is *another* visitor's break it.
# DUPLICATE_VISITORS_BEFORE: per visitor with rows before {start} of duplicated orderIds, whether
# one is a winner (returning, then) and whether one is another visitor's order. A customer with
# the latter only is unsure: returning when it has a row before {start} of an orderId not listed
# (UNSURE_RETURNING reads `orders` for those; rare, as it takes an orderId reused by another
# visitor).
_DUPLICATE_ROWS_BEFORE = Sql("""
    SELECT visitor, order_visitor
    FROM ({duplicated_orders})
    ARRAY JOIN visitors_before AS visitor
""").fill(
    duplicated_orders=first_events(
        Sql("order_index"),
        Sql(" AND order_id IN ({duplicate_ids})").fill(duplicate_ids=DUPLICATE_IDS),
        also=Sql(",\n           groupArrayIf(visitor_id, ts < {start}) AS visitors_before"),
    )
)
# Both sides as people: a row's visitor and the winner's visitor may be two ids of one person.
DUPLICATE_VISITORS_BEFORE = Sql("""
    SELECT visitor AS customer,
           max(visitor = order_visitor) AS dup_winner,
           max(visitor != order_visitor) AS dup_other
    FROM ({duplicate_rows_before})
    GROUP BY visitor
""").fill(
    duplicate_rows_before=as_people(
        as_people(_DUPLICATE_ROWS_BEFORE, ("visitor", "order_visitor"), "visitor"),
        ("visitor", "order_visitor"),
        "order_visitor",
    )
)
CUSTOMERS_WITH_DUPLICATES = Sql("""
    SELECT customer, orders, revenue,
           dup_winner OR (NOT dup_other AND {is_earlier}) AS returning,
           dup_other AND NOT dup_winner AS unsure
    FROM ({period_customers}) AS period_customers
    ANY LEFT JOIN ({duplicate_visitors_before}) AS duplicates USING customer
""").fill(
    is_earlier=IS_EARLIER,
    period_customers=customer_figures(PERIOD_ORDERS),
    duplicate_visitors_before=DUPLICATE_VISITORS_BEFORE,
)

# Customers, repeat customers, returning and unsure ones, revenue, the first {limit} customers by
# revenue descending then customer id, and whether the project has duplicated orderIds. Revenue
# enters the array as text (exact) and as a double (the sort key, exact wherever the figure can be
# answered at all: up to 2^53): ClickHouse 18.16 crashes on a Decimal128 inside groupArray.
_SUMMARY = Sql("""
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
           {duplicate_count}
    FROM ({customers})
""").fill(duplicate_count=DUPLICATE_COUNT)
PLAIN_SUMMARY = _SUMMARY.fill(customers=PLAIN_CUSTOMERS)
SUMMARY_WITH_DUPLICATES = _SUMMARY.fill(customers=CUSTOMERS_WITH_DUPLICATES)

UNSURE_RETURNING = Sql("""
    SELECT count() FROM ({customers})
    WHERE unsure AND customer IN (
        SELECT visitor_id FROM ({earlier_rows})
        WHERE visitor_id IN (SELECT customer FROM ({duplicate_visitors_before}) WHERE dup_other))
""").fill(
    customers=CUSTOMERS_WITH_DUPLICATES,
    earlier_rows=as_people(
        Sql("""
        SELECT visitor_id FROM orders
        WHERE project_id = {project} AND ts < {start}
          AND order_id NOT IN ({duplicate_ids})""").fill(duplicate_ids=DUPLICATE_IDS),
        ("visitor_id",),
        "visitor_id",
    ),
    duplicate_visitors_before=DUPLICATE_VISITORS_BEFORE,
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
        rows = await self._storage.query(
            SUMMARY_WITH_DUPLICATES if duplicated else PLAIN_SUMMARY, params
        )
        return rows[0]

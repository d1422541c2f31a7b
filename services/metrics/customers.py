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
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cartlytics.common.money import average, parse_currency, percent
from cartlytics.common.periods import parse_timezone, resolve_period
from cartlytics.common.storage import Storage

from .orders import FIRST_ORDERS
from .products import parse_limit
from .reports import CustomerRow, CustomersQuery, CustomersReport

# One row per visitor with an order in the period (in the currency): its orders and revenue
# there, and the time of its first order ever (any currency).
PER_CUSTOMER = """
    SELECT order_visitor AS customer,
           countIf(in_period) AS orders,
           sumIf(order_total, in_period) AS revenue,
           min(first_ts) AS first_ever
    FROM (
        SELECT order_visitor, order_total, first_ts,
               (order_currency = {currency} AND first_ts >= {start} AND first_ts < {end})
                   AS in_period
        FROM ({first_orders})
    )
    GROUP BY order_visitor
    HAVING orders > 0
"""

SUMMARY = """
    SELECT count(), countIf(orders >= 2), countIf(first_ever >= {start}), sum(revenue)
    FROM ({per_customer})
"""

TOP_CUSTOMERS = """
    SELECT customer, orders, revenue
    FROM ({per_customer})
    ORDER BY revenue DESC, customer ASC
    LIMIT {limit}
"""


class CustomersReader:
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._default_currency = default_currency
        self._clock = clock

    async def customers(self, project_id: str, query: CustomersQuery) -> CustomersReport:
        zone = parse_timezone(query.timezone)
        window = resolve_period(query.period, zone, self._clock())
        limit = parse_limit(query.limit)
        currency = parse_currency(query.currency, self._default_currency)
        params = {
            "project": project_id,
            "currency": currency,
            "start": window.start,
            "end": window.end,
            "limit": limit,
        }
        per_customer = PER_CUSTOMER.replace("{first_orders}", FIRST_ORDERS)
        summary = await self._storage.query(SUMMARY.replace("{per_customer}", per_customer), params)
        total, repeaters, new, revenue = (int(value or 0) for value in summary[0])
        top = await self._storage.query(
            TOP_CUSTOMERS.replace("{per_customer}", per_customer), params
        )
        return CustomersReport(
            period=window.label,
            currency=currency,
            total_customers=total,
            new_customers=new,
            returning_customers=total - new,
            repeat_purchase_rate=percent(repeaters, total),
            revenue_per_customer=average(revenue, total),
            top_customers=[
                CustomerRow(customer_id=str(customer), orders=int(orders), revenue=int(revenue))
                for customer, orders, revenue in top
            ],
        )

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

import asyncio

from cartlytics.common.commerce.customers import customer_figures
from cartlytics.common.commerce.orders import (
    DUPLICATE_COUNT,
    DUPLICATE_IDS,
    PERIOD_ORDERS,
    first_events,
    order_rows,
)
from cartlytics.common.commerce.visitors import CHANGES, as_people, snapshot_get
from cartlytics.common.money import average, percent
from cartlytics.common.storage import Row, Sql, StorageError
from cartlytics.common.storage.current_snapshot import missing

from .base import OrdersReader
from .products import parse_limit
from .reports import CustomerRow, CustomersQuery, CustomersReport

# "Had an order before the period": a customer's first order ever is before {start} when one of
# its orders' winning events is. customer_first keeps each visitor's earliest order event row of
# any kind, which is a winner unless its orderId is listed in order_dups (it may be a later
# duplicate, or another visitor's order). So a customer with no row of a duplicated orderId
# before {start} is returning exactly when customer_first has a row of it before {start}.
# People are hashed (commerce.visitors: cheaper to carry and look up than their ids): each
# customer as ``customer_hash``.
#
# "Has a row before {start}" is read in two parts, like people (decision 63), by two queries
# that run at once:
# - SUMMARIES (fast): the build's table ({snapshot_first}, people_snapshot.py): per person of the
#   build, the earliest customer_first time of its devices (rows up to {snapshot_first_block}).
#   Customers it does not call returning, and whom an earlier row could make so, are listed
#   (``candidates``);
# - SIDE: its second column, the persons that rows the build does not hold, or holds for another
#   person, make returning: customer_first rows of later blocks, each read as its person now,
#   and the build's figure of each device whose person changed since (visitors.CHANGES) as its
#   person now; its first, whether a change is a hazard, i.e. may have made the build's figure of
#   some person wrong: a device moved away from a person whose figure is "before" and who keeps
#   other devices (a device linked in the build, given an earlier link since; an unlinked one
#   whose own id is also a user's: an anonymousId equal to a userId). Rare: the reader then
#   counts with EXACT_EARLIER, which hashes every earlier customer per query (~28 ms at 10M).
# A candidate among SIDE's persons is returning. Both queries are given the same build's values.
#
# Per device whose person changed since the build: its person now, its person in the build (the
# user it was linked to, else its own id) and what the build says of that person. A device
# linked in the build moved away from a user, who ``others`` then is.
_CHANGED = Sql(f"""
    SELECT visitor_hash, changed_person, build_person,
           joinGet('{{snapshot_first}}', 'known', build_person) = 1
             AND joinGet('{{snapshot_first}}', 'first_ts', build_person) < {{start}}
             AS build_earlier,
           joinGet('{{snapshot_first}}', 'others', build_person) = 1 AS build_others
    FROM (
        SELECT visitor_hash, changed_person,
               if(snapshot_person != 0, snapshot_person, visitor_hash) AS build_person
        FROM (SELECT changed_person, visitor_hash,
                     {snapshot_get("snapshot_people", "snapshot_person")} AS snapshot_person
              FROM ({{changes}})))""").fill(changes=CHANGES)
# SIDE reads the changes once (each read of ``people`` costs milliseconds however few its rows),
# as arrays (``ch``: devices, persons now, persons in the build, the build's figures): hazards,
# then the persons made returning, i.e. the changed devices' own build figures (a user's is a
# hazard) and the later customer_first rows (each device as its person now: the changes', else
# the build's, else its own id). transform() looks a device up among the changes (0: none; a
# leading 0 keeps its arrays non-empty).
SIDE = Sql(f"""
    WITH (SELECT tuple(groupArray(visitor_hash), groupArray(changed_person),
                       groupArray(build_person), groupArray(build_earlier),
                       groupArray(build_others))
          FROM ({{changed}})) AS ch
    SELECT
        arrayExists((earlier, others) -> earlier AND others, ch.4, ch.5)
          OR notEmpty(arrayIntersect(arrayFilter((person, earlier) -> earlier, ch.3, ch.4), ch.2))
          AS hazards,
        arrayConcat(
            arrayFilter((person, earlier, others) -> earlier AND NOT others, ch.2, ch.4, ch.5),
            groupArray(if(
                (transform(visitor_hash, arrayPushFront(ch.1, toUInt64(0)),
                           arrayPushFront(ch.2, toUInt64(0)), toUInt64(0)) AS changed_person) != 0,
                changed_person, if(snapshot_person != 0, snapshot_person, visitor_hash))))
    FROM (
        SELECT visitor_hash,
               {snapshot_get("snapshot_people", "snapshot_person")} AS snapshot_person
        FROM (
            SELECT cityHash64({{project}}, visitor_id) AS visitor_hash FROM customer_first
            WHERE project_id = {{project}}
              AND toUInt64(splitByChar('_', _part)[3]) > {{snapshot_first_block}}
              AND finalizeAggregation(first_ts) < {{start}}))""").fill(changed=_CHANGED)
IN_BUILD = Sql("""(
    joinGet('{snapshot_first}', 'known', customer_hash) = 1
    AND joinGet('{snapshot_first}', 'first_ts', customer_hash) < {start})""")

# Every customer before {start}, each device read as its person now: exact whatever the build.
EARLIER_VISITORS = as_people(
    Sql("""
    SELECT visitor_id FROM customer_first
    WHERE project_id = {project} AND finalizeAggregation(first_ts) < {start}
"""),
    ("visitor_id",),
    "visitor_id",
    hashed=True,
)
EXACT_EARLIER = Sql("customer_hash IN ({earlier})").fill(earlier=EARLIER_VISITORS)

_HASH = "cityHash64({project}, customer) AS customer_hash"


def _plain_customers(exact: bool) -> Sql:
    """Without duplicated orderIds: each order event row of the period is a distinct order."""
    return Sql(f"""
    SELECT customer, orders, revenue, {_HASH}, {{is_earlier}} AS returning,
           NOT returning AND {{fast}} AS candidate, 0 AS unsure
    FROM ({{period_customers}})
""").fill(
        is_earlier=EXACT_EARLIER if exact else IN_BUILD,
        fast=Sql("0" if exact else "1"),
        period_customers=customer_figures(order_rows()),
    )


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


def _customers_with_duplicates(exact: bool) -> Sql:
    return Sql(f"""
    SELECT customer, orders, revenue, {_HASH},
           dup_winner OR (NOT dup_other AND {{is_earlier}}) AS returning,
           NOT returning AND NOT dup_other AND {{fast}} AS candidate,
           dup_other AND NOT dup_winner AS unsure
    FROM ({{period_customers}}) AS period_customers
    ANY LEFT JOIN ({{duplicate_visitors_before}}) AS duplicates USING customer
""").fill(
        is_earlier=EXACT_EARLIER if exact else IN_BUILD,
        fast=Sql("0" if exact else "1"),
        period_customers=customer_figures(PERIOD_ORDERS),
        duplicate_visitors_before=DUPLICATE_VISITORS_BEFORE,
    )


# Customers, repeat customers, returning and unsure ones, revenue, the first {limit} customers by
# revenue descending then customer id, whether the project has duplicated orderIds, and the
# candidates (their hashes: none when counting exactly). Revenue
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
           {duplicate_count},
           groupArrayIf(customer_hash, candidate)
    FROM ({customers})
""").fill(duplicate_count=DUPLICATE_COUNT)
# By (duplicated, exact).
SUMMARIES = {
    (duplicated, exact): _SUMMARY.fill(
        customers=_customers_with_duplicates(exact) if duplicated else _plain_customers(exact)
    )
    for duplicated in (False, True)
    for exact in (False, True)
}

UNSURE_RETURNING = Sql("""
    SELECT count() FROM ({customers})
    WHERE unsure AND customer IN (
        SELECT visitor_id FROM ({earlier_rows})
        WHERE visitor_id IN (SELECT customer FROM ({duplicate_visitors_before}) WHERE dup_other))
""").fill(
    customers=_customers_with_duplicates(exact=False),
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
        params: dict[str, object] = {
            "project": project_id,
            "currency": currency,
            "start": window.start,
            "end": window.end,
            "limit": limit,
        }
        # One build for every query below (each query alone names one build anyway).
        build = await asyncio.to_thread(self._storage.snapshot.values)
        if int(build["snapshot_block"]) > 0:
            try:
                summary, returning = await self._summary(project_id, {**params, **build})
            except StorageError as exc:
                if not missing(exc):
                    raise
                # The build was dropped meanwhile: counted exactly instead.
                summary, returning = await self._summary(project_id, params, exact=True)
        else:  # no build (a new store, after a purge, or a cluster)
            summary, returning = await self._summary(project_id, params, exact=True)
        total, repeaters, _, unsure, revenue = (int(v or 0) for v in summary[:5])
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

    async def _summary(
        self, project_id: str, params: dict[str, object], exact: bool = False
    ) -> tuple[Row, int]:
        """The summary row and its returning customers (the unsure ones apart): the fast reading
        and SIDE at once, or the exact reading (``exact``, or when SIDE finds hazards)."""
        duplicated = self._duplicated.known(project_id)
        side: Row | None = None
        if exact:
            summary = await self._summary_row(params, duplicated, exact)
        else:
            main, sides = await asyncio.gather(
                self._summary_row(params, duplicated, exact),
                self._storage.query(SIDE, params),
                return_exceptions=True,
            )
            if isinstance(main, BaseException):
                raise main
            if isinstance(sides, BaseException):
                raise sides
            summary, side = main, sides[0]
        if int(summary[6]) and not duplicated:
            self._duplicated.add(project_id)
            duplicated = True
            summary = await self._summary_row(params, duplicated, exact)
        returning = int(summary[2] or 0)
        if side is not None:
            hazards, earlier_changes = side
            if int(hazards):
                summary = await self._summary_row(params, duplicated, exact=True)
                returning = int(summary[2] or 0)
            else:
                candidates = {int(h) for h in summary[7]}
                returning += len(candidates.intersection(int(h) for h in earlier_changes))
        return summary, returning

    async def _summary_row(self, params: dict[str, object], duplicated: bool, exact: bool) -> Row:
        rows = await self._storage.query(SUMMARIES[duplicated, exact], params)
        return rows[0]

"""GET /analytics/products: the top sellers of a period, from the line items of its orders.

Per productId, over the line items of the period's distinct orders in the currency (each order's
first ``order_completed``, see cartlytics.common.commerce): revenue = sum(price * quantity),
unitsSold = sum(quantity). conversionRate = distinct visitors who bought it (the visitors of
those orders) / distinct visitors with a ``product_view`` of it in the period * 100, one
decimal, 0 when nobody viewed it. name = the latest name seen for the product.
docs/semantics.md defines each figure.

How, usually in two rounds of two queries run at once (each reads only the period, or a few
products):

1. Top sellers from ``order_lines`` (one row per stored order event row, its lines as arrays;
   ingest writes it after the event, so every row there has its event), and beside it the check:
   the order event rows and order_lines rows stored in the period's 15-minute buckets
   (``order_line_counts``), and how many orderIds of the project are duplicated. Each event row
   has at most one order_lines row, so equal counts mean none is missing; otherwise (a write that
   failed between the two) the figures are read from ``order_items`` (``FROM_ORDER_ITEMS``).
   Projects without duplicated orderIds take the single row of each order; others also pick the
   winner of each duplicated orderId (commerce/orders.py).
2. Viewers (``product_views``) and names (``product_names_latest``) of those products.

Round 2 starts with round 1 for the products the reader answered last to the same ask, or to the
project in that currency (``TopSellerGuesses``): a dashboard asks the same again and again, and
its top sellers seldom change; a product not guessed is read after, and the figures are read
afresh either way (at 10M events, ~50 -> ~38 ms in-process: decision 63).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from cartlytics.common.commerce.orders import (
    DUPLICATE_COUNT,
    DUPLICATE_IDS,
    PERIOD_DUPLICATED_ORDERS,
    PERIOD_ORDERS,
)
from cartlytics.common.commerce.products import (
    BUYERS,
    LATEST_NAMES,
    LINE_ITEM_COLUMNS,
    LINE_REVENUE,
    UNITS_SOLD,
    first_events_of,
    line_items,
)
from cartlytics.common.commerce.visitors import HASHED_PERSON, as_people, joined_people
from cartlytics.common.errors import invalid_field
from cartlytics.common.money import percent
from cartlytics.common.storage import Row, Sql, Storage

from .base import OrdersReader, quarter_ceil, quarter_floor
from .reports import ProductRow, ProductsQuery, ProductsReport

DEFAULT_LIMIT = 10
MAX_LIMIT = 100

# The check row: (order event rows, order_lines rows) in the buckets covering the period, and the
# number of duplicated orderIds of the project.
CHECK = Sql("""
    SELECT toInt64(sum(event_rows)), toInt64(sum(line_rows)), toUInt64({duplicate_count})
    FROM order_line_counts
    WHERE project_id = {project} AND currency = {currency}
      AND bucket >= {check_start} AND bucket < {check_end}
""").fill(duplicate_count=DUPLICATE_COUNT)

# Per product over a set of order_lines rows (visitor_id and the three arrays), their line items
# (commerce/products.py's figures), buyers as people (commerce/visitors.py). The arrays are of
# Nullable only for chdb's Arrow insert; no element is NULL. The people are joined in the same
# SELECT as the ARRAY JOIN: one subquery layer fewer (ClickHouse's planning is half of this
# query's time at 10M events; decision 63).
_TOP = Sql("""
    SELECT item_product AS product,
           {line_revenue} AS revenue,
           toInt64({units_sold}) AS units,
           toUInt64({buyers}) AS buyers
    FROM (
        SELECT assumeNotNull(product_id) AS item_product,
               assumeNotNull(price) AS item_price,
               assumeNotNull(quantity) AS item_quantity,
               {person} AS item_visitor
        FROM {lines_with_people}
        ARRAY JOIN product_ids AS product_id, prices AS price, quantities AS quantity
    )
    GROUP BY product
    ORDER BY revenue DESC, product ASC
    LIMIT {limit}
""").fill(
    line_revenue=LINE_REVENUE, units_sold=UNITS_SOLD, buyers=BUYERS, person=Sql(HASHED_PERSON)
)

# The order_lines rows of the period in the currency (each order's single row, when the project
# has no duplicated orderId).
PERIOD_LINES = Sql("""
    SELECT visitor_id, product_ids, prices, quantities
    FROM order_lines
    WHERE project_id = {project} AND currency = {currency} AND ts >= {start} AND ts < {end}
""")

# The same when orderIds are duplicated: rows of orderIds not in order_dups, and the winning event
# of each listed one whose first event is in the period and currency; each (order, event) once,
# should an event be stored twice.
PERIOD_LINES_WITH_DUPLICATES = PERIOD_LINES + Sql("""
      AND (order_id NOT IN ({duplicate_ids})
           OR event_id IN (SELECT first_event_id FROM ({period_duplicated_orders})))
    LIMIT 1 BY order_id, event_id
""").fill(duplicate_ids=DUPLICATE_IDS, period_duplicated_orders=PERIOD_DUPLICATED_ORDERS)

LINES_COLUMNS = ("visitor_id", "product_ids", "prices", "quantities")


def _top(lines: Sql) -> Sql:
    """_TOP over ``lines``."""
    return _TOP.fill(lines_with_people=joined_people(lines, LINES_COLUMNS, "visitor_id"))


# The check and the top sellers are two queries, run at once (a UNION ALL of both planned and ran
# them one after the other in one query, ~10 ms longer at 10M events).
TOP_SELLERS = _top(PERIOD_LINES)
TOP_SELLERS_WITH_DUPLICATES = _top(PERIOD_LINES_WITH_DUPLICATES)

# The same figures from order_items: the line items of the period's winning events
# (PERIOD_ORDERS), once per (event, line) even when an event's lines were stored twice.
FROM_ORDER_ITEMS = Sql("""
    SELECT item_product,
           {line_revenue} AS revenue,
           {units_sold} AS units,
           {buyers} AS buyers
    FROM ({items})
    GROUP BY item_product
    ORDER BY revenue DESC, item_product ASC
    LIMIT {limit}
""").fill(
    line_revenue=LINE_REVENUE,
    units_sold=UNITS_SOLD,
    buyers=BUYERS,
    items=as_people(
        line_items(
            Sql(" AND currency = {currency} AND ts >= {start} AND ts < {end}")
            + first_events_of(PERIOD_ORDERS)
        ),
        LINE_ITEM_COLUMNS,
        "item_visitor",
        hashed=True,
    ),
)

# Per product: distinct people with a product_view in the period (people joined in the same
# SELECT, as for _TOP); run at once with LATEST_NAMES (commerce.products).
VIEWERS = Sql("""
    SELECT product_id, uniqExact({person})
    FROM {views_with_people}
    GROUP BY product_id
""").fill(
    person=Sql(HASHED_PERSON),
    views_with_people=joined_people(
        Sql("""
        SELECT product_id, visitor_id FROM product_views
        WHERE project_id = {project} AND product_id IN {products}
          AND ts >= {start} AND ts < {end}"""),
        ("product_id", "visitor_id"),
        "visitor_id",
    ),
)


def parse_limit(value: int, field: str = "limit") -> int:
    if value == 0:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise invalid_field(field, f"must be from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    return value


class TopSellerGuesses:
    """The products last answered per ask (project, currency, period, zone), the guess of the
    next answer to it: a dashboard asks the same again and again, and its top sellers seldom
    change. Else the project's last answer in that currency (another period of the same shop).
    Bounded: the least recently used are forgotten."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        # Keyed by the whole ask, and by its first two parts (the project, the currency).
        self._answers: OrderedDict[tuple[str, ...], tuple[str, ...]] = OrderedDict()

    def guess(self, ask: tuple[str, str, str, str]) -> tuple[str, ...]:
        return self._answers.get(ask) or self._answers.get(ask[:2], ())

    def remember(self, ask: tuple[str, str, str, str], products: tuple[str, ...]) -> None:
        for key in (ask, ask[:2]):
            self._answers[key] = products
            self._answers.move_to_end(key)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)


class ProductsReader(OrdersReader):
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(storage, default_currency, clock)
        self._guesses = TopSellerGuesses()

    async def top_sellers(self, project_id: str, query: ProductsQuery) -> ProductsReport:
        window = self._window(query.period, query.timezone)
        limit = parse_limit(query.limit)
        currency = self._currency(query.currency)
        params = {
            "project": project_id,
            "currency": currency,
            "start": window.start,
            "end": window.end,
            "check_start": quarter_floor(window.start),
            "check_end": quarter_ceil(window.end),
            "limit": limit,
        }
        asked = (project_id, currency, query.period, query.timezone)
        guessed = self._guesses.guess(asked)
        if guessed:
            # The viewers and names of the guessed products run beside the top sellers.
            sellers, (viewers, names) = await asyncio.gather(
                self._sellers(project_id, params), self._details({**params, "products": guessed})
            )
        else:
            sellers = await self._sellers(project_id, params)
            viewers, names = {}, {}
        products = tuple(str(row[0]) for row in sellers)
        if products:
            self._guesses.remember(asked, products)
        missing = tuple(product for product in products if product not in viewers)
        if missing:
            more_viewers, more_names = await self._details({**params, "products": missing})
            viewers.update(more_viewers)
            names.update(more_names)
        return ProductsReport(
            top_sellers=[
                ProductRow(
                    product_id=str(product),
                    name=names.get(str(product), ""),
                    revenue=int(revenue),
                    units_sold=int(units),
                    conversion_rate=percent(int(buyers), viewers[str(product)]),
                )
                for product, revenue, units, buyers in sellers
            ]
        )

    async def _details(self, params: dict[str, object]) -> tuple[dict[str, int], dict[str, str]]:
        """The viewers (every product asked, 0 when nobody viewed it) and the names (those
        known) of the ``{products}`` in ``params``."""
        viewer_rows, name_rows = await asyncio.gather(
            self._storage.query(VIEWERS, params), self._storage.query(LATEST_NAMES, params)
        )
        viewers = dict.fromkeys(cast(tuple[str, ...], params["products"]), 0)
        viewers.update((str(product), int(count)) for product, count in viewer_rows)
        return viewers, {str(product): str(name) for product, name in name_rows}

    async def _sellers(self, project_id: str, params: dict[str, object]) -> list[Row]:
        """(product, revenue, units, buyers) of the top sellers, best first."""
        duplicated = self._duplicated.known(project_id)
        sql = TOP_SELLERS_WITH_DUPLICATES if duplicated else TOP_SELLERS
        # The check runs beside the top sellers: an order event row stored without its
        # order_lines row stays so (a write failed between the two), so a check that starts a
        # moment apart still sees it; one in flight at that moment can only send this read to
        # order_items, which is exact too.
        check, rows = await asyncio.gather(
            self._storage.query(CHECK, params), self._storage.query(sql, params)
        )
        event_rows, line_rows, duplicates = (int(value) for value in check[0])
        if event_rows != line_rows:
            # An order event of the period has no order_lines row: read order_items instead.
            return await self._storage.query(FROM_ORDER_ITEMS, params)
        if duplicates and not duplicated:
            self._duplicated.add(project_id)
            return await self._sellers(project_id, params)
        return rows

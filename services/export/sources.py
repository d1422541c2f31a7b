"""Where each export type's rows come from: page by page, each page streamed in blocks.

Memory stays flat whatever the range: the range is cut into pages of about PAGE_ROWS rows
(whole UTC days, from a per-day count), each page is one query whose result ClickHouse sorts
and joins within the page, and its rows come in blocks (``Storage.stream``, on a connection of
its own). Sources yield *batches*: plain functions that turn one block into output rows, which
the exporter runs off the event loop.

Orders, line items, customers and products are the commerce model's, the definitions metrics
reads (``cartlytics.common.commerce``): an orderId counts once, by its first
``order_completed`` by (timestamp, event id); its time, total, currency, visitor and line items
are that event's. A page's orders are ``commerce.orders.orders_between`` for the page, computed
without grouping every order (which would hold them all in memory): an orderId that
``order_dups`` does not list has a single stored event, its winner; the few listed ones get
theirs over all their rows. Line items are ``commerce.products.line_items`` of the winning
events, each (event, line) once, joined to their order inside the page's query; the orders
export reads them from ``order_lines`` instead (the event's lines as arrays, no grouping) on
every page where ``order_line_counts`` shows that no order event lacks its row there. Customers'
and products' figures are commerce's SQL (``customer_figures``, ``products.LINE_REVENUE``...).

Events are deduplicated by event id: a retried event may be stored twice, at the same time or
(when the server timed it) another one, possibly in another page; a first pass over the whole
range finds the ids stored more than once (as 64-bit hashes, so ClickHouse holds 8 bytes per
event for it, not the ids) with the time of their earliest copy, and each page keeps, of those,
only the copy at that time (once, if two copies share it).

Every source gives its rows as batches for the encoders; the sources but products (whose rows
are the pages' totals added up in Python) also give them as ready lines written by ClickHouse
(``text_lines`` with ``csv_sql.csv_lines_sql`` or ``json_sql.json_lines_sql``), the fast path of
the CSV, NDJSON and JSON exports.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from typing import Any, Protocol

from cartlytics.common.commerce.customers import customer_figures
from cartlytics.common.commerce.orders import ORDER_COLUMN_NAMES, orders_between
from cartlytics.common.commerce.products import (
    LATEST_CATEGORY,
    LATEST_NAMES,
    LINE_REVENUE,
    ORDERS_LISTING,
    UNITS_SOLD,
    first_events_of,
    line_items,
)
from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.money import average
from cartlytics.common.storage import Row, Storage
from cartlytics.common.storage.sql import EMPTY, Sql, decimal_text, when

from .csv_sql import ZONE_SLOT
from .formats import Column, Kind
from .request import ExportPlan

Batch = Callable[[], list[Row]]
"""CPU work for one block of storage rows: returns the export's rows for it (maybe none)."""


class Source(Protocol):
    @property
    def columns(self) -> Sequence[Column]: ...

    def batches(self) -> AsyncGenerator[Batch, None]: ...


LineWriter = Callable[[Sql, Sequence[Column], Sequence[Sql], str], Sql]
"""SQL that writes each row of a query as one line of text (``csv_sql.csv_lines_sql``,
``json_sql.json_lines_sql``): (inner SQL, columns, value expressions, zone) -> SQL, whose
``{export_zone}`` slot takes the zone (``csv_sql.ZONE_SLOT``). A source with ``text_lines(zone,
writer)`` gives its rows as such lines (``\\n`` after each)."""


# ------------------------------------------------------------------------------------ columns

T, N, S, J = Kind.TIME, Kind.INT, Kind.TEXT, Kind.JSON


def _columns(*spec: tuple[str, Kind]) -> tuple[Column, ...]:
    return tuple(Column(name, kind) for name, kind in spec)


ORDERS_COLUMNS = _columns(
    ("orderId", S), ("timestamp", T), ("userId", S), ("total", N), ("currency", S),
    ("items", N), ("units", N), ("products", S), ("eventId", S),
)  # fmt: skip
ORDER_ITEMS_COLUMNS = _columns(
    ("orderId", S), ("timestamp", T), ("userId", S), ("currency", S), ("line", N),
    ("productId", S), ("name", S), ("category", S), ("price", N), ("quantity", N),
    ("revenue", N), ("eventId", S),
)  # fmt: skip
EVENTS_COLUMNS = _columns(
    ("eventId", S), ("event", S), ("timestamp", T), ("receivedAt", T), ("userId", S),
    ("anonymousId", S), ("sessionId", S), ("page", S), ("productId", S), ("orderId", S),
    ("total", N), ("currency", S), ("device", S), ("browser", S), ("os", S), ("country", S),
    ("region", S), ("referrerHost", S), ("utmSource", S), ("utmMedium", S),
    ("utmCampaign", S), ("utmTerm", S), ("utmContent", S), ("properties", J), ("context", J),
)  # fmt: skip
PRODUCTS_COLUMNS = _columns(
    ("productId", S), ("name", S), ("category", S), ("currency", S), ("orders", N),
    ("unitsSold", N), ("revenue", N),
)  # fmt: skip
CUSTOMERS_COLUMNS = _columns(
    ("customerId", S), ("currency", S), ("orders", N), ("revenue", N),
    ("averageOrderValue", N), ("firstOrderAt", T), ("lastOrderAt", T),
)  # fmt: skip


# ---------------------------------------------------------------------------------------- SQL
# Every query is a Sql constant. Its {name} slots are filled by ``render`` from the page's
# parameters (``Scope.params``): values (project, bounds, currency, zone, ...) as literals, and
# the fragments that bound a query to the page, chosen here from fixed pieces (never request
# text): {in_window} (the page's bounds on ``ts``), {in_currency}, the times as epoch
# milliseconds ({ts_ms}, {order_ms}, {received_ms}), and the page's distinct orders
# ({page_orders}, the commerce model's, cartlytics.common.commerce).

ORDERS_TABLE = Sql("orders")
EVENTS_TABLE = Sql("events")

# The page's distinct orders (one row per orderId, its winning event), in the export's column
# names; ``orders`` is commerce.orders.orders_between for the page.
PAGE_ORDERS = Sql("""
    SELECT order_id, first_event_id AS event_id, first_ts AS order_ts, order_visitor AS visitor,
           order_total AS amount, toString(order_currency) AS cur
    FROM ({orders})
""")

# The page's line items (commerce.products.line_items: each (event, line) once, a retried
# event's lines may be stored twice), in the export's column names.
PAGE_LINES = Sql("""
    SELECT item_order AS order_id, event_id, line, item_product AS product,
           item_price AS unit_price, item_quantity AS qty, item_name AS product_name,
           item_category AS product_category
    FROM ({items})
""").fill(items=line_items(Sql("{in_window}{in_currency}")))

# type=orders: each distinct order with its lines summed up: count, units and
# "prod_a x2 @ 2999; prod_b x1 @ 999" (in line order). `items` is the order's own
# properties.items where its order_lines row has it (declared_items >= 0), else the line count;
# a missing order_lines row joins as 0, hence the + 1 (0: not known here).
ORDERS_SQL = Sql("""
    SELECT t, order_id, event_id, visitor, amount, cur,
           if(declared_plus_one > 0, declared_plus_one - 1, toInt64(line_count)) AS items,
           units, summary
    FROM (
        SELECT {order_ms} AS t, order_id, event_id, visitor, amount, cur, line_count, units,
               summary
        FROM ({page_orders}) AS page_orders
        ANY LEFT JOIN (
            SELECT order_id, event_id, count() AS line_count, sum(qty) AS units,
                   arrayStringConcat(
                       arrayMap(x -> concat(x.2, ' x', toString(x.3), ' @ ', toString(x.4)),
                                arraySort(groupArray((line, product, qty, unit_price)))),
                       '; ') AS summary
            FROM ({page_lines})
            GROUP BY order_id, event_id
        ) AS page_lines USING (order_id, event_id)
    ) AS with_lines
    ANY LEFT JOIN (
        SELECT order_id, event_id, any(declared_items) + 1 AS declared_plus_one
        FROM order_lines
        WHERE project_id = {project}{in_window}{in_currency}
        GROUP BY order_id, event_id
    ) AS declared USING (order_id, event_id)
    ORDER BY t, order_id, event_id
""").fill(page_lines=PAGE_LINES)

# The same from order_lines (ingest's one row per order event, its lines as arrays in line
# order): no grouping of line items per page, the larger part of the query's cost. Used for a
# page only when LINES_COMPLETE shows every order event row there has its order_lines row.
# (The arrays are of Nullable only for chdb's Arrow insert; no element is NULL.)
ORDERS_FROM_LINES_SQL = Sql("""
    SELECT {order_ms} AS t, order_id, event_id, visitor, amount, cur, items, units, summary
    FROM ({page_orders}) AS page_orders
    ANY LEFT JOIN (
        SELECT order_id, event_id, if(declared >= 0, declared, toInt64(length(products))) AS items,
               arraySum(arrayMap(q -> assumeNotNull(q), quantities)) AS units,
               arrayStringConcat(
                   arrayMap((p, q, u) -> concat(assumeNotNull(p), ' x', toString(assumeNotNull(q)),
                                                ' @ ', toString(assumeNotNull(u))),
                            products, quantities, unit_prices),
                   '; ') AS summary
        FROM (
            SELECT order_id, event_id, any(product_ids) AS products,
                   any(quantities) AS quantities, any(prices) AS unit_prices,
                   any(declared_items) AS declared
            FROM order_lines
            WHERE project_id = {project}{in_window}{in_currency}
            GROUP BY order_id, event_id
        )
    ) AS order_lines USING (order_id, event_id)
    ORDER BY t, order_id, event_id
""")

# (order event rows, order_lines rows) in the 15-minute buckets that cover a page: equal means
# no order event there lacks its order_lines row (a flush that failed between the two).
LINES_COMPLETE = Sql("""
    SELECT toInt64(sum(event_rows)) AS events, toInt64(sum(line_rows)) AS lines
    FROM order_line_counts
    WHERE project_id = {project}{in_buckets}{in_currency}
""")

# type=order_items: each line of a distinct order, with its order's fields.
ORDER_ITEMS_SQL = Sql("""
    SELECT {order_ms} AS t, order_id, event_id, visitor, cur, line, product, product_name,
           product_category, unit_price, qty
    FROM ({page_lines}) AS page_lines
    ALL INNER JOIN ({page_orders}) AS page_orders USING (order_id, event_id)
    ORDER BY t, order_id, event_id, line
""").fill(page_lines=PAGE_LINES)

# type=products, one page: per product and currency, the figures of the line items of the page's
# distinct orders, as metrics computes them (commerce.products), and the latest non-empty
# category there.
PRODUCTS_PAGE_SQL = Sql("""
    SELECT item_product, toString(item_currency) AS cur,
           {orders_listing} AS orders, {units_sold} AS units, {line_revenue} AS revenue,
           {latest_category} AS category
    FROM ({items})
    GROUP BY item_product, cur
""").fill(
    orders_listing=ORDERS_LISTING,
    units_sold=UNITS_SOLD,
    line_revenue=LINE_REVENUE,
    latest_category=LATEST_CATEGORY,
    items=line_items(Sql("{in_window}{in_currency}{of_page_orders}")),
)

# Event ids stored more than once in the window (as 64-bit hashes), with their earliest time.
EVENT_DUPLICATES_SQL = Sql("""
    SELECT sipHash64(event_id) AS h, min({ts_ms}) AS first
    FROM events
    WHERE project_id = {project}{in_window}{in_currency}
    GROUP BY h
    HAVING count() > 1
""")

# {first_copy} keeps, of a duplicated id, the copies at its earliest time; {one_copy}: LIMIT BY
# one of them. Both empty when no id is duplicated.
EVENTS_SQL = Sql("""
    SELECT event_id, toString(event) AS name, {ts_ms} AS t, {received_ms} AS r, user_id,
           anonymous_id, session_id, page, product_id, order_id, total, toString(currency) AS cur,
           toString(device) AS dev, toString(browser) AS br, toString(os) AS sys,
           toString(country) AS cc, region, referrer_host, utm_source, utm_medium, utm_campaign,
           utm_term, utm_content, properties, context
    FROM events
    WHERE project_id = {project}{in_window}{in_currency}{first_copy}
    ORDER BY ts, event_id{one_copy}
""")
FIRST_COPY = Sql(
    " AND (sipHash64(event_id) NOT IN {duplicates}"
    " OR (sipHash64(event_id), {ts_ms}) IN {first_copies})"
)
ONE_COPY = Sql(" LIMIT 1 BY event_id")


def _values(*names: str) -> tuple[Sql, ...]:
    """Value expressions of the lines' queries: columns of the query they wrap."""
    return tuple(Sql(name) for name in names)


EVENTS_VALUES = _values(
    "event_id", "name", "t", "r", "user_id", "anonymous_id", "session_id", "page", "product_id",
    "order_id", "total", "cur", "dev", "br", "sys", "cc", "region", "referrer_host", "utm_source",
    "utm_medium", "utm_campaign", "utm_term", "utm_content", "properties", "context",
)  # fmt: skip

ORDERS_VALUES = _values(
    "order_id", "t", "visitor", "amount", "cur", "items", "units", "summary", "event_id",
)  # fmt: skip
ORDER_ITEMS_VALUES = (
    *_values("order_id", "t", "visitor", "cur", "line + 1", "product", "product_name",
             "product_category", "unit_price", "qty"),
    Sql(decimal_text("toDecimal128(unit_price, 0) * qty")),
    Sql("event_id"),
)  # fmt: skip

# type=customers: per customer (the orders' visitor) and currency, the window's distinct orders,
# as metrics computes them (commerce.customers.customer_figures).
CUSTOMERS_SQL = Sql("""
    SELECT customer AS visitor, toString(customer_currency) AS cur, orders, revenue,
           {first_ms} AS first_t, {last_ms} AS last_t
    FROM ({customers})
    ORDER BY cur, revenue DESC, visitor
""")

# revenue / orders rounded half away from zero, as money.average.
# Revenue is a Decimal128 sum (it cannot wrap), written as exact text.
CUSTOMERS_VALUES = (
    *_values("visitor", "cur", "orders"),
    Sql(decimal_text("revenue")),
    Sql(decimal_text(
        "if(revenue >= 0, intDiv(revenue * 2 + toInt64(orders), toInt64(orders) * 2),"
        " -intDiv(-revenue * 2 + toInt64(orders), toInt64(orders) * 2))"
    )),
    *_values("first_t", "last_t"),
)  # fmt: skip

# Rows per UTC day of the range, to cut it into pages.
DAYS_SQL = Sql("""
    SELECT toString(toDate(ts)) AS day, count() AS n
    FROM {table}
    WHERE project_id = {project}{in_window}{in_currency}
    GROUP BY day
    ORDER BY day
""")


@dataclass(frozen=True)
class Scope:
    """One export's project, bounds and currency: the values and the fragments of its queries."""

    project_id: str
    start: datetime | None
    end: datetime | None
    currency: str
    datetime64: bool

    @classmethod
    def of(cls, storage: Storage, project_id: str, plan: ExportPlan) -> Scope:
        return cls(project_id, plan.start, plan.end, plan.currency, storage.datetime64)

    def narrow(self, start: datetime | None, end: datetime | None) -> Scope:
        """The same scope over [start, end) (within this one's bounds)."""
        return replace(self, start=start, end=end)

    def millis(self, column: str) -> Sql:
        """SQL: the column (a time, one of this file's) as milliseconds since the epoch, on
        either time type."""
        if self.datetime64:
            return Sql(f"toUnixTimestamp64Milli({column})")
        return Sql(f"toInt64(toUnixTimestamp({column})) * 1000")

    def window(self, column: str) -> Sql:
        """`` AND column >= {start} AND column < {end}``, each bound only when there is one."""
        return when(self.start is not None, Sql(f" AND {column} >= {{start}}")) + when(
            self.end is not None, Sql(f" AND {column} < {{end}}")
        )

    def orders(self) -> Sql:
        """The scope's distinct orders (commerce.orders: their first events in its bounds)."""
        # Every listed orderId looked up, not only those seen in the page (an export reads many
        # consecutive pages; the few listed orders are cheaper than reading each page's orderIds
        # twice), as before the commerce package: bench/export.py over 200k orders (embedded)
        # measured the same rows/s and peak memory as then, within its noise.
        return orders_between(
            start=self.start is not None,
            end=self.end is not None,
            by_currency=bool(self.currency),
            seen_in_window=False,
        )

    @property
    def params(self) -> dict[str, Any]:
        """The values, and the fragments (``Sql``) that bound the queries to this scope."""
        values: dict[str, Any] = {"project": self.project_id, "currency": self.currency}
        if self.start:
            values["start"] = self.start
        if self.end:
            values["end"] = self.end
        orders = self.orders()
        values.update(
            in_window=self.window("ts"),
            in_currency=when(bool(self.currency), Sql(" AND currency = {currency}")),
            ts_ms=self.millis("ts"),
            order_ms=self.millis("order_ts"),
            received_ms=self.millis("received_at"),
            # The orders' visitors as people (the customers export and metrics read them so).
            page_orders=PAGE_ORDERS.fill(
                orders=as_people(orders, ORDER_COLUMN_NAMES, "order_visitor")
            ),
            of_page_orders=first_events_of(orders),
        )
        return values


PAGE_ROWS = 50_000
"""Rows a page aims at, embedded. Each page is one query that ClickHouse sorts whole: its memory
is that of a page, whatever the range. (Reading a whole range in sorting-key order instead would
open every part of every month at once: ~6 MB per part, 310 MB for a year of a million orders.)
With chdb that memory is this process's own."""

SERVER_PAGE_ROWS = 200_000
"""Rows a page aims at on a ClickHouse server, whose memory it is (a page of orders is a few
tens of MB there). Fewer, larger pages: 1M orders as CSV in 2.8 s instead of 3.6 s (measured,
18.16, in-process)."""


async def pages(storage: Storage, scope: Scope, table: Sql) -> list[Scope]:
    """The scope cut into consecutive time ranges of about PAGE_ROWS (or SERVER_PAGE_ROWS) rows.

    Whole UTC days (a day with more rows is a page of its own), tiling the scope exactly: the
    first page starts at its start, each next one where the previous ended, the last ends at
    its end, so every row of the range is in exactly one page.
    """
    counts = await storage.query(DAYS_SQL, {**scope.params, "table": table})
    page_rows = PAGE_ROWS if storage.backend_name == "chdb" else SERVER_PAGE_ROWS
    cuts: list[datetime] = []
    rows = 0
    for day, count in counts:
        if rows >= page_rows:
            cuts.append(datetime.combine(date.fromisoformat(str(day)), time(0), tzinfo=UTC))
            rows = 0
        rows += int(count)
    bounds = [scope.start, *cuts, scope.end]
    return [scope.narrow(start, end) for start, end in itertools.pairwise(bounds)]


# ------------------------------------------------------------------------------------ sources


async def page_blocks(
    storage: Storage, scope: Scope, table: Sql, query: Sql
) -> AsyncGenerator[list[Row], None]:
    """Every block of rows of ``query`` over the scope, page after page."""
    for page in await pages(storage, scope, table):
        async with storage.stream(query, page.params) as blocks:
            async for block in blocks:
                yield block


async def page_lines(
    storage: Storage,
    scope: Scope,
    table: Sql,
    query: Sql,
    columns: Sequence[Column],
    values: Sequence[Sql],
    zone: str,
    writer: LineWriter,
) -> AsyncGenerator[bytes, None]:
    """The lines ``writer`` makes of ``query``'s rows over the scope, page after page."""
    lines = writer(query, columns, values, zone)
    for page in await pages(storage, scope, table):
        async with storage.stream_text(lines, {**page.params, ZONE_SLOT: zone}) as blocks:
            async for block in blocks:
                yield block


class OrdersSource:
    """type=orders: one row per distinct order, its line items summed up in one cell."""

    columns = ORDERS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    @staticmethod
    def shape(block: list[Row]) -> list[Row]:
        # t, order_id, event_id, visitor, amount, cur, items, units, summary
        return [(r[1], r[0], r[3], r[4], r[5], r[6], r[7], r[8], r[2]) for r in block]

    async def _pages(self) -> AsyncGenerator[tuple[Sql, Scope], None]:
        """(SQL, page) of each page: from order_lines where it is complete, else order_items."""
        for page in await pages(self._storage, self._scope, ORDERS_TABLE):
            complete = await self.lines_complete(page)
            yield (ORDERS_FROM_LINES_SQL if complete else ORDERS_SQL), page

    async def lines_complete(self, page: Scope) -> bool:
        # Bucket bounds as whole seconds (the column is a DateTime on every server): from the
        # quarter holding the start to the first quarter at or after the end.
        quarter = 15 * 60
        values = dict(page.params)
        buckets = EMPTY
        if page.start:
            values["first_bucket"] = int(page.start.timestamp()) // quarter * quarter
            buckets += Sql(" AND bucket >= toDateTime({first_bucket})")
        if page.end:
            end_ms = int(page.end.timestamp() * 1000)
            values["end_bucket"] = -(-end_ms // (quarter * 1000)) * quarter
            buckets += Sql(" AND bucket < toDateTime({end_bucket})")
        values["in_buckets"] = buckets
        rows = await self._storage.query(LINES_COMPLETE, values)
        return bool(rows) and int(rows[0][0]) == int(rows[0][1])

    async def batches(self) -> AsyncGenerator[Batch, None]:
        shape = self.shape
        async for sql, page in self._pages():
            async with self._storage.stream(sql, page.params) as rows:
                async for block in rows:
                    yield lambda block=block: shape(block)  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        async for sql, page in self._pages():
            lines = writer(sql, self.columns, ORDERS_VALUES, zone)
            async with self._storage.stream_text(lines, {**page.params, ZONE_SLOT: zone}) as blocks:
                async for block in blocks:
                    yield block


class OrderItemsSource:
    """type=order_items: one row per line item of the distinct orders."""

    columns = ORDER_ITEMS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    @staticmethod
    def shape(block: list[Row]) -> list[Row]:
        # t, order_id, event_id, visitor, cur, line, product, name, category, price, quantity
        return [
            (r[1], r[0], r[3], r[4], r[5] + 1, r[6], r[7], r[8], r[9], r[10], r[9] * r[10], r[2])
            for r in block
        ]

    async def batches(self) -> AsyncGenerator[Batch, None]:
        shape = self.shape
        lines = page_blocks(self._storage, self._scope, ORDERS_TABLE, ORDER_ITEMS_SQL)
        async with aclosing(lines) as rows:
            async for block in rows:
                yield lambda block=block: shape(block)  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        lines = page_lines(
            self._storage,
            self._scope,
            ORDERS_TABLE,
            ORDER_ITEMS_SQL,
            self.columns,
            ORDER_ITEMS_VALUES,
            zone,
            writer,
        )
        async with aclosing(lines) as blocks:
            async for block in blocks:
                yield block


class ProductsSource:
    """type=products: per product and currency, the figures of the distinct orders' line items.

    The figures are commerce.products' (the SQL metrics uses), computed by ClickHouse page by
    page (PRODUCTS_PAGE_SQL). Not in one query over the whole range: counting each (event, line)
    once and each order once needs per-line state for the whole range at once, where a page's
    state is bounded (the memory bound of every export). A page's totals are exact for its
    orders, and an order is in exactly one page (its first event's), so the range's figures are
    the sums of the pages', added here; the latest category is the latest page's that has one
    (pages are consecutive in time). Held per product, so memory is the catalogue's size.
    """

    columns = PRODUCTS_COLUMNS
    NAMES_PER_QUERY = 1000

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    async def batches(self) -> AsyncGenerator[Batch, None]:
        # (product, currency) -> [orders, units, revenue, category]
        totals: dict[tuple[str, str], list[Any]] = {}
        for page in await pages(self._storage, self._scope, ORDERS_TABLE):
            for product, cur, orders, units, revenue, category in await self._storage.query(
                PRODUCTS_PAGE_SQL, page.params
            ):
                entry = totals.setdefault((str(product), str(cur)), [0, 0, 0, ""])
                entry[0] += int(orders)
                entry[1] += int(units)
                entry[2] += int(revenue)
                if category:
                    entry[3] = str(category)
        products = sorted({product for product, _ in totals})
        names: dict[str, str] = {}
        for start in range(0, len(products), self.NAMES_PER_QUERY):
            chunk = tuple(products[start : start + self.NAMES_PER_QUERY])
            params = {"project": self._scope.project_id, "products": chunk}
            for product, name in await self._storage.query(LATEST_NAMES, params):
                names[str(product)] = str(name)
        # Ordered by currency, then revenue (highest first), then productId.
        ordered = sorted(totals.items(), key=lambda kv: (kv[0][1], -kv[1][2], kv[0][0]))
        rows: list[Row] = [
            (product, names.get(product, ""), entry[3], currency, entry[0], entry[1], entry[2])
            for (product, currency), entry in ordered
        ]
        yield lambda: rows


class EventsSource:
    """type=events: every distinct event of the range, time-ordered."""

    columns = EVENTS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    async def _pages(self) -> AsyncGenerator[dict[str, Any], None]:
        """The parameters of each page's EVENTS_SQL (the earliest copy of each event id)."""
        storage, scope = self._storage, self._scope
        firsts: list[tuple[int, int]] = []
        async for block in storage.stream(EVENT_DUPLICATES_SQL, scope.params):
            firsts.extend((int(h), int(first)) for h, first in block)
        values: dict[str, Any] = {"first_copy": EMPTY, "one_copy": EMPTY}
        if firsts:
            values["first_copy"] = FIRST_COPY
            values["one_copy"] = ONE_COPY
            values["duplicates"] = tuple(h for h, _ in firsts)
            # A sentinel pair, so that one pair still renders as a set of pairs, not as a pair.
            values["first_copies"] = (*firsts, (0, -1))
        for page in await pages(storage, scope, EVENTS_TABLE):
            yield {**page.params, **values}

    async def batches(self) -> AsyncGenerator[Batch, None]:
        async for values in self._pages():
            async with self._storage.stream(EVENTS_SQL, values) as rows:
                async for block in rows:
                    yield lambda block=block: block  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        lines = writer(EVENTS_SQL, self.columns, EVENTS_VALUES, zone)
        async for values in self._pages():
            async with self._storage.stream_text(lines, {**values, ZONE_SLOT: zone}) as blocks:
                async for block in blocks:
                    yield block


class CustomersSource:
    """type=customers: per customer (the orders' visitor) and currency."""

    columns = CUSTOMERS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    def _params(self) -> dict[str, Any]:
        return {
            **self._scope.params,
            "customers": customer_figures(self._scope.orders()),
            "first_ms": self._scope.millis("first_order_ts"),
            "last_ms": self._scope.millis("last_order_ts"),
        }

    async def batches(self) -> AsyncGenerator[Batch, None]:
        def shape(block: list[Row]) -> list[Row]:
            return [
                (v, cur, orders, revenue, average(int(revenue), int(orders)), first, last)
                for v, cur, orders, revenue, first, last in block
            ]

        async with self._storage.stream(CUSTOMERS_SQL, self._params()) as rows:
            async for block in rows:
                yield lambda block=block: shape(block)  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        sql = writer(CUSTOMERS_SQL, self.columns, CUSTOMERS_VALUES, zone)
        async with self._storage.stream_text(sql, {**self._params(), ZONE_SLOT: zone}) as blocks:
            async for block in blocks:
                yield block


SOURCES: dict[str, Callable[[Storage, Scope], Source]] = {
    "orders": OrdersSource,
    "order_items": OrderItemsSource,
    "events": EventsSource,
    "products": ProductsSource,
    "customers": CustomersSource,
}

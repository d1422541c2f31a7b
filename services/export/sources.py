"""Where each export type's rows come from: page by page, each page streamed in blocks.

Memory stays flat whatever the range: the range is cut into pages of about PAGE_ROWS rows
(whole UTC days, from a per-day count), each page is one query whose result ClickHouse sorts
and joins within the page, and its rows come in blocks (``Storage.stream``, on a connection of
its own). Sources yield *batches*: plain functions that turn one block into output rows, which
the exporter runs off the event loop.

Orders are the distinct orders of ``metrics/orders.py`` (FIRST_ORDERS): an orderId counts once,
by its first ``order_completed`` by (timestamp, event id); its time, total, currency, visitor
and line items are that event's. As in PERIOD_ORDERS, that is computed without grouping every
order (which would hold them all in memory): an orderId that ``order_dups`` does not list has
a single stored event, its winner; the few listed ones get theirs from DUPLICATED_ORDERS. Line
items are the ``order_items`` rows of the winning event, each (event, line) once, joined to
their order inside the page's query; the orders export reads them from ``order_lines`` instead
(the event's lines as arrays, no grouping) on every page where ``order_line_counts`` shows that
no order event lacks its row there.

Events are deduplicated by event id: a retried event may be stored twice, at the same time or
(when the server timed it) another one, possibly in another page; a first pass over the whole
range finds the ids stored more than once (as 64-bit hashes, so ClickHouse holds 8 bytes per
event for it, not the ids) with the time of their earliest copy, and each page keeps, of those,
only the copy at that time (once, if two copies share it).

Every source gives its rows as batches for the encoders; the sources but products (whose rows
are totals kept in Python) also give them as ready lines written by ClickHouse (``text_lines``
with ``csv_sql.csv_lines_sql`` or ``json_sql.json_lines_sql``), the fast path of the CSV, NDJSON
and JSON exports.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from string import Template
from typing import Any, Protocol

from cartlytics.common.money import average
from cartlytics.common.storage import Row, Storage
from cartlytics.common.storage.sql import decimal_text
from services.metrics.orders import DUPLICATED_ORDERS

from .formats import Column, Kind
from .request import ExportPlan

Batch = Callable[[], list[Row]]
"""CPU work for one block of storage rows: returns the export's rows for it (maybe none)."""


class Source(Protocol):
    @property
    def columns(self) -> Sequence[Column]: ...

    def batches(self) -> AsyncGenerator[Batch, None]: ...


LineWriter = Callable[[str, Sequence[Column], Sequence[str], str], str]
"""SQL that writes each row of a query as one line of text (``csv_sql.csv_lines_sql``,
``json_sql.json_lines_sql``): (inner SQL, columns, value expressions, zone) -> SQL."""


class LineSource(Source, Protocol):
    def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        """The export's rows as lines ClickHouse wrote with ``writer`` (``\\n`` after each)."""
        ...


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
# $-placeholders are SQL text chosen here (never request data); {name} ones are values, rendered
# as literals by the storage layer. $window and $currency bound a query to the page.

# The page's distinct orders (one row per orderId, its winning event): the single-event orderIds
# as stored, then the winners of the listed ones (UNION ALL), both read in one snapshot.
PAGE_ORDERS = Template(
    """
    SELECT order_id, event_id, ts AS order_ts, visitor_id AS visitor, total AS amount,
           toString(currency) AS cur
    FROM orders
    WHERE project_id = {project}$window$currency
      AND order_id NOT IN (SELECT order_id FROM order_dups WHERE project_id = {project})
    UNION ALL
    SELECT order_id, first_event_id AS event_id, first_ts AS order_ts, order_visitor AS visitor,
           order_total AS amount, toString(order_currency) AS cur
    FROM ("""
    + DUPLICATED_ORDERS.replace("$", "$$")
    + """)
    WHERE 1 = 1$first_window$first_currency
"""
)

# The page's line items, each (order, event, line) once (a retried event's lines may be stored
# twice); names and categories only when shown ($names).
PAGE_LINES = Template("""
    SELECT order_id, event_id, line, any(product_id) AS product, any(price) AS unit_price,
           any(quantity) AS qty$names
    FROM order_items
    WHERE project_id = {project}$window$currency
    GROUP BY order_id, event_id, line
""")

# type=orders: each distinct order with its lines summed up: count, units and
# "prod_a x2 @ 2999; prod_b x1 @ 999" (in line order). `items` is the order's own
# properties.items where its order_lines row has it (declared_items >= 0), else the line count;
# a missing order_lines row joins as 0, hence the + 1 (0: not known here).
ORDERS_SQL = Template("""
    SELECT t, order_id, event_id, visitor, amount, cur,
           if(declared_plus_one > 0, declared_plus_one - 1, toInt64(line_count)) AS items,
           units, summary
    FROM (
        SELECT $order_ts AS t, order_id, event_id, visitor, amount, cur, line_count, units,
               summary
        FROM ($page_orders) AS page_orders
        ANY LEFT JOIN (
            SELECT order_id, event_id, count() AS line_count, sum(qty) AS units,
                   arrayStringConcat(
                       arrayMap(x -> concat(x.2, ' x', toString(x.3), ' @ ', toString(x.4)),
                                arraySort(groupArray((line, product, qty, unit_price)))),
                       '; ') AS summary
            FROM ($page_lines)
            GROUP BY order_id, event_id
        ) AS page_lines USING (order_id, event_id)
    ) AS with_lines
    ANY LEFT JOIN (
        SELECT order_id, event_id, any(declared_items) + 1 AS declared_plus_one
        FROM order_lines
        WHERE project_id = {project}$window$currency
        GROUP BY order_id, event_id
    ) AS declared USING (order_id, event_id)
    ORDER BY t, order_id, event_id
""")

# The same from order_lines (ingest's one row per order event, its lines as arrays in line
# order): no grouping of line items per page, the larger part of the query's cost. Used for a
# page only when LINES_COMPLETE shows every order event row there has its order_lines row.
# (The arrays are of Nullable only for chdb's Arrow insert; no element is NULL.)
ORDERS_FROM_LINES_SQL = Template("""
    SELECT $order_ts AS t, order_id, event_id, visitor, amount, cur, items, units, summary
    FROM ($page_orders) AS page_orders
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
            WHERE project_id = {project}$window$currency
            GROUP BY order_id, event_id
        )
    ) AS order_lines USING (order_id, event_id)
    ORDER BY t, order_id, event_id
""")

# (order event rows, order_lines rows) in the 15-minute buckets that cover a page: equal means
# no order event there lacks its order_lines row (a flush that failed between the two).
LINES_COMPLETE = Template("""
    SELECT toInt64(sum(event_rows)) AS events, toInt64(sum(line_rows)) AS lines
    FROM order_line_counts
    WHERE project_id = {project}$buckets$currency
""")

# type=order_items (and products): each line of a distinct order, with its order's fields.
ORDER_ITEMS_SQL = Template("""
    SELECT $order_ts AS t, order_id, event_id, visitor, cur, line, product, product_name,
           product_category, unit_price, qty
    FROM ($page_lines) AS page_lines
    ALL INNER JOIN ($page_orders) AS page_orders USING (order_id, event_id)
    ORDER BY t, order_id, event_id, line
""")

# Event ids stored more than once in the window (as 64-bit hashes), with their earliest time.
EVENT_DUPLICATES_SQL = Template("""
    SELECT sipHash64(event_id) AS h, min($ts) AS first
    FROM events
    WHERE project_id = {project}$window$currency
    GROUP BY h
    HAVING count() > 1
""")

# $first_copies keeps, of a duplicated id, the copies at its earliest time; LIMIT BY one of them.
EVENTS_SQL = Template("""
    SELECT event_id, toString(event) AS name, $ts AS t, $received AS r, user_id, anonymous_id,
           session_id, page, product_id, order_id, total, toString(currency) AS cur,
           toString(device) AS dev, toString(browser) AS br, toString(os) AS sys,
           toString(country) AS cc, region, referrer_host, utm_source, utm_medium, utm_campaign,
           utm_term, utm_content, properties, context
    FROM events
    WHERE project_id = {project}$window$currency$first_copies
    ORDER BY ts, event_id$one_copy
""")
EVENTS_VALUES = (
    "event_id", "name", "t", "r", "user_id", "anonymous_id", "session_id", "page", "product_id",
    "order_id", "total", "cur", "dev", "br", "sys", "cc", "region", "referrer_host", "utm_source",
    "utm_medium", "utm_campaign", "utm_term", "utm_content", "properties", "context",
)  # fmt: skip

ORDERS_VALUES = (
    "order_id", "t", "visitor", "amount", "cur", "items", "units", "summary", "event_id",
)  # fmt: skip
ORDER_ITEMS_VALUES = (
    "order_id", "t", "visitor", "cur", "line + 1", "product", "product_name", "product_category",
    "unit_price", "qty", decimal_text("toDecimal128(unit_price, 0) * qty"), "event_id",
)  # fmt: skip

# Per customer (the order's visitor) and currency: the window's distinct orders.
CUSTOMERS_SQL = Template("""
    SELECT visitor, cur, count() AS orders, sum(toDecimal128(amount, 0)) AS revenue,
           min($order_ts) AS first_t,
           max($order_ts) AS last_t
    FROM ($page_orders)
    GROUP BY visitor, cur
    ORDER BY cur, revenue DESC, visitor
""")

# revenue / orders rounded half away from zero, as money.average.
# Revenue is a Decimal128 sum (it cannot wrap), written as exact text.
CUSTOMERS_VALUES = (
    "visitor", "cur", "orders", decimal_text("revenue"),
    decimal_text(
        "if(revenue >= 0, intDiv(revenue * 2 + toInt64(orders), toInt64(orders) * 2),"
        " -intDiv(-revenue * 2 + toInt64(orders), toInt64(orders) * 2))"
    ),
    "first_t", "last_t",
)  # fmt: skip

# Rows per UTC day of the range, to cut it into pages.
DAYS_SQL = Template("""
    SELECT toString(toDate(ts)) AS day, count() AS n
    FROM $table
    WHERE project_id = {project}$window$currency
    GROUP BY day
    ORDER BY day
""")

PRODUCT_NAMES_SQL = """
    SELECT product_id, argMaxMerge(latest) AS name
    FROM product_names_latest
    WHERE project_id = {project} AND product_id IN {products}
    GROUP BY product_id
"""


@dataclass(frozen=True)
class Scope:
    """One export's project, bounds and currency, as SQL text fragments and values."""

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

    def millis(self, column: str) -> str:
        """SQL: the column (a time) as milliseconds since the epoch, on either time type."""
        if self.datetime64:
            return f"toUnixTimestamp64Milli({column})"
        return f"toInt64(toUnixTimestamp({column})) * 1000"

    def window(self, column: str) -> str:
        return (f" AND {column} >= {{start}}" if self.start else "") + (
            f" AND {column} < {{end}}" if self.end else ""
        )

    def currency_sql(self, column: str) -> str:
        return f" AND {column} = {{currency}}" if self.currency else ""

    def sql(self, template: Template, **extra: str) -> str:
        """The query's text: time expressions, bounds and currency filled in (values stay
        {placeholders} for the storage layer to render)."""
        parts = {
            "ts": self.millis("ts"),
            "first_ts": self.millis("first_ts"),
            "order_ts": self.millis("order_ts"),
            "received": self.millis("received_at"),
            "window": self.window("ts"),
            "first_window": self.window("first_ts"),
            "currency": self.currency_sql("currency"),
            "first_currency": self.currency_sql("order_currency"),
            "names": "",
            **extra,
        }
        parts["page_orders"] = PAGE_ORDERS.substitute(parts)
        parts["page_lines"] = PAGE_LINES.substitute(parts)
        return template.substitute(parts)

    @property
    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {"project": self.project_id, "currency": self.currency}
        if self.start:
            values["start"] = self.start
        if self.end:
            values["end"] = self.end
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


async def pages(storage: Storage, scope: Scope, table: str) -> list[Scope]:
    """The scope cut into consecutive time ranges of about PAGE_ROWS (or SERVER_PAGE_ROWS) rows.

    Whole UTC days (a day with more rows is a page of its own), tiling the scope exactly: the
    first page starts at its start, each next one where the previous ended, the last ends at
    its end, so every row of the range is in exactly one page.
    """
    counts = await storage.query(scope.sql(DAYS_SQL, table=table), scope.params)
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

LINE_NAMES = ", any(name) AS product_name, any(category) AS product_category"


async def page_blocks(
    storage: Storage, scope: Scope, table: str, template: Template, **extra: str
) -> AsyncGenerator[list[Row], None]:
    """Every block of rows of ``template`` over the scope, page after page."""
    for page in await pages(storage, scope, table):
        async with storage.stream(page.sql(template, **extra), page.params) as blocks:
            async for block in blocks:
                yield block


async def page_lines(
    storage: Storage,
    scope: Scope,
    table: str,
    template: Template,
    columns: Sequence[Column],
    values: Sequence[str],
    zone: str,
    writer: LineWriter,
    **extra: str,
) -> AsyncGenerator[bytes, None]:
    """The lines ``writer`` makes of ``template``'s rows over the scope, page after page."""
    for page in await pages(storage, scope, table):
        sql = writer(page.sql(template, **extra), columns, values, zone)
        async with storage.stream_text(sql, page.params) as blocks:
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

    async def _pages(self) -> AsyncGenerator[tuple[str, Scope], None]:
        """(SQL, page) of each page: from order_lines where it is complete, else order_items."""
        for page in await pages(self._storage, self._scope, "orders"):
            complete = await self.lines_complete(page)
            yield page.sql(ORDERS_FROM_LINES_SQL if complete else ORDERS_SQL), page

    async def lines_complete(self, page: Scope) -> bool:
        # Bucket bounds as whole seconds (the column is a DateTime on every server): from the
        # quarter holding the start to the first quarter at or after the end.
        quarter = 15 * 60
        values = dict(page.params)
        buckets = ""
        if page.start:
            values["first_bucket"] = int(page.start.timestamp()) // quarter * quarter
            buckets += " AND bucket >= toDateTime({first_bucket})"
        if page.end:
            end_ms = int(page.end.timestamp() * 1000)
            values["end_bucket"] = -(-end_ms // (quarter * 1000)) * quarter
            buckets += " AND bucket < toDateTime({end_bucket})"
        rows = await self._storage.query(page.sql(LINES_COMPLETE, buckets=buckets), values)
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
            async with self._storage.stream_text(lines, page.params) as blocks:
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
        lines = page_blocks(self._storage, self._scope, "orders", ORDER_ITEMS_SQL, names=LINE_NAMES)
        async with aclosing(lines) as rows:
            async for block in rows:
                yield lambda block=block: shape(block)  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        lines = page_lines(
            self._storage,
            self._scope,
            "orders",
            ORDER_ITEMS_SQL,
            self.columns,
            ORDER_ITEMS_VALUES,
            zone,
            writer,
            names=LINE_NAMES,
        )
        async with aclosing(lines) as blocks:
            async for block in blocks:
                yield block


class ProductTotals:
    """Per (productId, currency): the figures of the lines of the distinct orders.

    Held per product, never per order or line, so memory is the catalogue's size.
    """

    def __init__(self) -> None:
        # (product, currency) -> [orders, units, revenue, category key, category, last order]
        self.totals: dict[tuple[str, str], list[Any]] = {}

    def add(self, block: list[Row]) -> None:
        """Rows of ORDER_ITEMS_SQL (an order's lines are consecutive)."""
        totals = self.totals
        for t, order_id, event_id, _, cur, line, product, _, category, price, qty in block:
            key = (product, cur)
            entry = totals.get(key)
            if entry is None:
                entry = totals[key] = [0, 0, 0, None, "", None]
            if entry[5] != order_id:  # a product on two lines of one order: one order
                entry[5] = order_id
                entry[0] += 1
            entry[1] += qty
            entry[2] += price * qty
            if category:  # the latest non-empty category, by (time, event id, line)
                seen = (t, event_id, line)
                if entry[3] is None or seen > entry[3]:
                    entry[3], entry[4] = seen, category

    def rows(self, names: dict[str, str]) -> list[Row]:
        """Ordered by currency, then revenue (highest first), then productId."""
        ordered = sorted(self.totals.items(), key=lambda kv: (kv[0][1], -kv[1][2], kv[0][0]))
        return [
            (product, names.get(product, ""), entry[4], currency, entry[0], entry[1], entry[2])
            for (product, currency), entry in ordered
        ]


class ProductsSource:
    """type=products: per product and currency, from the distinct orders' line items."""

    columns = PRODUCTS_COLUMNS
    NAMES_PER_QUERY = 1000

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    async def batches(self) -> AsyncGenerator[Batch, None]:
        totals = ProductTotals()

        def add(block: list[Row]) -> list[Row]:
            totals.add(block)
            return []

        lines = page_blocks(self._storage, self._scope, "orders", ORDER_ITEMS_SQL, names=LINE_NAMES)
        async with aclosing(lines) as rows:
            async for block in rows:
                yield lambda block=block: add(block)  # type: ignore[misc]
        products = sorted({product for product, _ in totals.totals})
        names: dict[str, str] = {}
        for start in range(0, len(products), self.NAMES_PER_QUERY):
            chunk = tuple(products[start : start + self.NAMES_PER_QUERY])
            params = {"project": self._scope.project_id, "products": chunk}
            for product, name in await self._storage.query(PRODUCT_NAMES_SQL, params):
                names[str(product)] = str(name)
        yield lambda: totals.rows(names)


class EventsSource:
    """type=events: every distinct event of the range, time-ordered."""

    columns = EVENTS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    async def _pages(self) -> AsyncGenerator[tuple[str, Scope, dict[str, Any]], None]:
        """(SQL, page, values) of each page's distinct events (the earliest copy of an id)."""
        storage, scope = self._storage, self._scope
        firsts: list[tuple[int, int]] = []
        async for block in storage.stream(scope.sql(EVENT_DUPLICATES_SQL), scope.params):
            firsts.extend((int(h), int(first)) for h, first in block)
        extra = {"first_copies": "", "one_copy": ""}
        values: dict[str, Any] = {}
        if firsts:
            hash_ = "sipHash64(event_id)"
            extra["first_copies"] = (
                f" AND ({hash_} NOT IN {{duplicates}} OR ({hash_}, {scope.millis('ts')})"
                " IN {first_copies})"
            )
            extra["one_copy"] = " LIMIT 1 BY event_id"
            values["duplicates"] = tuple(h for h, _ in firsts)
            # A sentinel pair, so that one pair still renders as a set of pairs, not as a pair.
            values["first_copies"] = (*firsts, (0, -1))
        for page in await pages(storage, scope, "events"):
            yield page.sql(EVENTS_SQL, **extra), page, {**page.params, **values}

    async def batches(self) -> AsyncGenerator[Batch, None]:
        async for sql, _, values in self._pages():
            async with self._storage.stream(sql, values) as rows:
                async for block in rows:
                    yield lambda block=block: block  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        async for sql, _, values in self._pages():
            lines = writer(sql, self.columns, EVENTS_VALUES, zone)
            async with self._storage.stream_text(lines, values) as blocks:
                async for block in blocks:
                    yield block


class CustomersSource:
    """type=customers: per customer (the orders' visitor) and currency."""

    columns = CUSTOMERS_COLUMNS

    def __init__(self, storage: Storage, scope: Scope) -> None:
        self._storage = storage
        self._scope = scope

    async def batches(self) -> AsyncGenerator[Batch, None]:
        def shape(block: list[Row]) -> list[Row]:
            return [
                (v, cur, orders, revenue, average(int(revenue), int(orders)), first, last)
                for v, cur, orders, revenue, first, last in block
            ]

        sql = self._scope.sql(CUSTOMERS_SQL)
        async with self._storage.stream(sql, self._scope.params) as rows:
            async for block in rows:
                yield lambda block=block: shape(block)  # type: ignore[misc]

    async def text_lines(self, zone: str, writer: LineWriter) -> AsyncGenerator[bytes, None]:
        sql = writer(self._scope.sql(CUSTOMERS_SQL), self.columns, CUSTOMERS_VALUES, zone)
        async with self._storage.stream_text(sql, self._scope.params) as blocks:
            async for block in blocks:
                yield block


SOURCES: dict[str, Callable[[Storage, Scope], Source]] = {
    "orders": OrdersSource,
    "order_items": OrderItemsSource,
    "events": EventsSource,
    "products": ProductsSource,
    "customers": CustomersSource,
}

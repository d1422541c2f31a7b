"""GET /analytics/products: the top sellers of a period, from the line items of its orders.

Per productId, over the line items of the period's distinct orders in the currency (each order's
first ``order_completed``, see orders.py): revenue = sum(price * quantity), unitsSold =
sum(quantity). conversionRate = distinct visitors who bought it (the visitors of those orders) /
distinct visitors with a ``product_view`` of it in the period * 100, one decimal, 0 when nobody
viewed it. name = the latest name seen for the product (see ``_names``). docs/semantics.md
defines each figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from cartlytics.common.errors import invalid_field
from cartlytics.common.money import parse_currency, percent
from cartlytics.common.periods import parse_timezone, resolve_period
from cartlytics.common.storage import Storage

from .orders import FIRST_ORDERS
from .reports import ProductRow, ProductsQuery, ProductsReport

DEFAULT_LIMIT = 10
MAX_LIMIT = 100

# Line items of the period's orders: the rows of each order's first event (so a later duplicate
# of an orderId, whatever products it lists, never counts), once per (event, line) even when a
# retried event was stored twice. An item's ts is its event's, so it is the order's first_ts.
TOP_SELLERS = """
    SELECT item_product,
           sum(item_price * item_quantity) AS revenue,
           sum(item_quantity) AS units,
           uniqExact(item_visitor) AS buyers
    FROM (
        SELECT event_id, line,
               any(product_id) AS item_product,
               any(price) AS item_price,
               any(quantity) AS item_quantity,
               any(visitor_id) AS item_visitor
        FROM order_items
        WHERE project_id = {project} AND ts >= {start} AND ts < {end}
          AND event_id IN (
              SELECT first_event_id FROM ({first_orders})
              WHERE order_currency = {currency} AND first_ts >= {start} AND first_ts < {end}
          )
        GROUP BY event_id, line
    )
    GROUP BY item_product
    ORDER BY revenue DESC, item_product ASC
    LIMIT {limit}
"""

PRODUCT_VIEWERS = """
    SELECT product_id, uniqExact(visitor_id)
    FROM events
    WHERE project_id = {project} AND event = 'product_view'
      AND ts >= {start} AND ts < {end} AND has({products}, product_id)
    GROUP BY product_id
"""

# The latest non-empty line-item name of each product, over every stored order event.
LINE_ITEM_NAMES = """
    SELECT product_id,
           argMax(toString(ts), tuple(ts, event_id, line)),
           argMax(event_id, tuple(ts, event_id, line)),
           argMax(line, tuple(ts, event_id, line)),
           argMax(name, tuple(ts, event_id, line))
    FROM order_items
    WHERE project_id = {project} AND has({products}, product_id) AND name != ''
    GROUP BY product_id
"""

# The latest product_view of each product whose properties hold a "name" key somewhere; Python
# reads the top-level `properties.name` from it (ClickHouse 18.16 has no JSON path functions).
VIEW_NAMES = """
    SELECT product_id,
           argMax(toString(ts), tuple(ts, event_id)),
           argMax(event_id, tuple(ts, event_id)),
           argMax(properties, tuple(ts, event_id))
    FROM events
    WHERE project_id = {project} AND event = 'product_view' AND has({products}, product_id)
      AND position(properties, '"name":') > 0
    GROUP BY product_id
"""

# One product's older candidates, newest first, when the latest had no top-level name (rare:
# a "name" key only inside a nested object).
VIEW_NAMES_BEFORE = """
    SELECT toString(ts) AS at, event_id, properties
    FROM events
    WHERE project_id = {project} AND event = 'product_view' AND product_id = {product}
      AND position(properties, '"name":') > 0
      AND (toString(ts) < {at} OR (toString(ts) = {at} AND event_id < {event_id}))
    ORDER BY ts DESC, event_id DESC
    LIMIT 100
"""

# (timestamp as stored, event id, line): the order "latest" compares in.
NameKey = tuple[str, str, int]


def parse_limit(value: int, field: str = "limit") -> int:
    if value == 0:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise invalid_field(field, f"must be from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    return value


def _top_level_name(properties: str) -> str:
    try:
        parsed = json.loads(properties)
    except ValueError:
        return ""
    name = parsed.get("name") if isinstance(parsed, dict) else None
    return name if isinstance(name, str) else ""


class ProductsReader:
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._default_currency = default_currency
        self._clock = clock

    async def top_sellers(self, project_id: str, query: ProductsQuery) -> ProductsReport:
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
        sellers = await self._storage.query(
            TOP_SELLERS.replace("{first_orders}", FIRST_ORDERS), params
        )
        products = [str(row[0]) for row in sellers]
        if not products:
            return ProductsReport(top_sellers=[])
        params["products"] = products
        viewers = {
            str(product): int(count)
            for product, count in await self._storage.query(PRODUCT_VIEWERS, params)
        }
        names = await self._names(project_id, products)
        return ProductsReport(
            top_sellers=[
                ProductRow(
                    product_id=str(product),
                    name=names.get(str(product), ""),
                    revenue=int(revenue),
                    units_sold=int(units),
                    conversion_rate=percent(int(buyers), viewers.get(str(product), 0)),
                )
                for product, revenue, units, buyers in sellers
            ]
        )

    async def _names(self, project_id: str, products: list[str]) -> dict[str, str]:
        """The latest name seen for each product: a line item's name or a product_view's
        top-level ``properties.name`` (non-empty), the latest by (timestamp, event id, line)."""
        params = {"project": project_id, "products": products}
        latest: dict[str, tuple[NameKey, str]] = {}

        def offer(product: str, key: NameKey, name: str) -> None:
            if name and (product not in latest or key > latest[product][0]):
                latest[product] = (key, name)

        for product, at, event_id, line, name in await self._storage.query(LINE_ITEM_NAMES, params):
            offer(str(product), (str(at), str(event_id), int(line)), str(name))
        for product, at, event_id, properties in await self._storage.query(VIEW_NAMES, params):
            found = await self._view_name(
                project_id, str(product), str(at), str(event_id), str(properties)
            )
            if found is not None:
                offer(str(product), found[0], found[1])
        return {product: name for product, (_, name) in latest.items()}

    async def _view_name(
        self, project_id: str, product: str, at: str, event_id: str, properties: str
    ) -> tuple[NameKey, str] | None:
        """The latest product_view name of ``product``, starting from its latest candidate."""
        name = _top_level_name(properties)
        while not name:
            older = await self._storage.query(
                VIEW_NAMES_BEFORE,
                {"project": project_id, "product": product, "at": at, "event_id": event_id},
            )
            if not older:
                return None
            for row_at, row_event_id, row_properties in older:
                at, event_id = str(row_at), str(row_event_id)
                name = _top_level_name(str(row_properties))
                if name:
                    break
        return (at, event_id, 0), name

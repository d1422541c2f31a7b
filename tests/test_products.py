"""GET /analytics/products against the running system, compared with the plain-Python oracle."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cartlytics.common.redis_guard import RedisGuard
from cartlytics.common.storage import Sql, Storage
from services.ingest.idempotency import IdempotencyWindow
from services.ingest.ingestor import Ingestor
from services.ingest.rows import ORDER_LINES, PRODUCT_NAMES
from services.ingest.validation import IncomingEvent
from services.metrics.products import ProductsReader
from services.metrics.reports import ProductsQuery
from tests import oracle_metrics as om
from tests.servers import System

PATH = "/analytics/products"

CASES: list[dict[str, str]] = [
    {},  # defaults: 30d, limit 10, USD, UTC
    {"period": "7d"},
    {"period": "90d", "limit": "100"},
    {"period": "90d", "currency": "EUR", "limit": "5"},
    {"period": "12m", "currency": "GBP", "timezone": "Asia/Kolkata"},
    {"period": "3m", "currency": "JPY", "timezone": "America/New_York", "limit": "3"},
    {"period": "30d", "timezone": "Pacific/Auckland", "limit": "1"},
    {"period": "366d", "currency": "EUR", "timezone": "Europe/Paris", "limit": "12"},
    {"period": "1d", "currency": "usd"},
]


def _expected(system: System, params: dict[str, str]) -> Any:
    def expect(now: datetime) -> dict[str, Any]:
        return om.products(
            om.stored_events(system),
            period=params.get("period", "30d"),
            currency=params.get("currency", "USD").upper(),
            zone=ZoneInfo(params.get("timezone", "UTC")),
            now=now,
            limit=int(params.get("limit", "10")),
        )

    return expect


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(p.values()) or "defaults")
def test_products_match_oracle(system: System, params: dict[str, str]) -> None:
    got = om.check(system, PATH, list(params.items()), _expected(system, params))
    if params.get("period") in ("90d", "12m", "3m", "366d"):
        assert got["topSellers"], "the dataset has orders in every currency over 3 months"


def test_products_are_ordered_and_named(system: System) -> None:
    params = {"period": "90d", "limit": "100"}
    got = om.check(system, PATH, list(params.items()), _expected(system, params))
    rows = got["topSellers"]
    assert len(rows) == 12  # every dataset product sold in USD over 90 days
    assert [(-r["revenue"], r["productId"]) for r in rows] == sorted(
        (-r["revenue"], r["productId"]) for r in rows
    )
    assert all(r["name"] for r in rows)  # every dataset product has a name


def _order(
    event_id: str, order_id: str, who: str, ts: datetime, currency: str, lines: list[Any]
) -> dict[str, Any]:
    products = [
        {"productId": p, "name": n, "category": "test", "price": price, "quantity": q}
        for p, n, price, q in lines
    ]
    total = sum(price * q for _, _, price, q in lines)
    return {
        "id": event_id,
        "event": "order_completed",
        "userId": who,
        "timestamp": om.iso(ts),
        "properties": {
            "orderId": order_id,
            "total": total,
            "currency": currency,
            "products": products,
        },
    }


def _view(event_id: str, who: str, ts: datetime, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "event": "product_view",
        "userId": who,
        "timestamp": om.iso(ts),
        "properties": props,
    }


def test_products_targeted(system: System) -> None:
    """SEK and tp_* products exist only here: hand-computed figures, and the oracle agrees."""
    t0 = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    s = timedelta(seconds=1)
    events = [
        _view("tp_e01", "tp_v1", t0, {"productId": "tp_a", "name": "A old"}),
        _view("tp_e02", "tp_v2", t0 + 10 * s, {"productId": "tp_a"}),
        _view("tp_e03", "tp_v2", t0 + 20 * s, {"productId": "tp_b", "name": "B view"}),
        _order(
            "tp_e04",
            "tp_o1",
            "tp_v1",
            t0 + 60 * s,
            "SEK",
            [("tp_a", "A line", 500, 2), ("tp_b", "B line", 300, 1)],
        ),
        # The same orderId again, later, with other products: never counts (first wins).
        _order("tp_e05", "tp_o1", "tp_v1", t0 + 3600 * s, "SEK", [("tp_c", "C", 100, 5)]),
        # A "name" only inside a nested object is not the product's name.
        _view("tp_e06", "tp_v2", t0 + 7200 * s, {"productId": "tp_b", "variant": {"name": "N"}}),
        # tp_d is bought but never viewed: conversionRate 0.
        _order(
            "tp_e07",
            "tp_o2",
            "tp_v3",
            t0 + 86400 * s,
            "SEK",
            [("tp_a", "A new", 500, 1), ("tp_d", "D", 250, 3)],
        ),
        # The top-level name counts even after a nested one.
        _view(
            "tp_e08",
            "tp_v4",
            t0 + 90000 * s,
            {"variant": {"name": "x"}, "productId": "tp_a", "name": "A newest"},
        ),
        # An order in another currency: not in the SEK figures.
        _order("tp_e09", "tp_o3", "tp_v5", t0 + 100 * s, "NOK", [("tp_a", "A nok", 999, 9)]),
    ]
    om.send(system, events)
    om.send(system, [events[6]])  # a client retry of tp_o2: stored and counted once
    expected = {
        "topSellers": [
            {
                "productId": "tp_a",
                "name": "A newest",
                "revenue": 1500,
                "unitsSold": 3,
                "conversionRate": 66.7,
            },  # bought by tp_v1, tp_v3; viewed by tp_v1, tp_v2, tp_v4
            {
                "productId": "tp_d",
                "name": "D",
                "revenue": 750,
                "unitsSold": 3,
                "conversionRate": 0.0,
            },
            {
                "productId": "tp_b",
                "name": "B line",
                "revenue": 300,
                "unitsSold": 1,
                "conversionRate": 100.0,
            },
        ]
    }
    got = om.check(system, PATH, [("period", "7d"), ("currency", "SEK")], lambda now: expected)
    assert got == _expected(system, {"period": "7d", "currency": "SEK"})(datetime.now(UTC))
    limited = om.check(
        system,
        PATH,
        [("period", "7d"), ("currency", "SEK"), ("limit", "2")],
        lambda now: {"topSellers": expected["topSellers"][:2]},
    )
    assert len(limited["topSellers"]) == 2
    nok = om.check(
        system,
        PATH,
        [("period", "7d"), ("currency", "NOK")],
        lambda now: {
            "topSellers": [
                {
                    "productId": "tp_a",
                    "name": "A newest",
                    "revenue": 8991,
                    "unitsSold": 9,
                    "conversionRate": 33.3,
                }
            ]
        },
    )
    assert nok["topSellers"]
    # A period that ends before any SEK order: nothing.
    assert om.get(system, PATH, [("period", "1d"), ("currency", "SEK")]).json() == {
        "topSellers": []
    }


def test_products_in_a_currency_without_orders(system: System) -> None:
    reply = om.get(system, PATH, [("period", "90d"), ("currency", "CHF")])
    assert reply.status == 200, reply.body
    assert reply.json() == {"topSellers": []}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([("limit", "101")], "limit"),
        ([("limit", "-1")], "limit"),
        ([("period", "0d")], "period"),
        ([("period", "25m")], "period"),
        ([("period", "week")], "period"),
        ([("currency", "XYZ")], "currency"),
        ([("timezone", "Mars/Olympus")], "timezone"),
    ],
)
def test_products_refuse_bad_parameters(
    system: System, params: list[tuple[str, str]], field: str
) -> None:
    om.assert_refused(system, PATH, params, field)


def test_product_names_tie_break_by_event_id_then_line(system: System) -> None:
    """Names come from the product_names table ingest fills: latest by (time, event id, line),
    here all in the same second."""
    at = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    events = [
        _order(
            "tn_e1", "tn_o1", "tn_v1", at, "DKK", [("tn_a", "A0", 100, 1), ("tn_a", "A1", 100, 1)]
        ),
        _view("tn_e0", "tn_v2", at, {"productId": "tn_a", "name": "A view, older id"}),
        _order("tn_e2", "tn_o2", "tn_v1", at, "DKK", [("tn_b", "B line", 200, 1)]),
        _view("tn_e3", "tn_v2", at, {"productId": "tn_b", "name": "B view, newer id"}),
        # Later in time but an empty name: never the product's name.
        _view("tn_e4", "tn_v3", at + timedelta(seconds=5), {"productId": "tn_b", "name": ""}),
    ]
    om.send(system, events)
    got = om.check(
        system,
        PATH,
        [("period", "7d"), ("currency", "DKK")],
        _expected(system, {"period": "7d", "currency": "DKK"}),
    )
    assert {r["productId"]: r["name"] for r in got["topSellers"]} == {
        "tn_a": "A1",  # tn_e1 > tn_e0; line 1 > line 0
        "tn_b": "B view, newer id",
    }


# --- On storage directly: rows a failed or repeated write leaves, and duplicated orderIds. ------

EVENT_COLUMNS = ["project_id", "event_id", "event", "ts", "received_at", "visitor_id", "order_id",
                 "total", "currency", "product_id"]  # fmt: skip
ITEM_COLUMNS = ["project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency",
                "product_id", "name", "category", "price", "quantity"]  # fmt: skip


def _store_order(
    storage: Storage,
    project_id: str,
    event_id: str,
    order_id: str,
    who: str,
    at: datetime,
    lines: list[tuple[str, int, int]],
    *,
    items: int = 1,
    event: bool = True,
    order_lines: bool = True,
    currency: str = "SEK",
) -> None:
    """Store an order event's rows as ingest does (order_items, events, order_lines), or only
    some of them / some twice, as a write that failed half-way and its retry may leave."""
    total = sum(price * quantity for _, price, quantity in lines)
    item_rows = [
        (project_id, order_id, event_id, n, at, who, currency, p, f"name {p}", "c", price, q)
        for n, (p, price, q) in enumerate(lines)
    ]
    for _ in range(items):
        storage.insert_sync("order_items", ITEM_COLUMNS, item_rows)
    if event:
        row = (project_id, event_id, "order_completed", at, at, who, order_id, total, currency, "")
        storage.insert_sync("events", EVENT_COLUMNS, [row])
    if order_lines:
        storage.insert_sync(
            ORDER_LINES.name,
            ORDER_LINES.columns,
            [
                (project_id, order_id, event_id, at, currency, who, [p for p, _, _ in lines],
                 [price for _, price, _ in lines], [q for _, _, q in lines], -1),
            ],
        )  # fmt: skip


def _view_row(
    project_id: str, event_id: str, who: str, at: datetime, product: str
) -> tuple[Any, ...]:
    return (project_id, event_id, "product_view", at, at, who, "", 0, "", product)


def _top(storage: Storage, project_id: str, now: datetime) -> list[dict[str, Any]]:
    reader = ProductsReader(storage, "USD", clock=lambda: now)
    report = asyncio.run(reader.top_sellers(project_id, ProductsQuery("7d", 100, "SEK")))
    return [dataclasses.asdict(row) for row in report.top_sellers]


def test_products_without_order_lines_rows_read_order_items(
    storage: Storage, project_id: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(days=1)
    _store_order(storage, project_id, "e1", "o1", "v1", at, [("a", 100, 2), ("b", 50, 1)])
    # The write failed after the event: no order_lines row.
    _store_order(storage, project_id, "e2", "o2", "v2", at, [("a", 100, 1)], order_lines=False)
    # The write failed before the event: lines of an event never stored never count.
    _store_order(storage, project_id, "e3", "o3", "v3", at, [("a", 999, 9)], event=False,
                 order_lines=False)  # fmt: skip
    # A retry stored the lines twice and the event once: once.
    _store_order(storage, project_id, "e4", "o4", "v4", at, [("b", 50, 3)], items=2,
                 order_lines=False)  # fmt: skip
    storage.insert_sync("events", EVENT_COLUMNS, [_view_row(project_id, "e5", "v9", at, "a")])
    expected = [
        {"product_id": "a", "name": "name a", "revenue": 300, "units_sold": 3,
         "conversion_rate": 200.0},  # bought by v1, v2; viewed by v9 only
        {"product_id": "b", "name": "name b", "revenue": 200, "units_sold": 4,
         "conversion_rate": 0.0},
    ]  # fmt: skip
    storage.insert_sync(
        PRODUCT_NAMES.name,
        PRODUCT_NAMES.columns,
        [(project_id, "a", "name a", at, "e1", 0), (project_id, "b", "name b", at, "e1", 1)],
    )
    assert _top(storage, project_id, now) == expected
    # Once every event row has its order_lines row the figures come from there: the same.
    _store_order(storage, project_id, "e2", "o2", "v2", at, [("a", 100, 1)], items=0, event=False)
    _store_order(storage, project_id, "e4", "o4", "v4", at, [("b", 50, 3)], items=0, event=False)
    assert _top(storage, project_id, now) == expected


def test_products_count_the_first_event_of_duplicated_orders(
    storage: Storage, project_id: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    _store_order(storage, project_id, "e1", "o1", "v1", now - 2 * day, [("a", 100, 1)])
    # A later duplicate with other lines, and the first event stored twice: o1 counts once, as e1.
    _store_order(storage, project_id, "e2", "o1", "v1", now - day, [("b", 100, 5)])
    _store_order(storage, project_id, "e1", "o1", "v1", now - 2 * day, [("a", 100, 1)])
    # o2 was first seen before the period: its duplicate in the period never counts.
    _store_order(storage, project_id, "e3", "o2", "v2", now - 30 * day, [("c", 100, 1)])
    _store_order(storage, project_id, "e4", "o2", "v2", now - day, [("c", 100, 7)])
    # o3's first event is in another currency: not a SEK order, whatever its duplicate says.
    _store_order(storage, project_id, "e5", "o3", "v3", now - 3 * day, [("d", 100, 1)],
                 currency="NOK")  # fmt: skip
    _store_order(storage, project_id, "e6", "o3", "v3", now - day, [("d", 100, 1)])
    _store_order(storage, project_id, "e7", "o4", "v4", now - day, [("a", 100, 2)])
    storage.insert_sync(
        "order_dups", ["project_id", "order_id"], [(project_id, o) for o in ("o1", "o2", "o3")]
    )
    assert _top(storage, project_id, now) == [
        {"product_id": "a", "name": "", "revenue": 300, "units_sold": 3, "conversion_rate": 0.0}
    ]


def test_ingest_writes_order_lines_and_names(storage: Storage, project_id: str) -> None:
    """What ingest adds for products: an order_lines row per order event (also without line
    items, also in batches large enough for chdb's Arrow inserts) and the names of line items
    and product_views; with every row there, the top sellers need no fallback."""
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(hours=5)
    guard = RedisGuard(None)
    ingestor = Ingestor(storage, IdempotencyWindow(guard), None, guard, ip_salt=b"s")

    def order(n: int, products: list[dict[str, Any]]) -> IncomingEvent:
        total = sum(p["price"] * p["quantity"] for p in products)
        props = {"orderId": f"o{n}", "total": total, "currency": "SEK", "products": products}
        return IncomingEvent("order_completed", f"e{n}", user_id=f"v{n % 7}", timestamp=at,
                             properties=props)  # fmt: skip

    def view(n: int, props: dict[str, Any]) -> IncomingEvent:
        return IncomingEvent("product_view", f"w{n}", user_id="v1", timestamp=at, properties=props)

    async def ingest() -> None:
        # 250 orders without line items in one write (every order_lines array empty).
        await ingestor.ingest(project_id, [order(n, []) for n in range(250)])
        line = {"productId": "a", "name": "A line", "category": "c", "price": 100, "quantity": 2}
        await ingestor.ingest(
            project_id,
            [order(1000, [line, {**line, "productId": "b", "name": ""}])]
            + [order(1001 + n, []) for n in range(220)]
            + [
                view(1, {"productId": "b", "name": "B view"}),
                view(2, {"productId": "a", "variant": {"name": "nested"}}),
            ],
        )

    asyncio.run(ingest())
    # Equal: the check products make passes, so the figures come from order_lines.
    counts = Sql(
        "SELECT sum(event_rows), sum(line_rows) FROM order_line_counts WHERE project_id = {p}"
    )
    assert storage.query_sync(counts, {"p": project_id}) == [(471, 471)]
    lines = Sql("SELECT count(), sum(length(product_ids)) FROM order_lines WHERE project_id = {p}")
    assert storage.query_sync(lines, {"p": project_id}) == [(471, 2)]
    assert _top(storage, project_id, now) == [
        {"product_id": "a", "name": "A line", "revenue": 200, "units_sold": 2,
         "conversion_rate": 100.0},
        {"product_id": "b", "name": "B view", "revenue": 200, "units_sold": 2,
         "conversion_rate": 100.0},
    ]  # fmt: skip


def test_products_guessed_beside_the_top_sellers_stay_exact(
    storage: Storage, project_id: str
) -> None:
    """The reader reads the viewers and names of the products it answered last beside the top
    sellers (a dashboard asks the same again): whatever changed since, each answer is the one a
    fresh reader gives, and the figures worked out by hand."""
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(days=1)
    reader = ProductsReader(storage, "USD", clock=lambda: now)

    def top(period: str, limit: int, currency: str = "SEK") -> list[tuple[str, str, int, float]]:
        asked = ProductsQuery(period, limit, currency)
        rows = asyncio.run(reader.top_sellers(project_id, asked)).top_sellers
        fresh = ProductsReader(storage, "USD", clock=lambda: now)
        assert asyncio.run(fresh.top_sellers(project_id, asked)).top_sellers == rows
        return [(r.product_id, r.name, r.revenue, r.conversion_rate) for r in rows]

    def name(event_id: str, product: str, value: str, line: int = 0) -> None:
        storage.insert_sync(
            PRODUCT_NAMES.name,
            PRODUCT_NAMES.columns,
            [(project_id, product, value, at, event_id, line)],
        )

    _store_order(storage, project_id, "g1", "go1", "v1", at, [("a", 100, 3), ("b", 100, 2)])
    _store_order(storage, project_id, "g2", "go2", "v2", at, [("c", 100, 1)])
    views = [("g3", "v1", "a"), ("g4", "v3", "a"), ("g5", "v2", "b")]
    storage.insert_sync(
        "events", EVENT_COLUMNS, [_view_row(project_id, e, who, at, p) for e, who, p in views]
    )
    name("g1", "a", "A")
    # a: bought by v1, viewed by v1 and v3; b: bought by v1, viewed by v2.
    assert top("7d", 2) == [("a", "A", 300, 50.0), ("b", "", 200, 100.0)]
    # Asked again after a new view of a (its viewers now guessed), a new name of b, and c
    # overtaking both: c is read in a second round, a from the guess, b no longer listed.
    storage.insert_sync("events", EVENT_COLUMNS, [_view_row(project_id, "g6", "v4", at, "a")])
    name("g7", "b", "B")
    _store_order(storage, project_id, "g8", "go3", "v5", at, [("c", 500, 1)])
    assert top("7d", 2) == [("c", "", 600, 0.0), ("a", "A", 300, 33.3)]
    # A longer limit: b back, with its new name (the guess held only c and a).
    assert top("7d", 3) == [("c", "", 600, 0.0), ("a", "A", 300, 33.3), ("b", "B", 200, 100.0)]
    # Another period guesses the project's last answer (c, a, b); d, older, is read after.
    _store_order(storage, project_id, "g9", "go4", "v1", now - timedelta(days=20), [("d", 900, 1)])
    storage.insert_sync("events", EVENT_COLUMNS, [_view_row(project_id, "g10", "v1", at, "d")])
    assert top("30d", 2) == [("d", "", 900, 100.0), ("c", "", 600, 0.0)]
    # Another currency: nothing guessed, nothing sold.
    assert top("30d", 2, "NOK") == []

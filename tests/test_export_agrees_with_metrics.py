"""Export and metrics agree on every figure both show, on the shared dataset, on both backends.

Both read the commerce model's definitions (cartlytics.common.commerce): what an order is (the
first ``order_completed`` of an orderId), its line items, a product's and a customer's figures.
This test reads each figure through the export (GET /analytics/export, NDJSON) and through the
metrics endpoints (sales, products, customers, the custom query), over the same period, zone and
currency, and compares them with each other and with the plain-Python oracles (tests/oracle*.py,
no import from cartlytics):

- orders and revenue per currency: the orders export (rows, sum of totals) = sales = the custom
  query by currency = the oracle;
- per product and currency: revenue, units and orders (the orders listing it) of the products
  export = the top sellers' revenue and unitsSold = the custom query by product_id = the oracle;
  the name likewise;
- per customer and currency: orders and revenue of the customers export = GET customers'
  topCustomers (the first 100, same order), its totalCustomers = the export's rows,
  revenuePerCustomer and repeatPurchaseRate from the export's rows = the oracle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pytest

from tests import dataset, oracle_export, oracle_metrics
from tests.oracle import round_half_up_div, window
from tests.rest import call
from tests.servers import System

CASES = [
    {"period": "30d", "currency": "USD", "timezone": "UTC"},
    {"period": "90d", "currency": "EUR", "timezone": "Europe/Paris"},
    {"period": "3m", "currency": "GBP", "timezone": "America/New_York"},
    {"period": "12m", "currency": "JPY", "timezone": "Asia/Kolkata"},
]
LIMIT = 100  # the most metrics lists; the dataset has 12 products, customers may be more


def _get(system: System, path: str, params: dict[str, str]) -> Any:
    dataset.load(system)
    reply = call("GET", f"{system.http_url}{path}?{urlencode(params, quote_via=quote)}", system.key)
    assert reply.status == 200, reply.body
    return reply.json()


def _export(system: System, **params: str) -> list[dict[str, Any]]:
    dataset.load(system)
    query = urlencode({**params, "format": "ndjson"}, quote_via=quote)
    reply = call("GET", f"{system.http_url}/analytics/export?{query}", system.key, timeout=120)
    assert reply.status == 200, reply.body
    text = reply.body.decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def _query(system: System, body: dict[str, Any]) -> list[dict[str, Any]]:
    dataset.load(system)
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
    assert reply.status == 200, reply.body
    rows: list[dict[str, Any]] = reply.json()["rows"]
    return rows


def _either(before: datetime, after: datetime, got: Any, expect: Callable[[datetime], Any]) -> None:
    """``got`` is the oracle's answer for a clock just before or just after the calls (a period
    edge may pass while they run)."""
    expected = expect(before)
    if got != expected and expect(after) == got:
        return
    assert got == expected


def _case_id(case: dict[str, str]) -> str:
    return "-".join(case.values())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_orders_and_revenue_agree(system: System, case: dict[str, str]) -> None:
    events = dataset.load(system).events
    period, currency, zone = case["period"], case["currency"], case["timezone"]
    before = datetime.now(UTC)
    exported = _export(system, type="orders", period=period, currency=currency, timezone=zone)
    every_currency = _export(system, type="orders", period=period, timezone=zone)
    sales = _get(
        system,
        "/analytics/sales",
        {"period": period, "currency": currency, "timezone": zone, "granularity": "day"},
    )
    by_currency = _query(
        system,
        {
            "metrics": ["orders", "revenue"],
            "dimensions": ["currency"],
            "filters": {"period": period, "timezone": zone},
        },
    )
    after = datetime.now(UTC)

    # Export and metrics, with each other.
    export_figures = (len(exported), sum(row["total"] for row in exported))
    assert export_figures == (sales["orders"], sales["revenue"])
    per_currency: dict[str, list[int]] = {}
    for row in every_currency:
        entry = per_currency.setdefault(row["currency"], [0, 0])
        entry[0] += 1
        entry[1] += row["total"]
    assert {r["currency"]: [r["orders"], r["revenue"]] for r in by_currency} == per_currency
    assert per_currency.get(currency, [0, 0]) == list(export_figures)
    assert export_figures[0] > 0, "the case must have orders to compare"

    # And with the oracle.
    def expect(now: datetime) -> dict[str, list[int]]:
        start, end, _, _ = window(period, ZoneInfo(zone), now)
        figures: dict[str, list[int]] = {}
        for order in oracle_metrics.first_orders(events):
            if start <= order.ts < end:
                entry = figures.setdefault(order.currency, [0, 0])
                entry[0] += 1
                entry[1] += order.total
        return figures

    _either(before, after, per_currency, expect)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_product_figures_agree(system: System, case: dict[str, str]) -> None:
    events = dataset.load(system).events
    period, currency, zone = case["period"], case["currency"], case["timezone"]
    before = datetime.now(UTC)
    exported = _export(system, type="products", period=period, currency=currency, timezone=zone)
    sellers = _get(
        system,
        "/analytics/products",
        {"period": period, "currency": currency, "timezone": zone, "limit": str(LIMIT)},
    )["topSellers"]
    by_product = _query(
        system,
        {
            "metrics": ["revenue", "units_sold", "orders"],
            "dimensions": ["product_id"],
            "filters": {"period": period, "timezone": zone, "currency": currency},
        },
    )
    after = datetime.now(UTC)

    assert exported, "the case must have products to compare"
    assert len(exported) <= LIMIT
    assert {row["currency"] for row in exported} == {currency}
    # The products export and the top sellers: the same products, in the same order (revenue
    # descending, then productId), with the same name, revenue and units.
    assert [(r["productId"], r["name"], r["revenue"], r["unitsSold"]) for r in exported] == [
        (s["productId"], s["name"], s["revenue"], s["unitsSold"]) for s in sellers
    ]
    # The custom query by product: revenue, units, and the orders listing each product.
    assert {r["productId"]: (r["revenue"], r["unitsSold"], r["orders"]) for r in exported} == {
        r["product_id"]: (r["revenue"], r["units_sold"], r["orders"]) for r in by_product
    }

    def expect(now: datetime) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, int]]]:
        start, end, _, _ = window(period, ZoneInfo(zone), now)
        top = oracle_metrics.products(
            events, period=period, currency=currency, zone=ZoneInfo(zone), now=now, limit=LIMIT
        )["topSellers"]
        return (
            oracle_export.products(events, start, end, currency),
            [(s["productId"], s["name"], s["revenue"], s["unitsSold"]) for s in top],
        )

    _either(
        before,
        after,
        (exported, [(s["productId"], s["name"], s["revenue"], s["unitsSold"]) for s in sellers]),
        expect,
    )


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_customer_figures_agree(system: System, case: dict[str, str]) -> None:
    events = dataset.load(system).events
    period, currency, zone = case["period"], case["currency"], case["timezone"]
    before = datetime.now(UTC)
    exported = _export(system, type="customers", period=period, currency=currency, timezone=zone)
    report = _get(
        system,
        "/analytics/customers",
        {"period": period, "currency": currency, "timezone": zone, "limit": str(LIMIT)},
    )
    after = datetime.now(UTC)

    assert exported, "the case must have customers to compare"
    assert {row["currency"] for row in exported} == {currency}
    total = len(exported)
    revenue = sum(row["revenue"] for row in exported)
    repeaters = sum(1 for row in exported if row["orders"] >= 2)
    assert report["totalCustomers"] == total
    assert report["revenuePerCustomer"] == round_half_up_div(revenue, total)
    assert report["repeatPurchaseRate"] == oracle_metrics.percent(repeaters, total)
    # Both order customers by revenue descending, then customer id.
    assert report["topCustomers"] == [
        {"customerId": r["customerId"], "orders": r["orders"], "revenue": r["revenue"]}
        for r in exported[:LIMIT]
    ]
    for row in exported:
        assert row["averageOrderValue"] == round_half_up_div(row["revenue"], row["orders"])

    def expect(now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        start, end, _, _ = window(period, ZoneInfo(zone), now)
        return (
            oracle_export.customers(events, start, end, currency, ZoneInfo(zone)),
            oracle_metrics.customers(
                events, period=period, currency=currency, zone=ZoneInfo(zone), now=now, limit=LIMIT
            ),
        )

    _either(before, after, (exported, report), expect)

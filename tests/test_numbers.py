"""Numbers that cannot break a figure (issue 12, items 1 and 2; docs/semantics.md "Numbers").

- Validation: one set of limits, matching the storage and wire types (amounts, quantities,
  counts, any other number), each refusal naming the field and the rule.
- Sums cannot wrap: rows beyond today's limits (stored by an earlier release, or written by hand)
  still add up exactly in every reader, on both backends.
- A figure beyond 2^53 - 1 is an explicit OUT_OF_RANGE naming it; up to it, exact to the unit.
- Currencies: ISO 4217 as published (XTS, XXX, funds, metals), with each one's minor units.

Expected values are plain Python sums over what the test stored or sent.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartlytics.common import money
from cartlytics.common.redis_guard import RedisGuard
from cartlytics.common.storage import Storage
from services.export.exporter import Exporter
from services.export.request import ExportQuery
from services.ingest.validation import (
    MAX_AMOUNT,
    MAX_QUANTITY,
    NUMBER_RULE,
    IncomingEvent,
    ValidEvent,
    validate,
)
from services.metrics.customers import CustomersReader
from services.metrics.products import ProductsReader
from services.metrics.query import QueryRunner
from services.metrics.realtime import RealtimeReader
from services.metrics.reports import CustomersQuery, CustomQuery, ProductsQuery
from services.metrics.sales import SalesQuery, SalesReader
from tests.rest import call, midday_zone
from tests.servers import System
from tests.test_products import _store_order

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SAFE = 2**53 - 1


def _check(properties: dict[str, Any], event: str = "order_completed", **kw: Any) -> Any:
    incoming = IncomingEvent(event, user_id="u1", properties=properties, **kw)
    return validate(incoming, NOW, lambda: "evt_x")


def _refusals(outcome: Any) -> dict[str, str]:
    assert not isinstance(outcome, ValidEvent), "accepted"
    return {v.field: v.description for v in outcome}


def _order(**extra: Any) -> dict[str, Any]:
    return {"orderId": "o1", "total": 100, "currency": "USD", **extra}


def _line(price: Any = 100, quantity: Any = 1) -> dict[str, Any]:
    return {"productId": "p1", "price": price, "quantity": quantity}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("quantity", [2**31, 2**32 + 1, MAX_QUANTITY + 1, 1e400])
def test_a_line_quantity_beyond_the_limit_is_refused_naming_it(quantity: Any) -> None:
    refused = _refusals(_check(_order(products=[_line(quantity=quantity)])))
    assert "properties.products[0].quantity" in refused
    if math.isfinite(quantity):
        assert refused["properties.products[0].quantity"] == f"must be at most {MAX_QUANTITY}"


def test_the_largest_quantity_and_amount_are_accepted() -> None:
    outcome = _check(_order(total=MAX_AMOUNT, products=[_line(MAX_AMOUNT, MAX_QUANTITY)]))
    assert isinstance(outcome, ValidEvent)
    assert outcome.line_items[0].price * outcome.line_items[0].quantity < 2**63


@pytest.mark.parametrize("field", ["total", "price"])
def test_an_amount_beyond_the_limit_is_refused(field: str) -> None:
    properties = _order() if field == "total" else _order(products=[_line()])
    target = properties if field == "total" else properties["products"][0]
    target[field] = MAX_AMOUNT + 1
    refused = _refusals(_check(properties))
    name = "properties.total" if field == "total" else "properties.products[0].price"
    assert refused[name].startswith(f"must be at most {MAX_AMOUNT}")


@pytest.mark.parametrize(
    "value", [2**53, -(2**53), 2**63, 1e308, -1e308, math.inf, -math.inf, math.nan, 1e400]
)
def test_a_custom_number_that_is_not_exact_is_refused_at_its_path(value: float) -> None:
    properties = {"ok": 1, "nested": {"list": [1, 2, value]}}
    refused = _refusals(_check(properties, event="my_custom_event"))
    assert refused == {"properties.nested.list[2]": NUMBER_RULE}


def test_context_numbers_follow_the_same_rule() -> None:
    refused = _refusals(_check({"page": "/"}, event="page_view", context={"screen": 2**63}))
    assert refused == {"context.screen": NUMBER_RULE}


def test_numbers_within_the_safe_range_are_kept_as_sent() -> None:
    properties = {"a": SAFE, "b": -SAFE, "c": 0.1, "d": 1e-300, "e": [1.5, -2]}
    outcome = _check(properties, event="my_custom_event")
    assert isinstance(outcome, ValidEvent)
    assert outcome.properties == properties


def test_a_standard_field_is_named_once() -> None:
    refused = _check(_order(total=math.inf))
    assert not isinstance(refused, ValidEvent)
    assert [v.field for v in refused] == ["properties.total"]


def test_counts_fit_an_int32() -> None:
    assert isinstance(_check(_order(items=2**31 - 1)), ValidEvent)
    refused = _refusals(_check(_order(items=2**31)))
    assert refused["properties.items"] == f"must be at most {2**31 - 1}"


# --------------------------------------------------------------------------- currencies


@pytest.mark.parametrize("code", ["XTS", "XXX", "XAU", "BOV", "CHE", "XDR", "XCG", "EUR"])
def test_every_published_iso_4217_code_is_a_currency(code: str) -> None:
    assert money.is_currency(code)
    assert isinstance(_check(_order(currency=code)), ValidEvent)


def test_minor_units_come_from_the_published_table() -> None:
    expected = {"USD": 2, "JPY": 0, "BHD": 3, "CLF": 4, "KWD": 3, "XAU": 0, "XTS": 0, "XXX": 0}
    assert {code: money.minor_units(code) for code in expected} == expected


def test_a_withdrawn_code_is_refused_for_new_events_and_readable_for_old_ones() -> None:
    refused = _refusals(_check(_order(currency="BGN")))
    assert refused["properties.currency"].startswith("must be an ISO 4217 currency code")
    assert money.parse_currency("BGN", "USD") == "BGN"


# The codes the previous release (88d23dd) accepted: events stored in any of them stay readable.
ACCEPTED_BEFORE = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
    RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
    TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XCD XCG XDR XOF XPD XPF
    XPT XSU XUA YER ZAR ZMW ZWG ZWL
""".split()  # noqa: SIM905


def test_every_code_accepted_before_stays_readable_with_its_minor_units() -> None:
    for code in ACCEPTED_BEFORE:
        assert money.parse_currency(code, "USD") == code
        assert money.minor_units(code) in (0, 2, 3, 4)


# --------------------------------------------------------------------------- sums that cannot wrap


def _legacy_orders(storage: Storage, project_id: str, at: datetime) -> tuple[int, int]:
    """Orders with amounts an earlier release accepted (totals up to 10^15, quantities up to
    2^32 - 1), enough for Int64 sums to wrap: (revenue, line revenue) as Python adds them."""
    orders = [(f"o{n}", 4 * 10**18 + n) for n in range(3)]  # each fits Int64, the sum does not
    for n, (order_id, total) in enumerate(orders):
        _store_order(
            storage, project_id, f"e{n}", order_id, "v1", at, [], event=False, currency="SEK"
        )
        storage.insert_sync(
            "events",
            ["project_id", "event_id", "event", "ts", "received_at", "visitor_id", "order_id",
             "total", "currency"],
            [(project_id, f"e{n}", "order_completed", at, at, "v1", order_id, total, "SEK")],
        )  # fmt: skip
    price, quantity = 10**15, 2**32 - 1
    lines = [("p1", price, quantity)] * 3
    _store_order(storage, project_id, "e9", "o9", "v2", at, lines, event=False, currency="NOK")
    storage.insert_sync(
        "events",
        ["project_id", "event_id", "event", "ts", "received_at", "visitor_id", "order_id",
         "total", "currency"],
        [(project_id, "e9", "order_completed", at, at, "v2", "o9", 10**15, "NOK")],
    )  # fmt: skip
    return sum(total for _, total in orders), 3 * price * quantity


def test_sums_beyond_int64_are_exact_in_every_reader(storage: Storage, project_id: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(hours=2)
    revenue, line_revenue = _legacy_orders(storage, project_id, at)
    assert revenue >= 2**63 and line_revenue >= 2**63

    def run(coroutine: Any) -> Any:
        return asyncio.run(coroutine)

    clock = lambda: now  # noqa: E731
    sales = run(
        SalesReader(storage, "USD", clock).sales(project_id, SalesQuery("7d", "day", "SEK"))
    )
    assert (sales.revenue, sales.orders) == (revenue, 3)
    assert sum(b.revenue for b in sales.series) == revenue

    customers = run(
        CustomersReader(storage, "USD", clock).customers(
            project_id, CustomersQuery("7d", 10, "SEK")
        )
    )
    assert [(c.customer_id, c.revenue) for c in customers.top_customers] == [("v1", revenue)]

    products = run(
        ProductsReader(storage, "USD", clock).top_sellers(
            project_id, ProductsQuery("7d", 10, "NOK")
        )
    )
    assert [(p.product_id, p.revenue, p.units_sold) for p in products.top_sellers] == [
        ("p1", line_revenue, 3 * (2**32 - 1))
    ]

    runner = QueryRunner(storage, "USD", clock)
    by_orders = run(
        runner.run(
            project_id, CustomQuery(["revenue", "orders"], [], {"period": "7d", "currency": "SEK"})
        )
    )
    assert by_orders.rows == [{"revenue": revenue, "orders": 3}]
    by_product = run(
        runner.run(
            project_id,
            CustomQuery(["revenue"], ["product_id"], {"period": "7d", "currency": "NOK"}),
        )
    )
    assert by_product.rows == [{"product_id": "p1", "revenue": line_revenue}]

    realtime = RealtimeReader(storage, None, RedisGuard(None), "USD", clock)
    today = run(realtime.realtime(project_id, "", "SEK"))
    if at.date() == now.date():  # "today" in UTC
        assert today.revenue_today == revenue

    exporter = Exporter(storage)
    for kind, currency, column, expected in (
        ("customers", "SEK", "revenue", revenue),
        ("order_items", "NOK", "revenue", line_revenue // 3),
        ("products", "NOK", "revenue", line_revenue),
    ):
        query = ExportQuery(type=kind, format="csv", currency=currency, period="7d")
        data = run(_collect(exporter, project_id, query))
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert rows and {int(r[column]) for r in rows} == {expected}, (kind, rows)


async def _collect(exporter: Exporter, project_id: str, query: ExportQuery) -> bytes:
    return b"".join([c async for c in exporter.export(project_id, exporter.plan(query))])


# --------------------------------------------------------------------------- through the API


def _send(system: System, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        reply = call("POST", f"{system.http_url}/analytics/event/batch", system.key,
                     {"events": events[start : start + 1000]}, timeout=120)  # fmt: skip
        assert reply.status == 200, reply.body
        assert reply.json()["rejectedCount"] == 0, reply.body


def _orders(prefix: str, totals: list[int], currency: str, user: str) -> list[dict[str, Any]]:
    at = (datetime.now(UTC) - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    return [
        {"event": "order_completed", "id": f"evt_{prefix}_{n}", "userId": user, "timestamp": at,
         "properties": {"orderId": f"{prefix}_{n}", "total": total, "currency": currency,
                        "products": [{"productId": f"{prefix}_p", "price": total,
                                      "quantity": 1}]}}
        for n, total in enumerate(totals)
    ]  # fmt: skip


def test_a_quantity_beyond_int32_is_refused_and_products_keep_answering(system: System) -> None:
    tag = uuid.uuid4().hex[:8]
    bad = _orders(f"q{tag}", [100], "USD", "u_q")[0]
    bad["properties"]["products"][0]["quantity"] = 2**31
    reply = call("POST", f"{system.http_url}/analytics/event", system.key, bad)
    assert reply.status == 400, reply.body
    body = reply.json()
    violations = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == "properties.products[0].quantity"
    products = call("GET", f"{system.http_url}/analytics/products?period=7d", system.key)
    assert products.status == 200, products.body


def test_figures_up_to_2_53_are_exact_and_beyond_are_refused(system: System) -> None:
    tag = uuid.uuid4().hex[:8]
    # XXX ("no currency") and XTS (testing) keep these figures apart from every other test's.
    exact_totals = [MAX_AMOUNT] * 9007 + [SAFE - 9007 * MAX_AMOUNT]
    assert sum(exact_totals) == SAFE
    _send(system, _orders(f"a{tag}", exact_totals, "XXX", f"u_a{tag}"))
    over_totals = [MAX_AMOUNT] * 9008
    _send(system, _orders(f"b{tag}", over_totals, "XTS", f"u_b{tag}"))

    url = system.http_url
    sales = call("GET", f"{url}/analytics/sales?period=7d&currency=XXX", system.key)
    assert sales.status == 200, sales.body
    assert sales.json()["revenue"] == SAFE  # an integer in the JSON text, exact
    assert str(SAFE).encode() in sales.body

    # Read where it is midday, so that orders stamped 30 minutes ago are "today" for realtime.
    zone = midday_zone()
    for path in (
        "sales?period=7d&currency=XTS",
        "customers?period=7d&currency=XTS",
        "products?period=7d&currency=XTS",
        f"realtime?currency=XTS&timezone={zone}",
    ):
        reply = call("GET", f"{url}/analytics/{path}", system.key)
        assert reply.status == 400, (path, reply.body)
        body = reply.json()
        assert body["code"] == 11  # OUT_OF_RANGE
        reasons = [d.get("reason") for d in body["details"]]
        assert "FIGURE_TOO_LARGE" in reasons, body
        assert "9008000000000000" in body["message"]
    xts = {"period": "7d", "currency": "XTS"}
    query = call(
        "POST", f"{url}/analytics/query", system.key, {"metrics": ["revenue"], "filters": xts}
    )
    assert query.status == 400 and b"FIGURE_TOO_LARGE" in query.body, query.body
    orders_only = call(
        "POST", f"{url}/analytics/query", system.key, {"metrics": ["orders"], "filters": xts}
    )
    assert orders_only.status == 200 and orders_only.json()["rows"] == [{"orders": 9008}]

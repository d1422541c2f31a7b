"""GET /analytics/products against the running system, compared with the plain-Python oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

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

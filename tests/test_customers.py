"""GET /analytics/customers against the running system, compared with the plain-Python oracle."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cartlytics.common.storage import Storage
from services.metrics.customers import CustomersReader
from services.metrics.reports import CustomersQuery
from tests import oracle_metrics as om
from tests.servers import System

PATH = "/analytics/customers"

CASES: list[dict[str, str]] = [
    {},  # defaults: 30d, limit 10, USD, UTC
    {"period": "7d"},
    {"period": "90d", "limit": "100"},
    {"period": "90d", "currency": "EUR", "limit": "5"},
    {"period": "12m", "currency": "GBP", "timezone": "Asia/Kolkata"},
    {"period": "3m", "currency": "JPY", "timezone": "America/New_York", "limit": "3"},
    {"period": "30d", "timezone": "Pacific/Auckland", "limit": "1"},
    {"period": "14d", "currency": "EUR", "timezone": "Europe/Paris"},
    {"period": "1d"},
]


def _expected(system: System, params: dict[str, str]) -> Any:
    def expect(now: datetime) -> dict[str, Any]:
        return om.customers(
            om.stored_events(system),
            period=params.get("period", "30d"),
            currency=params.get("currency", "USD"),
            zone=ZoneInfo(params.get("timezone", "UTC")),
            now=now,
            limit=int(params.get("limit", "10")),
        )

    return expect


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(p.values()) or "defaults")
def test_customers_match_oracle(system: System, params: dict[str, str]) -> None:
    got = om.check(system, PATH, list(params.items()), _expected(system, params))
    if params.get("period") in ("90d", "12m", "3m"):
        assert got["totalCustomers"] > 0
    if params.get("period") == "90d" and "currency" not in params:
        # Over most of the dataset's 100 days both kinds exist: the split is really tested.
        assert got["newCustomers"] > 0
        assert got["returningCustomers"] > 0
        assert got["repeatPurchaseRate"] > 0


def _order(
    event_id: str, order_id: str, who: str, ts: datetime, total: int, currency: str
) -> dict[str, Any]:
    return {
        "id": event_id,
        "event": "order_completed",
        "userId": who,
        "timestamp": om.iso(ts),
        "properties": {"orderId": order_id, "total": total, "currency": currency},
    }


def test_customers_targeted(system: System) -> None:
    """CHF and tc_* visitors exist only here: hand-computed figures, and the oracle agrees."""
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    events = [
        # tc_old ordered 40 days ago, and again yesterday: returning in 7d, new in 90d.
        _order("tc_e01", "tc_o1", "tc_old", now - 40 * day, 1_000, "CHF"),
        _order("tc_e02", "tc_o2", "tc_old", now - 1 * day, 2_500, "CHF"),
        # tc_cross's first order ever was in EUR 20 days ago: returning in the CHF 7d figures.
        _order("tc_e03", "tc_o3", "tc_cross", now - 20 * day, 700, "EUR"),
        _order("tc_e04", "tc_o4", "tc_cross", now - 2 * day, 4_000, "CHF"),
        # tc_new: two CHF orders this week (a repeat purchase), and a late duplicate of one.
        _order("tc_e05", "tc_o5", "tc_new", now - 3 * day, 1_200, "CHF"),
        _order("tc_e06", "tc_o6", "tc_new", now - 2 * day, 300, "CHF"),
        _order("tc_e07", "tc_o5", "tc_new", now - 1 * day, 99_999, "CHF"),  # never counts
        # tc_late: a duplicate of an old order lands in the period; the order is still old.
        _order("tc_e08", "tc_o8", "tc_late", now - 50 * day, 800, "CHF"),
        _order("tc_e09", "tc_o8", "tc_late", now - 1 * day, 800, "CHF"),
    ]
    om.send(system, events)
    om.send(system, events[5:6])  # a client retry: stored and counted once
    week = {
        "period": "7d",
        "currency": "CHF",
        "totalCustomers": 3,
        "newCustomers": 1,
        "returningCustomers": 2,
        "repeatPurchaseRate": 33.3,
        "revenuePerCustomer": 2667,  # (2500 + 4000 + 1200 + 300) / 3 = 2666.67
        "topCustomers": [
            {"customerId": "tc_cross", "orders": 1, "revenue": 4000},
            {"customerId": "tc_old", "orders": 1, "revenue": 2500},
            {"customerId": "tc_new", "orders": 2, "revenue": 1500},
        ],
    }
    om.check(system, PATH, [("period", "7d"), ("currency", "CHF")], lambda now: week)
    assert week == _expected(system, {"period": "7d", "currency": "CHF"})(datetime.now(UTC))
    quarter = {
        "period": "90d",
        "currency": "CHF",
        "totalCustomers": 4,
        "newCustomers": 4,  # every tc_* first order ever (tc_cross's EUR one too) is inside 90d
        "returningCustomers": 0,
        "repeatPurchaseRate": 50.0,  # tc_old and tc_new
        "revenuePerCustomer": 2450,  # (1000 + 2500 + 4000 + 1200 + 300 + 800) / 4
        "topCustomers": [
            {"customerId": "tc_cross", "orders": 1, "revenue": 4000},
            {"customerId": "tc_old", "orders": 2, "revenue": 3500},
        ],
    }
    om.check(
        system,
        PATH,
        [("period", "90d"), ("currency", "CHF"), ("limit", "2")],
        lambda now: quarter,
    )
    # tc_cross's EUR order is in the EUR figures (with the dataset's), not in the CHF ones.
    eur = om.check(
        system,
        PATH,
        [("period", "30d"), ("currency", "EUR"), ("limit", "100")],
        _expected(system, {"period": "30d", "currency": "EUR", "limit": "100"}),
    )
    assert {"customerId": "tc_cross", "orders": 1, "revenue": 700} in eur["topCustomers"]


def test_customers_in_a_currency_without_orders(system: System) -> None:
    reply = om.get(system, PATH, [("period", "90d"), ("currency", "SEK")])
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "period": "90d",
        "currency": "SEK",
        "totalCustomers": 0,
        "newCustomers": 0,
        "returningCustomers": 0,
        "repeatPurchaseRate": 0.0,
        "revenuePerCustomer": 0,
        "topCustomers": [],
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([("limit", "101")], "limit"),
        ([("limit", "-3")], "limit"),
        ([("period", "367d")], "period"),
        ([("period", "m")], "period"),
        ([("currency", "usd1")], "currency"),
        ([("timezone", "../../etc/passwd")], "timezone"),
    ],
)
def test_customers_refuse_bad_parameters(
    system: System, params: list[tuple[str, str]], field: str
) -> None:
    om.assert_refused(system, PATH, params, field)


# --- On storage directly: an orderId reused by another visitor before the period. --------------


def test_new_customers_with_orders_reused_across_visitors(
    storage: Storage, project_id: str
) -> None:
    """customer_first keeps each visitor's earliest order event row, which is not always a
    winner: here the earliest rows of tc_x and tc_z are later duplicates of tc_y's order."""
    now = datetime.now(UTC).replace(microsecond=0)
    day = timedelta(days=1)
    columns = ["project_id", "event_id", "event", "ts", "received_at", "visitor_id", "order_id",
               "total", "currency"]  # fmt: skip

    def order(event_id: str, order_id: str, who: str, at: datetime, total: int) -> tuple[Any, ...]:
        return (project_id, event_id, "order_completed", at, at, who, order_id, total, "CHF")

    storage.insert_sync(
        "events",
        columns,
        [
            order("e1", "o_shared", "tc_y", now - 20 * day, 100),  # the winner: tc_y's order
            order("e2", "o_shared", "tc_x", now - 15 * day, 100),  # later duplicates
            order("e3", "o_shared", "tc_z", now - 14 * day, 100),
            order("e4", "o_z_old", "tc_z", now - 12 * day, 300),  # tc_z did order before
            order("e5", "o_x", "tc_x", now - 2 * day, 1000),  # the period's orders
            order("e6", "o_y", "tc_y", now - 2 * day, 2000),
            order("e7", "o_z", "tc_z", now - 2 * day, 500),
            order("e8", "o_z2", "tc_z", now - day, 500),
            order("e9", "o_w", "tc_w", now - day, 700),  # a plain new customer
        ],
    )
    storage.insert_sync("order_dups", ["project_id", "order_id"], [(project_id, "o_shared")])
    reader = CustomersReader(storage, "USD", clock=lambda: now)
    report = asyncio.run(reader.customers(project_id, CustomersQuery("7d", 10, "CHF")))
    assert dataclasses.asdict(report) == {
        "period": "7d",
        "currency": "CHF",
        "total_customers": 4,
        "new_customers": 2,  # tc_x (its only earlier row is not its order) and tc_w
        "returning_customers": 2,  # tc_y (o_shared is its order) and tc_z (o_z_old)
        "repeat_purchase_rate": 25.0,
        "revenue_per_customer": 1175,  # 4700 / 4
        "top_customers": [
            {"customer_id": "tc_y", "orders": 1, "revenue": 2000},
            {"customer_id": "tc_x", "orders": 1, "revenue": 1000},
            {"customer_id": "tc_z", "orders": 2, "revenue": 1000},
            {"customer_id": "tc_w", "orders": 1, "revenue": 700},
        ],
    }

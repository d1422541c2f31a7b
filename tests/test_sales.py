"""GET /analytics/sales against the running system, compared with the plain-Python oracle."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import oracle
from tests.rest import call
from tests.servers import System

_SENT: dict[str, list[oracle.Order]] = {}


def _avoid_boundaries(ts: datetime, now: datetime) -> bool:
    """True when ts is safely away from "now minus whole days" (± an hour for DST moves)."""
    seconds = (ts - now).total_seconds() % 86400
    return all(abs(seconds - shift) > 900 for shift in (0, 3600, 82800, 86400))


def _order_event(order: oracle.Order, user: str, send_id: bool = True) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "order_completed",
        "userId": user,
        "timestamp": order.ts.isoformat().replace("+00:00", "Z"),
        "properties": {"orderId": order.order_id, "total": order.total, "currency": order.currency},
    }
    if send_id:
        event["id"] = order.event_id
    return event


def _dataset(system: System) -> list[oracle.Order]:
    """Send a seeded dataset once per system; return the orders the oracle should know about."""
    if system.identity in _SENT:
        return _SENT[system.identity]
    rng = random.Random(20240115)
    now = datetime.now(UTC)
    orders: list[oracle.Order] = []
    events: list[dict[str, Any]] = []
    currencies = ["USD"] * 6 + ["EUR"] * 3 + ["JPY"]
    n = 0
    while len(orders) < 400:
        ts = now - timedelta(seconds=rng.randint(120, 130 * 86400))
        if not _avoid_boundaries(ts, now):
            continue
        n += 1
        order = oracle.Order(
            event_id=f"evt_sales_{n:05d}",
            order_id=f"ord_{n:05d}",
            ts=ts.replace(microsecond=0),
            total=rng.randint(0, 50_000),
            currency=rng.choice(currencies),
        )
        orders.append(order)
        events.append(_order_event(order, f"user_{rng.randint(1, 60)}"))
    # Duplicates of an orderId, later in time: never counted, whatever their total.
    for original in rng.sample(orders, 40):
        n += 1
        later = original.ts + timedelta(days=rng.randint(0, 20), seconds=rng.randint(1, 3000))
        if later >= now - timedelta(minutes=2) or not _avoid_boundaries(later, now):
            continue
        dup = oracle.Order(
            f"evt_sales_{n:05d}", original.order_id, later, 999_999, original.currency
        )
        orders.append(dup)
        events.append(_order_event(dup, "user_dup"))
    # Retries: the same event (same id) sent again.
    retries = [events[i] for i in rng.sample(range(len(events)), 25)]
    # Events that are not orders must not count.
    noise = [
        {
            "event": "product_view",
            "userId": "user_1",
            "properties": {"productId": "p1", "price": 500},
        },
        {"event": "checkout_started", "userId": "user_2", "properties": {"total": 12_345}},
    ]
    everything = events + retries + noise
    rng.shuffle(everything)
    for start in range(0, len(everything), 100):
        reply = call(
            "POST", f"{system.http_url}/analytics/event/batch", system.key,
            {"events": everything[start : start + 100]},
        )  # fmt: skip
        assert reply.status == 200, reply.body
        assert reply.json()["rejectedCount"] == 0, reply.body
    _SENT[system.identity] = orders
    return orders


CASES = [
    {},  # defaults: 30d, day, USD, UTC
    {"period": "7d", "granularity": "day"},
    {"period": "1d", "granularity": "hour"},
    {"period": "2d", "granularity": "hour", "timezone": "Asia/Kolkata"},
    {"period": "90d", "granularity": "week", "currency": "EUR"},
    {"period": "30d", "granularity": "day", "timezone": "America/New_York"},
    {"period": "12m", "granularity": "month"},
    {"period": "3m", "granularity": "week", "timezone": "Pacific/Auckland", "currency": "JPY"},
    {"period": "60d", "granularity": "month", "timezone": "Asia/Tokyo"},
    {"period": "366d", "granularity": "month", "currency": "EUR"},
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(p.values()) or "defaults")
def test_sales_matches_oracle(system: System, params: dict[str, str]) -> None:
    orders = _dataset(system)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    now = datetime.now(UTC)
    reply = call("GET", f"{system.http_url}/analytics/sales?{query}", system.key)
    assert reply.status == 200, reply.body
    expected = oracle.sales(
        orders,
        period=params.get("period", "30d"),
        granularity=params.get("granularity", "day"),
        currency=params.get("currency", "USD"),
        zone=ZoneInfo(params.get("timezone", "UTC")),
        now=now,
    )
    got = reply.json()
    assert got["orders"] > 0 or params.get("period") == "1d"
    assert got == expected


def test_sales_counts_a_retried_order_once(system: System) -> None:
    orders = _dataset(system)
    before = call("GET", f"{system.http_url}/analytics/sales?period=7d&currency=CHF", system.key)
    now = datetime.now(UTC)
    order = oracle.Order("evt_chf_once", "ord_chf_once", now - timedelta(hours=3), 4_200, "CHF")
    for _ in range(3):
        reply = call(
            "POST", f"{system.http_url}/analytics/event", system.key, _order_event(order, "u")
        )
        assert reply.status == 201, reply.body
    # Same orderId, another event id: still one order.
    again = _order_event(order, "u", send_id=False)
    assert call("POST", f"{system.http_url}/analytics/event", system.key, again).status == 201
    after = call("GET", f"{system.http_url}/analytics/sales?period=7d&currency=CHF", system.key)
    assert before.json()["orders"] == 0
    assert after.json()["orders"] == 1
    assert after.json()["revenue"] == 4_200
    assert after.json()["averageOrderValue"] == 4_200
    assert orders  # the shared dataset has no CHF, so the figures above are this test's alone


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=0d", "period"),
        ("period=367d", "period"),
        ("period=25m", "period"),
        ("period=week", "period"),
        ("granularity=minute", "granularity"),
        ("currency=XYZ", "currency"),
        ("currency=usd1", "currency"),
        ("timezone=Mars/Olympus", "timezone"),
        ("timezone=../../etc/passwd", "timezone"),
    ],
)
def test_sales_refuses_bad_parameters(system: System, query: str, field: str) -> None:
    reply = call("GET", f"{system.http_url}/analytics/sales?{query}", system.key)
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["code"] == 3
    violations = [
        v
        for d in body["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    ]
    assert [v["field"] for v in violations] == [field]

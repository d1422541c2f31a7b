"""Sales and realtime over the shared seeded dataset (tests/dataset.py), on both backends.

The other endpoints check the same dataset in their own modules; this one covers the two that
have older, purpose-built datasets too, so every endpoint is checked against one common truth.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import dataset, oracle
from tests.rest import call
from tests.servers import System


def _orders(events: list[dict[str, Any]]) -> list[oracle.Order]:
    return [
        oracle.Order(
            event_id=e["id"],
            order_id=e["properties"]["orderId"],
            ts=datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")),
            total=e["properties"]["total"],
            currency=e["properties"]["currency"],
        )
        for e in events
        if e["event"] == "order_completed"
    ]


CASES = [
    {"period": "30d", "granularity": "day", "currency": "USD"},
    {"period": "90d", "granularity": "week", "currency": "EUR", "timezone": "Europe/Paris"},
    {"period": "3m", "granularity": "month", "currency": "GBP", "timezone": "America/New_York"},
    {"period": "7d", "granularity": "hour", "currency": "JPY", "timezone": "Asia/Kolkata"},
    {"period": "12m", "granularity": "day", "currency": "USD", "timezone": "Pacific/Auckland"},
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(p.values()))
def test_sales_on_the_shared_dataset(system: System, params: dict[str, str]) -> None:
    data = dataset.load(system.http_url, system.key)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    now = datetime.now(UTC)
    reply = call("GET", f"{system.http_url}/analytics/sales?{query}", system.key)
    assert reply.status == 200, reply.body
    expected = oracle.sales(
        _orders(data.events),
        period=params["period"],
        granularity=params["granularity"],
        currency=params["currency"],
        zone=ZoneInfo(params.get("timezone", "UTC")),
        now=now,
    )
    assert reply.json() == expected


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_realtime_today_on_the_shared_dataset(system: System, zone: str) -> None:
    data = dataset.load(system.http_url, system.key)
    now = datetime.now(UTC)
    midnight = now.astimezone(ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
    firsts = oracle.first_orders(_orders(data.events))
    # Counters only keep orders stamped in the last 48 hours at ingest (docs/semantics.md).
    recent = now - timedelta(hours=47)
    today = [o for o in firsts if o.ts >= midnight and o.ts >= recent and o.currency == "USD"]
    reply = call("GET", f"{system.http_url}/analytics/realtime?timezone={zone}", system.key)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert (body["ordersToday"], body["revenueToday"]) == (len(today), sum(o.total for o in today))
    assert body["activeVisitors"] == 0  # the dataset's events are all older than 5 minutes

"""GET /analytics/realtime: from Redis counters, and from ClickHouse when Redis is down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.oracle import first_links, person
from tests.rest import call
from tests.servers import RedisServer, System, start_system


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _events(now: datetime) -> list[dict[str, Any]]:
    """Recent page views by several visitors, and orders from today and from long ago."""
    events: list[dict[str, Any]] = []
    pages = {"/a": 5, "/b": 3, "/c": 3, "/d": 1}  # page -> distinct visitors in the last minutes
    n = 0
    for page, visitors in pages.items():
        for v in range(visitors):
            n += 1
            ts = now - timedelta(seconds=30 + n)
            events.append(
                {
                    "event": "page_view",
                    "userId": f"rt_v{v}",
                    "timestamp": _iso(ts),
                    "properties": {"page": page},
                }
            )
    # An old visit (10 minutes ago) is not active and its page is not "top".
    events.append(
        {
            "event": "page_view",
            "userId": "rt_old",
            "timestamp": _iso(now - timedelta(minutes=10)),
            "properties": {"page": "/old"},
        }
    )
    for k, (minutes, total, currency) in enumerate(
        [(2, 1000, "USD"), (3, 2500, "USD"), (4, 700, "EUR"), (60 * 30, 9999, "USD")]
    ):
        events.append(
            {
                "event": "order_completed",
                "userId": f"rt_buyer{k}",
                "timestamp": _iso(now - timedelta(minutes=minutes)),
                "properties": {"orderId": f"rt_order_{k}", "total": total, "currency": currency},
            }
        )
    # The same order again: counts once.
    events.append({**events[-2], "timestamp": _iso(now - timedelta(minutes=1))})
    return events + _stitched(now)


def _stitched(now: datetime) -> list[dict[str, Any]]:
    """Shoppers browsing anonymously and signing in: each counts once, as its user."""
    run = uuid.uuid4().hex[:8]

    def visit(seconds: int, page: str, **ids: str) -> dict[str, Any]:
        return {
            "id": f"rt_{run}_{next(_numbers)}",
            "event": "page_view",
            "timestamp": _iso(now - timedelta(seconds=seconds)),
            "properties": {"page": page},
            **ids,
        }

    a, b, c = (f"rt_anon_{name}_{run}" for name in "abc")
    return [
        # a: anonymous visits, then signs in as rt_v0 (who also browses signed in above)
        visit(100, "/a", anonymousId=a),
        visit(90, "/e", anonymousId=a),
        visit(80, "/e", userId="rt_v0", anonymousId=a),
        visit(20, "/e", anonymousId=a),  # after the link: rt_v0's at once
        # b: signs in as rt_shopper, then as rt_v1 (a later link: not merged), browses on
        visit(70, "/f", userId="rt_shopper", anonymousId=b),
        visit(60, "/f", userId="rt_v1", anonymousId=b),
        visit(50, "/a", anonymousId=b),
        # c: never signs in
        visit(40, "/e", anonymousId=c),
    ]


_numbers = iter(range(10**9))


def _expected(
    events: list[dict[str, Any]], now: datetime, zone: str, currency: str
) -> dict[str, Any]:
    def ts(e: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))

    recent = [e for e in events if ts(e) > now - timedelta(minutes=5)]
    links = first_links(events)
    midnight = now.astimezone(ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
    first: dict[str, dict[str, Any]] = {}
    for e in sorted((e for e in events if e["event"] == "order_completed"), key=ts):
        first.setdefault(e["properties"]["orderId"], e)
    today = [
        e for e in first.values() if ts(e) >= midnight and e["properties"]["currency"] == currency
    ]
    page_visitors: dict[str, set[str]] = {}
    for e in recent:
        if e["event"] == "page_view":
            page_visitors.setdefault(e["properties"]["page"], set()).add(person(e, links))
    top = sorted(page_visitors.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:10]
    return {
        "activeVisitors": len({person(e, links) for e in recent}),
        "ordersToday": len(today),
        "revenueToday": sum(e["properties"]["total"] for e in today),
        "topPages": [{"page": p, "visitors": len(v)} for p, v in top],
    }


def _send(system: System, events: list[dict[str, Any]]) -> None:
    reply = call("POST", f"{system.http_url}/analytics/event/batch", system.key, {"events": events})
    assert reply.status == 200 and reply.json()["rejectedCount"] == 0, reply.body


def _check(system: System, events: list[dict[str, Any]]) -> None:
    for zone, currency in [("UTC", "USD"), ("UTC", "EUR"), ("Pacific/Kiritimati", "USD")]:
        before = datetime.now(UTC)
        reply = call(
            "GET",
            f"{system.http_url}/analytics/realtime?timezone={zone}&currency={currency}",
            system.key,
        )
        after = datetime.now(UTC)
        assert reply.status == 200, reply.body
        # At the clock of either side of the call, not the one the events were made at: on a
        # busy machine a 5-minute edge or midnight may pass between the two, or during the call.
        expected = [_expected(events, at, zone, currency) for at in (before, after)]
        assert reply.json() in expected, (zone, currency, reply.json(), expected[0])


def test_realtime_from_redis(system: System) -> None:
    now = datetime.now(UTC)
    events = _events(now)
    # The stitched shoppers count once: anonymousId a is rt_v0's, b is rt_shopper's.
    unstitched = {e.get("userId") or e["anonymousId"] for e in events[-8:]}
    assert len(unstitched) == 6
    stitched = {person(e, first_links(events)) for e in events[-8:]}
    assert stitched == {"rt_v0", "rt_v1", "rt_shopper", events[-1]["anonymousId"]}
    _send(system, events)
    _send(system, events)  # a whole retry changes nothing
    _check(system, events)


def test_realtime_falls_back_to_clickhouse_without_redis(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    key = "cak_" + uuid.uuid4().hex
    system = start_system(tmp_path / "data", key, extra_env={"REDIS_URL": redis_server.url})
    try:
        now = datetime.now(UTC)
        events = _events(now)
        _send(system, events)
        _check(system, events)
        redis_server.stop()
        _check(system, events)
    finally:
        system.stop()
        redis_server.stop()

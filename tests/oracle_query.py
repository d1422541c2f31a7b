"""Expected rows of POST /analytics/query, computed in plain Python from the events a test sent.

Written from docs/query.md and docs/semantics.md, independent of the code under test: no import
from cartlytics, its own enrichment (the few user agents of the dataset are mapped by hand), its
own grouping, rounding (integers only) and ordering. Events are the distinct stored events, in
the API's JSON shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from tests.oracle import first_links, person, round_half_up_div, window

METRICS = (
    "revenue", "orders", "aov", "units_sold", "visitors", "sessions", "page_views",
    "product_views", "add_to_carts", "checkouts", "events", "conversion_rate",
)  # fmt: skip
DIMENSIONS = (
    "date", "week", "month", "hour", "event", "currency", "product_id", "product_category",
    "page", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "country", "region",
    "device", "browser",
)  # fmt: skip
ORDER_METRICS = {"revenue", "orders", "aov", "units_sold"}
EVENT_METRICS = {
    "visitors": None,  # counts any event
    "sessions": None,
    "events": None,
    "conversion_rate": None,
    "page_views": "page_view",
    "product_views": "product_view",
    "add_to_carts": "add_to_cart",
    "checkouts": "checkout_started",
}
# docs/query.md, "Combinations that are refused".
REFUSED: dict[str, set[str]] = {name: {"currency", "product_category"} for name in EVENT_METRICS}
REFUSED["page_views"].add("product_id")
REFUSED["checkouts"].add("product_id")
REFUSED["conversion_rate"] |= {"product_id", "event", "page"}
PRODUCT_DIMENSIONS = {"product_id", "product_category"}
TIME_DIMENSIONS = {"date", "week", "month", "hour"}
RESERVED = {"period", "currency", "timezone"}


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _host(url: str) -> str:
    host = (urlsplit(url).hostname or "").rstrip(".")
    return host[4:] if host.startswith("www.") else host


def _utm(props: Mapping[str, Any], ctx: Mapping[str, Any]) -> tuple[str, str, str]:
    campaign = ctx.get("campaign") if isinstance(ctx.get("campaign"), dict) else {}
    assert isinstance(campaign, dict)
    found = tuple(str(campaign.get(key) or "").strip() for key in ("source", "medium", "name"))
    if any(found) or any(campaign.get(k) for k in ("term", "content")):
        return found  # type: ignore[return-value]
    page = ctx.get("page")
    urls = [page if isinstance(page, str) else None, props.get("page")]
    for url in urls:
        if isinstance(url, str) and "?" in url:
            params: dict[str, str] = {}
            for key, value in parse_qsl(urlsplit(url).query):
                params.setdefault(key.lower(), value.strip())
            triple = tuple(params.get(f"utm_{k}", "") for k in ("source", "medium", "campaign"))
            if any(triple):
                return triple  # type: ignore[return-value]
    return ("", "", "")


@dataclass(frozen=True)
class Event:
    """One stored event with every dimension docs/query.md defines (time ones aside)."""

    id: str
    name: str
    ts: datetime
    visitor: str
    session: str
    currency: str
    total: int
    order_id: str
    lines: tuple[tuple[str, str, int, int], ...]  # (productId, category, price, quantity)
    dims: dict[str, str] = field(default_factory=dict)


def describe(
    raw: Mapping[str, Any],
    user_agents: Mapping[str, tuple[str, str]],
    links: Mapping[str, str] | None = None,
) -> Event:
    """One event as stored, its visitor a person (``links``: tests.oracle.first_links of every
    event; none: unstitched)."""
    props: dict[str, Any] = raw.get("properties") or {}
    ctx: dict[str, Any] = raw.get("context") or {}
    name = raw["event"]
    page = props.get("page") if name == "page_view" else None
    if not isinstance(page, str) or not page:
        context_page = ctx.get("page")
        page = context_page if isinstance(context_page, str) else ""
    referrer = ""
    for candidate in (props.get("referrer"), ctx.get("referrer")):
        if isinstance(candidate, str) and candidate.strip():
            referrer = _host(candidate.strip())
            break
    location = ctx.get("location") or {}
    country = str(location.get("country") or "").strip().upper()
    agent = ctx.get("userAgent")
    device, browser = user_agents[agent] if agent else ("", "")  # KeyError: map it by hand
    source, medium, campaign = _utm(props, ctx)
    product = props.get("productId")
    lines = tuple(
        (p["productId"], p.get("category", ""), p["price"], p["quantity"])
        for p in props.get("products") or []
    )
    return Event(
        id=raw["id"],
        name=name,
        ts=parse_ts(raw["timestamp"]),
        visitor=person(raw, links or {}),
        session=raw.get("sessionId") or "",
        currency=str(props.get("currency") or ""),
        total=int(props.get("total") or 0),
        order_id=str(props.get("orderId") or "") if name == "order_completed" else "",
        lines=lines,
        dims={
            "event": name,
            "product_id": product if isinstance(product, str) else "",
            "page": page,
            "referrer_host": referrer,
            "utm_source": source,
            "utm_medium": medium,
            "utm_campaign": campaign,
            "country": country,
            "region": str(location.get("region") or "").strip(),
            "device": device,
            "browser": browser,
        },
    )


def first_order_events(events: Sequence[Event]) -> dict[str, Event]:
    """orderId -> its first order_completed by (timestamp, event id), over all time."""
    best: dict[str, Event] = {}
    for e in events:
        if e.name != "order_completed" or not e.order_id:
            continue
        kept = best.get(e.order_id)
        if kept is None or (e.ts, e.id) < (kept.ts, kept.id):
            best[e.order_id] = e
    return best


def time_values(ts: datetime, zone: ZoneInfo) -> dict[str, str]:
    local = ts.astimezone(zone)
    day = local.date()
    return {
        "date": day.isoformat(),
        "week": (day - timedelta(days=day.weekday())).isoformat(),
        "month": day.replace(day=1).isoformat(),
        "hour": local.replace(minute=0, second=0, microsecond=0).isoformat(),
    }


def _matches(values: Mapping[str, str], filters: Mapping[str, str]) -> bool:
    for name, wanted in filters.items():
        if name == "hour":
            if parse_ts(values["hour"]) != datetime.fromisoformat(wanted).astimezone(UTC):
                return False
        elif values[name] != wanted:
            return False
    return True


@dataclass
class Group:
    event_ids: dict[str, set[str]] = field(default_factory=dict)  # event name -> ids
    all_ids: set[str] = field(default_factory=set)
    visitors: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    buyers: set[str] = field(default_factory=set)
    revenue: int = 0
    orders: set[str] = field(default_factory=set)
    units: int = 0


def _sort_key(dimension: str, value: str) -> Any:
    return parse_ts(value) if dimension == "hour" else value


def query(
    events: Sequence[Mapping[str, Any]],
    body: Mapping[str, Any],
    *,
    now: datetime,
    user_agents: Mapping[str, tuple[str, str]],
    default_currency: str = "USD",
) -> list[dict[str, Any]]:
    """The rows docs/query.md promises for a valid request body."""
    metrics: list[str] = body["metrics"]
    dims: list[str] = body.get("dimensions", [])
    filters: dict[str, str] = body.get("filters", {})
    zone = ZoneInfo(filters.get("timezone") or "UTC")
    start, end, _, _ = window(filters.get("period") or "30d", zone, now)
    if filters.get("currency"):
        currency: str | None = filters["currency"].upper()
    else:
        currency = None if "currency" in dims else default_currency
    wanted = {k: v for k, v in filters.items() if k not in RESERVED}
    by_line = bool((set(dims) | set(wanted)) & PRODUCT_DIMENSIONS)
    links = first_links(events)
    stored = [describe(e, user_agents, links) for e in events]
    firsts = {
        e.id: e for e in first_order_events(stored).values() if start <= e.ts < end
    }  # first event id -> event, orders of the period (any currency)
    groups: dict[tuple[str, ...], Group] = {}

    def group_of(values: Mapping[str, str]) -> Group | None:
        if not _matches(values, wanted):
            return None
        return groups.setdefault(tuple(values[d] for d in dims), Group())

    # Events: a row appears for an event some requested event metric counts.
    requested = [m for m in metrics if m in EVENT_METRICS]
    kinds = {EVENT_METRICS[m] for m in requested}
    for e in stored:
        if not requested or not start <= e.ts < end:
            continue
        if None not in kinds and e.name not in kinds:
            continue
        g = group_of({**e.dims, **time_values(e.ts, zone)})
        if g is None:
            continue
        g.all_ids.add(e.id)
        g.event_ids.setdefault(e.name, set()).add(e.id)
        g.visitors.add(e.visitor)
        if e.session:
            g.sessions.add(e.session)
        if e.id in firsts:
            g.buyers.add(e.visitor)
    # Orders and their line items, in the currency.
    money = {"revenue", "orders", "aov"} & set(metrics)
    for e in firsts.values():
        if currency is not None and e.currency != currency:
            continue
        values = {**e.dims, **time_values(e.ts, zone), "currency": e.currency}
        values["event"] = "order_completed"
        if money and not by_line:
            g = group_of({**values, "product_id": "", "product_category": ""})
            if g is not None:
                g.revenue += e.total
                g.orders.add(e.order_id)
        if not (by_line and money) and "units_sold" not in metrics:
            continue
        for product, category, price, quantity in e.lines:
            g = group_of({**values, "product_id": product, "product_category": category})
            if g is None:
                continue
            if "units_sold" in metrics:
                g.units += quantity
            if by_line and money:
                g.revenue += price * quantity
                g.orders.add(e.order_id)
    if not dims:
        groups.setdefault((), Group())

    rows: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for key, g in groups.items():
        count_of = {
            "visitors": len(g.visitors),
            "sessions": len(g.sessions),
            "events": len(g.all_ids),
            "revenue": g.revenue,
            "orders": len(g.orders),
            "units_sold": g.units,
            "aov": round_half_up_div(g.revenue, len(g.orders)) if g.orders else 0,
            "conversion_rate": (
                round_half_up_div(len(g.buyers) * 1000, len(g.visitors)) / 10 if g.visitors else 0.0
            ),
        }
        for metric, kind in EVENT_METRICS.items():
            if kind is not None:
                count_of[metric] = len(g.event_ids.get(kind, ()))
        row: dict[str, Any] = dict(zip(dims, key, strict=True))
        row.update({m: count_of[m] for m in metrics})
        rows.append((key, row))
    rows.sort(key=lambda r: tuple(_sort_key(d, v) for d, v in zip(dims, r[0], strict=True)))
    order_by = body.get("orderBy") or ""
    if order_by:
        name, _, direction = order_by.partition(":")
        rows.sort(
            key=lambda r: _sort_key(name, r[1][name]) if name in dims else r[1][name],
            reverse=direction == "desc",
        )
    limit = body.get("limit") or 100
    return [row for _, row in rows[:limit]]

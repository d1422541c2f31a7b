"""Expected products, customers and funnel figures, in plain Python, from the events a test sent.

Independent of the code under test: no import from cartlytics. The definitions are those of
docs/semantics.md ("Products", "Customers", "Funnel"), applied naively (every chain of funnel
events is tried, not ClickHouse's windowFunnel); period arithmetic and half-up rounding come from
tests/oracle.py (test code). Events are in the API's JSON shape, each distinct event once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from tests import dataset
from tests.oracle import first_links, person, round_half_up_div, window
from tests.rest import Reply, call
from tests.servers import System

Event = dict[str, Any]

DISPLAY_NAMES = {
    "page_view": "Page Views",
    "product_view": "Product Views",
    "add_to_cart": "Add to Cart",
    "remove_from_cart": "Remove from Cart",
    "checkout_started": "Checkout Started",
    "order_completed": "Order Completed",
    "search": "Searches",
}
DEFAULT_STEPS = ["product_view", "add_to_cart", "checkout_started", "order_completed"]


def timestamp(event: Event) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


def visitor(event: Event, links: Mapping[str, str] | None = None) -> str:
    """The event's visitor as a person (``links``: tests.oracle.first_links of every event; none:
    the ids as sent, unstitched)."""
    return person(event, links or {})


def percent(part: int, whole: int) -> float:
    """part / whole * 100, one decimal, half up; 0 when whole is 0."""
    return round_half_up_div(part * 1000, whole) / 10 if whole else 0.0


@dataclass(frozen=True)
class Line:
    product_id: str
    name: str
    price: int
    quantity: int


@dataclass(frozen=True)
class Order:
    event_id: str
    order_id: str
    ts: datetime
    total: int
    currency: str
    visitor: str
    lines: tuple[Line, ...]


def _order(event: Event, links: Mapping[str, str]) -> Order:
    props = event["properties"]
    lines = tuple(
        Line(str(p["productId"]), str(p.get("name", "")), int(p["price"]), int(p["quantity"]))
        for p in props.get("products", [])
    )
    return Order(
        event_id=str(event["id"]),
        order_id=str(props["orderId"]),
        ts=timestamp(event),
        total=int(props["total"]),
        currency=str(props["currency"]),
        visitor=visitor(event, links),
        lines=lines,
    )


def first_orders(events: Iterable[Event]) -> list[Order]:
    """Each orderId once: its earliest order_completed (ties: the smallest event id); its visitor
    a person, stitched over ``events`` (all of them: links count whenever they happened)."""
    events = list(events)
    links = first_links(events)
    best: dict[str, Order] = {}
    for event in events:
        if event["event"] != "order_completed":
            continue
        order = _order(event, links)
        kept = best.get(order.order_id)
        if kept is None or (order.ts, order.event_id) < (kept.ts, kept.event_id):
            best[order.order_id] = order
    return list(best.values())


def _period(period: str, zone: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    start, end, _, _ = window(period, zone, now)
    return start, end


def products(
    events: list[Event], *, period: str, currency: str, zone: ZoneInfo, now: datetime, limit: int
) -> dict[str, Any]:
    start, end = _period(period, zone, now)
    revenue: dict[str, int] = {}
    units: dict[str, int] = {}
    buyers: dict[str, set[str]] = {}
    for order in first_orders(events):
        if order.currency != currency or not start <= order.ts < end:
            continue
        for line in order.lines:
            revenue[line.product_id] = revenue.get(line.product_id, 0) + line.price * line.quantity
            units[line.product_id] = units.get(line.product_id, 0) + line.quantity
            buyers.setdefault(line.product_id, set()).add(order.visitor)
    viewers: dict[str, set[str]] = {}
    links = first_links(events)
    for event in events:
        if event["event"] == "product_view" and start <= timestamp(event) < end:
            viewers.setdefault(str(event["properties"]["productId"]), set()).add(
                visitor(event, links)
            )
    names = latest_names(events)
    ranked = sorted(revenue, key=lambda p: (-revenue[p], p))[:limit]
    return {
        "topSellers": [
            {
                "productId": p,
                "name": names.get(p, ""),
                "revenue": revenue[p],
                "unitsSold": units[p],
                "conversionRate": percent(len(buyers[p]), len(viewers.get(p, set()))),
            }
            for p in ranked
        ]
    }


def latest_names(events: Iterable[Event]) -> dict[str, str]:
    """Per product, the latest non-empty name: any order_completed line item's, or a
    product_view's top-level properties.name; latest by (timestamp, event id, line)."""
    best: dict[str, tuple[tuple[datetime, str, int], str]] = {}

    def offer(product: str, key: tuple[datetime, str, int], name: Any) -> None:
        if isinstance(name, str) and name and (product not in best or key > best[product][0]):
            best[product] = (key, name)

    for event in events:
        ts, event_id, props = timestamp(event), str(event["id"]), event["properties"]
        if event["event"] == "product_view":
            offer(str(props["productId"]), (ts, event_id, 0), props.get("name"))
        elif event["event"] == "order_completed":
            for line, item in enumerate(props.get("products", [])):
                offer(str(item["productId"]), (ts, event_id, line), item.get("name"))
    return {product: name for product, (_, name) in best.items()}


def customers(
    events: list[Event], *, period: str, currency: str, zone: ZoneInfo, now: datetime, limit: int
) -> dict[str, Any]:
    start, end = _period(period, zone, now)
    orders = first_orders(events)
    first_ever: dict[str, datetime] = {}
    for order in orders:
        if order.visitor not in first_ever or order.ts < first_ever[order.visitor]:
            first_ever[order.visitor] = order.ts
    counts: dict[str, int] = {}
    revenue: dict[str, int] = {}
    for order in orders:
        if order.currency == currency and start <= order.ts < end:
            counts[order.visitor] = counts.get(order.visitor, 0) + 1
            revenue[order.visitor] = revenue.get(order.visitor, 0) + order.total
    total = len(counts)
    new = sum(1 for c in counts if first_ever[c] >= start)
    repeaters = sum(1 for n in counts.values() if n >= 2)
    money = sum(revenue.values())
    ranked = sorted(counts, key=lambda c: (-revenue[c], c))[:limit]
    return {
        "period": period,
        "currency": currency,
        "totalCustomers": total,
        "newCustomers": new,
        "returningCustomers": total - new,
        "repeatPurchaseRate": percent(repeaters, total),
        "revenuePerCustomer": round_half_up_div(money, total) if total else 0,
        "topCustomers": [
            {"customerId": c, "orders": counts[c], "revenue": revenue[c]} for c in ranked
        ],
    }


def funnel_level(events: list[tuple[int, str]], steps: list[str], window_seconds: int) -> int:
    """The deepest step one visitor reached: (whole-second time, event name) pairs, any order.

    Every step-1 event is tried as the start; from it each next step takes the earliest unused
    event of that step no earlier than the previous step's and within the window of the start
    (earliest is never worse). Each event plays at most one step.
    """
    best = 0
    for first, (t0, name0) in enumerate(events):
        if name0 != steps[0]:
            continue
        used, current, level = {first}, t0, 1
        for step in steps[1:]:
            candidates = [
                (t, index)
                for index, (t, name) in enumerate(events)
                if index not in used and name == step and current <= t <= t0 + window_seconds
            ]
            if not candidates:
                break
            current, index = min(candidates)
            used.add(index)
            level += 1
        best = max(best, level)
    return best


def funnel(
    events: list[Event],
    *,
    period: str,
    steps: list[str],
    window_seconds: int,
    zone: ZoneInfo,
    now: datetime,
) -> dict[str, Any]:
    start, end = _period(period, zone, now)
    per_visitor: dict[str, list[tuple[int, str]]] = {}
    links = first_links(events)
    for event in events:
        ts = timestamp(event)
        if event["event"] in steps and start <= ts < end:
            whole_second = int(ts.timestamp() // 1)
            per_visitor.setdefault(visitor(event, links), []).append((whole_second, event["event"]))
    levels = [funnel_level(evs, steps, window_seconds) for evs in per_visitor.values()]
    counts = [sum(1 for level in levels if level >= k) for k in range(1, len(steps) + 1)]
    return {
        "stages": [
            {
                "name": DISPLAY_NAMES.get(step, step),
                "count": count,
                "rate": 100.0 if k == 0 else percent(count, counts[k - 1]),
            }
            for k, (step, count) in enumerate(zip(steps, counts, strict=True))
        ],
        "conversionRate": percent(counts[-1], counts[0]),
    }


# Test plumbing shared by test_products, test_customers and test_funnel: the shared dataset plus
# the events a module's targeted tests sent to the same system, and one GET checked against the
# oracle at the clock of either side of the call (so a day boundary crossed during it is no flake).

_EXTRA: dict[str, list[Event]] = {}


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stored_events(system: System) -> list[Event]:
    """Every distinct event the system holds: the shared dataset and this module's extras."""
    data = dataset.load(system)
    return data.events + _EXTRA.get(system.identity, [])


def send(system: System, events: list[Event]) -> None:
    """Send events (each with its own id) in one batch; remember each distinct one."""
    stored_events(system)
    reply = call("POST", f"{system.http_url}/analytics/event/batch", system.key, {"events": events})
    assert reply.status == 200, reply.body
    assert reply.json()["rejectedCount"] == 0, reply.body
    extra = _EXTRA.setdefault(system.identity, [])
    known = {e["id"] for e in extra}
    for event in events:
        if event["id"] not in known:
            known.add(event["id"])
            extra.append(event)


def get(system: System, path: str, params: list[tuple[str, str]]) -> Reply:
    """GET path, once the shared dataset is in the system (%20 for spaces: like Envoy, the
    gateway does not read '+' as a space)."""
    stored_events(system)
    return call("GET", f"{system.http_url}{path}?{urlencode(params, quote_via=quote)}", system.key)


def check(
    system: System,
    path: str,
    params: list[tuple[str, str]],
    expect: Callable[[datetime], dict[str, Any]],
) -> dict[str, Any]:
    """GET path and compare the whole JSON with expect(now), for now just before or after."""
    before = datetime.now(UTC)
    reply = get(system, path, params)
    after = datetime.now(UTC)
    assert reply.status == 200, reply.body
    got: dict[str, Any] = reply.json()
    expected = expect(before)
    if got != expected and expect(after) == got:
        return got
    assert got == expected, (
        f"got {json.dumps(got, indent=1)}\nexpected {json.dumps(expected, indent=1)}"
    )
    return got


def assert_refused(system: System, path: str, params: list[tuple[str, str]], field: str) -> None:
    """A 400 INVALID_ARGUMENT naming exactly ``field``."""
    reply = get(system, path, params)
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["code"] == 3
    violations = [
        v
        for d in body["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    ]
    assert [v["field"] for v in violations] == [field], body

"""Expected export rows, in plain Python, from the events a test sent.

Independent of the code under test: no import from cartlytics. The rules are those of
docs/export.md and docs/semantics.md, applied naively to the events in the API's JSON shape
(each distinct event once): an orderId's winner is its earliest ``order_completed`` by
(timestamp, event id) over all time; its lines are that event's ``products``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tests.oracle import first_links, person, round_half_up_div
from tests.oracle_metrics import latest_names

Event = dict[str, Any]
Row = dict[str, Any]

INT_COLUMNS = {
    "total", "items", "units", "line", "price", "quantity", "revenue", "orders", "unitsSold",
    "averageOrderValue",
}  # fmt: skip
TIME_COLUMNS = {"timestamp", "receivedAt", "firstOrderAt", "lastOrderAt"}
JSON_COLUMNS = {"properties", "context"}
UTC_ZONE = ZoneInfo("UTC")


def ts(event: Event) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).astimezone(UTC)


def visitor(event: Event, links: Mapping[str, str]) -> str:
    """The event's visitor as a person (``links``: tests.oracle.first_links of every event)."""
    return person(event, links)


def rfc3339(moment: datetime, zone: ZoneInfo) -> str:
    """What the export prints: the zone's wall clock, milliseconds, the offset as +HH:MM."""
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


def neutralised(text: str) -> str:
    """OWASP: a cell a spreadsheet could run as a formula gets a leading single quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _inside(moment: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or moment >= start) and (end is None or moment < end)


def winners(events: Iterable[Event]) -> list[Event]:
    """Each orderId's first order_completed by (timestamp, event id), over all time."""
    best: dict[str, Event] = {}
    for event in events:
        if event["event"] != "order_completed":
            continue
        order_id = str(event["properties"]["orderId"])
        kept = best.get(order_id)
        if kept is None or (ts(event), event["id"]) < (ts(kept), kept["id"]):
            best[order_id] = event
    return list(best.values())


def orders_in(
    events: Iterable[Event], start: datetime | None, end: datetime | None, currency: str
) -> list[Event]:
    chosen = [
        e
        for e in winners(events)
        if _inside(ts(e), start, end) and (not currency or e["properties"]["currency"] == currency)
    ]
    return sorted(chosen, key=lambda e: (ts(e), str(e["properties"]["orderId"]), e["id"]))


def _declared_items(props: dict[str, Any], line_items: int) -> int:
    """docs/export.md: the order's own `items` count when it sent one, else its line items."""
    value = props.get("items")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return line_items
    return int(value)


def orders(
    events: list[Event],
    start: datetime | None,
    end: datetime | None,
    currency: str = "",
    zone: ZoneInfo = UTC_ZONE,
) -> list[Row]:
    links = first_links(events)
    rows = []
    for e in orders_in(events, start, end, currency):
        props = e["properties"]
        lines = props.get("products", [])
        rows.append(
            {
                "orderId": str(props["orderId"]),
                "timestamp": rfc3339(ts(e), zone),
                "userId": visitor(e, links),
                "total": int(props["total"]),
                "currency": props["currency"],
                "items": _declared_items(props, len(lines)),
                "units": sum(int(p["quantity"]) for p in lines),
                "products": "; ".join(
                    f"{p['productId']} x{p['quantity']} @ {p['price']}" for p in lines
                ),
                "eventId": e["id"],
            }
        )
    return rows


def order_items(
    events: list[Event],
    start: datetime | None,
    end: datetime | None,
    currency: str = "",
    zone: ZoneInfo = UTC_ZONE,
) -> list[Row]:
    links = first_links(events)
    rows = []
    for e in orders_in(events, start, end, currency):
        props = e["properties"]
        for index, p in enumerate(props.get("products", [])):
            rows.append(
                {
                    "orderId": str(props["orderId"]),
                    "timestamp": rfc3339(ts(e), zone),
                    "userId": visitor(e, links),
                    "currency": props["currency"],
                    "line": index + 1,
                    "productId": p["productId"],
                    "name": p.get("name", ""),
                    "category": p.get("category", ""),
                    "price": int(p["price"]),
                    "quantity": int(p["quantity"]),
                    "revenue": int(p["price"]) * int(p["quantity"]),
                    "eventId": e["id"],
                }
            )
    return rows


def products(
    events: list[Event], start: datetime | None, end: datetime | None, currency: str = ""
) -> list[Row]:
    names = latest_names(events)
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for e in orders_in(events, start, end, currency):
        props = e["properties"]
        for index, p in enumerate(props.get("products", [])):
            key = (str(p["productId"]), str(props["currency"]))
            entry = totals.setdefault(
                key, {"orders": set(), "units": 0, "revenue": 0, "category": (None, "")}
            )
            entry["orders"].add(str(props["orderId"]))
            entry["units"] += int(p["quantity"])
            entry["revenue"] += int(p["price"]) * int(p["quantity"])
            if p.get("category"):
                seen = (ts(e), e["id"], index)
                if entry["category"][0] is None or seen > entry["category"][0]:
                    entry["category"] = (seen, p["category"])
    ordered = sorted(totals.items(), key=lambda kv: (kv[0][1], -kv[1]["revenue"], kv[0][0]))
    return [
        {
            "productId": product,
            "name": names.get(product, ""),
            "category": entry["category"][1],
            "currency": cur,
            "orders": len(entry["orders"]),
            "unitsSold": entry["units"],
            "revenue": entry["revenue"],
        }
        for (product, cur), entry in ordered
    ]


def customers(
    events: list[Event],
    start: datetime | None,
    end: datetime | None,
    currency: str = "",
    zone: ZoneInfo = UTC_ZONE,
) -> list[Row]:
    links = first_links(events)
    per: dict[tuple[str, str], list[Event]] = {}
    for e in orders_in(events, start, end, currency):
        per.setdefault((visitor(e, links), str(e["properties"]["currency"])), []).append(e)
    rows = []
    for (who, cur), placed in per.items():
        revenue = sum(int(e["properties"]["total"]) for e in placed)
        rows.append(
            {
                "customerId": who,
                "currency": cur,
                "orders": len(placed),
                "revenue": revenue,
                "averageOrderValue": round_half_up_div(revenue, len(placed)),
                "firstOrderAt": rfc3339(min(ts(e) for e in placed), zone),
                "lastOrderAt": rfc3339(max(ts(e) for e in placed), zone),
            }
        )
    return sorted(rows, key=lambda r: (r["currency"], -r["revenue"], r["customerId"]))


def _without_ip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ip(v) for k, v in value.items() if k.lower() != "ip"}
    if isinstance(value, list):
        return [_without_ip(v) for v in value]
    return value


def events_rows(
    events: list[Event],
    start: datetime | None,
    end: datetime | None,
    currency: str = "",
    zone: ZoneInfo = UTC_ZONE,
) -> list[Row]:
    """The columns an oracle can know (enrichment and receivedAt are the server's)."""
    rows = []
    for e in sorted(events, key=lambda e: (ts(e), e["id"])):
        props, ctx = e.get("properties", {}), e.get("context", {})
        cur = str(props.get("currency") or "")
        if not _inside(ts(e), start, end) or (currency and cur != currency):
            continue
        page = props.get("page") if e["event"] == "page_view" else None
        if not isinstance(page, str) or not page:
            page = ctx.get("page") if isinstance(ctx.get("page"), str) else ""
        total = props.get("total")
        product = props.get("productId")
        rows.append(
            {
                "eventId": e["id"],
                "event": e["event"],
                "timestamp": rfc3339(ts(e), zone),
                "userId": e.get("userId", ""),
                "anonymousId": e.get("anonymousId", ""),
                "sessionId": e.get("sessionId", ""),
                "page": page,
                "productId": product if isinstance(product, str) else "",
                "orderId": str(props.get("orderId") or "")
                if e["event"] == "order_completed"
                else "",
                "total": int(total)
                if isinstance(total, int | float) and not isinstance(total, bool)
                else 0,
                "currency": cur,
                "properties": props,
                "context": _without_ip(ctx),
            }
        )
    return rows


def typed(row: dict[str, str]) -> Row:
    """A CSV record with the export's types back (ints, parsed JSON); text as written."""
    out: Row = {}
    for key, value in row.items():
        if key in INT_COLUMNS:
            out[key] = int(value)
        elif key in JSON_COLUMNS:
            out[key] = json.loads(value)
        else:
            out[key] = value
    return out

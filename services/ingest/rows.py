"""The rows an event is stored as, per table, and what the rest of ingest reads back from them.

Plain functions of a valid event and its enrichment: they run wherever the event is prepared
(on the event loop or in a worker process, ``preparation.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cartlytics.common.realtime import RealtimeEvent
from cartlytics.common.storage.group_commit import TableSpec

from .enrichment import Enrichment
from .validation import ValidEvent, compact_json

EVENTS = TableSpec(
    "events",
    (
        "project_id", "event_id", "event", "ts", "received_at", "user_id", "anonymous_id",
        "session_id", "visitor_id", "order_id", "total", "currency", "product_id", "page",
        "properties", "context", "device", "browser", "os", "ip_hash", "country", "region",
        "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "referrer_host",
    ),
)  # fmt: skip
ORDER_ITEMS = TableSpec(
    "order_items",
    (
        "project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency",
        "product_id", "name", "category", "price", "quantity",
    ),
)  # fmt: skip
# Each order event with its lines as arrays (products figures read these).
ORDER_LINES = TableSpec(
    "order_lines",
    (
        "project_id", "order_id", "event_id", "ts", "currency", "visitor_id", "product_ids",
        "prices", "quantities", "declared_items",
    ),
)  # fmt: skip
# Every non-empty product name an event carries (the latest one is the product's name).
PRODUCT_NAMES = TableSpec(
    "product_names", ("project_id", "product_id", "name", "ts", "event_id", "line")
)
# Line items first: a line without its order event is never counted (product figures join on the
# order), while an order event without its lines would undercount products. order_lines and
# product_names after the events: a row there always has its event stored (products read
# order_lines without a join and check that no event row lacks its order_lines row).
TABLES = (ORDER_ITEMS, EVENTS, ORDER_LINES, PRODUCT_NAMES)


def event_row(project_id: str, e: ValidEvent, extra: Enrichment) -> tuple[Any, ...]:
    return (
        project_id, e.id, e.event, e.timestamp, e.received_at, e.user_id, e.anonymous_id,
        e.session_id, e.visitor_id, e.order_id, e.total, e.currency, e.product_id, e.page,
        e.properties_json or compact_json(e.properties), compact_json(extra.context),
        extra.device, extra.browser, extra.os,
        extra.ip_hash, extra.country, extra.region, extra.utm_source, extra.utm_medium,
        extra.utm_campaign, extra.utm_term, extra.utm_content, extra.referrer_host,
    )  # fmt: skip


def item_rows(project_id: str, e: ValidEvent) -> list[tuple[Any, ...]]:
    return [
        (
            project_id,
            e.order_id,
            e.id,
            line,
            e.timestamp,
            e.visitor_id,
            e.currency,
            item.product_id,
            item.name,
            item.category,
            item.price,
            item.quantity,
        )
        for line, item in enumerate(e.line_items)
    ]


def order_lines_row(project_id: str, e: ValidEvent) -> tuple[Any, ...] | None:
    """The order_lines row of an order event (the events that the ``orders`` table holds)."""
    if e.event != "order_completed" or not e.order_id:
        return None
    items = e.line_items
    return (
        project_id,
        e.order_id,
        e.id,
        e.timestamp,
        e.currency,
        e.visitor_id,
        [item.product_id for item in items],
        [item.price for item in items],
        [item.quantity for item in items],
        declared_items(e.properties),
    )


def declared_items(properties: Mapping[str, Any]) -> int:
    """The order's own ``properties.items`` (validated: a whole number >= 0, maybe written as
    3.0), else -1."""
    value = properties.get("items")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -1
    return int(value)


def name_rows(project_id: str, e: ValidEvent) -> list[tuple[Any, ...]]:
    """A product_view's top-level ``properties.name`` and each named line item (non-empty)."""
    rows = [
        (project_id, item.product_id, item.name, e.timestamp, e.id, line)
        for line, item in enumerate(e.line_items)
        if item.name
    ]
    name = e.properties.get("name") if e.event == "product_view" else None
    if isinstance(name, str) and name:
        rows.append((project_id, e.product_id, name, e.timestamp, e.id, 0))
    return rows


EVENTS_AT = {name: index for index, name in enumerate(EVENTS.columns)}
# Where an events row holds what realtime_of_row reads (one lookup each at import, not per row).
_EVENT_ID, _EVENT, _TS, _VISITOR_ID, _PAGE, _ORDER_ID, _TOTAL, _CURRENCY = (
    EVENTS_AT[name]
    for name in ("event_id", "event", "ts", "visitor_id", "page", "order_id", "total", "currency")
)
_USER_ID, _ANONYMOUS_ID = EVENTS_AT["user_id"], EVENTS_AT["anonymous_id"]
# Each table and where its rows hold the event id.
EVENT_ID_AT = tuple((spec, spec.columns.index("event_id")) for spec in TABLES)


def realtime_of(e: ValidEvent) -> RealtimeEvent:
    """The part of a valid event the realtime counters need."""
    # Positional: by keyword a NamedTuple binds its fields by name, twice the cost (one a event).
    return RealtimeEvent(
        e.id,  # event_id
        e.event,
        e.timestamp,  # ts
        e.visitor_id,
        e.page if e.event == "page_view" else "",  # page
        e.order_id,
        e.total,
        e.currency,
        e.user_id,
        e.anonymous_id,
    )


def realtime_of_row(row: Sequence[Any]) -> RealtimeEvent:
    """The realtime part of an ``events`` row (``event_row``), as ``realtime_of`` its event."""
    event = row[_EVENT]
    return RealtimeEvent(
        row[_EVENT_ID],
        event,
        row[_TS],
        row[_VISITOR_ID],
        row[_PAGE] if event == "page_view" else "",
        row[_ORDER_ID],
        row[_TOTAL],
        row[_CURRENCY],
        row[_USER_ID],
        row[_ANONYMOUS_ID],
    )


def rows_without(
    rows: Mapping[str, Sequence[tuple[Any, ...]]], event_ids: set[str] | frozenset[str]
) -> dict[str, list[tuple[Any, ...]]]:
    """``rows`` (per table) without the rows of the events ``event_ids``."""
    return {
        spec.name: [row for row in rows.get(spec.name, ()) if row[at] not in event_ids]
        for spec, at in EVENT_ID_AT
    }

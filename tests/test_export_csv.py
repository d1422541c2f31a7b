"""The CSV export's fast path (lines written by ClickHouse) against the Python CSV encoder.

Two independent writers of the same file: ``csv_sql.py`` formats each row in SQL, on ClickHouse
18.16 and on chdb; ``formats.CsvEncoder`` (the csv module, ``LocalTime`` over zoneinfo) formats
the same rows in Python. Over hostile text (would-be formulas, quotes, commas, line breaks,
tabs, non-ASCII), times around DST changes and in zones with odd offsets, and rows stored twice,
both must give the same bytes; the end-to-end tests in test_export.py then check the content
against the oracle.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartlytics.common.storage import Sql, Storage
from services.export.csv_sql import csv_header
from services.export.exporter import Exporter
from services.export.formats import ENCODERS, LocalTime
from services.export.request import ExportQuery
from services.export.sources import SOURCES, Scope
from services.ingest.rows import EVENTS, ORDER_ITEMS
from tests.test_export import _event_row, _item_row

TEXTS = [
    '=HYPERLINK("http://evil.example/?x=1,2","click me")',
    "+1",
    "-42",
    "@SUM(A1)",
    "\tindented",
    "\rreturn first",
    "a,b",
    'say "hi"',
    "line one\nline two",
    "crlf\r\ninside",
    "Ünïcødé ✓ 日本語",
    "",
    "plain",
    "'already quoted",
    "x=1",  # a formula character not at the start: untouched
    # What JSON escapes: a backslash, the short escapes and other control characters; and what
    # it leaves as it is (U+2028, U+007F, a slash).
    "back\\slash \\n not a line feed",
    "bell\x07 unit\x1f backspace\x08 formfeed\x0c",
    "line\u2028sep del\x7f a/b",
]
ZONES = ["UTC", "America/New_York", "Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu"]
# Around the 2025 DST changes of New York (Mar 9 07:00 UTC, Nov 2 06:00 UTC) and Chatham
# (Apr 6 at 02:00 UTC), with milliseconds either side of each.
MOMENTS = [
    datetime(2025, 3, 9, 6, 59, 59, 999000, tzinfo=UTC),
    datetime(2025, 3, 9, 7, 0, 0, 0, tzinfo=UTC),
    datetime(2025, 4, 6, 1, 59, 59, 500000, tzinfo=UTC),
    datetime(2025, 4, 6, 2, 0, 0, 1000, tzinfo=UTC),
    datetime(2025, 11, 2, 5, 59, 59, 123000, tzinfo=UTC),
    datetime(2025, 11, 2, 6, 0, 0, 7000, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
]
KINDS = ["orders", "order_items", "events", "customers"]


# Some orders send their own `items` count (with or without line items; 0 is a count too).
DECLARED: dict[int, dict[str, object]] = {1: {"items": 7}, 3: {"items": 0}, 6: {"items": 2.0}}


def _load(storage: Storage, project_id: str) -> None:
    events, items = [], []
    for n, text in enumerate(TEXTS * 2):
        ts = MOMENTS[n % len(MOMENTS)] + timedelta(days=n // len(MOMENTS))
        other = TEXTS[(n + 5) % len(TEXTS)]
        order = {
            "event": "order_completed", "event_id": f"o{n}", "order_id": f"{text}#{n}",
            "total": (n - 3) * 1999, "currency": "EUR", "visitor_id": other, "user_id": other,
        }  # fmt: skip
        events.append(
            _event_row(project_id, ts=ts, page=text, product_id=other, utm_source=text,
                       properties=json.dumps({"note": str(n), **DECLARED.get(n, {})}), **order)
        )  # fmt: skip
        events.append(_event_row(project_id, event_id=f"e{n}", event="page_view", ts=ts, page=text))
        for line in range(n % 3):
            items.append(
                _item_row(project_id, order_id=f"{text}#{n}", event_id=f"o{n}", line=line,
                          product_id=f"{other}/{line}", name=text, category=other, price=999,
                          quantity=line + 1, ts=ts, visitor_id=other, currency="EUR")
            )  # fmt: skip
    # Stored twice: an event at the same time, and one an hour later (the earlier one counts).
    events.append(events[1])
    late = list(events[3])
    late[EVENTS.columns.index("ts")] = late[EVENTS.columns.index("received_at")] = MOMENTS[
        1
    ] + timedelta(hours=1)
    events.append(tuple(late))
    storage.insert_sync("events", EVENTS.columns, events)
    storage.insert_sync("order_items", ORDER_ITEMS.columns, items)


async def _reference(storage: Storage, project_id: str, query: ExportQuery) -> bytes:
    """The same export through the rows path and the format's Python encoder."""
    exporter = Exporter(storage)
    plan = exporter.plan(query)
    source = SOURCES[plan.type](storage, Scope.of(storage, project_id, plan))
    encoder = ENCODERS[plan.format](source.columns, LocalTime(plan.zone))
    data = b""
    async for batch in source.batches():
        data += encoder.encode(batch())
    return data + b"".join(encoder.finish())


async def _fast(storage: Storage, project_id: str, query: ExportQuery) -> bytes:
    exporter = Exporter(storage)
    return b"".join([chunk async for chunk in exporter.export(project_id, exporter.plan(query))])


@pytest.mark.parametrize("zone", ZONES)
def test_clickhouse_writes_the_same_csv_as_the_python_encoder(
    storage: Storage, project_id: str, zone: str
) -> None:
    _load(storage, project_id)
    for kind in KINDS:
        query = ExportQuery(type=kind, format="csv", timezone=zone, start="2025-01-01")
        fast = asyncio.run(_fast(storage, project_id, query))
        reference = asyncio.run(_reference(storage, project_id, query))
        rows = list(csv.reader(io.StringIO(reference.decode(), newline="")))
        assert len(rows) > 10, kind  # the data is there: the comparison is not of two empties
        assert fast == reference, kind


def _ndjson(text: str) -> list[Any]:
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028, which JSON strings
    # may hold as they are.
    assert text.endswith("\n")
    return [json.loads(line) for line in text[:-1].split("\n")]


@pytest.mark.parametrize("fmt", ["ndjson", "json"])
@pytest.mark.parametrize("zone", ["UTC", "Pacific/Chatham"])
def test_clickhouse_writes_the_same_json_as_the_python_encoder(
    storage: Storage, project_id: str, zone: str, fmt: str
) -> None:
    _load(storage, project_id)
    for kind in KINDS:
        query = ExportQuery(type=kind, format=fmt, timezone=zone, start="2025-01-01")
        fast = asyncio.run(_fast(storage, project_id, query))
        reference = asyncio.run(_reference(storage, project_id, query))
        text = reference.decode()
        rows = json.loads(text) if fmt == "json" else _ndjson(text)
        assert len(rows) > 10, kind  # the data is there: the comparison is not of two empties
        assert fast == reference, kind
    # Every hostile text went through (as an order id), and reads back as it was stored.
    query = ExportQuery(type="orders", format=fmt, start="2025-01-01")
    text = asyncio.run(_fast(storage, project_id, query)).decode()
    rows = json.loads(text) if fmt == "json" else _ndjson(text)
    assert {r["orderId"].rsplit("#", 1)[0] for r in rows} >= set(TEXTS)


def test_an_empty_csv_export_is_its_header(storage: Storage, project_id: str) -> None:
    for kind in KINDS:
        for fmt in ("csv", "ndjson", "json"):
            query = ExportQuery(type=kind, format=fmt, start="2025-01-01")
            fast = asyncio.run(_fast(storage, project_id, query))
            assert fast == asyncio.run(_reference(storage, project_id, query)), (kind, fmt)
        query = ExportQuery(type=kind, format="csv", start="2025-01-01")
        fast = asyncio.run(_fast(storage, project_id, query))
        source = SOURCES[kind](
            storage, Scope.of(storage, project_id, Exporter(storage).plan(query))
        )
        assert fast == csv_header(source.columns)


def _lines_rows(storage: Storage, project_id: str) -> list[tuple[object, ...]]:
    """order_lines rows for the order events of ``_load``, as ingest writes them (its lines in
    line order), built from the order_items rows read back."""
    items = storage.query_sync(
        Sql(
            "SELECT event_id, line, product_id, price, quantity FROM order_items"
            " WHERE project_id = {p} ORDER BY event_id, line"
        ),
        {"p": project_id},
    )
    lines: dict[str, list[tuple[str, int, int]]] = {}
    for event_id, _, product, price, quantity in items:
        lines.setdefault(str(event_id), []).append((str(product), int(price), int(quantity)))
    events = storage.query_sync(
        Sql(
            "SELECT order_id, event_id, ts, toString(currency), visitor_id, properties FROM events"
            " WHERE project_id = {p} AND event = 'order_completed'"
        ),
        {"p": project_id},
    )
    rows: list[tuple[object, ...]] = []
    for order_id, event_id, ts, currency, visitor, properties in events:
        mine = lines.get(str(event_id), [])
        moment = datetime.fromisoformat(str(ts)).replace(tzinfo=UTC)
        declared = json.loads(str(properties)).get("items", -1)
        rows.append(
            (project_id, order_id, event_id, moment, currency, visitor,
             [p for p, _, _ in mine], [u for _, u, _ in mine], [q for _, _, q in mine],
             int(declared))
        )  # fmt: skip
    return rows


@pytest.mark.parametrize("path", ["order_lines", "line_items"])
def test_items_is_the_orders_own_count_else_its_line_items(
    storage: Storage, project_id: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.export.sources import OrdersSource
    from services.ingest.rows import ORDER_LINES

    _load(storage, project_id)
    storage.insert_sync("order_lines", ORDER_LINES.columns, _lines_rows(storage, project_id))
    if path == "line_items":

        async def never(self: OrdersSource, page: Scope) -> bool:
            return False

        monkeypatch.setattr(OrdersSource, "lines_complete", never)
    query = ExportQuery(type="orders", format="json", start="2025-01-01")
    rows = json.loads(asyncio.run(_fast(storage, project_id, query)))
    items = {row["orderId"]: row["items"] for row in rows}
    expected = {  # order n of _load has n % 3 line items
        f"{text}#{n}": int(DECLARED[n]["items"]) if n in DECLARED else n % 3  # type: ignore[call-overload]
        for n, text in enumerate(TEXTS * 2)
    }
    assert items == expected
    assert any(items[k] != n % 3 for n, k in enumerate(expected))  # declared counts are there


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_orders_from_order_lines_equal_orders_from_line_items(
    storage: Storage, project_id: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where every order event has its order_lines row, the orders export reads the arrays
    there; it must give what grouping order_items gives (including events stored twice)."""
    from services.export.sources import OrdersSource
    from services.ingest.rows import ORDER_LINES

    _load(storage, project_id)
    storage.insert_sync("order_lines", ORDER_LINES.columns, _lines_rows(storage, project_id))
    query = ExportQuery(type="orders", format=fmt, timezone="Asia/Kathmandu", start="2025-01-01")
    plan = Exporter(storage).plan(query)
    scope = Scope.of(storage, project_id, plan)
    source = OrdersSource(storage, scope)
    assert asyncio.run(source.lines_complete(scope))  # the fast path is the one taken
    fast = asyncio.run(_fast(storage, project_id, query))

    async def never(self: OrdersSource, page: Scope) -> bool:
        return False

    monkeypatch.setattr(OrdersSource, "lines_complete", never)
    assert fast == asyncio.run(_fast(storage, project_id, query))
    assert b" x" in fast  # line items are there to compare


def test_an_order_event_without_its_lines_row_reads_line_items(
    storage: Storage, project_id: str
) -> None:
    """A flush that stopped between `events` and `order_lines`: the page is not complete."""
    from services.export.sources import OrdersSource
    from services.ingest.rows import ORDER_LINES

    _load(storage, project_id)
    rows = _lines_rows(storage, project_id)
    storage.insert_sync("order_lines", ORDER_LINES.columns, rows[1:])
    plan = Exporter(storage).plan(ExportQuery(type="orders", start="2025-01-01"))
    scope = Scope.of(storage, project_id, plan)
    assert not asyncio.run(OrdersSource(storage, scope).lines_complete(scope))

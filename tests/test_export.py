"""GET /analytics/export: every type and format, end to end on both backends, against an oracle.

The running system (``cartlytics run``) holds the shared dataset plus a few hostile events (in
SEK, a currency the dataset does not use): values with commas, quotes, line breaks, would-be
formulas and non-ASCII text. Each export is read back the way a client would (the csv module,
json.loads, NDJSON line by line, openpyxl) and compared with rows computed from the sent events
by tests/oracle_export.py. Below those, the domain code without gRPC: the formats, the request
checks, ``Storage.stream`` and the deduplication of rows stored twice, on both backends.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from cartlytics.common.errors import ApiError
from cartlytics.common.storage import Sql, Storage
from services.export import formats
from services.export.exporter import Exporter
from services.export.formats import Column, Kind, LocalTime
from services.export.request import ExportQuery, plan_export
from services.ingest.rows import EVENTS, ORDER_ITEMS
from tests import dataset
from tests import oracle_export as ox
from tests.rest import Reply, call
from tests.servers import System

PATH = "/analytics/export"
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
FORMATS = list(CONTENT_TYPES)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")

FORMULA = '=HYPERLINK("http://evil.example/?x=1,2","click me")'
MULTILINE = 'Comma, "quoted"\nand a second line'
UNICODE = "Ünïcødé ✓ 日本語"


def _hostile(now: datetime) -> list[dict[str, Any]]:
    """Orders and events in SEK whose values a careless CSV/XLSX writer would get wrong."""
    t0 = (now - timedelta(days=2, hours=5)).replace(microsecond=0)

    def at(seconds: int) -> str:
        return (t0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def order(
        event_id: str,
        order_id: str,
        seconds: int,
        lines: list[Any],
        items: int | None = None,
        **who: str,
    ) -> Any:
        """An order with these line items; ``items`` as the store counts them (the spec's
        example event sends `items: 3`), None to send no count."""
        products = [
            {"productId": p, "name": n, "category": c, "price": price, "quantity": q}
            for p, n, c, price, q in lines
        ]
        total = sum(price * q for *_, price, q in lines)
        return {
            "id": event_id,
            "event": "order_completed",
            "timestamp": at(seconds),
            "properties": {
                "orderId": order_id,
                "total": total,
                "currency": "SEK",
                "products": products,
                **({} if items is None else {"items": items}),
            },
            "context": {"ip": "203.0.113.9", "page": "/checkout"},
            **who,
        }

    return [
        {
            "id": "xp_view",
            "event": "product_view",
            "userId": "@SUM(A1:A9)",
            "timestamp": at(0),
            "properties": {"productId": FORMULA, "name": "old name", "currency": "SEK"},
            "context": {"nested": {"ip": "203.0.113.7", "keep": "+1"}},
        },
        order(
            "xp_order_1",
            "-42",
            60,
            [
                (FORMULA, MULTILINE, "-2+3", 1500, 2),
                ("prod_ünï ✓", UNICODE + "\ttab", "\tstarts with a tab", 999, 1),
                (FORMULA, MULTILINE, "-2+3", 1500, 1),  # the same product on two lines
            ],
            userId="@SUM(A1:A9)",
        ),
        # The same orderId again, later and bigger: never counted (the first event wins).
        order(
            "xp_order_1_again",
            "-42",
            3600,
            [("prod_late", "Late", "x", 100000, 1)],
            userId="@SUM(A1:A9)",
        ),
        # As the spec's example: a count of items and no line items.
        order("xp_order_2", "+46 70 123", 120, [], items=3, anonymousId="anon, with commas"),
        order(
            "xp_order_3",
            "xp_o3",
            7200,
            [("prod_ünï ✓", "", "", 500, 3)],
            userId="=cmd|' /C calc'!A0",
        ),
        {
            "id": "xp_custom",
            "event": "xp_custom_event",
            "userId": "\rcarriage",
            "timestamp": at(180),
            "properties": {"note": "=1+2", "currency": "SEK", "nested": {"deep": [1, "two"]}},
            "context": {},
        },
    ]


_EXTRA: dict[str, list[dict[str, Any]]] = {}


def _events(system: System) -> list[dict[str, Any]]:
    """Every distinct event the system holds: the shared dataset and the hostile ones."""
    data = dataset.load(system)
    if system.identity not in _EXTRA:
        extra = _hostile(data.now)
        url = f"{system.http_url}/analytics/event/batch"
        reply = call("POST", url, system.key, {"events": extra})
        assert reply.status == 200, reply.body
        assert reply.json()["rejectedCount"] == 0, reply.body
        _EXTRA[system.identity] = extra
    return data.events + _EXTRA[system.identity]


def _export(system: System, **params: str) -> Reply:
    _events(system)
    query = urlencode(params, quote_via=quote)
    return call("GET", f"{system.http_url}{PATH}?{query}", system.key, timeout=120)


def _headers(reply: Reply) -> dict[str, str]:
    return {k.lower(): v for k, v in reply.headers.items()}


def _read(reply: Reply, fmt: str) -> list[dict[str, Any]]:
    """The rows of an export, read as a client would, with the format's own types."""
    assert reply.status == 200, reply.body
    assert _headers(reply)["content-type"] == CONTENT_TYPES[fmt]
    if fmt == "csv":
        text = reply.body.decode("utf-8")
        assert text.endswith("\r\n")
        return [ox.typed(row) for row in csv.DictReader(io.StringIO(text, newline=""))]
    if fmt == "json":
        rows: list[dict[str, Any]] = json.loads(reply.body)
        return rows
    if fmt == "ndjson":
        text = reply.body.decode("utf-8")
        assert text == "" or text.endswith("\n")
        return [json.loads(line) for line in text.split("\n") if line]
    book = openpyxl.load_workbook(io.BytesIO(reply.body), read_only=True)
    sheet = book.worksheets[0]
    cells = list(sheet.iter_rows())
    header = [c.value for c in cells[0]]
    assert all(c.font.b for c in cells[0]), "the header row is bold"
    out = []
    for row in cells[1:]:
        values = [c.value for c in row]
        out.append({k: ("" if v is None else v) for k, v in zip(header, values, strict=True)})
    book.close()
    return out


def _as_written(rows: list[dict[str, Any]], fmt: str, zone: ZoneInfo) -> list[dict[str, Any]]:
    """Oracle rows as the format writes them: text neutralised in CSV and XLSX; in XLSX
    times are the zone's wall clock (naive datetimes)."""
    if fmt in ("json", "ndjson"):
        return rows
    out = []
    for row in rows:
        converted: dict[str, Any] = {}
        for key, value in row.items():
            if key in ox.TIME_COLUMNS and fmt == "xlsx":
                local = datetime.fromisoformat(value).astimezone(zone)
                converted[key] = local.replace(tzinfo=None)
            elif isinstance(value, str) and key not in ox.TIME_COLUMNS:
                converted[key] = ox.neutralised(value)
            else:
                converted[key] = value
        out.append(converted)
    return out


def _xlsx_times_to_ms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Excel keeps a time as a fraction of a day; compare to the millisecond."""
    out = []
    for row in rows:
        fixed = dict(row)
        for key in ox.TIME_COLUMNS & row.keys():
            value = row[key]
            assert isinstance(value, datetime), (key, value)
            millis = round(value.microsecond / 1000)
            fixed[key] = value.replace(microsecond=0) + timedelta(milliseconds=millis)
        out.append(fixed)
    return out


def _compare(got: list[dict[str, Any]], expected: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "xlsx":
        got = _xlsx_times_to_ms(got)
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"row {index}: got {g}\nexpected {e}"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("fmt", FORMATS)
def test_orders_match_oracle(system: System, fmt: str) -> None:
    events = _events(system)
    reply = _export(system, type="orders", period="366d", format=fmt)
    now = datetime.now(UTC)
    expected = ox.orders(events, now - timedelta(days=370), now)
    got = _read(reply, fmt)
    _compare(got, _as_written(expected, fmt, ZoneInfo("UTC")), fmt)
    assert len(got) > 100
    hostile = [r for r in got if str(r["orderId"]).endswith("-42")]
    assert len(hostile) == 1 and hostile[0]["items"] == 3, "one row per order, first event wins"


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("csv", {"currency": "EUR", "timezone": "Asia/Kolkata"}),
        ("json", {"currency": "usd", "timezone": "America/New_York"}),
        ("xlsx", {"timezone": "Pacific/Chatham"}),
    ],
)
def test_orders_in_a_range_currency_and_zone(
    system: System, fmt: str, params: dict[str, str]
) -> None:
    events = _events(system)
    now = dataset.load(system).now
    zone = ZoneInfo(params["timezone"])
    start_day = (now - timedelta(days=60)).astimezone(zone).date()
    end_day = (now - timedelta(days=5)).astimezone(zone).date()
    reply = _export(
        system, type="orders", format=fmt, **{"from": str(start_day), "to": str(end_day)}, **params
    )
    start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=zone)
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone)
    currency = params.get("currency", "").upper()
    expected = ox.orders(events, start, end, currency, zone)
    assert expected
    _compare(_read(reply, fmt), _as_written(expected, fmt, zone), fmt)
    disposition = _headers(reply)["content-disposition"]
    assert disposition == f"attachment; filename=orders_{start_day}_{end_day}.{fmt}"


def test_orders_between_rfc3339_instants(system: System) -> None:
    events = _events(system)
    now = dataset.load(system).now
    start = (now - timedelta(days=40, hours=3)).replace(microsecond=0)
    end = (now - timedelta(days=3, minutes=7)).replace(microsecond=0)
    start_text = start.astimezone(ZoneInfo("Asia/Kolkata")).isoformat()  # +05:30
    end_text = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    reply = _export(system, type="orders", format="ndjson", **{"from": start_text, "to": end_text})
    expected = ox.orders(events, start, end)
    _compare(_read(reply, "ndjson"), expected, "ndjson")
    filename = _headers(reply)["content-disposition"].split("filename=")[1]
    assert re.fullmatch(r"orders_[0-9T+Z.-]+_[0-9T+Z.-]+\.ndjson", filename), filename


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_order_items_match_oracle(system: System, fmt: str) -> None:
    events = _events(system)
    now = datetime.now(UTC)
    reply = _export(system, type="order_items", period="366d", format=fmt)
    expected = ox.order_items(events, now - timedelta(days=370), now)
    got = _read(reply, fmt)
    _compare(got, _as_written(expected, fmt, ZoneInfo("UTC")), fmt)
    hostile = [r for r in got if r["eventId"] == "xp_order_1"]
    assert [r["line"] for r in hostile] == [1, 2, 3]


@pytest.mark.parametrize(("fmt", "currency"), [("json", ""), ("csv", "SEK"), ("xlsx", "GBP")])
def test_products_match_oracle(system: System, fmt: str, currency: str) -> None:
    events = _events(system)
    now = datetime.now(UTC)
    reply = _export(system, type="products", period="366d", format=fmt, currency=currency)
    expected = ox.products(events, now - timedelta(days=370), now, currency)
    assert expected
    _compare(_read(reply, fmt), _as_written(expected, fmt, ZoneInfo("UTC")), fmt)


@pytest.mark.parametrize(("fmt", "currency"), [("ndjson", ""), ("csv", "USD")])
def test_customers_match_oracle(system: System, fmt: str, currency: str) -> None:
    events = _events(system)
    now = datetime.now(UTC)
    zone = ZoneInfo("Europe/Paris")
    reply = _export(
        system, type="customers", period="366d", format=fmt, currency=currency, timezone=zone.key
    )
    expected = ox.customers(events, now - timedelta(days=370), now, currency, zone)
    _compare(_read(reply, fmt), _as_written(expected, fmt, zone), fmt)


@pytest.mark.parametrize(("fmt", "currency"), [("ndjson", ""), ("csv", "SEK")])
def test_events_match_oracle(system: System, fmt: str, currency: str) -> None:
    events = _events(system)
    now = dataset.load(system).now
    start, end = now - timedelta(days=20), now - timedelta(days=1)
    reply = _export(
        system,
        type="events",
        format=fmt,
        currency=currency,
        **{"from": start.isoformat(), "to": end.isoformat()},
    )
    expected = ox.events_rows(events, start, end, currency)
    got = _read(reply, fmt)
    assert len(got) == len(expected)
    for g, e in zip(got, _as_written(expected, fmt, ZoneInfo("UTC")), strict=True):
        assert {k: g[k] for k in e} == e
        assert RFC3339.match(g["receivedAt"])
    ids = [r["eventId"] for r in got]
    assert len(ids) == len(set(ids)), "retried events (sent twice) are exported once"
    if currency == "SEK":
        assert {r["eventId"] for r in got} >= {"xp_view", "xp_order_1", "xp_custom"}


def test_csv_is_rfc4180_and_neutralises_formulas(system: System) -> None:
    reply = _export(system, type="order_items", period="30d", format="csv", currency="SEK")
    text = reply.body.decode("utf-8")
    # Quoted (quotes doubled) and neutralised; the line break stays inside the quoted field.
    assert '"\'=HYPERLINK(""http://evil.example/?x=1,2"",""click me"")"' in text
    assert '"Comma, ""quoted""\nand a second line"' in text
    assert ",'-2+3," in text and ",'@SUM(A1:A9)," in text
    assert ",'\tstarts with a tab," in text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert text.count("\r\n") == len(rows) + 1  # records end with CRLF (a field may hold LF)
    assert {r["productId"] for r in rows} == {"'" + FORMULA, "prod_ünï ✓"}
    assert {r["name"] for r in rows} >= {MULTILINE, UNICODE + "\ttab"}
    assert {r["userId"] for r in rows} == {"'@SUM(A1:A9)", "'=cmd|' /C calc'!A0"}
    assert all(r["price"].isdigit() for r in rows)  # numbers are never prefixed


def test_json_carries_text_as_is(system: System) -> None:
    rows = _read(
        _export(system, type="orders", period="30d", format="json", currency="SEK"), "json"
    )
    by_id = {r["orderId"]: r for r in rows}
    assert set(by_id) == {"-42", "+46 70 123", "xp_o3"}
    assert by_id["-42"]["userId"] == "@SUM(A1:A9)"
    assert by_id["-42"]["products"].startswith(FORMULA + " x2 @ 1500; ")
    # `items` is the order's own count where it sent one, else its number of line items.
    assert by_id["+46 70 123"] == {**by_id["+46 70 123"], "items": 3, "units": 0, "products": ""}
    assert by_id["-42"]["items"] == 3  # no count sent: its three line items
    assert by_id["xp_o3"]["items"] == 1
    assert by_id["+46 70 123"]["userId"] == "anon, with commas"
    assert isinstance(by_id["xp_o3"]["total"], int)


def test_xlsx_cells_are_typed_and_neutralised(system: System) -> None:
    reply = _export(system, type="order_items", period="30d", format="xlsx", currency="SEK")
    book = openpyxl.load_workbook(io.BytesIO(reply.body), read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    header, data = rows[0], rows[1:]
    assert header[:4] == ("orderId", "timestamp", "userId", "currency")
    assert len(data) == 4
    for row in data:
        record = dict(zip(header, row, strict=True))
        assert isinstance(record["timestamp"], datetime)
        for name in ("line", "price", "quantity", "revenue"):
            assert isinstance(record[name], int | float) and not isinstance(record[name], bool)
        assert not str(record["productId"]).startswith("=")
    names = {dict(zip(header, row, strict=True))["orderId"] for row in data}
    assert names == {"'-42", "xp_o3"}
    book.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_headers_name_the_attachment(system: System, fmt: str) -> None:
    reply = _export(system, type="customers", period="7d", format=fmt)
    assert reply.status == 200, reply.body
    headers = _headers(reply)
    assert headers["content-type"] == CONTENT_TYPES[fmt]
    assert headers["content-disposition"] == f"attachment; filename=customers_7d.{fmt}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_exports_are_still_valid_files(system: System, fmt: str) -> None:
    reply = _export(system, type="orders", format=fmt, **{"from": "2001-01-01", "to": "2001-02-01"})
    assert _read(reply, fmt) == []
    if fmt == "csv":
        assert (
            reply.body
            == b"orderId,timestamp,userId,total,currency,items,units,products,eventId\r\n"
        )
    if fmt == "json":
        assert json.loads(reply.body) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"type": "sessions"}, "type"),
        ({"period": "30d"}, "type"),
        ({"type": "orders", "format": "pdf"}, "format"),
        ({"type": "orders", "period": "400d"}, "period"),
        ({"type": "orders", "period": "yesterday"}, "period"),
        ({"type": "orders", "from": "2024-02-30"}, "from"),
        ({"type": "orders", "from": "2024-01-01T10:00:00"}, "from"),  # no offset
        ({"type": "orders", "to": "last week"}, "to"),
        ({"type": "orders", "from": "2024-03-01", "to": "2024-02-01"}, "to"),
        ({"type": "orders", "currency": "EURO"}, "currency"),
        ({"type": "orders", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(
    system: System, params: dict[str, str], field: str
) -> None:
    reply = _export(system, **params)
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["code"] == 3
    fields = [
        v["field"]
        for d in body["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    ]
    assert fields == [field]
    assert "content-disposition" not in _headers(reply)


# ------------------------------------------------------------------ domain code, no gRPC


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
         "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns"]  # fmt: skip


@pytest.mark.parametrize("zone_name", ZONES)
def test_local_time_matches_zoneinfo(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    clock = LocalTime(zone)
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    # Every 7 minutes 13.457 seconds through two years: every DST change, in time order
    # (as exports run) and then backwards (the caches must not assume the order).
    instants = list(range(start, start + 2 * 366 * 86_400_000, 433_457))
    for ms in [*instants, *reversed(instants[:5000])]:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        assert clock.rfc3339(ms) == ox.rfc3339(moment, zone)
        expected_naive = moment.astimezone(zone).replace(tzinfo=None)
        assert abs(clock.naive(ms) - expected_naive) < timedelta(microseconds=1000)


COLUMNS = [Column("text", Kind.TEXT), Column("n", Kind.INT), Column("at", Kind.TIME)]
ROWS = [
    ("=1+1", -5, 0),
    ("a,b", 0, 1_700_000_000_123),
    ('say "hi"\r\nbye', 10**15, 1_700_000_000_999),
    ("-minus", -(10**15), 86_400_000),
    ("", 7, 1),
]


def _encode(fmt: str, rows: list[tuple[Any, ...]]) -> bytes:
    encoder = formats.ENCODERS[fmt](COLUMNS, LocalTime(ZoneInfo("UTC")))
    try:
        data = encoder.encode(rows[:2]) + encoder.encode(rows[2:])
        return data + b"".join(encoder.finish())
    finally:
        encoder.close()


def test_csv_encoder() -> None:
    text = _encode("csv", ROWS).decode()
    assert text.split("\r\n")[0] == "text,n,at"
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[1:] == [
        ["'=1+1", "-5", "1970-01-01T00:00:00.000+00:00"],
        ["a,b", "0", "2023-11-14T22:13:20.123+00:00"],
        ['say "hi"\r\nbye', str(10**15), "2023-11-14T22:13:20.999+00:00"],
        ["'-minus", str(-(10**15)), "1970-01-02T00:00:00.000+00:00"],
        ["", "7", "1970-01-01T00:00:00.001+00:00"],
    ]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_encoders(fmt: str) -> None:
    text = _encode(fmt, ROWS).decode()
    rows = json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines()]
    assert [r["text"] for r in rows] == [r[0] for r in ROWS]  # not neutralised
    assert [r["n"] for r in rows] == [r[1] for r in ROWS]
    assert rows[1]["at"] == "2023-11-14T22:13:20.123+00:00"
    assert _encode(fmt, []) == (b"[]\n" if fmt == "json" else b"")


def test_xlsx_encoder_types_and_sheet_rollover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "XLSX_MAX_ROWS", 3)  # the header and two rows per sheet
    book = openpyxl.load_workbook(io.BytesIO(_encode("xlsx", ROWS)), read_only=True)
    assert book.sheetnames == ["export", "export 2", "export 3"]
    rows = [r for sheet in book.worksheets for r in sheet.iter_rows(values_only=True)]
    assert [r for r in rows if r[0] == "text"] == [("text", "n", "at")] * 3
    data = [r for r in rows if r[0] != "text"]
    texts = [r[0].replace("_x000D_", "\r") if r[0] else r[0] for r in data]  # OOXML's CR
    assert texts == ["'=1+1", "a,b", 'say "hi"\r\nbye', "'-minus", None]
    assert [r[1] for r in data] == [-5, 0, 10**15, -(10**15), 7]  # numbers, untouched
    assert data[1][2] == datetime(2023, 11, 14, 22, 13, 20, 123000)
    book.close()


def test_xlsx_cuts_a_cell_over_excels_limit_visibly() -> None:
    """Excel keeps 32,767 characters of a cell; a longer text (a big `properties`) keeps its
    start and says it was cut, and by how much, instead of losing its end silently."""
    long_text = "{" + "x" * 39_998 + "}"
    book = openpyxl.load_workbook(
        io.BytesIO(_encode("xlsx", [(long_text, 1, 0), ("short", 2, 0)])), read_only=True
    )
    cells = [r[0] for r in book.worksheets[0].iter_rows(values_only=True)][1:]
    book.close()
    assert len(cells[0]) == 32_767
    assert cells[0].endswith(" [cut: 40,000 characters; the CSV and JSON exports have it whole]")
    assert long_text.startswith(cells[0][: cells[0].index(" [cut")])
    assert cells[1] == "short"
    # The other formats carry it whole.
    assert json.loads(_encode("json", [(long_text, 1, 0)]))[0]["text"] == long_text


def test_plan_reads_ranges_and_names_files() -> None:
    now = datetime(2024, 3, 10, 12, 0, 0, 500000, tzinfo=UTC)
    plan = plan_export(ExportQuery(type="orders"), now)
    assert (plan.format, plan.filename, plan.currency) == ("csv", "orders_30d.csv", "")
    assert plan.end == datetime(2024, 3, 10, 12, 0, 1, tzinfo=UTC)  # "now" rounded up
    plan = plan_export(
        ExportQuery(type="events", format="NDJSON", timezone="Asia/Kolkata", start="2024-01-01",
                    end="2024-01-15T10:00:00.250+05:30", period="bogus"),
        now,
    )  # fmt: skip
    assert plan.start == datetime(2023, 12, 31, 18, 30, tzinfo=UTC)
    assert plan.end == datetime(2024, 1, 15, 4, 30, 0, 250000, tzinfo=UTC)
    assert plan.filename == "events_2024-01-01_2024-01-15T100000.250+0530.ndjson"
    plan = plan_export(ExportQuery(type="products", start="2024-01-01T00:00:00Z"), now)
    assert (plan.start, plan.end, plan.label) == (
        datetime(2024, 1, 1, tzinfo=UTC),
        None,
        "from_2024-01-01T000000Z",
    )
    with pytest.raises(ApiError) as refused:
        plan_export(ExportQuery(type="orders", end="1969-12-31"), now)
    assert refused.value.violations[0].field == "to"


def test_stream_reads_blocks_while_other_queries_run(storage: Storage, project_id: str) -> None:
    async def run() -> list[int]:
        seen: list[int] = []
        sql = Sql("SELECT number FROM system.numbers LIMIT 20000")
        async with storage.stream(sql, block_rows=1000) as blocks:
            async for block in blocks:
                assert len(block) <= 1000
                seen.extend(int(row[0]) for row in block)
                if len(seen) == 1000:  # other work on the storage between two blocks
                    await storage.insert(
                        "order_dups", ["project_id", "order_id"], [(project_id, "x")]
                    )
                    assert await storage.query(Sql("SELECT 1")) == [(1,)]
        return seen

    assert asyncio.run(run()) == list(range(20000))


def test_stream_closes_early_and_reports_errors(storage: Storage) -> None:
    async def run() -> None:
        async with storage.stream(
            Sql("SELECT number FROM system.numbers"), block_rows=100
        ) as blocks:
            async for block in blocks:
                assert block[0] == (0,)
                break  # an endless query, stopped
        with pytest.raises(Exception, match=r"no_such_table"):
            async for _ in storage.stream(Sql("SELECT * FROM no_such_table")):
                pass
        assert await storage.query(Sql("SELECT 2")) == [(2,)]

    asyncio.run(run())


def _event_row(project_id: str, **values: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {c: "" for c in EVENTS.columns}
    row.update({"project_id": project_id, "total": 0, "properties": "{}", "context": "{}"})
    row.update(values)
    row["received_at"] = row["ts"]
    return tuple(row[c] for c in EVENTS.columns)


def _item_row(project_id: str, **values: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {"project_id": project_id, "name": "", "category": "", **values}
    return tuple(row[c] for c in ORDER_ITEMS.columns)


def test_rows_stored_twice_are_exported_once(storage: Storage, project_id: str) -> None:
    """What a retry past the dedup window (or without Redis) leaves: an event stored twice, at
    the same time or another one; the lines of an order event stored twice; an orderId sent
    twice (listed in order_dups). Each is exported once."""
    t = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    order = {"event": "order_completed", "visitor_id": "v1", "user_id": "v1", "currency": "EUR"}
    events = [
        _event_row(project_id, event_id="e_dup", event="page_view", ts=t, page="/a"),
        _event_row(project_id, event_id="e_dup", event="page_view", ts=t, page="/a"),
        _event_row(project_id, event_id="e_late", event="search", ts=t + timedelta(hours=1)),
        _event_row(project_id, event_id="e_late", event="search", ts=t + timedelta(days=3)),
        _event_row(project_id, event_id="o1", order_id="A", total=300, ts=t, **order),
        _event_row(project_id, event_id="o1", order_id="A", total=300, ts=t, **order),
        _event_row(project_id, event_id="o2", order_id="B", total=50, ts=t, **order),
        _event_row(project_id, event_id="o0", order_id="B", total=70, ts=t, **order),
    ]
    line = {"order_id": "A", "event_id": "o1", "ts": t, "visitor_id": "v1", "currency": "EUR"}
    items = [
        _item_row(project_id, line=0, product_id="p1", price=100, quantity=2, **line),
        _item_row(project_id, line=1, product_id="p2", price=100, quantity=1, **line),
        _item_row(project_id, line=0, product_id="p1", price=100, quantity=2, **line),
        _item_row(project_id, line=1, product_id="p2", price=100, quantity=1, **line),
        _item_row(project_id, order_id="B", event_id="o2", line=0, product_id="p9", price=50,
                  quantity=1, ts=t, visitor_id="v1", currency="EUR"),
        _item_row(project_id, order_id="B", event_id="o0", line=0, product_id="p3", price=70,
                  quantity=1, ts=t, visitor_id="v1", currency="EUR"),
    ]  # fmt: skip
    storage.insert_sync("order_items", ORDER_ITEMS.columns, items)
    storage.insert_sync("events", EVENTS.columns, events)
    storage.insert_sync(
        "order_dups", ["project_id", "order_id"], [(project_id, "A"), (project_id, "B")]
    )

    def export(kind: str) -> list[dict[str, Any]]:
        exporter = Exporter(storage)
        plan = exporter.plan(ExportQuery(type=kind, format="json", start="2025-05-01"))

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in exporter.export(project_id, plan)])

        rows: list[dict[str, Any]] = json.loads(asyncio.run(collect()))
        return rows

    got_events = export("events")
    assert sorted(r["eventId"] for r in got_events) == ["e_dup", "e_late", "o0", "o1", "o2"]
    late = [r for r in got_events if r["eventId"] == "e_late"]
    assert late[0]["timestamp"] == "2025-06-01T13:00:00.000+00:00"  # the earliest copy
    orders = export("orders")
    assert [(r["orderId"], r["eventId"], r["total"], r["products"]) for r in orders] == [
        ("A", "o1", 300, "p1 x2 @ 100; p2 x1 @ 100"),
        ("B", "o0", 70, "p3 x1 @ 70"),  # same time: the smaller event id wins
    ]
    assert [(r["orderId"], r["line"]) for r in export("order_items")] == [
        ("A", 1), ("A", 2), ("B", 1),
    ]  # fmt: skip
    products = {r["productId"]: r for r in export("products")}
    assert {p: (r["orders"], r["unitsSold"], r["revenue"]) for p, r in products.items()} == {
        "p1": (1, 2, 200), "p2": (1, 1, 100), "p3": (1, 1, 70),
    }  # fmt: skip
    assert export("customers") == [
        {
            "customerId": "v1", "currency": "EUR", "orders": 2, "revenue": 370,
            "averageOrderValue": 185, "firstOrderAt": "2025-06-01T12:00:00.000+00:00",
            "lastOrderAt": "2025-06-01T12:00:00.000+00:00",
        }
    ]  # fmt: skip


def test_exports_page_through_long_ranges(
    storage: Storage, project_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of a few rows: every order once, in time order, across page boundaries."""
    from services.export import sources

    monkeypatch.setattr(sources, "PAGE_ROWS", 3)
    monkeypatch.setattr(sources, "SERVER_PAGE_ROWS", 3)
    start = datetime(2025, 1, 1, 23, 59, 59, tzinfo=UTC)
    rows = [
        _event_row(project_id, event_id=f"e{n:03d}", order_id=f"o{n:03d}", total=n,
                   event="order_completed", currency="USD", visitor_id="v", user_id="v",
                   ts=start + timedelta(hours=7 * n))
        for n in range(40)
    ]  # fmt: skip
    storage.insert_sync("events", EVENTS.columns, rows)
    exporter = Exporter(storage)
    plan = exporter.plan(
        ExportQuery(type="orders", format="ndjson", start="2025-01-01", end="2025-02-01")
    )

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in exporter.export(project_id, plan)])

    got = [json.loads(line) for line in asyncio.run(collect()).splitlines()]
    expected = [
        f"o{n:03d}"
        for n in range(40)
        if start + timedelta(hours=7 * n) < datetime(2025, 2, 1, tzinfo=UTC)
    ]
    assert [r["orderId"] for r in got] == expected

"""POST /analytics/query against the running system (both backends), compared with a plain-Python
oracle (tests/oracle_query.py) over the shared dataset plus a few events of this module.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cartlytics.common.commerce.orders import NEWLY_DUPLICATED_IDS
from cartlytics.common.errors import ApiError
from cartlytics.common.storage import Storage, render
from cartlytics.common.storage.current_snapshot import snapshot_values
from services.metrics import query as q
from services.metrics.reports import CustomQuery
from tests import oracle_query
from tests.dataset import USER_AGENTS, load
from tests.rest import Reply, call
from tests.servers import System

DOCS = Path(__file__).resolve().parent.parent / "docs" / "query.md"

# The dataset's three user agents, read by hand (docs/query.md: device, browser).
UA = {
    USER_AGENTS[0]: ("desktop", "Chrome"),  # Windows, Chrome 120
    USER_AGENTS[1]: ("mobile", "Mobile Safari"),  # iPhone, Safari 17
    USER_AGENTS[2]: ("desktop", "Safari"),  # Mac, Safari 17
}
INJECTED_PAGE = "/search?q=' OR 1=1 --"
INJECTED_REGION = "Robert'); DROP TABLE events;--"
INJECTED_PRODUCT = "prod_' OR '1'='1"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _extras(now: datetime) -> list[dict[str, Any]]:
    """Events the shared dataset lacks: locations, a campaign name, utm in a URL, a context
    referrer, an order without line items, a custom event, and SQL-looking values."""
    base = now.replace(microsecond=0) - timedelta(days=2, hours=3)
    events: list[dict[str, Any]] = []

    def add(who: dict[str, str], event: str, props: dict[str, Any], ctx: dict[str, Any]) -> None:
        n = len(events)
        at = _iso(base + timedelta(minutes=7 * n))
        events.append({"id": f"evt_query_{n:03d}", "event": event, "timestamp": at,
                       "properties": props, "context": ctx, **who})  # fmt: skip

    de = {"userId": "user_geo_de", "sessionId": "sess_geo_de"}
    de_ctx = {"userAgent": USER_AGENTS[0], "location": {"country": "de", "region": "Bavaria"},
              "campaign": {"source": "newsletter", "medium": "email", "name": "spring_sale"},
              "referrer": "https://www.Example.org/post/1"}  # fmt: skip
    add(de, "page_view", {"page": "/products/shirts"}, de_ctx)
    add(de, "product_view", {"productId": "prod_tshirt", "price": 2999, "currency": "EUR"}, de_ctx)
    add(de, "add_to_cart", {"productId": "prod_tshirt", "quantity": 2}, de_ctx)
    add(de, "order_completed", {"orderId": "order_geo_de", "total": 5998, "currency": "EUR",
        "products": [{"productId": "prod_tshirt", "name": "Premium T-Shirt",
                      "category": "apparel", "price": 2999, "quantity": 2}]}, de_ctx)  # fmt: skip
    us = {"anonymousId": "anon_geo_us"}  # no session
    landing = "/landing?utm_source=fb&utm_medium=social&utm_campaign=summer"
    us_ctx = {"userAgent": USER_AGENTS[1], "location": {"country": "US", "region": "California"},
              "page": landing}  # fmt: skip
    add(us, "page_view", {"page": landing}, us_ctx)
    add(
        us, "order_completed", {"orderId": "order_geo_us", "total": 1500, "currency": "USD"}, us_ctx
    )
    add(us, "newsletter_signup", {"list": "weekly"}, us_ctx)
    evil = {"userId": "user_'; DROP TABLE events; --", "sessionId": "sess_evil"}
    evil_ctx = {"location": {"country": "FR", "region": INJECTED_REGION}}
    add(evil, "page_view", {"page": INJECTED_PAGE}, evil_ctx)
    add(evil, "product_view", {"productId": INJECTED_PRODUCT}, evil_ctx)
    add(evil, "order_completed", {"orderId": "order_evil", "total": 777, "currency": "USD",
        "products": [{"productId": INJECTED_PRODUCT, "category": "x'); DROP TABLE events; --",
                      "price": 777, "quantity": 1}]}, evil_ctx)  # fmt: skip
    return events


_EVENTS: dict[str, list[dict[str, Any]]] = {}


def _events(system: System) -> list[dict[str, Any]]:
    """The shared dataset and this module's extras, sent once per system; the stored events."""
    if system.identity not in _EVENTS:
        data = load(system)
        extras = _extras(datetime.now(UTC))
        reply = call("POST", f"{system.http_url}/analytics/event/batch", system.key,
                     {"events": extras})  # fmt: skip
        assert reply.status == 200, reply.body
        assert reply.json()["rejectedCount"] == 0, reply.body
        _EVENTS[system.identity] = [*data.events, *extras]
    return _EVENTS[system.identity]


def _post(system: System, body: dict[str, Any]) -> Reply:
    return call("POST", f"{system.http_url}/analytics/query", system.key, body)


def _expect(system: System, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST the query and compare the whole answer with the oracle; return the rows."""
    events = _events(system)
    now = datetime.now(UTC)
    reply = _post(system, body)
    assert reply.status == 200, reply.body
    expected = oracle_query.query(events, body, now=now, user_agents=UA)
    got = reply.json()
    assert got == {"rows": expected}, body
    return list(got["rows"])


def _violations(reply: Reply) -> dict[str, str]:
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["code"] == 3
    return {
        v["field"]: v["description"]
        for d in body["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    }


SPEC_EXAMPLE = {
    "metrics": ["revenue", "orders", "aov"],
    "dimensions": ["product_category", "region"],
    "filters": {"period": "30d", "currency": "USD"},
    "orderBy": "revenue:desc",
    "limit": 20,
}
EVENT_METRICS = ["visitors", "sessions", "page_views", "product_views", "add_to_carts",
                 "checkouts", "events", "conversion_rate"]  # fmt: skip
ORDER_METRICS = ["revenue", "orders", "aov", "units_sold"]

CASES: list[dict[str, Any]] = [
    SPEC_EXAMPLE,
    {"metrics": [*ORDER_METRICS, *EVENT_METRICS]},  # one row of totals, defaults
    {"metrics": ORDER_METRICS, "dimensions": ["date"], "filters": {"period": "90d"}},
    {"metrics": ORDER_METRICS, "dimensions": ["currency"], "filters": {"period": "90d"}},
    {"metrics": ["revenue", "orders"], "dimensions": ["currency"], "filters": {"currency": "eur"}},
    {"metrics": ["revenue", "orders", "aov"], "filters": {"currency": "CHF"}},  # nothing: zeros
    {"metrics": ["units_sold", "revenue", "orders", "aov"], "dimensions": ["product_id"],
     "filters": {"period": "90d"}, "orderBy": "revenue:desc", "limit": 5},
    {"metrics": ["revenue", "units_sold"], "dimensions": ["product_category", "currency"],
     "filters": {"period": "12m"}, "orderBy": "units_sold:asc"},
    {"metrics": EVENT_METRICS, "dimensions": ["device", "browser"]},
    {"metrics": EVENT_METRICS, "dimensions": ["week"],
     "filters": {"period": "90d", "timezone": "America/New_York"}},
    {"metrics": ["events", "visitors"], "dimensions": ["event"], "orderBy": "events:desc"},
    {"metrics": ["page_views", "visitors"], "dimensions": ["page"], "orderBy": "page:desc"},
    {"metrics": ["page_views", "visitors", "conversion_rate"], "dimensions": ["referrer_host"]},
    {"metrics": ["visitors", "revenue", "orders", "conversion_rate"],
     "dimensions": ["utm_source", "utm_medium", "utm_campaign"]},
    {"metrics": ["visitors", "revenue", "orders", "units_sold"],
     "dimensions": ["country", "region"], "filters": {"period": "7d"}},
    {"metrics": ["revenue", "orders", "events"], "dimensions": ["hour"],
     "filters": {"period": "3d", "timezone": "Asia/Kolkata"}, "orderBy": "hour:desc"},
    # Hour buckets in a zone with daylight saving time (60 days often hold a change).
    {"metrics": ["events", "orders", "visitors"], "dimensions": ["hour"],
     "filters": {"period": "60d", "timezone": "America/New_York"}, "limit": 10_000},
    {"metrics": ["revenue", "orders", "page_views"], "dimensions": ["month"],
     "filters": {"period": "12m", "timezone": "Pacific/Auckland", "currency": "EUR"}},
    {"metrics": ["product_views", "add_to_carts", "visitors", "events", "sessions"],
     "dimensions": ["product_id"], "orderBy": "product_views:desc", "limit": 3},
    {"metrics": ["revenue", "orders", "units_sold", "visitors"], "dimensions": ["date"],
     "filters": {"device": "mobile"}},
    {"metrics": ["revenue", "orders", "aov"],
     "filters": {"product_category": "apparel", "period": "90d"}},
    {"metrics": ["revenue", "units_sold", "orders"], "dimensions": ["device"],
     "filters": {"product_id": "prod_hoodie", "period": "90d"}},
    {"metrics": ["events"], "dimensions": ["event"], "filters": {"event": "search"}},
    {"metrics": ["orders", "revenue", "units_sold"], "dimensions": ["event"]},
    {"metrics": ["conversion_rate", "visitors"], "dimensions": ["date"],
     "filters": {"period": "90d"}, "orderBy": "conversion_rate:desc", "limit": 10},
    {"metrics": ["aov", "orders"], "dimensions": ["week"],
     "filters": {"period": "2m", "currency": "JPY"}, "orderBy": "aov:asc"},
    # Only what the metrics count makes a row: no row for events without a product view.
    {"metrics": ["product_views", "checkouts"], "dimensions": ["event", "date"],
     "filters": {"period": "7d"}},
    {"metrics": ["add_to_carts"], "dimensions": ["product_id"]},
    {"metrics": ["units_sold"], "dimensions": ["country"], "filters": {"period": "7d"}},
    {"metrics": ["checkouts", "add_to_carts"], "dimensions": ["month", "device"],
     "filters": {"period": "12m"}, "orderBy": "checkouts:desc", "limit": 4},
]  # fmt: skip


def _case_id(body: dict[str, Any]) -> str:
    parts = ["+".join(body.get("dimensions", [])) or "totals", *body.get("filters", {}).values()]
    return "-".join([*parts, body.get("orderBy", "")]).strip("-")


@pytest.mark.parametrize("body", CASES, ids=_case_id)
def test_query_matches_oracle(system: System, body: dict[str, Any]) -> None:
    rows = _expect(system, body)
    if body is SPEC_EXAMPLE:
        assert rows, "the spec's example must have figures to compare"
        assert all(set(row) == {*body["metrics"], *body["dimensions"]} for row in rows)


@pytest.mark.parametrize("dimension", oracle_query.DIMENSIONS)
def test_every_metric_by_every_dimension(system: System, dimension: str) -> None:
    """Each dimension with every metric it accepts, in one request (90 days: more data)."""
    metrics = [m for m in oracle_query.METRICS if dimension not in oracle_query.REFUSED.get(m, ())]
    rows = _expect(system, {"metrics": metrics, "dimensions": [dimension],
                            "filters": {"period": "90d"}, "limit": 10_000})  # fmt: skip
    assert rows


def test_the_dataset_dimensions_are_really_there(system: System) -> None:
    """Guards the oracle's enrichment: the values it expects are the ones stored."""
    rows = _expect(system, {"metrics": ["events"], "dimensions": ["device", "browser"]})
    assert {(r["device"], r["browser"]) for r in rows} >= {
        ("desktop", "Chrome"), ("mobile", "Mobile Safari"), ("desktop", "Safari")
    }  # fmt: skip
    rows = _expect(system, {"metrics": ["visitors"], "dimensions": ["country", "region"],
                            "filters": {"period": "7d"}})  # fmt: skip
    assert {("DE", "Bavaria"), ("US", "California"), ("FR", INJECTED_REGION)} <= {
        (r["country"], r["region"]) for r in rows
    }
    by = ["utm_campaign", "referrer_host"]
    rows = _expect(system, {"metrics": ["visitors"], "dimensions": by, "filters": {"period": "7d"}})
    pairs = {(r["utm_campaign"], r["referrer_host"]) for r in rows}
    assert {("spring_sale", "example.org"), ("summer", "")} <= pairs


def test_filters_on_time_dimensions(system: System) -> None:
    rows = _expect(system, {"metrics": ["events", "revenue"], "dimensions": ["hour"],
                            "filters": {"period": "7d", "timezone": "Asia/Kolkata"}})  # fmt: skip
    busiest = max(rows, key=lambda r: r["events"])
    hour = busiest["hour"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:00:00\+05:30", hour)
    zone = {"period": "7d", "timezone": "Asia/Kolkata"}
    for value in (hour, datetime.fromisoformat(hour).astimezone(UTC).isoformat()):  # same instant
        only = _expect(system, {"metrics": ["events", "revenue"], "dimensions": ["hour"],
                                "filters": {**zone, "hour": value}})  # fmt: skip
        assert only == [busiest]
    day = hour[:10]
    for name in ("date", "week", "month"):
        _expect(system, {"metrics": ["events", "orders"], "dimensions": ["date"],
                         "filters": {**zone, "period": "90d", name: day}})  # fmt: skip


def test_default_limit_is_100_and_limit_cuts_after_ordering(system: System) -> None:
    body: dict[str, Any] = {
        "metrics": ["events"],
        "dimensions": ["hour"],
        "filters": {"period": "90d"},
    }
    assert len(_expect(system, body)) == 100
    everything = _expect(system, {**body, "limit": 10_000, "orderBy": "events:desc"})
    assert len(everything) > 100
    top = _expect(system, {**body, "limit": 7, "orderBy": "events:desc"})
    assert top == everything[:7]
    counts = [r["events"] for r in everything]
    assert counts == sorted(counts, reverse=True)
    ties = [r["hour"] for r in everything if r["events"] == counts[-1]]
    assert ties == sorted(ties, key=datetime.fromisoformat)  # ties: dimension ascending


def test_currency_dimension_never_mixes_currencies(system: System) -> None:
    rows = _expect(system, {"metrics": ["revenue", "orders"], "dimensions": ["currency"],
                            "filters": {"period": "90d"}})  # fmt: skip
    assert {r["currency"] for r in rows} >= {"USD", "EUR", "GBP", "JPY"}
    usd = _expect(system, {"metrics": ["revenue", "orders"], "filters": {"period": "90d"}})
    assert usd == [{k: v for k, v in r.items() if k != "currency"}
                   for r in rows if r["currency"] == "USD"]  # fmt: skip


@pytest.mark.parametrize(
    "filters",
    [
        {"page": INJECTED_PAGE},
        {"region": INJECTED_REGION},
        {"product_id": INJECTED_PRODUCT},
        {"product_id": "' OR '1'='1"},
        {"page": "x' UNION SELECT name, 1 FROM system.tables --"},
        {"page": "{project}"},
        {"page": "\\'); DROP TABLE events; --\n\t\0"},
        {"country": "' OR 1=1) GROUP BY d0 --"},
        {"event": "page_view' OR event != '"},
    ],
)
def test_sql_in_filter_values_is_only_a_value(system: System, filters: dict[str, str]) -> None:
    name = next(iter(filters))
    metrics = ["revenue", "orders", "units_sold", "visitors", "events"]
    if name == "page":
        metrics = ["revenue", "orders", "page_views", "visitors", "events"]
    _expect(system, {"metrics": metrics, "filters": {"period": "7d", **filters}})
    _expect(
        system, {"metrics": metrics, "dimensions": [name], "filters": {"period": "7d", **filters}}
    )
    assert _expect(system, {"metrics": ["events"], "filters": {"period": "90d"}})[0]["events"] > 0


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": ["revenue"], "dimensions": ["page; DROP TABLE events"]},
        {"metrics": ["revenue"], "dimensions": ["page) AS d0, (SELECT 1"]},
        {"metrics": ["sum(total)"]},
        {"metrics": ["revenue'--"]},
        {"metrics": ["revenue"], "filters": {"page = '' OR 1=1 --": "x"}},
        {"metrics": ["revenue"], "orderBy": "revenue; DROP TABLE events"},
        {"metrics": ["revenue"], "orderBy": "revenue:desc, (SELECT 1)"},
        {"metrics": ["revenue"], "filters": {"timezone": "UTC') --"}},
        {"metrics": ["revenue"], "filters": {"currency": "USD' OR 1=1"}},
        {"metrics": ["revenue"], "filters": {"period": "30d; DROP TABLE events"}},
        {"metrics": ["revenue"], "filters": {"date": "2024-01-01' OR '1'='1"}},
        {"metrics": ["revenue"], "filters": {"hour": "now()"}},
    ],
)
def test_sql_in_names_is_a_400(system: System, body: dict[str, Any]) -> None:
    _events(system)
    assert _violations(_post(system, body))
    assert _expect(system, {"metrics": ["events"], "filters": {"period": "90d"}})[0]["events"] > 0


def _error_info(reply: Reply) -> dict[str, str]:
    [info] = [d for d in reply.json()["details"] if d["@type"].endswith("ErrorInfo")]
    metadata: dict[str, str] = info.get("metadata", {})
    return metadata


def test_unknown_metric_lists_the_valid_ones(system: System) -> None:
    # The names once, in the ErrorInfo (tests/test_error_budget.py: not in each violation).
    reply = _post(system, {"metrics": ["revenue", "profit"]})
    fields = _violations(reply)
    assert fields == {"metrics[1]": "unknown metric 'profit'"}
    assert _error_info(reply)["validMetrics"].split(",") == list(oracle_query.METRICS)
    assert _error_info(reply)["docs"] == "docs/query.md"


def test_unknown_dimension_lists_the_valid_ones(system: System) -> None:
    reply = _post(system, {"metrics": ["revenue"], "dimensions": ["date", "colour"]})
    fields = _violations(reply)
    assert fields == {"dimensions[1]": "unknown dimension 'colour'"}
    assert _error_info(reply)["validDimensions"].split(",") == list(oracle_query.DIMENSIONS)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metrics": []}, "metrics"),
        ({"dimensions": ["date"]}, "metrics"),
        ({"metrics": ["orders", "orders"]}, "metrics[1]"),
        ({"metrics": ["orders"], "dimensions": ["date", "date"]}, "dimensions[1]"),
        ({"metrics": ["orders"], "orderBy": "revenue:desc"}, "orderBy"),  # not requested
        ({"metrics": ["orders"], "orderBy": "orders:sideways"}, "orderBy"),
        ({"metrics": ["orders"], "orderBy": "Orders"}, "orderBy"),
        ({"metrics": ["orders"], "orderBy": ":desc"}, "orderBy"),
        ({"metrics": ["orders"], "limit": -1}, "limit"),
        ({"metrics": ["orders"], "limit": 10_001}, "limit"),
        ({"metrics": ["orders"], "filters": {"colour": "red"}}, "filters.colour"),
        ({"metrics": ["orders"], "filters": {"Period": "7d"}}, "filters.Period"),
        ({"metrics": ["orders"], "filters": {"period": "0d"}}, "filters.period"),
        ({"metrics": ["orders"], "filters": {"period": "25m"}}, "filters.period"),
        ({"metrics": ["orders"], "filters": {"timezone": "Mars/Olympus"}}, "filters.timezone"),
        ({"metrics": ["orders"], "filters": {"currency": "XYZ"}}, "filters.currency"),
        ({"metrics": ["orders"], "filters": {"date": "2024-13-01"}}, "filters.date"),
        ({"metrics": ["orders"], "filters": {"week": "yesterday"}}, "filters.week"),
        ({"metrics": ["orders"], "filters": {"hour": "2024-01-15T10:00:00"}}, "filters.hour"),
        ({"metrics": ["orders"], "filters": {"page": "x" * 1001}}, "filters.page"),
        ({"metrics": ["page_views"], "dimensions": ["product_category"]}, "dimensions[0]"),
        ({"metrics": ["visitors"], "dimensions": ["date", "currency"]}, "dimensions[1]"),
        ({"metrics": ["checkouts"], "filters": {"product_id": "p"}}, "filters.product_id"),
        ({"metrics": ["conversion_rate"], "filters": {"page": "/"}}, "filters.page"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    system: System, body: dict[str, Any], field: str
) -> None:
    fields = _violations(_post(system, body))
    assert list(fields) == [field], fields


def test_every_problem_is_reported_at_once(system: System) -> None:
    fields = _violations(
        _post(
            system,
            {
                "metrics": ["profit", "page_views"],
                "dimensions": ["product_category"],
                "filters": {"colour": "red"},
                "orderBy": "x",
                "limit": 0x7FFFFFFF,
            },
        )
    )
    assert set(fields) == {"limit", "metrics[0]", "dimensions[0]", "filters.colour", "orderBy"}


@pytest.mark.parametrize("metric", sorted(oracle_query.REFUSED))
def test_refused_combinations_are_400(system: System, metric: str) -> None:
    for dimension in sorted(oracle_query.REFUSED[metric]):
        fields = _violations(_post(system, {"metrics": [metric], "dimensions": [dimension]}))
        assert list(fields) == ["dimensions[0]"]
        assert "docs/query.md" in fields["dimensions[0]"]


# --- On storage directly: rows a retry stored twice (Redis down, before a merge). ----------------


def test_a_retry_stored_twice_counts_once(storage: Storage, project_id: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(hours=2)
    columns = ["project_id", "event_id", "event", "ts", "received_at", "visitor_id",
               "session_id", "order_id", "total", "currency", "device"]  # fmt: skip
    events = [
        (project_id, "e1", "page_view", at, at, "v1", "s1", "", 0, "", "mobile"),
        (project_id, "e2", "order_completed", at, at, "v1", "s1", "o1", 1000, "USD", "mobile"),
        (project_id, "e3", "page_view", at, at, "v2", "s2", "", 0, "", "desktop"),
    ]
    item_columns = ["project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency",
                    "product_id", "name", "category", "price", "quantity"]  # fmt: skip
    items = [
        (project_id, "o1", "e2", 0, at, "v1", "USD", "a", "A", "c", 300, 2),
        (project_id, "o1", "e2", 1, at, "v1", "USD", "b", "B", "c", 400, 1),
    ]
    for _ in range(2):  # two inserts: two parts, each with every row
        storage.insert_sync("order_items", item_columns, items)
        storage.insert_sync("events", columns, events)
    # What ingest does after every flush (Ingestor._mark_duplicate_orders): list the orderIds
    # now stored more than once. Order figures read a period's rows of `orders` and look up only
    # the listed orderIds over all time.
    found = storage.query_sync(NEWLY_DUPLICATED_IDS, {"project": project_id, "ids": ("o1",)})
    assert found == [("o1",)]
    storage.insert_sync("order_dups", ["project_id", "order_id"], [(project_id, "o1")])
    runner = q.QueryRunner(storage, "USD", clock=lambda: now)

    def run(metrics: list[str], dimensions: list[str]) -> list[dict[str, Any]]:
        report = asyncio.run(runner.run(project_id, CustomQuery(metrics, dimensions, {})))
        return [dict(row) for row in report.rows]

    everything = ["events", "page_views", "visitors", "sessions", "orders", "revenue",
                  "units_sold", "aov", "conversion_rate"]  # fmt: skip
    assert run(everything, ["device"]) == [
        {"device": "desktop", "events": 1, "page_views": 1, "visitors": 1, "sessions": 1,
         "orders": 0, "revenue": 0, "units_sold": 0, "aov": 0, "conversion_rate": 0.0},
        {"device": "mobile", "events": 2, "page_views": 1, "visitors": 1, "sessions": 1,
         "orders": 1, "revenue": 1000, "units_sold": 3, "aov": 1000, "conversion_rate": 100.0},
    ]  # fmt: skip
    assert run(["revenue", "orders", "units_sold"], ["product_id"]) == [
        {"product_id": "a", "revenue": 600, "orders": 1, "units_sold": 2},
        {"product_id": "b", "revenue": 400, "orders": 1, "units_sold": 1},
    ]
    assert run(["revenue", "orders", "aov", "conversion_rate"], []) == [
        {"revenue": 1000, "orders": 1, "aov": 1000, "conversion_rate": 50.0}
    ]


# --- Without a running system: the catalogue, its docs and the builder. -------------------------

NOW = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)


def test_docs_define_every_metric_and_dimension() -> None:
    text = DOCS.read_text()
    table = dict(re.findall(r"^\| `([a-z_]+)` \| (metric|dimension) \|", text, re.MULTILINE))
    assert {n for n, kind in table.items() if kind == "metric"} == {m.name for m in q.METRICS}
    assert {n for n, kind in table.items() if kind == "dimension"} == {d.name for d in q.DIMENSIONS}
    assert set(oracle_query.METRICS) == {m.name for m in q.METRICS}
    assert set(oracle_query.DIMENSIONS) == {d.name for d in q.DIMENSIONS}


def test_refusals_are_the_documented_ones() -> None:
    assert {m.name: set(m.refused) for m in q.METRICS if m.refused} == oracle_query.REFUSED


@pytest.mark.parametrize("metric", [m.name for m in q.METRICS])
def test_every_accepted_combination_builds(metric: str) -> None:
    """Every metric by every dimension (and filtered on it) is refused or builds SQL in which
    the request's value appears only as a rendered literal."""
    sentinel = "zz'sentinel"
    for dimension in q.DIMENSIONS:
        value = {"day": "2026-03-02", "hour": "2026-03-02T10:00:00+02:00"}.get(
            dimension.kind, sentinel
        )
        request = CustomQuery([metric], [dimension.name], {dimension.name: value})
        if dimension.name in oracle_query.REFUSED.get(metric, ()):
            with pytest.raises(ApiError):
                q.plan(request, "USD", NOW)
            continue
        if dimension.name == "currency":  # the currency filter is checked, not a free value
            value = "EUR"
            request = CustomQuery([metric], ["currency"], {"currency": value})
        checked = q.plan(request, "USD", NOW)
        # The people snapshot's slots as Storage fills them with no build yet.
        params = {**q.parameters("project", checked), **snapshot_values(0, 0)}
        for select in q.build(checked):
            assert "zz" not in select.sql
            rendered = render(select.sql, params)
            if value == sentinel:
                assert "'zz\\'sentinel'" in rendered

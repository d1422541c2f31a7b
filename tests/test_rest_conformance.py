"""REST conformance: the spec's curl examples, status codes, JSON shapes and errors.

Runs against the in-process gateway on both storage backends, and against Envoy (with
gateway/envoy.yaml) when an ``envoy`` binary is on PATH. tests/test_replicas.py collects these
same tests again with its own ``api``: a gateway in front of two ingest and two metrics processes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.rest import Reply, call
from tests.servers import System

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def _violations(reply: Reply) -> list[dict[str, str]]:
    body = reply.json()
    return [
        v
        for detail in body.get("details", [])
        if detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        for v in detail["fieldViolations"]
    ]


def _reason(reply: Reply) -> str:
    for detail in reply.json().get("details", []):
        if detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo":
            return str(detail["reason"])
    return ""


# The spec's examples, verbatim.
TRACK_EXAMPLE = {
    "event": "product_view",
    "userId": "user_xyz789",
    "properties": {
        "productId": "prod_abc123",
        "name": "Premium T-Shirt",
        "price": 2999,
        "currency": "USD",
    },
}
BATCH_EXAMPLE = {
    "events": [
        {"event": "page_view", "userId": "user_xyz789", "properties": {"page": "/products/shirts"}},
        {
            "event": "product_view",
            "userId": "user_xyz789",
            "properties": {"productId": "prod_abc123"},
        },
    ]
}


def test_track_event_example(api: System) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    reply = call("POST", f"{api.http_url}/analytics/event", api.key, TRACK_EXAMPLE)
    assert reply.status == 201, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"id", "event", "timestamp"}
    assert body["id"].startswith("evt_")
    assert body["event"] == "product_view"
    assert RFC3339_UTC.match(body["timestamp"])
    stamped = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert before <= stamped <= datetime.now(UTC) + timedelta(seconds=1)


def test_track_event_keeps_client_timestamp_and_id(api: System) -> None:
    event = {**TRACK_EXAMPLE, "id": "evt_client_42", "timestamp": "2026-01-15T10:35:00Z"}
    if datetime(2026, 1, 15, tzinfo=UTC) < datetime.now(UTC) - timedelta(days=360):
        event["timestamp"] = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reply = call("POST", f"{api.http_url}/analytics/event", api.key, event)
    assert reply.status == 201, reply.body
    assert reply.json() == {
        "id": "evt_client_42",
        "event": "product_view",
        "timestamp": event["timestamp"],
    }


def test_batch_example(api: System) -> None:
    reply = call("POST", f"{api.http_url}/analytics/event/batch", api.key, BATCH_EXAMPLE)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["acceptedCount"] == 2
    assert body["rejectedCount"] == 0
    assert body["rejected"] == []
    assert [a["index"] for a in body["accepted"]] == [0, 1]
    assert [a["event"] for a in body["accepted"]] == ["page_view", "product_view"]
    assert all(
        a["id"].startswith("evt_") and RFC3339_UTC.match(a["timestamp"]) for a in body["accepted"]
    )


def test_mixed_batch_lists_refusals_by_index(api: System) -> None:
    events: list[dict[str, Any]] = [
        BATCH_EXAMPLE["events"][0],
        {
            "event": "order_completed",
            "userId": "u",
            "properties": {"orderId": "o", "total": -5, "currency": "USD"},
        },
        {"event": "search", "anonymousId": "anon_1", "properties": {"query": "socks"}},
        {"event": "add_to_cart", "properties": {"productId": "p"}},
    ]  # fmt: skip
    reply = call("POST", f"{api.http_url}/analytics/event/batch", api.key, {"events": events})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert (body["acceptedCount"], body["rejectedCount"]) == (2, 2)
    assert [a["index"] for a in body["accepted"]] == [0, 2]
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (1, "properties.total"),
        (3, "userId"),
    ]


def test_sales_example(api: System) -> None:
    reply = call("GET", f"{api.http_url}/analytics/sales?period=30d&granularity=day", api.key)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert set(body) == {
        "period",
        "revenue",
        "orders",
        "averageOrderValue",
        "currency",
        "growth",
        "series",
    }
    assert body["period"] == "30d"
    assert body["currency"] == "USD"
    for name in ("revenue", "orders", "averageOrderValue"):
        assert isinstance(body[name], int), f"{name} must be a JSON integer"
    assert isinstance(body["growth"], dict)
    assert len(body["series"]) == 30
    assert all(set(b) == {"date", "revenue", "orders"} for b in body["series"])
    dates = [b["date"] for b in body["series"]]
    assert dates == sorted(dates, reverse=True)


def test_invalid_event_is_400_naming_the_field(api: System) -> None:
    event = {
        "event": "order_completed",
        "userId": "u",
        "properties": {"orderId": "o", "total": 12.5, "currency": "USD"},
    }
    reply = call("POST", f"{api.http_url}/analytics/event", api.key, event)
    assert reply.status == 400
    body = reply.json()
    assert body["code"] == 3
    assert "properties.total" in body["message"]
    assert [v["field"] for v in _violations(reply)] == ["properties.total"]
    assert _reason(reply) == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("headers", "key"),
    [({}, None), ({}, "cak_wrong"), ({"Authorization": "Basic Zm9vOmJhcg=="}, None)],
    ids=["missing", "unknown", "not-bearer"],
)
def test_requests_without_a_valid_key_are_401(
    api: System, headers: dict[str, str], key: str | None
) -> None:
    for method, path, body in [
        ("POST", "/analytics/event", TRACK_EXAMPLE),
        ("GET", "/analytics/sales", None),
        ("GET", "/analytics/products", None),
    ]:
        reply = call(method, f"{api.http_url}{path}", key, body, headers=headers)
        assert reply.status == 401, (path, reply.body)
        assert reply.json()["code"] == 16


def test_export_example_streams_a_csv_attachment(api: System) -> None:
    # curl ".../analytics/export?type=orders&period=30d&format=csv" -o orders_report.csv
    path = "/analytics/export?type=orders&period=30d&format=csv"
    reply = call("GET", f"{api.http_url}{path}", api.key)
    assert reply.status == 200, reply.body
    headers = {name.lower(): value for name, value in reply.headers.items()}
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == "attachment; filename=orders_30d.csv"
    header, _, rest = reply.body.partition(b"\r\n")
    assert header == b"orderId,timestamp,userId,total,currency,items,units,products,eventId"
    assert rest == b"" or rest.endswith(b"\r\n")


SHAPES: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/analytics/products?period=30d&limit=10", None, {"topSellers"}),
    ("GET", "/analytics/funnel?period=7d", None, {"stages", "conversionRate"}),
    ("GET", "/analytics/realtime", None,
     {"activeVisitors", "ordersToday", "revenueToday", "topPages"}),
    ("GET", "/analytics/customers?period=30d", None,
     {"period", "currency", "totalCustomers", "newCustomers", "returningCustomers",
      "repeatPurchaseRate", "revenuePerCustomer", "topCustomers"}),
    ("POST", "/analytics/query",
     {"metrics": ["revenue", "orders", "aov"], "dimensions": ["product_category", "region"],
      "filters": {"period": "30d", "currency": "USD"}, "orderBy": "revenue:desc", "limit": 20},
     {"rows"}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "keys"), SHAPES, ids=[s[1] for s in SHAPES])
def test_dashboard_endpoints_answer_the_documented_shape(
    api: System, method: str, path: str, body: Any, keys: set[str]
) -> None:
    """The spec's curl examples for each dashboard endpoint: 200 and the documented fields."""
    reply = call(method, f"{api.http_url}{path}", api.key, body)
    assert reply.status == 200, reply.body
    assert set(reply.json()) == keys


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/analytics/nope"),
        ("GET", "/analytics/event"),
        ("DELETE", "/analytics/sales"),
        ("GET", "/dashboard/nope.js"),  # `/` is the dashboard (docs/dashboard.md)
    ],
)
def test_unknown_paths_and_methods_are_404(api: System, method: str, path: str) -> None:
    """An unknown path is a 404 on both gateways. A known path with another method is a 405
    with `Allow` from the in-process gateway, a 404 from Envoy (docs/envoy.md)."""
    reply = call(method, f"{api.http_url}{path}", api.key)
    known = path in ("/analytics/event", "/analytics/sales")
    if known and "Allow" in reply.headers:
        assert (reply.status, reply.json()["code"]) == (405, 12)
    else:
        assert reply.status == 404
        assert reply.json()["code"] == 5


def test_unknown_query_parameter_is_400(api: System) -> None:
    reply = call("GET", f"{api.http_url}/analytics/sales?period=7d&colour=red", api.key)
    assert reply.status == 400
    assert "colour" in reply.json()["message"]


def test_badly_typed_query_parameter_is_400(api: System) -> None:
    reply = call("GET", f"{api.http_url}/analytics/products?limit=ten", api.key)
    assert reply.status == 400
    assert "limit" in reply.json()["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"event": 5, "userId": "u"}',
        b'{"event": "search", "userId": "u", "properties": "oops"}',
        b"\xff\xfe",
    ],
    ids=["broken", "array", "wrong-type", "properties-not-object", "not-utf8"],
)
def test_malformed_bodies_are_400(api: System, raw: bytes) -> None:
    reply = call("POST", f"{api.http_url}/analytics/event", api.key, raw=raw)
    assert reply.status == 400, reply.body
    assert reply.json()["code"] == 3
    assert _reason(reply) == "INVALID_ARGUMENT"
    assert len(_violations(reply)) == 1


def test_oversized_body_is_413(api: System) -> None:
    raw = b'{"events": [' + b",".join([b'{"event": "search"}'] * 80_000) + b"]}"
    assert len(raw) > 1 << 20
    reply = call("POST", f"{api.http_url}/analytics/event/batch", api.key, raw=raw)
    assert reply.status == 413


def test_batch_over_the_event_limit_is_refused_whole(api: System) -> None:
    events = [{"event": "search", "userId": "u", "properties": {"query": "q"}}] * 1001
    reply = call("POST", f"{api.http_url}/analytics/event/batch", api.key, {"events": events})
    assert reply.status == 400
    assert [v["field"] for v in _violations(reply)] == ["events"]


def test_healthz(api: System) -> None:
    reply = call("GET", f"{api.http_url}/healthz")
    assert reply.status == 200

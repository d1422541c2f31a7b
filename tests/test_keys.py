"""Projects, API keys and scopes (issue 6), through the REST gateway and over gRPC.

Keys are made through the AdminService (gRPC; it is not behind the gateway) or the CLI, with the
system's bootstrap key, which is the operator key. Every expected value comes from what the test
sent (a plain-Python oracle) or from the issue's rules, never from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor

from cartlytics.common import catalog
from cartlytics.common.auth import KeyRing, Principal
from cartlytics.common.keys import KeyRefresher, KeyStore
from cartlytics.common.storage import Sql, open_storage
from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc
from cartlytics.gen.analytics.export.v1 import export_pb2, export_pb2_grpc
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2
from tests.descriptors import http_bindings
from tests.rest import Reply, call
from tests.servers import ClickHouseServer, System, start_system

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "src" / "cartlytics" / "gen" / "analytics.pb"

# The rule, written out independently of the protos: which scope each service needs.
SCOPE_OF_SERVICE = {
    "analytics.ingest.v1.IngestService": "ingest",
    "analytics.metrics.v1.MetricsService": "read",
    "analytics.export.v1.ExportService": "read",
    "analytics.admin.v1.AdminService": "admin",
    "analytics.privacy.v1.PrivacyService": "admin",
}
SCOPE_ENUM = {
    "ingest": options_pb2.SCOPE_INGEST,
    "read": options_pb2.SCOPE_READ,
    "admin": options_pb2.SCOPE_ADMIN,
}


# ---------------------------------------------------------------------------------------------
# Helpers


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _admin_call(method: Any, request: Any, key: str) -> Any:
    """An AdminService call, waiting out a rate-limit refusal as a client would."""
    for _ in range(20):
        try:
            return method(request, metadata=_auth(key), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            time.sleep(0.5)
    raise AssertionError("rate limited for 10 s")


def create_key(system: System, project: str, scopes: list[str], by: str | None = None) -> str:
    """A new key's secret (made with the operator key unless ``by`` says which)."""
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateKeyRequest(
            project_id=project, scopes=[SCOPE_ENUM[s] for s in scopes], name="test"
        )
        reply = _admin_call(stub.CreateKey, request, by or system.key)
    assert reply.secret.startswith("cak_")
    assert reply.key.project_id == project
    secret: str = reply.secret
    return secret


def key_id_of(system: System, project: str, secret: str) -> str:
    """The listed id of the key whose secret is given (matched on the stored hash's creation)."""
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        listed = _admin_call(
            stub.ListKeys, admin_pb2.ListKeysRequest(project_id=project), system.key
        )
    ids = [k.key_id for k in listed.keys if not k.revoked]
    assert ids, f"no live key in {project}"
    return str(ids[-1])


def revoke(system: System, key_id: str, by: str | None = None) -> admin_pb2.RevokeKeyResponse:
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply: admin_pb2.RevokeKeyResponse = _admin_call(
            stub.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=key_id), by or system.key
        )
    return reply


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(reply: Reply) -> tuple[int, str]:
    return reply.status, str(reply.json()["message"])


# ---------------------------------------------------------------------------------------------
# A project never sees another project's data


@dataclass
class Shop:
    """What one project sent, and the figures that follow from it alone."""

    project: str
    key: str
    events: list[dict[str, Any]]

    @property
    def orders(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "order_completed"]

    def users(self, event: str | None = None) -> set[str]:
        return {e["userId"] for e in self.events if event is None or e["event"] == event}


def _shop_events(tag: str, buyers: int, viewers: int, now: datetime) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    n = 0

    def add(event: str, user: str, seconds_ago: int, properties: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        events.append(
            {
                "id": f"evt_{tag}_{n}",
                "event": event,
                "userId": user,
                "timestamp": _iso(now - timedelta(seconds=seconds_ago)),
                # A project id in the body means nothing: the project comes from the key.
                "properties": {**properties, "projectId": "someone_else"},
            }
        )

    for i in range(viewers):
        add("page_view", f"{tag}_viewer{i}", 60 + i, {"page": f"/{tag}/page{i % 2}"})
    for i in range(buyers):
        user = f"{tag}_buyer{i}"
        product = f"{tag}_prod{i % 2}"
        price, quantity = 500 * (i + 1), i + 1
        add("page_view", user, 150, {"page": f"/{tag}/page0"})
        add("product_view", user, 140, {"productId": product, "price": price, "currency": "USD"})
        add(
            "order_completed",
            user,
            120,
            {
                "orderId": f"{tag}_order{i}",
                "total": price * quantity,
                "currency": "USD",
                "products": [
                    {"productId": product, "name": product, "price": price, "quantity": quantity}
                ],
            },
        )
    return events


def _expected(shop: Shop, now: datetime) -> dict[str, Any]:
    orders = shop.orders
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)

    def ts(e: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))

    today = [o for o in orders if ts(o) >= midnight]
    products: dict[str, tuple[int, int]] = {}
    customers: dict[str, int] = {}
    for order in orders:
        customers[order["userId"]] = (
            customers.get(order["userId"], 0) + order["properties"]["total"]
        )
        for line in order["properties"]["products"]:
            revenue, units = products.get(line["productId"], (0, 0))
            products[line["productId"]] = (
                revenue + line["price"] * line["quantity"],
                units + line["quantity"],
            )
    page_visitors: dict[str, set[str]] = {}
    for e in shop.events:
        if e["event"] == "page_view":
            page_visitors.setdefault(e["properties"]["page"], set()).add(e["userId"])
    top = sorted(page_visitors.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:10]
    revenue = sum(o["properties"]["total"] for o in orders)
    return {
        "revenue": revenue,
        "orders": len(orders),
        "products": products,
        "customers": customers,
        "funnel": [len(shop.users("page_view")), len(shop.users("order_completed"))],
        "realtime": {
            "activeVisitors": len(shop.users()),
            "ordersToday": len(today),
            "revenueToday": sum(o["properties"]["total"] for o in today),
            "topPages": [{"page": p, "visitors": len(v)} for p, v in top],
        },
        "event_ids": {e["id"] for e in shop.events},
        "order_ids": {o["properties"]["orderId"] for o in orders},
        # Every export type, reduced to the ids it lists.
        "exports": {
            "order_items": {
                (o["properties"]["orderId"], line["productId"])
                for o in orders
                for line in o["properties"]["products"]
            },
            "products": set(products),
            "customers": set(customers),
        },
    }


def _rest_figures(system: System, key: str) -> dict[str, Any]:
    """Every read endpoint through the REST gateway, reduced to what the oracle predicts."""
    base = f"{system.http_url}/analytics"

    def get(path: str, **params: str) -> Any:
        reply = call("GET", f"{base}/{path}?{urlencode(params)}", key)
        assert reply.status == 200, (path, reply.body)
        return reply.json() if path != "export" else reply.body

    sales = get("sales", period="7d")
    products = get("products", period="7d", limit="50")
    customers = get("customers", period="7d", limit="50")
    funnel = get("funnel", period="7d", steps="page_view,order_completed")
    before = datetime.now(UTC)
    realtime = get("realtime", timezone="UTC", currency="USD")
    realtime_at = (before, datetime.now(UTC))
    query = call(
        "POST",
        f"{base}/query",
        key,
        {"metrics": ["revenue", "orders"], "filters": {"period": "7d", "currency": "USD"}},
    )
    assert query.status == 200, query.body
    rows = query.json()["rows"]

    def export(kind: str) -> list[dict[str, Any]]:
        body = get("export", type=kind, format="ndjson", period="7d")
        return [json.loads(line) for line in body.splitlines() if line]

    events, orders = export("events"), export("orders")
    items, products_out, customers_out = (
        export("order_items"),
        export("products"),
        export("customers"),
    )
    return {
        "revenue": sales["revenue"],
        "orders": sales["orders"],
        "products": {
            p["productId"]: (p["revenue"], p["unitsSold"]) for p in products["topSellers"]
        },
        "customers": {c["customerId"]: c["revenue"] for c in customers["topCustomers"]},
        "funnel": [s["count"] for s in funnel["stages"]],
        "realtime": realtime,
        "realtime_at": realtime_at,
        "query": rows,
        "event_ids": {row["eventId"] for row in events},
        "order_ids": {row["orderId"] for row in orders},
        "exports": {
            "order_items": {(row["orderId"], row["productId"]) for row in items},
            "products": {row["productId"] for row in products_out},
            "customers": {row["customerId"] for row in customers_out},
        },
    }


def _grpc_figures(system: System, key: str) -> dict[str, Any]:
    """The same reads over gRPC (every metrics RPC and the export)."""
    auth = _auth(key)
    with grpc.insecure_channel(system.grpc_target) as channel:
        metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
        sales = metrics.GetSales(metrics_pb2.GetSalesRequest(period="7d"), metadata=auth)
        products = metrics.GetProducts(
            metrics_pb2.GetProductsRequest(period="7d", limit=50), metadata=auth
        )
        customers = metrics.GetCustomers(
            metrics_pb2.GetCustomersRequest(period="7d", limit=50), metadata=auth
        )
        funnel = metrics.GetFunnel(
            metrics_pb2.GetFunnelRequest(period="7d", steps=["page_view", "order_completed"]),
            metadata=auth,
        )
        before = datetime.now(UTC)
        realtime = metrics.GetRealtime(
            metrics_pb2.GetRealtimeRequest(timezone="UTC", currency="USD"), metadata=auth
        )
        realtime_at = (before, datetime.now(UTC))
        query = metrics.RunQuery(
            metrics_pb2.RunQueryRequest(
                metrics=["revenue", "orders"], filters={"period": "7d", "currency": "USD"}
            ),
            metadata=auth,
        )
        export = export_pb2_grpc.ExportServiceStub(channel)
        body = b"".join(
            chunk.data
            for chunk in export.ExportData(
                export_pb2.ExportDataRequest(type="events", format="ndjson", period="7d"),
                metadata=auth,
            )
        )
    realtime_json = json_format.MessageToDict(realtime, always_print_fields_with_no_presence=True)
    return {
        "revenue": sales.revenue,
        "orders": sales.orders,
        "products": {p.product_id: (p.revenue, p.units_sold) for p in products.top_sellers},
        "customers": {c.customer_id: c.revenue for c in customers.top_customers},
        "funnel": [s.count for s in funnel.stages],
        "realtime": realtime_json,
        "realtime_at": realtime_at,
        "query": [json_format.MessageToDict(row) for row in query.rows],
        "event_ids": {json.loads(line)["eventId"] for line in body.splitlines() if line},
    }


def _compare(got: dict[str, Any], shop: Shop, now: datetime, where: str) -> None:
    want = _expected(shop, now)
    assert got["revenue"] == want["revenue"], where
    assert got["orders"] == want["orders"], where
    assert got["products"] == want["products"], where
    assert got["customers"] == want["customers"], where
    assert got["funnel"] == want["funnel"], where
    # Realtime is "now": its 5-minute window and midnight move while the test runs (slowly, on a
    # busy machine), so it is expected at the clock of either side of its call.
    assert got["realtime"] in [_expected(shop, at)["realtime"] for at in got["realtime_at"]], where
    assert got["query"] == [{"revenue": want["revenue"], "orders": want["orders"]}], where
    assert got["event_ids"] == want["event_ids"], where
    if "order_ids" in got:  # the REST side reads every export type
        assert got["order_ids"] == want["order_ids"], where
        assert got["exports"] == want["exports"], where


def test_a_project_never_sees_another_projects_data(system: System) -> None:
    now = datetime.now(UTC)
    shops = []
    for tag, buyers, viewers in (("a", 2, 3), ("b", 4, 1)):
        project = f"iso_{tag}_{uuid.uuid4().hex[:8]}"
        key = create_key(system, project, ["ingest", "read"])
        shops.append(Shop(project, key, _shop_events(f"{tag}{project[-8:]}", buyers, viewers, now)))
    a, b = shops
    # A through the REST gateway, B over gRPC.
    reply = call("POST", f"{system.http_url}/analytics/event/batch", a.key, {"events": a.events})
    assert reply.status == 200 and reply.json()["rejectedCount"] == 0, reply.body
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.BatchTrackEventsRequest(
            events=[json_format.ParseDict(e, ingest_pb2.Event()) for e in b.events]
        )
        answer = stub.BatchTrackEvents(request, metadata=_auth(b.key), timeout=30)
        assert answer.rejected_count == 0
    for shop in shops:
        _compare(_rest_figures(system, shop.key), shop, now, f"{shop.project} over REST")
        _compare(_grpc_figures(system, shop.key), shop, now, f"{shop.project} over gRPC")


# ---------------------------------------------------------------------------------------------
# Each scope is allowed exactly its calls


@dataclass(frozen=True)
class Rpc:
    path: str  # /<package>.<Service>/<Method>
    method: MethodDescriptor
    http: tuple[str, str] | None  # (verb, path) of its google.api.http rule

    @property
    def scope(self) -> str:
        return SCOPE_OF_SERVICE[self.path.split("/")[1]]


def _rpcs() -> list[Rpc]:
    """Every RPC of the descriptor set, with its REST binding when it has one."""
    bindings = {
        path: (verb.upper(), route) for path, (verb, route) in http_bindings(DESCRIPTOR_SET).items()
    }
    found = []
    for described in catalog.services():
        for method_descriptor in described.methods:
            path = f"/{described.full_name}/{method_descriptor.name}"
            found.append(Rpc(path, method_descriptor, bindings.get(path)))
    return found


RPCS = _rpcs()


def _grpc_code(channel: grpc.Channel, rpc: Rpc, key: str | None) -> tuple[grpc.StatusCode, str]:
    """Call with an empty request; the status code and message (OK when it succeeded)."""
    request_class = message_factory.GetMessageClass(rpc.method.input_type)
    response_class = message_factory.GetMessageClass(rpc.method.output_type)
    metadata = _auth(key) if key is not None else ()
    stream = rpc.method.server_streaming
    factory = channel.unary_stream if stream else channel.unary_unary
    callable_ = factory(
        rpc.path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    try:
        result = callable_(request_class(), metadata=metadata, timeout=30)
        if stream:
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _rest_reply(system: System, rpc: Rpc, key: str | None) -> Reply:
    assert rpc.http is not None
    verb, path = rpc.http
    body: dict[str, Any] | None = {} if verb in ("POST", "PUT", "PATCH") else None
    return call(verb, system.http_url + path, key, body)


def test_every_rpc_is_in_the_matrix() -> None:
    assert {r.path.split("/")[1] for r in RPCS} == set(SCOPE_OF_SERVICE)
    # Key management is gRPC only; the one admin call on the public REST API is the erasure the
    # spec asks for (DELETE /analytics/users/{userId}).
    admin_rest = {r.path: r.http for r in RPCS if r.scope == "admin" and r.http is not None}
    assert admin_rest == {
        "/analytics.privacy.v1.PrivacyService/EraseUser": ("DELETE", "/analytics/users/{user_id}")
    }
    # Every non-admin call has a REST path, but the typed ingest calls: their REST paths belong to
    # the raw-JSON twins (TrackEventJson, BatchTrackEventsJson), parsed per event by the service.
    grpc_only = {"TrackEvent", "BatchTrackEvents"}
    assert all(
        r.http is not None
        for r in RPCS
        if r.scope != "admin" and r.path.rsplit("/", 1)[1] not in grpc_only
    )
    assert {r.path.rsplit("/", 1)[1] for r in RPCS if r.http is None and r.scope == "ingest"} == (
        grpc_only
    )


def test_each_scope_is_allowed_exactly_its_calls(system: System) -> None:
    project = "scope_" + uuid.uuid4().hex[:8]
    keys = {scope: create_key(system, project, [scope]) for scope in SCOPE_ENUM}
    denied_seen = 0
    with grpc.insecure_channel(system.grpc_target) as channel:
        for rpc in RPCS:
            for scope, key in keys.items():
                code, message = _grpc_code(channel, rpc, key)
                where = f"{rpc.path} with an {scope} key over gRPC"
                if scope == rpc.scope:
                    assert code not in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ), (where, code, message)
                else:
                    denied_seen += 1
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (where, code)
                    assert f"'{rpc.scope}' scope" in message, (where, message)
                if rpc.http is None:
                    continue
                reply = _rest_reply(system, rpc, key)
                where = f"{rpc.http} with an {scope} key over REST"
                if scope == rpc.scope:
                    assert reply.status not in (401, 403, 500), (where, reply.body)
                else:
                    status, text = _error(reply)
                    assert status == 403 and f"'{rpc.scope}' scope" in text, (where, reply.body)
            # The operator (bootstrap) key has every scope.
            code, message = _grpc_code(channel, rpc, system.key)
            assert code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), (rpc.path, message)
    assert denied_seen == 2 * len(RPCS)


def test_no_unknown_or_revoked_key_gets_anywhere(system: System) -> None:
    """Missing, unknown, revoked, or another project's revoked key: 401, one message for all."""
    project = "revoked_" + uuid.uuid4().hex[:8]
    secret = create_key(system, project, ["ingest", "read", "admin"])
    revoke(system, key_id_of(system, project, secret))
    candidates = {"unknown": "cak_" + uuid.uuid4().hex, "revoked": secret}
    with grpc.insecure_channel(system.grpc_target) as channel:
        for rpc in RPCS:
            code, _ = _grpc_code(channel, rpc, None)
            assert code == grpc.StatusCode.UNAUTHENTICATED, rpc.path
            messages = set()
            for name, key in candidates.items():
                code, message = _grpc_code(channel, rpc, key)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc.path, name)
                messages.add(message)
                if rpc.http is not None:
                    status, text = _error(_rest_reply(system, rpc, key))
                    assert status == 401, (rpc.http, name)
                    messages.add(text)
            assert len(messages) == 1, f"{rpc.path}: answers tell keys apart: {messages}"
    status, _ = _error(call("GET", f"{system.http_url}/analytics/sales"))
    assert status == 401, "no key at all over REST"


def test_the_admin_service_is_not_behind_the_rest_gateway(system: System) -> None:
    for path in (
        "/analytics.admin.v1.AdminService/CreateKey",
        "/analytics.admin.v1.AdminService/ListKeys",
        "/analytics/keys",
        "/analytics/admin/keys",
    ):
        reply = call("POST", system.http_url + path, system.key, {})
        assert reply.status == 404, (path, reply.body)


def test_an_admin_key_manages_its_own_project_only(system: System) -> None:
    mine, theirs = ("adm_" + uuid.uuid4().hex[:8] for _ in range(2))
    admin = create_key(system, mine, ["admin"])
    their_key = create_key(system, theirs, ["read"])
    their_id = key_id_of(system, theirs, their_key)
    missing_project = "absent_" + uuid.uuid4().hex[:8]
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)

        def refused(method: Any, request: Any) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as error:
                _admin_call(method, request, admin)
            return error.value.code(), error.value.details() or ""

        # Another project that exists answers as one that does not (names swapped out).
        for method, make in (
            (stub.ListKeys, lambda p: admin_pb2.ListKeysRequest(project_id=p)),
            (
                stub.CreateKey,
                lambda p: admin_pb2.CreateKeyRequest(project_id=p, scopes=[options_pb2.SCOPE_READ]),
            ),
        ):
            exists = refused(method, make(theirs))
            absent = refused(method, make(missing_project))
            assert exists[0] == absent[0] == grpc.StatusCode.NOT_FOUND
            assert exists[1].replace(theirs, "P") == absent[1].replace(missing_project, "P")
        # Another project's key answers as a key that does not exist, and keeps working.
        exists = refused(stub.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=their_id))
        absent = refused(stub.RevokeKey, admin_pb2.RevokeKeyRequest(key_id="0123456789ab"))
        assert exists[0] == absent[0] == grpc.StatusCode.NOT_FOUND
        assert exists[1].replace(their_id, "K") == absent[1].replace("0123456789ab", "K")
        assert call("GET", f"{system.http_url}/analytics/sales", their_key).status == 200
        # Its own project: create, list, revoke.
        created = _admin_call(
            stub.CreateKey,
            admin_pb2.CreateKeyRequest(scopes=[options_pb2.SCOPE_INGEST], name="web"),
            admin,
        )
        assert created.key.project_id == mine
        listed = _admin_call(stub.ListKeys, admin_pb2.ListKeysRequest(), admin)
        assert {k.key_id for k in listed.keys} >= {created.key.key_id}
        assert {k.project_id for k in listed.keys} == {mine}
        assert all(not k.HasField("revoke_time") for k in listed.keys if not k.revoked)
        done = _admin_call(
            stub.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=created.key.key_id), admin
        )
        assert done.key.revoked and done.key.HasField("revoke_time")
        # Bad requests name the field.
        code, message = refused(stub.CreateKey, admin_pb2.CreateKeyRequest())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "scopes" in message
        unknown_scope = admin_pb2.CreateKeyRequest()
        unknown_scope.scopes.append(9)  # type: ignore[arg-type]  # no such Scope value
        code, message = refused(stub.CreateKey, unknown_scope)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "scopes[0]" in message
        code, message = refused(stub.ListKeys, admin_pb2.ListKeysRequest(project_id="no spaces{}"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "project_id" in message
    # The operator sees every project.
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        listed = _admin_call(
            stub.ListKeys, admin_pb2.ListKeysRequest(project_id=theirs), system.key
        )
        assert [k.key_id for k in listed.keys] == [their_id]


def test_the_bootstrap_key_still_works(system: System) -> None:
    event = {"event": "page_view", "userId": "boot_user", "properties": {"page": "/boot"}}
    reply = call("POST", f"{system.http_url}/analytics/event", system.key, event)
    assert reply.status == 201, reply.body
    assert call("GET", f"{system.http_url}/analytics/sales", system.key).status == 200
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        stub.GetSales(metrics_pb2.GetSalesRequest(period="7d"), metadata=_auth(system.key))


# ---------------------------------------------------------------------------------------------
# Revocation across replicas, restarts, what is stored


@pytest.fixture
def shared_clickhouse(clickhouse_server: ClickHouseServer) -> str:
    database = "keys_" + uuid.uuid4().hex[:8]
    return clickhouse_server.url.replace("/analytics", "/" + database)


@pytest.fixture
def two_replicas(tmp_path: Path, shared_clickhouse: str) -> Iterator[tuple[System, System]]:
    key = "cak_test_" + uuid.uuid4().hex
    first = start_system(tmp_path / "one", key, clickhouse_url=shared_clickhouse)
    try:
        second = start_system(tmp_path / "two", key, clickhouse_url=shared_clickhouse)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def _status_until(system: System, key: str, wanted: int, limit: float) -> float:
    """Seconds until GET /analytics/sales with ``key`` answers ``wanted`` (fails past limit)."""
    started = time.monotonic()
    while True:
        status = call("GET", f"{system.http_url}/analytics/sales", key).status
        elapsed = time.monotonic() - started
        if status == wanted:
            return elapsed
        assert elapsed < limit, f"still {status} after {elapsed:.1f}s"
        time.sleep(0.1)


def test_a_revoked_key_fails_within_5_seconds_on_every_replica(
    two_replicas: tuple[System, System], shared_clickhouse: str
) -> None:
    one, two = two_replicas
    project = "replicas_" + uuid.uuid4().hex[:8]
    secret = create_key(one, project, ["read"])
    _status_until(two, secret, 200, 5)  # a new key reaches the other replica as fast
    key_id = key_id_of(one, project, secret)
    revoke(one, key_id)
    revoked_at = time.monotonic()
    assert call("GET", f"{one.http_url}/analytics/sales", secret).status == 401
    _status_until(two, secret, 401, 5 - (time.monotonic() - revoked_at))
    # Only the hash is kept, in the shared table.
    storage = open_storage(shared_clickhouse, Path("/nonexistent"))
    try:
        rows = storage.query_sync(
            Sql(
                "SELECT key_id, project_id, key_hash, scopes, name, revoked FROM api_keys "
                "WHERE key_id = {key_id} ORDER BY version"
            ),
            {"key_id": key_id},
        )
    finally:
        storage.close()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert rows == [
        (key_id, project, digest, "read", "test", 0),
        (key_id, project, digest, "read", "test", 1),
    ]
    assert not any(secret in str(value) or secret[4:] in str(value) for r in rows for value in r)


def _cli(
    system: System, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "ANALYTICS_DATA_DIR": str(system.data_dir),
        "ANALYTICS_BOOTSTRAP_KEY": "",
        "ANALYTICS_ADMIN_KEY": "",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "cartlytics", "keys", *args, "--grpc", system.grpc_target],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_survive_a_restart_and_the_cli_manages_them(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = ""
    if backend == "clickhouse":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url.replace("/analytics", "/restart_" + uuid.uuid4().hex[:8])
    data = tmp_path / "data"
    # No configured bootstrap key: the server makes one in the data dir, where the CLI finds it.
    env = {"ANALYTICS_BOOTSTRAP_KEY": ""}
    system = start_system(data, "", clickhouse_url=url, extra_env=env)
    try:
        project = "cli_" + uuid.uuid4().hex[:8]
        made = _cli(
            system, "create", "--project", project, "--scope", "ingest,read", "--name", "web"
        )
        assert made.returncode == 0, made.stderr
        (secret,) = [w for w in made.stdout.split() if w.startswith("cak_")]
        doomed = _cli(system, "create", "--project", project, "--scope", "read")
        assert doomed.returncode == 0, doomed.stderr
        (doomed_secret,) = [w for w in doomed.stdout.split() if w.startswith("cak_")]
        listed = _cli(system, "list", "--project", project)
        assert listed.returncode == 0, listed.stderr
        assert secret not in listed.stdout and doomed_secret not in listed.stdout
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        # Listed by creation time in seconds: two keys of one second come in either order.
        by_scopes = {r[2]: r for r in rows}
        assert sorted(by_scopes) == ["ingest,read", "read"] and len(rows) == 2
        assert {r[1] for r in rows} == {project}
        revoked = _cli(system, "revoke", by_scopes["read"][0])
        assert revoked.returncode == 0, revoked.stderr
        # Errors are one line on stderr, with a non-zero exit.
        bad = _cli(system, "revoke", "0123456789ab")
        assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr
        wrong = _cli(system, "list", env={"ANALYTICS_ADMIN_KEY": secret})
        assert wrong.returncode == 1 and "lacks the 'admin' scope" in wrong.stderr
        assert "Traceback" not in bad.stderr + wrong.stderr
    finally:
        system.stop()
    system = start_system(data, "", clickhouse_url=url, extra_env=env)
    try:
        assert call("GET", f"{system.http_url}/analytics/sales", secret).status == 200
        assert call("GET", f"{system.http_url}/analytics/sales", doomed_secret).status == 401
        listed = _cli(system, "list", "--project", project)
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        # The revoked one says when (a date and a time); the other one says "-".
        assert {r[2]: r[-1] == "-" for r in rows} == {"ingest,read": True, "read": False}
    finally:
        system.stop()


def test_an_unreachable_clickhouse_keeps_the_last_known_keys(tmp_path: Path) -> None:
    import asyncio

    from tests.conftest import _need_server

    _need_server()
    server = ClickHouseServer(tmp_path / "clickhouse")  # our own: this test stops it
    server.start()
    try:
        storage = open_storage(server.url, Path("/nonexistent"))
        storage.migrate()
        ring = KeyRing()
        refresher = KeyRefresher(KeyStore(storage), ring, 2)

        async def scenario() -> tuple[Principal, bool]:
            _, secret = await refresher.store.create(
                "outage", frozenset({options_pb2.SCOPE_READ}), "kept"
            )
            assert await refresher.refresh()
            known = ring.authenticate(f"Bearer {secret}")
            server.stop()
            refreshed = await refresher.refresh()
            assert ring.authenticate(f"Bearer {secret}") == known
            return known, refreshed

        try:
            known, refreshed = asyncio.run(scenario())
        finally:
            storage.close()
        assert refreshed is False
        assert known.project_id == "outage" and not known.operator
    finally:
        server.stop()

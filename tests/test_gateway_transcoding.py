"""The in-process REST gateway against a real grpc.aio server with echoing test servicers.

The servicers echo what they received (query, body, metadata) so each test can assert how the
gateway bound the HTTP request, and fail on magic inputs so the error paths are real gRPC
statuses (with `grpc-status-details-bin`), not mocks. A second part checks the generic
transcoding rules (path templates, nested field paths, additional_bindings, response_body) on a
small descriptor set built in the test, since the project's API uses none of them yet.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
from google.api import annotations_pb2, http_pb2, httpbody_pb2
from google.protobuf import any_pb2, descriptor_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from multidict import CIMultiDictProxy

from cartlytics.common.local_calls import HandlerRecorder, LocalCalls
from cartlytics.gen.analytics.export.v1 import export_pb2_grpc
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from gateway import RouteTable, create_app, load_routes, routes_from_descriptor_set
from gateway.json_printer import whole_numbers_as_ints
from gateway.pathtemplate import PathTemplate, PathTemplateError, split_path
from gateway.status import GatewayError
from gateway.transcoding import build_request, render_json

T = TypeVar("T")

SMALL_BODY_LIMIT = 256
CSV_CHUNKS = (b"orderId,total\n", b"ord_1,6578\n", b"ord_2,100\n")
CSV_TYPE = "text/csv; charset=utf-8"
DISPOSITION = 'attachment; filename="orders.csv"'


# --------------------------------------------------------------------------- test servicers


def _bad_request(field: str, description: str) -> grpc.Status:
    """A rich INVALID_ARGUMENT status, the way the services report validation errors."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"invalid {field}", details=[detail]
    )
    return rpc_status.to_status(status)


class MetricsEcho(metrics_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    async def GetSales(self, request: Any, context: Any) -> Any:
        if request.period == "bad":
            status = _bad_request("period", "must be Nd or Nm")
            await context.abort(status.code, status.details, status.trailing_metadata)
        return metrics_pb2.GetSalesResponse(
            period=request.period,
            revenue=6578.0,
            orders=0,
            currency=request.currency,
            series=[metrics_pb2.SalesBucket(date="2024-01-01", revenue=100.5, orders=2)],
        )

    async def GetProducts(self, request: Any, context: Any) -> Any:
        product = metrics_pb2.ProductPerformance(
            product_id=request.period,
            name=request.timezone,
            units_sold=request.limit,
            revenue=1234.0,
            conversion_rate=12.5,
        )
        return metrics_pb2.GetProductsResponse(top_sellers=[product])

    async def GetFunnel(self, request: Any, context: Any) -> Any:
        stages = [metrics_pb2.FunnelStage(name=s, count=request.window) for s in request.steps]
        return metrics_pb2.GetFunnelResponse(stages=stages, conversion_rate=50.0)

    async def GetCustomers(self, request: Any, context: Any) -> Any:
        # Echo the metadata the gateway forwarded, one "customer" per entry.
        seen = [
            metrics_pb2.CustomerValue(customer_id=f"{key}={value}")
            for key, value in context.invocation_metadata()
            if key
            in ("authorization", "x-request-id", "x-client-user-agent", "x-forwarded-for", "cookie")
        ]
        return metrics_pb2.GetCustomersResponse(top_customers=seen)

    async def GetRealtime(self, request: Any, context: Any) -> Any:
        if request.timezone == "Mars/Olympus":
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown time zone Mars/Olympus")
        if request.timezone == "busy":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after", "7"),)
            )
        if request.timezone == "boom":
            raise RuntimeError("servicer bug")
        return metrics_pb2.GetRealtimeResponse(active_visitors=3, revenue_today=0.25)

    async def RunQuery(self, request: Any, context: Any) -> Any:
        row = struct_pb2.Struct()
        if "nan" in request.metrics:  # protobuf's JSON printer refuses NaN in a Struct
            row.update({"value": float("nan")})
            return metrics_pb2.RunQueryResponse(rows=[row])
        row.update(
            {
                "metrics": list(request.metrics),
                "filters": dict(request.filters),
                "orderBy": request.order_by,
                "limit": request.limit,
            }
        )
        return metrics_pb2.RunQueryResponse(rows=[row])


class IngestEcho(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
    """The REST ingest methods take the raw body and answer a raw JSON body (google.api.HttpBody
    both ways): echo the request's content type and bytes (hex) back, so a test sees exactly
    what the gateway passed on each way."""

    async def TrackEventJson(self, request: Any, context: Any) -> Any:
        if b"forbidden" in request.body.data:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "key lacks scope ingest")
        await context.send_initial_metadata((("x-http-code", "201"),))
        echo = {"id": request.body.content_type, "event": request.body.data.hex()}
        return ingest_pb2.TrackEventJsonResponse(body=_json_answer(echo))

    async def BatchTrackEventsJson(self, request: Any, context: Any) -> Any:
        echo = {"index": 0, "id": request.body.content_type, "event": request.body.data.hex()}
        answer = {"acceptedCount": 1, "accepted": [echo]}
        return ingest_pb2.BatchTrackEventsJsonResponse(body=_json_answer(answer))


def _json_answer(value: Any) -> Any:
    return httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(value).encode())


class ExportEcho(export_pb2_grpc.ExportServiceServicer):  # type: ignore[misc]
    async def ExportData(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.type == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such export type")
        await context.send_initial_metadata((("content-disposition", DISPOSITION),))
        for i, chunk in enumerate(CSV_CHUNKS):
            if request.type == "broken" and i == 1:
                await context.abort(grpc.StatusCode.INTERNAL, "storage went away")
            yield httpbody_pb2.HttpBody(content_type=CSV_TYPE, data=chunk)
            await asyncio.sleep(0)


# --------------------------------------------------------------------------- harness


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Stack:
    """A gRPC server and the gateway in front of it, on an event loop in a background thread.
    ``local``: the gateway calls the servicers in-process (as beside its own services) instead
    of over gRPC; every test here runs both ways."""

    def __init__(self, local: bool = False) -> None:
        self.local = local
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def start(self) -> None:
        self.server = grpc.aio.server()
        recorder = HandlerRecorder(self.server)
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsEcho(), recorder)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestEcho(), recorder)
        export_pb2_grpc.add_ExportServiceServicer_to_server(ExportEcho(), recorder)
        local = LocalCalls(recorder.handlers) if self.local else None
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        routes = load_routes()
        self.runners = []
        self.urls = []
        for limit in (1 << 20, SMALL_BODY_LIMIT):
            runner = aiohttp.web.AppRunner(
                create_app(self.channel, routes=routes, max_body_bytes=limit, local=local)
            )
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, bound_port = runner.addresses[0][:2]
            self.runners.append(runner)
            self.urls.append(f"http://{host}:{bound_port}")
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        await self.session.close()
        for runner in self.runners:
            await runner.cleanup()
        await self.channel.close()
        await self.server.stop(None)

    def request(self, method: str, path: str, *, small: bool = False, **kwargs: Any) -> Reply:
        url = self.urls[1 if small else 0] + path

        async def go() -> Reply:
            async with self.session.request(method, url, **kwargs) as resp:
                return Reply(resp.status, resp.headers, await resp.read())

        return self.run(go())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return self.request("POST", path, data=body, headers=headers, **kwargs)


@pytest.fixture(scope="module", params=["grpc", "local"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack(local=request.param == "local")
    s.run(s.start())
    try:
        yield s
    finally:
        s.run(s.stop())
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(timeout=10)
        s.loop.close()


def assert_status_error(reply: Reply, http: int, code: int, *fragments: str) -> dict[str, Any]:
    """An error reply: the HTTP status, a google.rpc.Status JSON body naming `fragments`."""
    assert reply.status == http, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert body["code"] == code
    for fragment in fragments:
        assert fragment in body["message"]
    return body


# --------------------------------------------------------------------------- route table


def test_routes_come_from_the_annotations() -> None:
    table = load_routes()
    labels = {r.label: r for r in table}
    assert set(labels) == {
        "GET /analytics/sales",
        "GET /analytics/products",
        "GET /analytics/customers",
        "GET /analytics/funnel",
        "GET /analytics/realtime",
        "POST /analytics/query",
        "POST /analytics/event",
        "POST /analytics/event/batch",
        "GET /analytics/export",
        "GET /analytics/ping",
        "DELETE /analytics/users/{user_id}",  # the erasure (admin scope, docs/privacy.md)
    }  # the admin service (keys) has no HTTP bindings: never on the public gateway
    track = labels["POST /analytics/event"]
    assert track.grpc_path == "/analytics.ingest.v1.IngestService/TrackEventJson"
    assert (track.body, track.response_body, track.success_code) == ("body", "body", 201)
    batch = labels["POST /analytics/event/batch"]
    assert batch.grpc_path == "/analytics.ingest.v1.IngestService/BatchTrackEventsJson"
    assert (batch.body, batch.response_body, batch.success_code) == ("body", "body", 0)
    assert labels["POST /analytics/query"].body == "*"
    export = labels["GET /analytics/export"]
    assert export.server_streaming and export.returns_http_body


# --------------------------------------------------------------------------- query binding


def test_get_binds_repeated_and_int_query_parameters(stack: Stack) -> None:
    reply = stack.get("/analytics/funnel?steps=page_view&steps=order_completed&window=600")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["stages"] == [
        {"name": "page_view", "count": 600, "rate": 0},
        {"name": "order_completed", "count": 600, "rate": 0},
    ]
    assert body["conversionRate"] == 50


def test_get_binds_int_and_string_parameters(stack: Stack) -> None:
    reply = stack.get("/analytics/products?limit=5&period=7d&timezone=Europe%2FParis")
    assert reply.status == 200, reply.body
    [product] = reply.json()["topSellers"]
    assert product == {
        "productId": "7d",
        "name": "Europe/Paris",
        "unitsSold": 5,
        "revenue": 1234,
        "conversionRate": 12.5,
    }


def test_query_parameter_names_may_be_json_names(stack: Stack) -> None:
    reply = stack.post("/analytics/query?orderBy=revenue:desc", {"metrics": ["revenue"]})
    assert reply.status == 200, reply.body
    assert reply.json()["rows"][0]["orderBy"] == "revenue:desc"


@pytest.mark.parametrize("value", ["abc", "5.5", "99999999999", ""])
def test_bad_int_is_400_naming_the_parameter(stack: Stack, value: str) -> None:
    reply = stack.get(f"/analytics/products?limit={value}")
    assert_status_error(reply, 400, 3, '"limit"', "int32")


def test_unknown_query_parameter_is_400(stack: Stack) -> None:
    reply = stack.get("/analytics/sales?period=7d&bogus=1")
    assert_status_error(reply, 400, 3, "unknown query parameter", '"bogus"')


# --------------------------------------------------------------------------- routing


def test_unknown_path_is_404_status_json(stack: Stack) -> None:
    reply = stack.get("/analytics/nope")
    assert_status_error(reply, 404, 5, "/analytics/nope")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/analytics/sales", "GET"),
        ("GET", "/analytics/event", "POST"),
        ("DELETE", "/analytics/query", "POST"),
        ("PUT", "/analytics/event/batch", "POST"),
        ("OPTIONS", "/analytics/export", "GET"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/metrics", "GET"),
    ],
)
def test_known_path_with_wrong_method_is_405_with_allow(
    stack: Stack, method: str, path: str, allowed: str
) -> None:
    """RFC 9110: a path that exists, asked with another method, is a 405 whose `Allow` lists the
    methods bound to it (it was a 404 as if the path did not exist); the usual JSON error body,
    with grpc-gateway's code for it (UNIMPLEMENTED)."""
    reply = stack.request(method, path)
    assert_status_error(reply, 405, 12, method, allowed)
    assert reply.headers["Allow"] == allowed
    head = stack.request("HEAD", path)  # HEAD is not bound either; no body, the same headers
    assert (head.status, head.headers["Allow"], head.body) == (405, allowed, b"")


def test_unknown_paths_stay_404_without_allow(stack: Stack) -> None:
    for method, path in (
        ("GET", "/analytics/nope"),
        ("POST", "/analytics/sales/x"),
        ("GET", "/dashboard/nope.js"),
    ):
        reply = stack.request(method, path)
        assert_status_error(reply, 404, 5)
        assert "Allow" not in reply.headers


def test_trailing_slash_matches_like_envoy(stack: Stack) -> None:
    assert stack.get("/analytics/sales/?period=7d").status == 200


# --------------------------------------------------------------------------- bodies


def test_http_body_binding_passes_the_raw_body_and_201_from_x_http_code(stack: Stack) -> None:
    # Unknown fields and odd values are the service's to judge: the gateway passes the bytes on.
    raw = b'{"event": "x", "messageId": "m1", "properties": "oops", "n": 1e400}'
    reply = stack.post("/analytics/event", raw)
    assert reply.status == 201, reply.body
    # response_body "body": the service's HttpBody is the whole answer, its Content-Type too.
    assert reply.json() == {"id": "application/json", "event": raw.hex()}
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "x-http-code" not in reply.headers


@pytest.mark.parametrize(
    ("raw", "headers", "content_type"),
    [
        (
            b"\xff\xfe not JSON",
            {"Content-Type": "text/plain;charset=UTF-8"},
            "text/plain;charset=UTF-8",
        ),
        (b"", {}, "application/json"),
        (b'{"events": [1, {"x": NaN}], "extra": 1}', {}, "application/json"),
    ],
    ids=["bytes-as-text-plain", "empty", "odd-json"],
)
def test_http_body_batch_gets_any_bytes_and_their_content_type(
    stack: Stack, raw: bytes, headers: dict[str, str], content_type: str
) -> None:
    reply = stack.post("/analytics/event/batch", raw, headers=headers)
    assert reply.status == 200, reply.body
    [echo] = reply.json()["accepted"]
    assert (echo["id"], bytes.fromhex(echo["event"])) == (content_type, raw)


def test_body_star_binds_maps_and_numbers(stack: Stack) -> None:
    query = {"metrics": ["revenue", "orders"], "filters": {"currency": "EUR"}, "limit": 10}
    reply = stack.post("/analytics/query", query)
    assert reply.status == 200, reply.body
    assert reply.json()["rows"] == [
        {
            "metrics": ["revenue", "orders"],
            "filters": {"currency": "EUR"},
            "orderBy": "",
            "limit": 10,
        }
    ]


def test_empty_body_is_an_empty_message(stack: Stack) -> None:
    reply = stack.post("/analytics/query", b"")
    assert reply.status == 200, reply.body
    assert reply.json()["rows"][0]["metrics"] == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/analytics/query", {"metrics": ["orders"], "colour": "red"}, '"colour"'),
        ("/analytics/query", {"metrics": [], "extra": {"a": 1}}, '"extra"'),
    ],
)
def test_unknown_json_field_is_400_naming_it(
    stack: Stack, path: str, body: dict[str, Any], field: str
) -> None:
    assert_status_error(stack.post(path, body), 400, 3, field)


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/analytics/query", b"{not json", "not valid JSON"),
        ("/analytics/query", b'{"limit": NaN}', "not valid JSON"),
        ("/analytics/query", b"\xff\xfe", "UTF-8"),
        ("/analytics/query", b'"a string"', "JSON object"),
        ("/analytics/query", b"[1, 2]", "JSON object"),
        ("/analytics/query", b'{"metrics": 5}', "metrics"),
        ("/analytics/query", b'{"limit": "many"}', "limit"),
    ],
)
def test_malformed_body_is_400_not_500(stack: Stack, path: str, body: bytes, fragment: str) -> None:
    assert_status_error(stack.post(path, body), 400, 3, fragment)


def test_body_too_large_is_413(stack: Stack) -> None:
    big = json.dumps({"events": [{"event": "x" * 64}] * 8}).encode()
    assert len(big) > SMALL_BODY_LIMIT
    reply = stack.post("/analytics/event/batch", big, small=True)
    assert_status_error(reply, 413, 8, f"{SMALL_BODY_LIMIT} bytes")


def test_chunked_body_too_large_is_413(stack: Stack) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 64

    reply = stack.request("POST", "/analytics/event/batch", small=True, data=chunks())
    assert_status_error(reply, 413, 8)


def test_body_under_the_limit_passes(stack: Stack) -> None:
    reply = stack.post("/analytics/event/batch", {"events": [{"event": "x"}]}, small=True)
    assert reply.status == 200, reply.body


# --------------------------------------------------------------------------- responses


def test_whole_doubles_print_as_ints_and_zero_values_print(stack: Stack) -> None:
    reply = stack.get("/analytics/sales?period=7d&currency=EUR")
    assert reply.status == 200, reply.body
    text = reply.body.decode()
    assert '"revenue":6578,' in text
    assert "6578.0" not in text
    assert reply.json() == {
        "period": "7d",
        "revenue": 6578,
        "orders": 0,
        "averageOrderValue": 0,
        "currency": "EUR",
        "series": [{"date": "2024-01-01", "revenue": 100.5, "orders": 2}],
    }


def test_whole_numbers_as_ints_keeps_fractions_and_huge_values() -> None:
    value = {"a": [1.0, 0.5, -3.0, 2.0**60], "b": True, "c": "1.0"}
    assert whole_numbers_as_ints(value) == {"a": [1, 0.5, -3, 2.0**60], "b": True, "c": "1.0"}
    assert isinstance(whole_numbers_as_ints(2.0**60), float)


# --------------------------------------------------------------------------- errors


def test_rich_error_details_become_status_json(stack: Stack) -> None:
    reply = stack.get("/analytics/sales?period=bad")
    body = assert_status_error(reply, 400, 3, "invalid period")
    [detail] = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    [violation] = detail["fieldViolations"]
    # Printed like any response (every field, as Envoy's always_print_primitive_fields would).
    assert violation == {"field": "period", "description": "must be Nd or Nm", "reason": ""}


@pytest.mark.parametrize(
    ("timezone", "http", "code"),
    [("Mars/Olympus", 404, 5), ("busy", 429, 8), ("boom", 500, 2)],
)
def test_grpc_codes_map_to_http_like_envoy(
    stack: Stack, timezone: str, http: int, code: int
) -> None:
    reply = stack.get(f"/analytics/realtime?timezone={timezone}")
    body = assert_status_error(reply, http, code)
    assert "details" not in body
    if timezone == "busy":
        assert reply.headers["Retry-After"] == "7"


def test_permission_denied_is_403(stack: Stack) -> None:
    reply = stack.post("/analytics/event", {"event": "forbidden"})
    assert_status_error(reply, 403, 7, "scope")


def test_unreachable_backend_is_503() -> None:
    async def scenario() -> Reply:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        runner = aiohttp.web.AppRunner(create_app(channel))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{port}/analytics/sales") as resp,
            ):
                return Reply(resp.status, resp.headers, await resp.read())
        finally:
            await runner.cleanup()
            await channel.close()

    reply = asyncio.run(scenario())
    assert_status_error(reply, 503, 14)


def test_unexpected_gateway_error_is_a_bare_500(stack: Stack) -> None:
    reply = stack.post("/analytics/query", {"metrics": ["nan"]})
    assert reply.status == 500
    assert reply.json() == {"code": 13, "message": "internal error"}


# --------------------------------------------------------------------------- metadata


def test_metadata_is_forwarded_and_request_id_echoed(stack: Stack) -> None:
    headers = {
        "Authorization": "Bearer ck_test",
        "X-Request-Id": "req-123",
        "User-Agent": "shop-sdk/1.0",
        "X-Forwarded-For": "203.0.113.9",
        "Cookie": "session=secret",
    }
    reply = stack.get("/analytics/customers", headers=headers)
    assert reply.status == 200, reply.body
    assert reply.headers["X-Request-Id"] == "req-123"
    seen = {c["customerId"] for c in reply.json()["topCustomers"]}
    assert seen == {
        "authorization=Bearer ck_test",
        "x-request-id=req-123",
        "x-client-user-agent=shop-sdk/1.0",
        "x-forwarded-for=203.0.113.9, 127.0.0.1",
    }


def test_request_id_is_generated_when_absent_or_unsafe(stack: Stack) -> None:
    for headers in ({}, {"X-Request-Id": "bad id\twith spaces"}):
        reply = stack.get("/analytics/customers", headers=headers)
        generated = reply.headers["X-Request-Id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        assert f"x-request-id={generated}" in {
            c["customerId"] for c in reply.json()["topCustomers"]
        }
    assert "X-Request-Id" in stack.get("/analytics/nope").headers
    # Drawn in bulk (256 a system call): past a draw's end, still each its own.
    ids = [stack.get("/analytics/nope").headers["X-Request-Id"] for _ in range(300)]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# --------------------------------------------------------------------------- streaming


def test_export_streams_chunks_with_headers(stack: Stack) -> None:
    reply = stack.get("/analytics/export?type=orders&format=csv")
    assert reply.status == 200, reply.body
    assert reply.body == b"".join(CSV_CHUNKS)
    assert reply.headers["Content-Type"] == CSV_TYPE
    assert reply.headers["Content-Disposition"] == DISPOSITION
    assert reply.headers.get("Transfer-Encoding") == "chunked"


def test_export_failing_before_first_chunk_is_a_status(stack: Stack) -> None:
    reply = stack.get("/analytics/export?type=missing")
    assert_status_error(reply, 404, 5, "no such export type")


def test_export_failing_mid_stream_aborts_the_connection(stack: Stack) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        stack.get("/analytics/export?type=broken")
    # The gateway still serves afterwards.
    assert stack.get("/analytics/export?type=orders").status == 200


# --------------------------------------------------------------------------- operations


def test_healthz_follows_the_grpc_health_service(stack: Stack) -> None:
    reply = stack.get("/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "SERVING"})
    stack.run(stack.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    try:
        reply = stack.get("/healthz")
        assert (reply.status, reply.json()) == (503, {"status": "NOT_SERVING"})
    finally:
        stack.run(stack.health.set("", health_pb2.HealthCheckResponse.SERVING))


def test_metrics_count_requests_by_route_and_code(stack: Stack) -> None:
    stack.get("/analytics/sales?period=7d")
    stack.get("/analytics/nope")
    text = stack.get("/metrics").body.decode()
    assert (
        'cartlytics_gateway_requests_total{code="OK",'
        'grpc_method="analytics.metrics.v1.MetricsService/GetSales",'
        'route="GET /analytics/sales"}'
    ) in text
    assert 'code="NOT_FOUND",grpc_method="",route="unmatched"' in text
    assert "cartlytics_gateway_request_duration_seconds_bucket" in text


# --------------------------------------------------------------------------- generic rules


def test_path_template_grammar() -> None:
    template = PathTemplate.parse("/v1/{name=shelves/*/books/**}:archive")
    assert template.match(split_path("/v1/shelves/s1/books/a%2Fb/c%20d:archive")) == {
        ("name",): "shelves/s1/books/a%2Fb/c d"
    }
    assert template.match(split_path("/v1/shelves/s1/books/b1")) is None
    single = PathTemplate.parse("/v1/{a.b}/x")
    assert single.match(split_path("/v1/a%2Fb%20c/x/")) == {("a", "b"): "a/b c"}
    assert single.match(split_path("/v1//x")) is None
    for bad in ("v1", "/v1/{a=**}/x", "/v1/{a={b}}", "/v1/{}", "/v1/*:"):
        with pytest.raises(PathTemplateError):
            PathTemplate.parse(bad)


def _books_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """A tiny API using what ours does not: path variables, nested paths, response_body."""
    fds = descriptor_pb2.FileDescriptorSet()
    for dependency in (timestamp_pb2, wrappers_pb2):
        dependency.DESCRIPTOR.CopyToProto(fds.file.add())
    f = fds.file.add(name="books.proto", package="books.v1", syntax="proto3")
    f.dependency.extend(["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"])
    color = f.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="RED", number=1)
    F = descriptor_pb2.FieldDescriptorProto
    inner = f.message_type.add(name="Inner")
    inner.field.add(name="name", number=1, type=F.TYPE_STRING, json_name="name")
    inner.field.add(name="big_num", number=2, type=F.TYPE_INT64, json_name="bigNum")
    inner.field.add(
        name="color", number=3, type=F.TYPE_ENUM, type_name=".books.v1.Color", json_name="color"
    )
    inner.field.add(
        name="ratios", number=4, type=F.TYPE_DOUBLE, label=F.LABEL_REPEATED, json_name="ratios"
    )
    inner.field.add(
        name="at",
        number=5,
        type=F.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        json_name="at",
    )
    req = f.message_type.add(name="Req")
    req.field.add(name="shelf", number=1, type=F.TYPE_STRING, json_name="shelf")
    req.field.add(name="book_id", number=2, type=F.TYPE_INT32, json_name="bookId")
    req.field.add(
        name="inner", number=3, type=F.TYPE_MESSAGE, type_name=".books.v1.Inner", json_name="inner"
    )
    req.field.add(name="flag", number=4, type=F.TYPE_BOOL, json_name="flag")
    req.field.add(
        name="wrapped",
        number=5,
        type=F.TYPE_MESSAGE,
        type_name=".google.protobuf.Int32Value",
        json_name="wrapped",
    )
    resp = f.message_type.add(name="Resp")
    resp.field.add(
        name="inner", number=1, type=F.TYPE_MESSAGE, type_name=".books.v1.Inner", json_name="inner"
    )
    service = f.service.add(name="Books")

    def rpc(name: str, rule: http_pb2.HttpRule) -> None:
        method = service.method.add(
            name=name, input_type=".books.v1.Req", output_type=".books.v1.Resp"
        )
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)

    get = http_pb2.HttpRule(get="/v1/shelves/{shelf}/books/{book_id}", response_body="inner")
    get.additional_bindings.add(get="/v1/{inner.name=names/**}")
    rpc("GetBook", get)
    rpc("GetSpecial", http_pb2.HttpRule(get="/v1/shelves/special/books/{book_id}"))
    rpc("Update", http_pb2.HttpRule(patch="/v1/shelves/{shelf}:update", body="inner"))
    return fds


@pytest.fixture(scope="module")
def books() -> RouteTable:
    return routes_from_descriptor_set(_books_descriptor_set())


def test_path_variables_and_query_bind_nested_fields(books: RouteTable) -> None:
    match = books.match("GET", "/v1/shelves/s%201/books/42")
    assert match is not None and match.route.method.name == "GetBook"
    query = (
        "inner.bigNum=-9007199254740993&inner.color=RED&inner.ratios=0.5&inner.ratios=1e3"
        "&flag=true&wrapped=7&inner.at=2024-01-01T00:00:00Z"
    )
    request: Any = build_request(match, query, b"")
    assert (request.shelf, request.book_id, request.flag, request.wrapped.value) == (
        "s 1",
        42,
        True,
        7,
    )
    assert request.inner.big_num == -9007199254740993
    assert request.inner.color == 1
    assert list(request.inner.ratios) == [0.5, 1000.0]
    assert request.inner.at.seconds == 1704067200


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("flag=yes", '"flag"'),
        ("inner.color=BLUE", "RED"),
        ("inner.bigNum=1.5", "int64"),
        ("inner=x", "message"),
        ("inner.nope=1", '"inner.nope"'),
        ("inner.at=yesterday", '"inner.at"'),
    ],
)
def test_bad_query_values_name_the_parameter(books: RouteTable, query: str, fragment: str) -> None:
    match = books.match("GET", "/v1/shelves/s/books/1")
    assert match is not None
    with pytest.raises(GatewayError) as caught:
        build_request(match, query, b"")
    assert caught.value.http_status == 400
    assert fragment in caught.value.message


def test_additional_binding_literals_first_and_custom_verb(books: RouteTable) -> None:
    alt = books.match("GET", "/v1/names/a/b%2Fc")
    assert alt is not None and alt.route.method.name == "GetBook"
    assert build_request(alt, "", b"").inner.name == "names/a/b%2Fc"  # type: ignore[attr-defined]
    special = books.match("GET", "/v1/shelves/special/books/3")
    assert special is not None and special.route.method.name == "GetSpecial"
    update = books.match("PATCH", "/v1/shelves/s9:update")
    assert update is not None and update.route.method.name == "Update"
    request: Any = build_request(update, "", b'{"name": "n", "ratios": [2]}')
    assert (request.shelf, request.inner.name, list(request.inner.ratios)) == ("s9", "n", [2.0])
    assert books.match("PATCH", "/v1/shelves/s9") is None
    for bad in (b'{"name": "n", "bogus": 1}', b'{"at": "yesterday"}'):
        with pytest.raises(GatewayError) as caught:
            build_request(update, "", bad)
        assert caught.value.http_status == 400


def test_response_body_selects_a_field(books: RouteTable) -> None:
    match = books.match("GET", "/v1/shelves/s/books/1")
    assert match is not None
    response: Any = match.route.response_class()
    response.inner.name = "n"
    response.inner.ratios.extend([3.0, 0.25])
    assert json.loads(render_json(match.route, response)) == {
        "name": "n",
        "bigNum": "0",
        "color": "COLOR_UNSPECIFIED",
        "ratios": [3, 0.25],
    }

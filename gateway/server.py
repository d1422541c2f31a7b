"""The in-process REST/JSON gateway (aiohttp), the embedded-mode twin of Envoy's transcoder.

One catch-all handler routes every request through the annotation-derived route table, calls
the RPC over a shared `grpc.aio` channel and answers as Envoy would (see `transcoding.py` and
`status.py` for the rules). Besides the API it serves `GET /healthz` (the gRPC health service,
asked over the same channel) and `GET /metrics` (Prometheus).

The handler never raises: an unexpected error is logged with its traceback and answered
`500 {"code": 13, "message": "internal error"}`, with nothing of the exception sent to the client.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .status import GatewayError, error_body, http_status_for, status_from_rpc
from .transcoding import (
    Route,
    RouteTable,
    build_request,
    load_routes,
    render_json,
    render_response,
)

__all__ = ["FORWARDED_REQUEST_HEADERS", "FORWARDED_RESPONSE_HEADERS", "create_app", "serve_gateway"]

_log = structlog.get_logger(__name__)

JSON_CONTENT_TYPE = "application/json"
DEFAULT_MAX_BODY_BYTES = 1 << 20
FORWARDED_REQUEST_HEADERS = ("authorization",)
"""Request headers passed to the service as gRPC metadata under the same name."""
FORWARDED_RESPONSE_HEADERS = frozenset({"content-disposition", "retry-after", "x-request-id"})
"""Initial/trailing metadata keys passed back to the client as response headers."""
_SUCCESS_CODE_KEY = "x-http-code"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEALTH_TIMEOUT_S = 2.0
_Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(slots=True)
class _Outcome:
    """What one request turned into, for metrics and for the never-raising guard."""

    route: str = metrics.UNMATCHED
    grpc_method: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    stream: web.StreamResponse | None = None
    """Set once a streamed response has sent its headers: the status can no longer change."""


class _Gateway:
    """The request handlers, bound to one channel and one route table."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        routes: RouteTable,
        max_body_bytes: int,
        upstreams: Mapping[str, grpc.aio.Channel] | None = None,
    ) -> None:
        self._channel = channel
        # Per-service channels (microservices mode); services not listed use `channel`.
        self._upstreams = dict(upstreams or {})
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._callables: dict[str, Any] = {}
        self._health_check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    # ------------------------------------------------------------------ API

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Transcode one REST request; never raises."""
        started = time.perf_counter()
        request_id = _request_id(request)
        outcome = _Outcome()
        try:
            response = await self._dispatch(request, request_id, outcome)
        except GatewayError as exc:
            outcome.code = exc.code
            response = _json_error(exc.http_status, error_body(exc.code, exc.message), request_id)
        except Exception:
            outcome.code = grpc.StatusCode.INTERNAL
            _log.exception("gateway.unhandled_error", route=outcome.route, request_id=request_id)
            if outcome.stream is not None:
                _abort(request)
                response = outcome.stream
            else:
                body = error_body(grpc.StatusCode.INTERNAL, "internal error")
                response = _json_error(500, body, request_id)
        metrics.observe(
            outcome.route, outcome.grpc_method, outcome.code.name, time.perf_counter() - started
        )
        return response

    async def _dispatch(
        self, request: web.Request, request_id: str, outcome: _Outcome
    ) -> web.StreamResponse:
        match = self._routes.match(request.method, request.rel_url.raw_path)
        if match is None:
            shown = request.rel_url.raw_path[:200]
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, f"no method is bound to {request.method} {shown}"
            )
        route = match.route
        outcome.route, outcome.grpc_method = route.label, route.grpc_path[1:]
        if route.client_streaming:
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED, "client-streaming methods are not served over REST"
            )
        body = await self._read_body(request) if route.body else b""
        message = build_request(
            match, request.rel_url.raw_query_string, body, request.headers.get("Content-Type")
        )
        metadata = _outgoing_metadata(request, request_id)
        if route.server_streaming:
            return await self._server_stream(request, route, message, metadata, outcome, request_id)
        return await self._unary(route, message, metadata, outcome, request_id)

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 past the limit without buffering the excess."""
        limit = self._max_body_bytes
        too_large = GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body exceeds {limit} bytes",
            http_status=413,
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def _unary(
        self,
        route: Route,
        message: Any,
        metadata: tuple[tuple[str, str], ...],
        outcome: _Outcome,
        request_id: str,
    ) -> web.StreamResponse:
        call = self._callable(route)(message, metadata=metadata)
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            return self._rpc_error(err, outcome, request_id)
        initial = await call.initial_metadata()
        trailing = await call.trailing_metadata()
        rendered = render_response(route, reply)
        headers = _response_headers(request_id, initial, trailing)
        headers["Content-Type"] = rendered.content_type
        return web.Response(status=_success_status(initial), body=rendered.body, headers=headers)

    async def _server_stream(
        self,
        request: web.Request,
        route: Route,
        message: Any,
        metadata: tuple[tuple[str, str], ...],
        outcome: _Outcome,
        request_id: str,
    ) -> web.StreamResponse:
        """Stream HttpBody chunks as raw bytes, other messages as one JSON array (as Envoy).

        The status is decided by the first message: an error before it gets its own status and
        JSON body; an error after it can only abort the connection, so the client sees a
        truncated (chunked) response instead of a silently short file.
        """
        call = self._callable(route)(message, metadata=metadata)
        raw = route.returns_http_body
        try:
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as err:
                return self._rpc_error(err, outcome, request_id)
            initial = await call.initial_metadata()
            status = _success_status(initial)
            headers = _response_headers(request_id, initial, ())
            if first is grpc.aio.EOF:
                headers["Content-Type"] = "application/octet-stream" if raw else JSON_CONTENT_TYPE
                return web.Response(status=status, body=b"" if raw else b"[]", headers=headers)
            if raw:
                rendered = render_response(route, first)
                headers["Content-Type"] = rendered.content_type
                opening = rendered.body
            else:
                headers["Content-Type"] = JSON_CONTENT_TYPE
                opening = b"[" + render_json(route, first)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            outcome.stream = response
            await response.write(opening)
            while True:
                try:
                    more = await call.read()
                except grpc.aio.AioRpcError as err:
                    outcome.code = err.code()
                    _log.warning(
                        "gateway.stream_failed",
                        route=route.label,
                        grpc_code=err.code().name,
                        request_id=request_id,
                    )
                    _abort(request)
                    return response
                if more is grpc.aio.EOF:
                    break
                if raw:
                    await response.write(render_response(route, more).body)
                else:
                    await response.write(b"," + render_json(route, more))
            if not raw:
                await response.write(b"]")
            await response.write_eof()
            return response
        except ConnectionResetError:
            outcome.code = grpc.StatusCode.CANCELLED  # the client went away mid-stream
            return outcome.stream if outcome.stream is not None else web.Response(status=499)
        finally:
            call.cancel()  # a no-op once the RPC is done; stops the service when we stop reading

    def _rpc_error(
        self, err: grpc.aio.AioRpcError, outcome: _Outcome, request_id: str
    ) -> web.Response:
        code: grpc.StatusCode = err.code()
        outcome.code = code
        trailing = err.trailing_metadata()
        body = status_from_rpc(code, err.details() or "", trailing, self._routes.pool)
        headers = _response_headers(request_id, err.initial_metadata(), trailing)
        headers["Content-Type"] = JSON_CONTENT_TYPE
        return web.Response(status=http_status_for(code), body=body, headers=headers)

    def _callable(self, route: Route) -> Any:
        """The (cached) multi-callable of a route's RPC; bytes in, response message out."""
        found = self._callables.get(route.grpc_path)
        if found is None:
            service = route.grpc_path.split("/")[1]
            channel = self._upstreams.get(service, self._channel)
            factory = channel.unary_stream if route.server_streaming else channel.unary_unary
            found = factory(
                route.grpc_path,
                request_serializer=_serialize,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_path] = found
        return found

    # ------------------------------------------------------------------ operations

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the gRPC health service reports the server SERVING, else 503."""
        try:
            reply = await self._health_check(
                health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_TIMEOUT_S
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except Exception as exc:  # an unreachable backend is a health answer, not an error
            _log.warning("gateway.health_check_failed", error=type(exc).__name__)
            status = "UNKNOWN"
        body = json.dumps({"status": status}).encode()
        return web.Response(
            status=200 if status == "SERVING" else 503,
            body=body,
            headers={"Content-Type": JSON_CONTENT_TYPE},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of the default registry."""
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    channel: grpc.aio.Channel,
    *,
    routes: RouteTable | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    upstreams: Mapping[str, grpc.aio.Channel] | None = None,
) -> web.Application:
    """The gateway application over `channel` (routes default to the generated descriptor set).

    ``upstreams`` maps a full service name to its own channel, for services run apart.
    """
    gateway = _Gateway(
        channel, routes if routes is not None else load_routes(), max_body_bytes, upstreams
    )
    app = web.Application()
    app.router.add_get("/healthz", gateway.healthz, allow_head=False)
    app.router.add_get("/metrics", gateway.metrics, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    return app


async def serve_gateway(
    host: str,
    port: int,
    channel: grpc.aio.Channel,
    *,
    routes: RouteTable | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> web.AppRunner:
    """Start the gateway on host:port; `await runner.cleanup()` stops it.

    With port 0 the bound address is in `runner.addresses`.
    """
    runner = web.AppRunner(create_app(channel, routes=routes, max_body_bytes=max_body_bytes))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# ---------------------------------------------------------------------- helpers


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _request_id(request: web.Request) -> str:
    """The client's x-request-id when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _outgoing_metadata(request: web.Request, request_id: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata for the call: an allowlist, never the client's headers wholesale."""
    metadata = [("x-request-id", request_id)]
    for name in FORWARDED_REQUEST_HEADERS:
        value = request.headers.get(name)
        if value and _valid_metadata_value(value):
            metadata.append((name, value))
    user_agent = request.headers.get("User-Agent")
    if user_agent and _valid_metadata_value(user_agent):
        metadata.append(("x-client-user-agent", user_agent))
    forwarded = request.headers.get("X-Forwarded-For", "")
    hops = [hop for hop in (forwarded, request.remote or "") if hop]
    chain = ", ".join(hops)
    if chain and _valid_metadata_value(chain):
        metadata.append(("x-forwarded-for", chain))
    return tuple(metadata)


def _valid_metadata_value(value: str) -> bool:
    """gRPC rejects non-printable or non-ASCII text metadata; drop such values, don't fail."""
    return value.isascii() and value.isprintable()


def _response_headers(request_id: str, *metadata: _Metadata | None) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    for entries in metadata:
        for key, value in entries or ():
            if key in FORWARDED_RESPONSE_HEADERS and isinstance(value, str):
                headers[key] = value
    return headers


def _success_status(initial: _Metadata | None) -> int:
    """200, or the 2xx the service asked for with `x-http-code` (Envoy's Lua filter does this)."""
    for key, value in initial or ():
        if key == _SUCCESS_CODE_KEY and isinstance(value, str) and value.isdigit():
            code = int(value)
            if 200 <= code <= 299:
                return code
    return 200


def _json_error(status: int, body: bytes, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": JSON_CONTENT_TYPE, "x-request-id": request_id},
    )


def _abort(request: web.Request) -> None:
    """Drop the connection: the only honest signal once a response's status is on the wire."""
    transport = request.transport
    if transport is not None:
        transport.abort()

"""The in-process REST/JSON gateway (aiohttp), the embedded-mode twin of Envoy's transcoder.

One catch-all handler routes every request through the annotation-derived route table, calls
the RPC over a shared `grpc.aio` channel and answers as Envoy would (see `transcoding.py` and
`status.py` for the rules). Besides the API it serves `GET /healthz` (the gRPC health service,
asked over the same channel), `GET /metrics` (Prometheus) and the dashboard page, `GET /` and
its assets (`dashboard.py`).

The handler never raises: an unexpected error is logged with its traceback and answered
`500 {"code": 13, "message": "internal error"}`, with nothing of the exception sent to the client.

Request hygiene (`GatewayLimits`, from the config table): a body past the limit is 413 without
being buffered, a request target too long 414, too many query parameters 400, a header too long
or too many headers 431, a body that does not arrive in time 408; a connection that does not
send complete headers in time is closed (slowloris). Requests aiohttp's parser refuses get the
same JSON error body as every other error (`GatewayRunner`), never aiohttp's plain text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cartlytics.common.config import SETTINGS
from cartlytics.common.interceptors import SUCCESS_CODE_KNOWN_KEY
from cartlytics.common.local_calls import LocalCalls
from cartlytics.common.random_ids import RandomIds

from . import dashboard, metrics
from .cors import CorsPolicy
from .status import (
    GatewayError,
    error_body,
    http_status_for,
    retry_after_from_rpc,
    status_from_rpc,
)
from .transcoding import (
    Route,
    RouteTable,
    build_request,
    load_routes,
    render_json,
    render_response,
)

__all__ = [
    "FORWARDED_REQUEST_HEADERS",
    "FORWARDED_RESPONSE_HEADERS",
    "GatewayLimits",
    "GatewayRunner",
    "create_app",
]

_log = structlog.get_logger(__name__)

JSON_CONTENT_TYPE = "application/json"
DEFAULT_MAX_BODY_BYTES = int(SETTINGS["max_body_bytes"].default)
FORWARDED_REQUEST_HEADERS = ("authorization",)
"""Request headers passed to the service as gRPC metadata under the same name."""
FORWARDED_RESPONSE_HEADERS = frozenset({"content-disposition", "retry-after", "x-request-id"})
"""Initial/trailing metadata keys passed back to the client as response headers."""
_SUCCESS_CODE_KEY = "x-http-code"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STATUS_TEXT = re.compile(r"[0-9]{3}")  # not str.isdigit(), which takes "²" and "٣"
# The gateway's own GET endpoints (not in the route table), for the 405's `Allow`.
_OWN_PATHS: dict[str, list[str]] = {
    "/healthz": ["GET"],
    "/metrics": ["GET"],
    **{path: ["GET"] for path in dashboard.PATHS},  # the dashboard page (gateway/dashboard.py)
}
_HEALTH_TIMEOUT_S = 2.0
_Metadata = Iterable[tuple[str, str | bytes]]


def _default(name: str) -> Any:
    setting = SETTINGS[name]
    return setting.parse(setting.default)


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """What one REST request may be; the defaults are the config table's."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_url_bytes: int = _default("http_max_url_bytes")
    max_query_params: int = _default("http_max_query_params")
    max_header_bytes: int = _default("http_max_header_bytes")
    max_headers: int = _default("http_max_headers")
    header_timeout: float = _default("http_header_timeout")
    body_timeout: float = _default("http_body_timeout")

    @property
    def parser_line_bytes(self) -> int:
        """aiohttp's request-line limit: a backstop past ours (checked in the handler, 414).

        Kept different from the header limit so that the limit a LineTooLong reports tells
        which of the two was broken.
        """
        backstop = 2 * self.max_url_bytes
        return backstop + 1 if backstop == self.max_header_bytes else backstop


_LIMITS_KEY = web.AppKey("gateway_limits", GatewayLimits)


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
        limits: GatewayLimits,
        upstreams: Mapping[str, grpc.aio.Channel] | None = None,
        local: LocalCalls | None = None,
    ) -> None:
        self._channel = channel
        # This process's own unary methods, called without the gRPC hop (local_calls.py).
        self._local = local
        # Per-service channels (microservices mode; one channel balances a service's replicas,
        # gateway/module.py); services not listed use `channel`.
        self._upstreams = dict(upstreams or {})
        self._routes = routes
        self._limits = limits
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
            response.headers.update(exc.headers)
            if exc.http_status in (408, 413):
                # Not kept alive: the rest of the body is unwanted (aiohttp discards what is
                # already on its way, at most lingering_time, so the client reads the error).
                response.force_close()
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
        self._check_target(request)
        match = self._routes.match(request.method, request.rel_url.raw_path)
        if match is None:
            shown = request.rel_url.raw_path[:200]
            allowed = _OWN_PATHS.get(request.rel_url.raw_path) or self._routes.allowed_methods(
                request.rel_url.raw_path
            )
            if allowed:
                # A path that exists, asked with another method: 405 and `Allow` (RFC 9110),
                # with grpc-gateway's code for it, UNIMPLEMENTED. Envoy answers 404 (envoy.md).
                raise GatewayError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{request.method} is not allowed on {shown}; allowed: {', '.join(allowed)}",
                    http_status=405,
                    headers={"Allow": ", ".join(allowed)},
                )
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

    def _check_target(self, request: web.Request) -> None:
        """414 past the request-target limit, 400 past the query-parameter count."""
        limits = self._limits
        if len(request.raw_path) > limits.max_url_bytes:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request target exceeds {limits.max_url_bytes} bytes",
                http_status=414,
            )
        query = request.rel_url.raw_query_string
        count = sum(1 for pair in query.split("&") if pair) if query else 0
        if count > limits.max_query_params:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"too many query parameters: {count}, at most {limits.max_query_params}",
            )

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 past the limit without buffering the excess,
        and with 408 when it does not arrive within the body timeout."""
        limit = self._limits.max_body_bytes
        too_large = GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body exceeds {limit} bytes",
            http_status=413,
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        try:
            content = request.content
            if content.is_eof():
                # All of it came with the headers (most bodies): read at once, no timer set.
                data = content.read_nowait()
                if len(data) > limit:
                    raise too_large
                return data
            async with asyncio.timeout(self._limits.body_timeout):
                async for chunk in request.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise too_large
        except TimeoutError:
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"request body not received within {self._limits.body_timeout:g} s",
                http_status=408,
            ) from None
        except (RequestPayloadError, BadHttpMessage):
            # A Content-Encoding (gzip, deflate, br) aiohttp could not decode, or a body cut
            # short: the client's fault, once a 500.
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "request body could not be read (check its Content-Encoding and length)",
            ) from None
        return bytes(body)

    async def _unary(
        self,
        route: Route,
        message: Any,
        metadata: tuple[tuple[str, str], ...],
        outcome: _Outcome,
        request_id: str,
    ) -> web.StreamResponse:
        initial: _Metadata | None
        trailing: _Metadata | None
        try:
            if self._local is not None and self._local.serves(route.grpc_path):
                data, initial, trailing = await self._local.unary(
                    route.grpc_path, _serialize(message), metadata
                )
                reply = route.response_class.FromString(data)
            else:
                call = self._callable(route)(message, metadata=metadata)
                reply = await call
                initial = await call.initial_metadata()
                trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            return self._rpc_error(err, outcome, request_id)
        rendered = render_response(route, reply)
        headers = _response_headers(request_id, initial, trailing)
        headers["Content-Type"] = rendered.content_type
        status = _success_status(initial, route.success_code)
        return web.Response(status=status, body=rendered.body, headers=headers)

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
            status = _success_status(initial, route.success_code)
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
        except ConnectionError:  # reset, or aiohttp's "Connection lost" while draining
            # The client went away mid-stream: routine. The service logs the cancelled call.
            outcome.code = grpc.StatusCode.CANCELLED
            return outcome.stream if outcome.stream is not None else web.Response(status=499)
        finally:
            call.cancel()  # a no-op once the RPC is done; stops the service when we stop reading

    def _rpc_error(
        self, err: grpc.aio.AioRpcError, outcome: _Outcome, request_id: str
    ) -> web.Response:
        code: grpc.StatusCode = err.code()
        if code == grpc.StatusCode.CANCELLED:
            # Our own cancellations (the HTTP client left) never get here; this one is the
            # service's: a server shutting down ends the calls it had not started with CANCELLED
            # (grpc/grpc#41785). They never ran, so the client may send them again: a 503 with
            # Retry-After, as for UNAVAILABLE, not a 499 a client would not retry.
            outcome.code = grpc.StatusCode.UNAVAILABLE
            return _json_error(
                503,
                error_body(grpc.StatusCode.UNAVAILABLE, "the service is restarting; retry"),
                request_id,
                retry_after="1",
            )
        outcome.code = code
        trailing = err.trailing_metadata()
        body = status_from_rpc(code, err.details() or "", trailing, self._routes.pool)
        headers = _response_headers(request_id, err.initial_metadata(), trailing)
        headers["Content-Type"] = JSON_CONTENT_TYPE
        if "retry-after" not in headers:  # the service sent RetryInfo only: derive the header
            retry_after = retry_after_from_rpc(trailing)
            if retry_after is not None:
                headers["Retry-After"] = retry_after
        retry = any(key.lower() == "retry-after" for key in headers)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not retry:
            # Not one of our refusals (rate limit, export slots: each says when to retry) but
            # gRPC's own limits on this hop (a message or trailers too large): retrying cannot
            # help, so not a 429 (docs/abuse.md).
            _log.error("gateway.transport_limit", grpc_message=err.details(), request_id=request_id)
            return _json_error(
                500, error_body(grpc.StatusCode.INTERNAL, "internal error"), request_id
            )
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
    limits: GatewayLimits | None = None,
    cors: CorsPolicy | None = None,
    local: LocalCalls | None = None,
) -> web.Application:
    """The gateway application over `channel` (routes default to the generated descriptor set).

    ``upstreams`` maps a full service name to its own channel, for services run apart.
    ``limits`` (default: the config defaults with ``max_body_bytes``) also sets the parser
    limits and timeouts when the app is run by `GatewayRunner`. ``local``: the methods this
    process serves itself, called without gRPC (the others go over the channels).
    """
    limits = limits if limits is not None else GatewayLimits(max_body_bytes=max_body_bytes)
    gateway = _Gateway(
        channel, routes if routes is not None else load_routes(), limits, upstreams, local
    )
    app = web.Application(middlewares=[_json_router_errors])
    app[_LIMITS_KEY] = limits
    app.router.add_get("/healthz", gateway.healthz, allow_head=False)
    app.router.add_get("/metrics", gateway.metrics, allow_head=False)
    dashboard.install(app)  # GET / and /dashboard/*, when the built assets are there
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    (cors if cors is not None else CorsPolicy.parse(_default("cors_origins"))).install(app)
    return app


class GatewayRunner(web.AppRunner):
    """An AppRunner for a `create_app` application that enforces its `GatewayLimits` at the
    connection level: aiohttp's parser limits, the header timeout, and JSON error bodies for
    the requests the parser refuses (`_RequestHandler`)."""

    def __init__(
        self,
        app: web.Application,
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        access_log_class: type[AbstractAccessLogger] = AccessLogger,
        **kwargs: Any,
    ) -> None:
        limits = app.get(_LIMITS_KEY) or GatewayLimits()
        self._limits = limits
        self._server_kwargs: dict[str, Any] = {
            "max_line_size": limits.parser_line_bytes,
            "max_field_size": limits.max_header_bytes,
            "max_headers": limits.max_headers,
            # aiohttp closes a connection whose next request head is not complete this long
            # after it opened (or after the previous response): the header timeout.
            "keepalive_timeout": limits.header_timeout,
            "access_log_class": access_log_class,
            **kwargs,
        }
        super().__init__(
            app,
            handle_signals=handle_signals,
            shutdown_timeout=shutdown_timeout,
            access_log_class=access_log_class,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # starts and freezes the app
        return _Server(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            limits=self._limits,
            **self._server_kwargs,
        )


class _Server(web.Server):
    """aiohttp's low-level server, with our connection handler."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        handler_cancellation: bool,
        limits: GatewayLimits,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **kwargs,
        )
        self._limits = limits
        self._handler_kwargs = kwargs  # what each connection's RequestHandler takes

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, self._limits, loop=self._loop, **self._handler_kwargs)


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses as the gateway does:
    a JSON google.rpc.Status with 414 / 431 / 400, and a one-line log instead of a traceback
    (malformed requests are the client's problem, and cheap to send by the thousand)."""

    def __init__(self, manager: web.Server, limits: GatewayLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # After the response, aiohttp reads what is left of the body and logs a traceback when
        # that body cannot be decoded (bad Content-Encoding): the client's problem, one line.
        error = kwargs.get("exc_info")
        if isinstance(error, RequestPayloadError | BadHttpMessage):
            _log.info("gateway.unreadable_body", reason=" ".join(str(error).split())[:200])
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("response already started")
        limits = self._limits
        code = grpc.StatusCode.INVALID_ARGUMENT
        if isinstance(exc, LineTooLong):
            if [str(a) for a in exc.args[1:2]] == [str(limits.parser_line_bytes)]:
                status, text = 414, f"request target exceeds {limits.max_url_bytes} bytes"
            else:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                status, text = 431, f"a request header exceeds {limits.max_header_bytes} bytes"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            status, text = 431, f"more than {limits.max_headers} request headers"
        elif status < 500:
            text = "malformed HTTP request"
        else:
            code, text = grpc.StatusCode.INTERNAL, "internal error"
        if status >= 500:
            _log.error("gateway.unhandled_error", exc_info=exc)
        else:
            _log.info("gateway.malformed_request", status=status, reason=type(exc).__name__)
        response = web.Response(
            status=status, body=error_body(code, text), content_type=JSON_CONTENT_TYPE
        )
        response.force_close()
        return response


# ---------------------------------------------------------------------- helpers


@web.middleware
async def _json_router_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The router's own refusals (a request target the catch-all route cannot match, such as
    `OPTIONS *`) with the JSON error body, not aiohttp's plain text."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = grpc.StatusCode.NOT_FOUND if exc.status == 404 else grpc.StatusCode.INVALID_ARGUMENT
        shown = request.rel_url.raw_path[:200]
        body = error_body(code, f"no method is bound to {request.method} {shown}")
        return _json_error(exc.status, body, _request_id(request))
    return response


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _request_id(request: web.Request) -> str:
    """The client's x-request-id when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else _fresh_request_id()


# 32 random hex digits (128 bits, as ``uuid4().hex``), drawn in bulk.
_fresh_request_id = RandomIds(32)


def _outgoing_metadata(request: web.Request, request_id: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata for the call: an allowlist, never the client's headers wholesale."""
    metadata = [("x-request-id", request_id), (SUCCESS_CODE_KNOWN_KEY, "gateway")]
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


def _success_status(initial: _Metadata | None, route_code: int) -> int:
    """The 2xx the service asked for with `x-http-code` (Envoy's Lua filter does this), else the
    route's own `http_success_code` (the service leaves it to this gateway, which says so with
    SUCCESS_CODE_KNOWN_KEY), else 200."""
    for key, value in initial or ():
        if key == _SUCCESS_CODE_KEY and isinstance(value, str) and _STATUS_TEXT.fullmatch(value):
            code = int(value)
            if 200 <= code <= 299:
                return code
    return route_code if 200 <= route_code <= 299 else 200


def _json_error(
    status: int, body: bytes, request_id: str, retry_after: str | None = None
) -> web.Response:
    headers = {"Content-Type": JSON_CONTENT_TYPE, "x-request-id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.Response(status=status, body=body, headers=headers)


def _abort(request: web.Request) -> None:
    """Drop the connection: the only honest signal once a response's status is on the wire."""
    transport = request.transport
    if transport is not None:
        transport.abort()

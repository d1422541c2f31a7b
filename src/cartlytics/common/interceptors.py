"""Cross-cutting work for every RPC, written once: auth, error mapping, logs and metrics.

Order inside one call: time it -> authenticate and authorize (from the proto's declared scope) ->
take a token from the key's rate-limit bucket for that scope (``ratelimit.py``) ->
run the handler with the caller's Principal in a contextvar -> map ``ApiError`` to a rich status
(bounded: errors.build_status), anything else to a bare INTERNAL -> log one line and count it.

Server-streaming handlers are driven here with ``context.write`` rather than handed to gRPC as
generators: a client that hangs up mid-stream (an abandoned export) then ends the handler's
generator at once (its ``finally`` and ``with`` blocks release what it holds) and is logged as
one INFO line. Left to gRPC, the generator was only closed by the garbage collector, and a write
racing the cancellation was logged by gRPC as an ERROR with a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
import structlog
from grpc import aio
from prometheus_client import Counter, Histogram

from .auth import KeyRing, current_principal
from .catalog import MethodInfo, methods
from .errors import INTERNAL_STATUS, ApiError, bounded, unavailable
from .ratelimit import RateLimiter, retry_after_header
from .storage import StorageUnavailable

log = structlog.get_logger("cartlytics.rpc")

RPC_TOTAL = Counter("cartlytics_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "cartlytics_rpc_seconds",
    "RPC handling time",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Also sent with every error that carries a RetryInfo (429, 503). Refusals happen before any
# message, so the response is trailers-only and Envoy's transcoder passes this on as the HTTP
# `Retry-After` header; the in-process gateway forwards it too.
RETRY_AFTER_KEY = "retry-after"
# Sent by the in-process gateway, which reads each RPC's success code from the same proto option:
# the service then does not send `x-http-code` as initial metadata of its own (an extra frame and
# a tenth of a single event's CPU in the service). Envoy does not send it and gets the header.
SUCCESS_CODE_KNOWN_KEY = "x-cartlytics-success-code"


def _metadata(context: aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


async def _abort(context: aio.ServicerContext[Any, Any], error: ApiError | None) -> None:
    status = bounded(error.to_status()) if error else INTERNAL_STATUS
    code = error.code if error else grpc.StatusCode.INTERNAL
    trailing: list[tuple[str, str | bytes]] = [(STATUS_DETAILS_KEY, status.SerializeToString())]
    if error is not None and error.retry_after_seconds is not None:
        trailing.append((RETRY_AFTER_KEY, retry_after_header(error.retry_after_seconds)))
    await context.abort(code, status.message, trailing_metadata=tuple(trailing))


class _ClientGone(Exception):
    """A response message could not be sent: the call is over on the client's side."""


def _storage_down() -> ApiError:
    # Nothing was acknowledged: the client retries (ids make the retry safe).
    return unavailable("storage is unavailable; retry shortly", "STORAGE_UNAVAILABLE")


class ServiceInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keyring: KeyRing, limiter: RateLimiter | None = None) -> None:
        self._keyring = keyring
        self._limiter = limiter
        self._methods = methods()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        info = self._methods.get(details.method)
        if handler is None or info is None:
            return handler  # health, reflection: open, no project data
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(info, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(info, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _enter(self, info: MethodInfo, context: aio.ServicerContext[Any, Any]) -> None:
        principal = self._keyring.authenticate(_metadata(context, "authorization"))
        self._keyring.authorize(principal, info.scope)
        if self._limiter is not None:
            # Before any metadata is sent, so a refusal stays a trailers-only response.
            await self._limiter.enforce(info.scope, principal.key_id)
        current_principal.set(principal)
        if info.http_success_code and _metadata(context, SUCCESS_CODE_KNOWN_KEY) is None:
            await context.send_initial_metadata((("x-http-code", str(info.http_success_code)),))

    def _finish(
        self, info: MethodInfo, started: float, code: str, error: BaseException | None
    ) -> None:
        elapsed = time.perf_counter() - started
        RPC_TOTAL.labels(info.path, code).inc()
        RPC_SECONDS.labels(info.path).observe(elapsed)
        if code == "CANCELLED":
            # The client hung up (or its deadline passed, or the server is stopping): routine.
            log.info("rpc cancelled", method=info.path, ms=round(elapsed * 1000, 2))
        elif isinstance(error, StorageUnavailable):
            log.warning("rpc failed: storage unavailable", method=info.path, error=str(error))
        elif error is not None and not isinstance(error, ApiError):
            log.error("rpc failed", method=info.path, exc_info=error)
        else:
            log.debug("rpc", method=info.path, code=code, ms=round(elapsed * 1000, 2))

    def _wrap_unary(self, info: MethodInfo, behavior: Any) -> Any:
        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                await self._enter(info, context)
                response = await behavior(request, context)
            except aio.AbortError:
                self._finish(info, started, "ABORTED_BY_HANDLER", None)
                raise
            except asyncio.CancelledError:
                self._finish(info, started, "CANCELLED", None)
                raise
            except ApiError as exc:
                self._finish(info, started, exc.code.name, exc)
                await _abort(context, exc)
            except StorageUnavailable as exc:
                self._finish(info, started, "UNAVAILABLE", exc)
                await _abort(context, _storage_down())
            except Exception as exc:
                self._finish(info, started, "INTERNAL", exc)
                await _abort(context, None)
            self._finish(info, started, "OK", None)
            return response

        return handle

    def _wrap_stream(self, info: MethodInfo, behavior: Any) -> Any:
        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            started = time.perf_counter()
            try:
                await self._enter(info, context)
                async with aclosing(behavior(request, context)) as items:
                    async for item in items:
                        try:
                            await context.write(item)
                        except (aio.AbortError, aio.UsageError):
                            raise
                        except Exception as exc:  # gRPC's ExecuteBatchError: the peer is gone
                            raise _ClientGone from exc
            except aio.AbortError:
                self._finish(info, started, "ABORTED_BY_HANDLER", None)
                raise
            except (asyncio.CancelledError, _ClientGone):
                self._finish(info, started, "CANCELLED", None)
                # gRPC takes a cancelled handler as the client's hang-up and logs it at DEBUG.
                raise asyncio.CancelledError from None
            except ApiError as exc:
                self._finish(info, started, exc.code.name, exc)
                await _abort(context, exc)
            except StorageUnavailable as exc:
                self._finish(info, started, "UNAVAILABLE", exc)
                await _abort(context, _storage_down())
            except Exception as exc:
                self._finish(info, started, "INTERNAL", exc)
                await _abort(context, None)
            else:
                self._finish(info, started, "OK", None)

        return handle

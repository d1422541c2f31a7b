"""Unary calls into this process's own gRPC services, without gRPC in between.

When the REST gateway runs in the same process as a service (``cartlytics run``, the default
``all`` target), each of its requests used to be a gRPC call over loopback: serialized, framed
by HTTP/2, read back by grpc's aio server and answered the same way. For a single tracked event
that hop was the largest part of the server's CPU (py-spy, decision 70). Here the gateway calls
the same method handler gRPC would, through the same interceptors (auth, scope, rate limit,
error mapping, logs, metrics), with a context of its own that gives the handler the call's
metadata and turns an abort into the ``grpc.aio.AioRpcError`` a remote call raises. Requests and
responses still cross as serialized bytes: the gateway's message classes come from a descriptor
pool of its own, and what the service sees is exactly what gRPC would have delivered.

What differs from a remote call, on purpose: no deadline (the gateway sets none), no transport
limits (the gateway's body limit applies first), and the peer is ``local`` (the gateway always
sends ``x-forwarded-for``). Each call runs in a task of its own, so that what a handler sets in
context variables (the caller's principal) never outlives it. Server-streaming methods (exports)
still go through gRPC.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
import structlog
from grpc import aio

_log = structlog.get_logger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

_Metadatum = namedtuple("_Metadatum", ("key", "value"))


class _CallDetails(
    namedtuple("_CallDetails", ("method", "invocation_metadata")),
    grpc.HandlerCallDetails,  # type: ignore[misc]
):
    """What an interceptor is told of a call (grpc's own is private)."""


class HandlerRecorder:
    """Stands in for the gRPC server when a module adds its servicer (the generated
    ``add_*Servicer_to_server``): passes the handlers on to the server and keeps them."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


class _LocalContext:
    """The part of ``grpc.aio.ServicerContext`` our handlers and interceptors use."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = tuple(_Metadatum(key, value) for key, value in metadata)
        self.initial: tuple[tuple[str, str | bytes], ...] = ()
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        return self._metadata

    def peer(self) -> str:
        return "local"

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self.initial = tuple(metadata)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        self.code, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise aio.AbortError()

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def error(self) -> aio.AioRpcError:
        return aio.AioRpcError(
            self.code,
            aio.Metadata(*self.initial),
            aio.Metadata(*self.trailing),
            details=self.details,
        )


class LocalCalls:
    """The unary methods of this process's services, callable in-process (see the module)."""

    def __init__(
        self,
        handlers: Mapping[str, grpc.RpcMethodHandler],
        interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> None:
        self._handlers = {
            path: handler for path, handler in handlers.items() if handler.unary_unary
        }
        self._interceptors = tuple(interceptors)

    def serves(self, method: str) -> bool:
        return method in self._handlers

    async def unary(
        self, method: str, request: bytes, metadata: Metadata
    ) -> tuple[bytes, tuple[tuple[str, str | bytes], ...], tuple[tuple[str, str | bytes], ...]]:
        """The serialized response, initial and trailing metadata of ``method`` (one that
        ``serves``) called with ``request``; raises ``grpc.aio.AioRpcError`` as a remote call
        would when the handler aborts."""
        task = asyncio.get_running_loop().create_task(self._call(method, request, metadata))
        return await task

    async def _call(
        self, method: str, request: bytes, metadata: Metadata
    ) -> tuple[bytes, tuple[tuple[str, str | bytes], ...], tuple[tuple[str, str | bytes], ...]]:
        context = _LocalContext(metadata)
        handler = await self._intercepted(_CallDetails(method, context.invocation_metadata()))
        if handler is None or handler.unary_unary is None:
            raise aio.AioRpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                aio.Metadata(),
                aio.Metadata(),
                details="Method not found!",
            )
        message = handler.request_deserializer(request) if handler.request_deserializer else request
        try:
            reply = await handler.unary_unary(message, context)
        except aio.AbortError:
            raise context.error() from None
        except Exception as exc:
            # What grpc's server does with a handler's exception (ours never let one out: the
            # ServiceInterceptor maps every error to a status).
            _log.exception("local call failed", method=method)
            context.code, context.details = (
                grpc.StatusCode.UNKNOWN,
                f"Unexpected {type(exc)}: {exc}",
            )
            raise context.error() from None
        if context.code != grpc.StatusCode.OK:
            raise context.error()
        serialize = handler.response_serializer
        body: bytes = serialize(reply) if serialize else reply
        return body, context.initial, context.trailing

    async def _intercepted(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The method's handler as gRPC's server would run it: wrapped by each interceptor,
        the first one outermost."""

        async def found(call: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return self._handlers.get(call.method)

        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]] = found
        for interceptor in reversed(self._interceptors):
            continuation = _bound(interceptor, continuation)
        handler: grpc.RpcMethodHandler | None = await continuation(details)
        return handler


def _bound(
    interceptor: aio.ServerInterceptor,
    continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
) -> Callable[[grpc.HandlerCallDetails], Awaitable[Any]]:
    async def call(details: grpc.HandlerCallDetails) -> Any:
        return await interceptor.intercept_service(continuation, details)

    return call

"""Helpers of the Python SDK's live suite: unique names, polling the metrics, and client
interceptors that observe or break calls on the client's side (the server stays real)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2

from cartlytics_client import AsyncClient, Client

T = TypeVar("T")

# Metrics are queryable within seconds; a slow shared machine gets a generous bound.
POLL_SECONDS = 90.0


def unique(prefix: str) -> str:
    """A custom event name (or id part) no other test uses: ``prefix`` + 8 random hex."""
    return f"{prefix}_{secrets.token_hex(4)}"


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def event_count_query(name: str) -> dict[str, Any]:
    """The query counting events named ``name`` (today and yesterday: robust at midnight)."""
    return {
        "metrics": ["events"],
        "dimensions": ["event"],
        "filters": {"event": name, "period": "2d"},
    }


def _count(rows: list[dict[str, Any]], name: str) -> int:
    return sum(int(row["events"]) for row in rows if row.get("event") == name)


def count_events(client: Client, name: str) -> int:
    return _count(client.analytics.query(**event_count_query(name)), name)


async def count_events_async(client: AsyncClient, name: str) -> int:
    return _count(await client.analytics.query(**event_count_query(name)), name)


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = POLL_SECONDS) -> T:
    """``fetch()`` until ``done`` holds of its value or ``timeout`` passes; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


async def poll_async(
    fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = POLL_SECONDS
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.5)


def run(coroutine: Awaitable[T], timeout: float = 240.0) -> T:
    """Run an async test body on a fresh event loop, bounded."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


class InjectedUnavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """The error a client interceptor answers instead of the server's reply."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "injected by the test's interceptor after the server stored the event"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class LoseFirstReply(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first TrackEvent reach the server and complete, then answers UNAVAILABLE to the
    SDK (a reply lost on the way back); records every TrackEvent's event id."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if not _method(details).endswith("/TrackEvent"):
            return continuation(details, request)
        with self._lock:
            self.ids.append(request.event.id)
            first = len(self.ids) == 1
        outcome = continuation(details, request)
        if first:
            outcome.result()  # the server answered: the event is stored
            raise InjectedUnavailable()
        return outcome


class AsyncLoseFirstReply(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """``LoseFirstReply`` for grpc.aio."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        if not _method(details).endswith("/TrackEvent"):
            return call
        self.ids.append(request.event.id)
        if len(self.ids) == 1:
            await call  # the server answered: the event is stored
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="injected by the test's interceptor after the server stored the event",
            )
        return call


class Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records each unary call's method, request and final code (None: OK)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, grpc.StatusCode | None]] = []
        self._lock = threading.Lock()

    def methods(self, suffix: str) -> list[tuple[str, Any, grpc.StatusCode | None]]:
        with self._lock:
            return [c for c in self.calls if c[0].endswith(suffix)]

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        code: grpc.StatusCode | None = None
        try:
            outcome.result()
        except grpc.RpcError as error:
            code = error.code()
        except grpc.FutureCancelledError:
            code = grpc.StatusCode.CANCELLED
        with self._lock:
            self.calls.append((_method(details), request, code))
        return outcome


class AsyncRecorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """``Recorder`` for grpc.aio."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, grpc.StatusCode | None]] = []

    def methods(self, suffix: str) -> list[tuple[str, Any, grpc.StatusCode | None]]:
        return [c for c in self.calls if c[0].endswith(suffix)]

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        code: grpc.StatusCode | None = None
        try:
            await call
        except grpc.RpcError as error:
            code = error.code()
        self.calls.append((_method(details), request, code))
        return call


IN_FLIGHT = "an event with this id is being stored by another request; retry"


def hold_in_flight(
    response: ingest_pb2.BatchTrackEventsResponse, held: set[str]
) -> ingest_pb2.BatchTrackEventsResponse:
    """``response`` with each accepted event whose id is in ``held`` rewritten as the server's
    refusal of an id in flight (field ``id``), as when an earlier attempt is still storing it."""
    out = ingest_pb2.BatchTrackEventsResponse()
    for accepted in response.accepted:
        if accepted.id in held:
            out.rejected.add(index=accepted.index, field="id", description=IN_FLIGHT)
        else:
            out.accepted.append(accepted)
    out.rejected.extend(response.rejected)
    out.accepted_count = len(out.accepted)
    out.rejected_count = len({r.index for r in out.rejected})
    return out


class _Answered(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A completed unary call whose response a client interceptor replaced."""

    def __init__(self, response: Any, call: Any) -> None:
        self._response = response
        self._call = call

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class HoldInFlight(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Rewrites, in every BatchTrackEvents answer, the accepted events whose id is in ``held``
    as refused in flight (``hold_in_flight``); records the ids of each BatchTrackEvents
    request."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.requests: list[list[str]] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if not _method(details).endswith("/BatchTrackEvents"):
            return outcome
        with self._lock:
            self.requests.append([e.id for e in request.events])
            held = set(self.held)
        try:
            response = outcome.result()
        except grpc.RpcError:
            return outcome
        return _Answered(hold_in_flight(response, held), outcome)


class AsyncHoldInFlight(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """``HoldInFlight`` for grpc.aio."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.requests: list[list[str]] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        if not _method(details).endswith("/BatchTrackEvents"):
            return call
        self.requests.append([e.id for e in request.events])
        response = await call  # an error propagates as is
        return hold_in_flight(response, set(self.held))

"""The synchronous client: ``Client`` and its ``client.analytics`` calls, over grpcio."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

import grpc
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2
from cartlytics_protos.analytics.metrics.v1 import metrics_pb2

from . import _requests as rq
from ._batch import BatchSend, QueueCore, Queued
from ._config import (
    DEFAULT_TARGET,
    OnFailure,
    OnSuccess,
    Settings,
    auth_metadata,
    channel_credentials,
    channel_options,
    log,
    normalise_target,
)
from ._events import Prepared, TrackResult, prepare
from ._identity import Identity, IdentityCalls
from ._retry import (
    FinalError,
    WriterError,
    attempt_timeout,
    deadline_error,
    retry_delay,
)
from ._stubs import make_stubs
from .errors import CartlyticsError, ClientClosed, error_from_rpc

T = TypeVar("T")


class BinaryWriter(Protocol):
    """What ``export`` writes to: a binary file object (``open(path, "wb")``, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> object: ...


class Client:
    """A connection to a cartlytics server (gRPC). Thread-safe.

    ``client.analytics`` holds every call. Close the client (``close()`` or ``with``) to
    deliver the events still queued by ``enqueue`` and release the connection.

    Args:
        api_key: the project's key (``cak_...``), sent as ``authorization: Bearer <key>``.
        target: the gRPC server, ``host:port`` or any gRPC target (default 127.0.0.1:50051);
            an ``https://`` prefix implies ``secure``.
        secure: dial with TLS (the system's roots); ``credentials`` overrides it.
        credentials: ``grpc.ChannelCredentials`` to dial with (implies TLS).
        options: extra gRPC channel options.
        interceptors: ``grpc`` client interceptors, outermost first.
        timeout: each attempt's timeout in seconds (default 10; a timed-out attempt is retried).
        max_retries, min_backoff, max_backoff: the retry rules (5, 0.1 s, 10 s).
        flush_at, flush_interval, max_batch_bytes, max_queue_events, max_queue_bytes,
        close_timeout: the batching mode (100 events, 5 s, 450 KB, 10,000 events, 10 MB, 10 s).
        on_success: called with the list of ``AcceptedEvent`` of each delivered batch.
        on_failure: called with ``(events, error)`` for events that will not be delivered.
            Callbacks run on the SDK's sender thread (or in ``close``); keep them short.
        anonymous_id: the client's anonymous id (at most 256 characters), carried by events
            that name no visitor (docs/clients.md, "Identity"); default a random UUID v4.
    """

    def __init__(
        self,
        api_key: str,
        target: str = DEFAULT_TARGET,
        *,
        secure: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[Any] = (),
        timeout: float | None = 10.0,
        max_retries: int = 5,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        flush_at: int = 100,
        flush_interval: float = 5.0,
        max_batch_bytes: int = 450 * 1024,
        max_queue_events: int = 10_000,
        max_queue_bytes: int = 10 * 1024 * 1024,
        close_timeout: float = 10.0,
        on_success: OnSuccess | None = None,
        on_failure: OnFailure | None = None,
        anonymous_id: str | None = None,
    ) -> None:
        self._metadata = auth_metadata(api_key)
        self._identity = Identity(anonymous_id)
        self._settings = Settings(
            timeout=timeout,
            max_retries=max_retries,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            flush_at=flush_at,
            flush_interval=flush_interval,
            max_batch_bytes=max_batch_bytes,
            max_queue_events=max_queue_events,
            max_queue_bytes=max_queue_bytes,
            close_timeout=close_timeout,
        )
        target, secure = normalise_target(target, secure)
        creds = channel_credentials(secure, credentials)
        opts = channel_options(options)
        if creds is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, creds, options=opts)
        channel = grpc.intercept_channel(self._channel, *interceptors) if interceptors else None
        channel = channel or self._channel
        stubs = make_stubs(channel)
        self._ingest, self._metrics, self._export = stubs
        self._lock = threading.Lock()
        self._closed = False
        self._close_result: int | None = None
        self._close_done = threading.Event()
        self._batcher = _ThreadBatcher(self, on_success, on_failure)
        self.analytics = Analytics(self)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """``client.analytics.flush``."""
        return self.analytics.flush(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Stop accepting events, deliver the queued ones (waiting up to ``timeout`` seconds,
        default ``close_timeout``), then close the connection. Returns how many events queued
        at the call were not delivered (refused, failed, or given up on: each was also
        reported to ``on_failure``); 0 when all were. A later call returns the same number."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if not first:
            self._close_done.wait()
            return self._close_result or 0
        try:
            wait = self._settings.close_timeout if timeout is None else timeout
            self._close_result = self._batcher.close(wait)
        finally:
            self._channel.close()
            self._close_done.set()
        return self._close_result

    @property
    def closed(self) -> bool:
        return self._closed

    # -- calls -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed()

    def _run(
        self,
        attempt: Callable[[float | None], T],
        timeout: float | None,
        *,
        per_attempt: bool = True,
        abort: threading.Event | None = None,
        spent: int = 0,
    ) -> T:
        """Run ``attempt`` (given its timeout) with the retry rules of docs/clients.md: at most
        max_retries retries, backoff with full jitter, a 429's RetryInfo honoured, never past
        ``timeout`` (the whole call's, seconds) nor after ``abort`` is set. ``spent``: the
        attempts already made within the same budget (a batch's earlier requests), counted in
        the retries and in the error's ``attempts``."""
        settings = self._settings
        deadline = None if timeout is None else time.monotonic() + timeout
        last: CartlyticsError | None = None
        n = spent
        while True:
            n += 1
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise deadline_error(n - 1, last)
            limit = attempt_timeout(settings.timeout if per_attempt else None, remaining)
            try:
                return attempt(limit)
            except WriterError as exc:
                raise exc.error from None
            except FinalError as exc:
                raise error_from_rpc(exc.error, n) from None
            except Exception as exc:
                error = error_from_rpc(exc, n)
            last = error
            delay = retry_delay(n, error, settings)
            if delay is None or n > settings.max_retries:
                raise error
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise error
            if abort is not None:
                if abort.wait(delay):
                    raise error
            else:
                time.sleep(delay)

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        self._check_open()

        def attempt(limit: float | None) -> Any:
            return method(request, timeout=limit, metadata=self._metadata)

        return self._run(attempt, timeout)


class Analytics(IdentityCalls):
    """Every call of the analytics API (``client.analytics``)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._identity = client._identity

    def track(
        self,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        timestamp: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> TrackResult:
        """Send one event and return once the server stored it (retried by the rules, with the
        same client-made id). ``userId``, ``anonymousId``, ``sessionId``, ``timestamp`` and
        ``context`` found in ``properties`` are lifted to the event (when not given as keyword
        arguments). ``timeout`` bounds the whole call, retries included (seconds)."""
        client = self._client
        client._check_open()
        prepared = prepare(
            event,
            properties,
            id=id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            timestamp=timestamp,
            context=context,
            now=datetime.now(UTC),
            visitor=self._identity.current(),
        )
        request = rq.track_request(prepared.message)

        def attempt(limit: float | None) -> ingest_pb2.TrackEventResponse:
            rq.stamp_track(request)
            response: ingest_pb2.TrackEventResponse = client._ingest.TrackEvent(
                request, timeout=limit, metadata=client._metadata
            )
            return response

        return rq.track_result(client._run(attempt, timeout))

    def enqueue(
        self,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        timestamp: datetime | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue one event for the background sender and return its id at once. Raises
        ``QueueFull`` (queue at its bounds), ``EventTooLarge`` or ``ClientClosed``; the outcome
        goes to ``on_success`` / ``on_failure``."""
        prepared = prepare(
            event,
            properties,
            id=id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            timestamp=timestamp,
            context=context,
            now=datetime.now(UTC),
            visitor=self._identity.current(),
        )
        self._client._batcher.enqueue(prepared)
        return prepared.source.id

    def flush(self, timeout: float | None = None) -> bool:
        """Send every event queued before the call and wait until each has succeeded or failed
        (up to ``timeout`` seconds; None: no limit). True when they all had their outcome."""
        return self._client._batcher.flush(timeout)

    def get_sales(
        self,
        *,
        period: str | None = None,
        granularity: str | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetSalesResponse:
        """Revenue and orders over a period, with growth and a zero-filled series."""
        request = rq.sales_request(period, granularity, currency, timezone)
        response: metrics_pb2.GetSalesResponse = self._client._unary(
            self._client._metrics.GetSales, request, timeout
        )
        return response

    def get_products(
        self,
        *,
        period: str | None = None,
        limit: int | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetProductsResponse:
        """Best-selling products over a period (``top_sellers``)."""
        request = rq.products_request(period, limit, currency, timezone)
        response: metrics_pb2.GetProductsResponse = self._client._unary(
            self._client._metrics.GetProducts, request, timeout
        )
        return response

    def get_customers(
        self,
        *,
        period: str | None = None,
        limit: int | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetCustomersResponse:
        """Customer counts, repeat purchases and top customers over a period."""
        request = rq.customers_request(period, limit, currency, timezone)
        response: metrics_pb2.GetCustomersResponse = self._client._unary(
            self._client._metrics.GetCustomers, request, timeout
        )
        return response

    def get_funnel(
        self,
        *,
        period: str | None = None,
        steps: Sequence[str] | None = None,
        window: int | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetFunnelResponse:
        """Conversion through ordered steps (event names; default the purchase funnel)."""
        request = rq.funnel_request(period, steps, window, timezone)
        response: metrics_pb2.GetFunnelResponse = self._client._unary(
            self._client._metrics.GetFunnel, request, timeout
        )
        return response

    def get_realtime(
        self,
        *,
        timezone: str | None = None,
        currency: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetRealtimeResponse:
        """Active visitors, today's orders and revenue, top pages."""
        request = rq.realtime_request(timezone, currency)
        response: metrics_pb2.GetRealtimeResponse = self._client._unary(
            self._client._metrics.GetRealtime, request, timeout
        )
        return response

    def query(
        self,
        *,
        metrics: Sequence[str],
        dimensions: Sequence[str] | None = None,
        filters: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Metrics by dimensions, filtered (``period``, ``currency``, ``timezone``, equality on
        any dimension) and ordered (``"revenue:desc"``). One dict per row, whole numbers as
        ints."""
        request = rq.query_request(metrics, dimensions, filters, order_by, limit)
        response: metrics_pb2.RunQueryResponse = self._client._unary(
            self._client._metrics.RunQuery, request, timeout
        )
        return rq.query_rows(response)

    def export(
        self,
        *,
        type: str,
        to: IO[bytes] | BinaryWriter,
        format: str | None = None,
        period: str | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        from_date: str | None = None,
        to_date: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Export ``type`` (orders, events, products, customers) as ``format`` (csv, json,
        ndjson, xlsx), writing the streamed chunks to the binary file object ``to``; returns
        the number of bytes written. ``from_date`` / ``to_date`` are the proto's ``from`` and
        ``to`` (YYYY-MM-DD or RFC 3339). Retried only until the first byte is written; there is
        no per-attempt timeout (``timeout`` bounds the whole call)."""
        client = self._client
        client._check_open()
        request = rq.export_request(type, format, period, currency, timezone, from_date, to_date)

        def attempt(limit: float | None) -> int:
            written = 0
            stream = client._export.ExportData(request, timeout=limit, metadata=client._metadata)
            try:
                for chunk in stream:
                    data: bytes = chunk.data
                    if not data:
                        continue
                    try:
                        to.write(data)
                    except BaseException as exc:
                        stream.cancel()
                        raise WriterError(exc) from exc
                    written += len(data)
            except grpc.RpcError as exc:
                if written:
                    raise FinalError(exc) from exc
                raise
            return written

        return client._run(attempt, timeout, per_attempt=False)


class _ThreadBatcher:
    """The batching mode of the sync client: the queue and one daemon sender thread (started by
    the first ``enqueue``) sending one batch at a time."""

    def __init__(
        self, client: Client, on_success: OnSuccess | None, on_failure: OnFailure | None
    ) -> None:
        self._client = client
        self._settings = client._settings
        self._core = QueueCore(client._settings, on_success, on_failure)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._abort = threading.Event()  # close gave up: stop sending, cancel the call
        self._future: Any = None  # the BatchTrackEvents call in progress

    def enqueue(self, prepared: Prepared) -> None:
        with self._cond:
            self._core.add(prepared)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cartlytics-client-sender", daemon=True
                )
                self._thread.start()
            if self._core.full():
                self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        with self._cond:
            target = self._core.force_all()
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._core.done_seq >= target, timeout)

    def close(self, timeout: float) -> int:
        with self._cond:
            self._core.closed = True
            target = self._core.force_all()
            failed_before = self._core.failed
            self._cond.notify_all()
            delivered = self._cond.wait_for(lambda: self._core.done_seq >= target, timeout)
            if not delivered:
                self._abort.set()
                if self._future is not None:
                    self._future.cancel()
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)  # the cancelled call returns at once; a callback may not
        with self._cond:
            calls = self._core.abandon(ClientClosed("the client was closed before these were sent"))
            undelivered = self._core.failed - failed_before
        for call in calls:
            call()
        return undelivered

    def _run(self) -> None:
        interval = self._settings.flush_interval
        next_tick = time.monotonic() + interval
        while True:
            with self._cond:
                while not self._stop and not self._core.ready():
                    remaining = next_tick - time.monotonic()
                    if remaining <= 0:
                        self._core.force_all()
                        next_tick = time.monotonic() + interval
                        continue
                    self._cond.wait(remaining)
                if self._stop or self._abort.is_set():
                    return
                batch = self._core.take()
            try:
                self._send(batch)
            except Exception as exc:  # a bug of the SDK: fail the batch, keep the sender alive
                log.exception("cartlytics_client: sending a batch failed")
                self._resolve(failures=[(batch, error_from_rpc(exc))])
            finally:
                with self._cond:
                    self._core.finish(batch)
                    self._cond.notify_all()

    def _resolve(self, **kwargs: Any) -> None:
        with self._cond:
            calls = self._core.resolve(**kwargs)
        for call in calls:
            call()

    def _attempt(
        self,
        send: BatchSend,
        request: ingest_pb2.BatchTrackEventsRequest,
        limit: float | None,
    ) -> ingest_pb2.BatchTrackEventsResponse:
        client = self._client
        send.attempt(request)
        future = client._ingest.BatchTrackEvents.future(
            request, timeout=limit, metadata=client._metadata
        )
        with self._cond:
            self._future = future
        try:
            if self._abort.is_set():
                future.cancel()
            response: ingest_pb2.BatchTrackEventsResponse = future.result()
            return response
        finally:
            with self._cond:
                self._future = None

    def _send(self, batch: list[Queued]) -> None:
        """Deliver one batch (``BatchSend``: one retry budget for its retries and resends)."""
        send = BatchSend(self._core, batch)
        while send.pending:
            attempt = partial(self._attempt, send, send.request())
            try:
                response = self._client._run(attempt, None, abort=self._abort, spent=send.attempts)
            except CartlyticsError as error:
                with self._cond:
                    calls = send.failed(error, closed=self._abort.is_set())
                wait = None
            else:
                with self._cond:
                    calls, wait = send.answered(response)
            for call in calls:
                call()
            if wait is not None and self._abort.wait(wait):
                with self._cond:
                    calls = send.closed()
                for call in calls:
                    call()

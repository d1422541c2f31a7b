"""The asyncio client: ``AsyncClient`` and its ``client.analytics`` calls, over grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, TypeVar

import grpc
import grpc.aio
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
from ._sync import BinaryWriter
from .errors import CartlyticsError, ClientClosed, error_from_rpc

T = TypeVar("T")
log = logging.getLogger("cartlytics_client")


class AsyncClient:
    """The asyncio twin of ``Client`` (grpc.aio): the same arguments (``interceptors`` are
    ``grpc.aio`` client interceptors) and the same calls, as coroutines; ``enqueue`` is a plain
    method (it never waits), to be called from the event loop the client runs on.

    Use it from one event loop: ``async with AsyncClient(...) as client`` or ``await
    client.close()``. Callbacks run on that loop (in the sender task or ``close``).
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
        chosen = list(interceptors) or None
        if creds is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts, interceptors=chosen)
        else:
            self._channel = grpc.aio.secure_channel(
                target, creds, options=opts, interceptors=chosen
            )
        stubs = make_stubs(self._channel)
        self._ingest, self._metrics, self._export = stubs
        self._closed = False
        self._close_task: asyncio.Task[int] | None = None
        self._batcher = _TaskBatcher(self, on_success, on_failure)
        self.analytics = AsyncAnalytics(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def flush(self, timeout: float | None = None) -> bool:
        """``client.analytics.flush``."""
        return await self.analytics.flush(timeout)

    async def close(self, timeout: float | None = None) -> int:
        """As ``Client.close``: stop accepting events, deliver the queued ones (up to
        ``timeout`` seconds, default ``close_timeout``), close the channel, and return how many
        events queued at the call were not delivered. A later call returns the same number."""
        if self._close_task is None:
            self._closed = True
            wait = self._settings.close_timeout if timeout is None else timeout
            self._close_task = asyncio.ensure_future(self._close(wait))
        return await asyncio.shield(self._close_task)

    async def _close(self, timeout: float) -> int:
        try:
            return await self._batcher.close(timeout)
        finally:
            await self._channel.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed()

    async def _run(
        self,
        attempt: Callable[[float | None], Awaitable[T]],
        timeout: float | None,
        *,
        per_attempt: bool = True,
        spent: int = 0,
    ) -> T:
        """As ``Client._run``, waiting with asyncio (a cancelled task stops at once)."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last: CartlyticsError | None = None
        n = spent
        while True:
            n += 1
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise deadline_error(n - 1, last)
            limit = attempt_timeout(settings.timeout if per_attempt else None, remaining)
            try:
                return await attempt(limit)
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
            if deadline is not None and loop.time() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        self._check_open()

        async def attempt(limit: float | None) -> Any:
            return await method(request, timeout=limit, metadata=self._metadata)

        return await self._run(attempt, timeout)


class AsyncAnalytics(IdentityCalls):
    """Every call of the analytics API (``client.analytics``), as coroutines."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._identity = client._identity

    async def track(
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
        """As ``Analytics.track``."""
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

        async def attempt(limit: float | None) -> ingest_pb2.TrackEventResponse:
            rq.stamp_track(request)
            response: ingest_pb2.TrackEventResponse = await client._ingest.TrackEvent(
                request, timeout=limit, metadata=client._metadata
            )
            return response

        return rq.track_result(await client._run(attempt, timeout))

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
        """As ``Analytics.enqueue`` (not a coroutine: it never waits). Call it from the
        client's event loop."""
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

    async def flush(self, timeout: float | None = None) -> bool:
        """As ``Analytics.flush``."""
        return await self._client._batcher.flush(timeout)

    async def get_sales(
        self,
        *,
        period: str | None = None,
        granularity: str | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetSalesResponse:
        """As ``Analytics.get_sales``."""
        request = rq.sales_request(period, granularity, currency, timezone)
        response: metrics_pb2.GetSalesResponse = await self._client._unary(
            self._client._metrics.GetSales, request, timeout
        )
        return response

    async def get_products(
        self,
        *,
        period: str | None = None,
        limit: int | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetProductsResponse:
        """As ``Analytics.get_products``."""
        request = rq.products_request(period, limit, currency, timezone)
        response: metrics_pb2.GetProductsResponse = await self._client._unary(
            self._client._metrics.GetProducts, request, timeout
        )
        return response

    async def get_customers(
        self,
        *,
        period: str | None = None,
        limit: int | None = None,
        currency: str | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetCustomersResponse:
        """As ``Analytics.get_customers``."""
        request = rq.customers_request(period, limit, currency, timezone)
        response: metrics_pb2.GetCustomersResponse = await self._client._unary(
            self._client._metrics.GetCustomers, request, timeout
        )
        return response

    async def get_funnel(
        self,
        *,
        period: str | None = None,
        steps: Sequence[str] | None = None,
        window: int | None = None,
        timezone: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetFunnelResponse:
        """As ``Analytics.get_funnel``."""
        request = rq.funnel_request(period, steps, window, timezone)
        response: metrics_pb2.GetFunnelResponse = await self._client._unary(
            self._client._metrics.GetFunnel, request, timeout
        )
        return response

    async def get_realtime(
        self,
        *,
        timezone: str | None = None,
        currency: str | None = None,
        timeout: float | None = None,
    ) -> metrics_pb2.GetRealtimeResponse:
        """As ``Analytics.get_realtime``."""
        request = rq.realtime_request(timezone, currency)
        response: metrics_pb2.GetRealtimeResponse = await self._client._unary(
            self._client._metrics.GetRealtime, request, timeout
        )
        return response

    async def query(
        self,
        *,
        metrics: Sequence[str],
        dimensions: Sequence[str] | None = None,
        filters: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """As ``Analytics.query``."""
        request = rq.query_request(metrics, dimensions, filters, order_by, limit)
        response: metrics_pb2.RunQueryResponse = await self._client._unary(
            self._client._metrics.RunQuery, request, timeout
        )
        return rq.query_rows(response)

    async def export(
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
        """As ``Analytics.export`` (``to`` is a plain binary file object, written to from the
        event loop)."""
        client = self._client
        client._check_open()
        request = rq.export_request(type, format, period, currency, timezone, from_date, to_date)

        async def attempt(limit: float | None) -> int:
            written = 0
            call = client._export.ExportData(request, timeout=limit, metadata=client._metadata)
            try:
                async for chunk in call:
                    data: bytes = chunk.data
                    if not data:
                        continue
                    try:
                        to.write(data)
                    except BaseException as exc:
                        call.cancel()
                        raise WriterError(exc) from exc
                    written += len(data)
            except grpc.RpcError as exc:
                if written:
                    raise FinalError(exc) from exc
                raise
            return written

        return await client._run(attempt, timeout, per_attempt=False)


class _TaskBatcher:
    """The batching mode of the asyncio client: the queue and one sender task (started by the
    first ``enqueue``) sending one batch at a time."""

    def __init__(
        self, client: AsyncClient, on_success: OnSuccess | None, on_failure: OnFailure | None
    ) -> None:
        self._client = client
        self._settings = client._settings
        self._core = QueueCore(client._settings, on_success, on_failure)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) whenever done_seq moves
        self._stop = False

    def enqueue(self, prepared: Prepared) -> None:
        loop = asyncio.get_running_loop() if self._task is None else None
        self._core.add(prepared)
        if loop is not None:
            self._task = loop.create_task(self._run(), name="cartlytics-client-sender")
        if self._core.full():
            self._wake.set()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _wait(self, target: int, timeout: float | None) -> bool:
        async def reached() -> None:
            while self._core.done_seq < target:
                await self._progress.wait()

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return True

    async def flush(self, timeout: float | None) -> bool:
        target = self._core.force_all()
        self._wake.set()
        return await self._wait(target, timeout)

    async def close(self, timeout: float) -> int:
        core = self._core
        core.closed = True
        target = core.force_all()
        failed_before = core.failed
        self._wake.set()
        delivered = await self._wait(target, timeout)
        self._stop = True
        self._wake.set()
        task = self._task
        if task is not None:
            if not delivered:
                task.cancel()  # cancels the call in progress and any backoff
            await asyncio.wait({task}, timeout=2.0)
        for call in core.abandon(ClientClosed("the client was closed before these were sent")):
            call()
        self._notify()
        return core.failed - failed_before

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._settings.flush_interval
        next_tick = loop.time() + interval
        while True:
            while not self._stop and not self._core.ready():
                remaining = next_tick - loop.time()
                if remaining <= 0:
                    self._core.force_all()
                    next_tick = loop.time() + interval
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            if self._stop:
                return
            batch = self._core.take()
            try:
                await self._send(batch)
            except Exception as exc:  # a bug of the SDK: fail the batch, keep the sender alive
                log.exception("cartlytics_client: sending a batch failed")
                self._resolve(failures=[(batch, error_from_rpc(exc))])
            finally:
                self._core.finish(batch)
                self._notify()

    def _resolve(self, **kwargs: Any) -> None:
        for call in self._core.resolve(**kwargs):
            call()

    async def _send(self, batch: list[Queued]) -> None:
        """Deliver one batch (``BatchSend``: one retry budget for its retries and resends).
        Cancelled by close: the events not settled yet are close's to give up on."""
        client = self._client
        send = BatchSend(self._core, batch)
        while send.pending:
            request = send.request()

            async def attempt(
                limit: float | None, r: ingest_pb2.BatchTrackEventsRequest = request
            ) -> ingest_pb2.BatchTrackEventsResponse:
                send.attempt(r)
                method = client._ingest.BatchTrackEvents
                response: ingest_pb2.BatchTrackEventsResponse = await method(
                    r, timeout=limit, metadata=client._metadata
                )
                return response

            try:
                answer = await client._run(attempt, None, spent=send.attempts)
            except CartlyticsError as error:
                calls, wait = send.failed(error), None
            else:
                calls, wait = send.answered(answer)
            for call in calls:
                call()
            if wait is not None:
                await asyncio.sleep(wait)

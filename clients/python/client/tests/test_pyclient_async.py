"""The asyncio ``AsyncClient`` against a live stack (see conftest.py), as the sync suite: the
same behaviours, each test on its own event loop. (The project's one order and its exact figures,
read through both clients, are in test_pyclient_sync.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from conftest import Stack
from pyclient_support import (
    IN_FLIGHT,
    AsyncHoldInFlight,
    AsyncLoseFirstReply,
    AsyncRecorder,
    count_events_async,
    poll_async,
    run,
    unique,
)

from cartlytics_client import (
    MAX_EVENT_BYTES,
    AcceptedEvent,
    AsyncClient,
    CartlyticsError,
    ClientClosed,
    Event,
    EventTooLarge,
    QueueFull,
    __version__,
)

LIBRARY = {"name": "cartlytics-python", "version": __version__}


def _client(stack: Stack, **kwargs: Any) -> AsyncClient:
    return AsyncClient(api_key=stack.key, target=stack.target, **kwargs)


async def _export_events(client: AsyncClient) -> dict[str, dict[str, Any]]:
    buffer = io.BytesIO()
    written = await client.analytics.export(type="events", format="ndjson", period="2d", to=buffer)
    data = buffer.getvalue()
    assert written == len(data)
    records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return {record["eventId"]: record for record in records}


async def _exported(client: AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    records = await poll_async(lambda: _export_events(client), lambda r: all(i in r for i in ids))
    assert all(i in records for i in ids), "the tracked events are not in the export"
    return records


async def _settled_count(client: AsyncClient, name: str, expected: int) -> int:
    await poll_async(lambda: count_events_async(client, name), lambda n: n >= expected)
    await asyncio.sleep(1.0)
    return await count_events_async(client, name)


class Outcomes:
    def __init__(self) -> None:
        self.accepted: list[AcceptedEvent] = []
        self.failed: list[tuple[list[Event], CartlyticsError]] = []

    def on_success(self, events: list[AcceptedEvent]) -> None:
        self.accepted.extend(events)

    def on_failure(self, events: list[Event], error: CartlyticsError) -> None:
        self.failed.append((events, error))


def test_spec_calls(stack: Stack) -> None:
    async def body() -> None:
        async with _client(stack) as client:
            result = await client.analytics.track(
                "product_view", {"productId": "prod_abc123", "userId": "user_xyz789"}
            )
            assert result.event == "product_view"
            assert result.id.startswith("evt_") and len(result.id) == 36
            assert abs(result.timestamp - datetime.now(UTC)) < timedelta(minutes=5)

            sales = await client.analytics.get_sales(period="30d")
            assert (sales.period, sales.currency, len(sales.series)) == ("30d", "USD", 30)

            report = await client.analytics.query(
                metrics=["revenue", "orders"],
                dimensions=["product_category"],
                filters={"period": "7d"},
            )
            for row in report:
                assert set(row) == {"product_category", "revenue", "orders"}

            record = (await _exported(client, [result.id]))[result.id]
            assert record["userId"] == "user_xyz789"
            assert record["properties"] == {"productId": "prod_abc123"}
            assert record["context"]["library"] == LIBRARY

    run(body())


def test_keyword_arguments_and_lifted_keys(stack: Stack) -> None:
    async def body() -> None:
        name = unique("sdk_py_akw")
        own_id = unique("evt_sdk_pya")
        when = datetime.now(UTC) - timedelta(minutes=3)
        async with _client(stack) as client:
            given = await client.analytics.track(
                name,
                {"colour": "red"},
                id=own_id,
                user_id="user_kw",
                anonymous_id="anon_2",
                timestamp=when,
            )
            lifted = await client.analytics.track(
                name, {"anonymousId": "anon_lifted", "context": {"page": "/a"}, "x": 1}
            )
            assert given.id == own_id
            assert abs(given.timestamp - when) < timedelta(seconds=5)
            records = await _exported(client, [own_id, lifted.id])
        first, second = records[own_id], records[lifted.id]
        assert (first["userId"], first["anonymousId"]) == ("user_kw", "anon_2")
        assert first["properties"] == {"colour": "red"}
        assert first["context"] == {"library": LIBRARY}
        assert second["anonymousId"] == "anon_lifted"
        assert second["properties"] == {"x": 1}
        assert second["context"] == {"page": "/a", "library": LIBRARY}

    run(body())


def test_funnel_realtime_and_export(stack: Stack) -> None:
    async def body() -> None:
        first, second = unique("sdk_py_astep_a"), unique("sdk_py_astep_b")
        u1, u2, u3 = unique("user_pya"), unique("user_pya"), unique("user_pya")
        async with _client(stack) as client:
            ids = [
                (await client.analytics.track(first, {"n": 1}, user_id=u)).id for u in (u1, u2, u3)
            ]
            ids.append((await client.analytics.track(second, user_id=u3)).id)
            funnel = await poll_async(
                lambda: client.analytics.get_funnel(period="1d", steps=[first, second]),
                lambda f: [s.count for s in f.stages] == [3, 1],
            )
            assert [s.count for s in funnel.stages] == [3, 1]
            assert [s.rate for s in funnel.stages] == [100, 33.3]
            assert funnel.conversion_rate == 33.3
            realtime = await client.analytics.get_realtime()
            assert realtime.active_visitors >= 3
            records = await _exported(client, ids)
            assert [records[i]["event"] for i in ids] == [first, first, first, second]

            with pytest.raises(CartlyticsError) as info:
                await client.analytics.get_sales(period="nonsense")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "period" in [v.field for v in info.value.field_violations]

    run(body())


def test_a_retried_id_is_stored_once(stack: Stack) -> None:
    async def body() -> None:
        lose = AsyncLoseFirstReply()
        name = unique("sdk_py_aretry")
        async with _client(stack, interceptors=[lose], min_backoff=0.05) as client:
            result = await client.analytics.track(name, user_id="user_retry")
            assert lose.ids == [result.id, result.id]
            assert await _settled_count(client, name, 1) == 1

    run(body())


def test_no_retry_on_invalid_argument(stack: Stack) -> None:
    async def body() -> None:
        recorder = AsyncRecorder()
        async with _client(stack, interceptors=[recorder]) as client:
            with pytest.raises(CartlyticsError) as info:
                await client.analytics.track("page_view", {"referrer": "x"}, user_id="u")
        error = info.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "properties.page" in [v.field for v in error.field_violations]
        assert error.attempts == 1
        assert len(recorder.methods("/TrackEvent")) == 1

    run(body())


def test_backoff_on_429_honours_retry_info(throttled: Stack) -> None:
    async def body() -> None:
        recorder = AsyncRecorder()
        name = unique("sdk_py_athrottle")
        sent = 0
        async with _client(throttled, interceptors=[recorder]) as client:
            for _ in range(5):
                await asyncio.sleep(1.2)
                start = time.monotonic()
                await client.analytics.track(name, {"n": 1}, user_id="user_throttle")
                second = await client.analytics.track(name, {"n": 2}, user_id="user_throttle")
                elapsed = time.monotonic() - start
                sent += 2
                attempts = [
                    c for c in recorder.methods("/TrackEvent") if c[1].event.id == second.id
                ]
                if any(code == grpc.StatusCode.RESOURCE_EXHAUSTED for _, _, code in attempts):
                    break
            else:
                pytest.fail("the second call was never throttled")
            assert attempts[-1][2] is None
            assert elapsed >= 0.9, f"retried after {elapsed:.2f}s, before the server's delay"
            assert await _settled_count(client, name, sent) == sent

    run(body())


def test_enqueue_flush_and_callbacks(stack: Stack) -> None:
    async def body() -> None:
        outcomes = Outcomes()
        name = unique("sdk_py_abatch")
        n = 23
        async with _client(
            stack,
            flush_at=10,
            flush_interval=60,
            on_success=outcomes.on_success,
            on_failure=outcomes.on_failure,
        ) as client:
            ids = [client.analytics.enqueue(name, {"i": i}, user_id="user_b") for i in range(n)]
            assert await client.analytics.flush(timeout=120)
            assert sorted(a.id for a in outcomes.accepted) == sorted(ids)
            assert outcomes.failed == []
            assert await _settled_count(client, name, n) == n

    run(body())


def test_close_flushes_the_queue(stack: Stack) -> None:
    async def body() -> None:
        name = unique("sdk_py_aclose")
        client = _client(stack, flush_interval=60)
        for i in range(6):
            client.analytics.enqueue(name, {"i": i}, user_id="user_close")
        assert await client.close(timeout=120) == 0
        assert await client.close() == 0
        with pytest.raises(ClientClosed):
            client.analytics.enqueue(name, user_id="user_close")
        with pytest.raises(ClientClosed):
            await client.analytics.track(name, user_id="user_close")
        async with _client(stack) as reader:
            assert await _settled_count(reader, name, 6) == 6

    run(body())


def test_an_event_in_flight_to_the_end_fails_after_the_batch_budget(stack: Stack) -> None:
    async def body() -> None:
        outcomes = Outcomes()
        hold = AsyncHoldInFlight()
        name = unique("sdk_py_ainflight")
        async with _client(
            stack,
            interceptors=[hold],
            max_retries=2,
            min_backoff=0.01,
            max_backoff=0.05,
            flush_interval=60,
            on_success=outcomes.on_success,
            on_failure=outcomes.on_failure,
        ) as client:
            ids = [client.analytics.enqueue(name, {"i": i}, user_id="user_inf") for i in range(3)]
            hold.held.add(ids[1])
            assert await client.analytics.flush(timeout=120)
            assert hold.requests == [ids, [ids[1]], [ids[1]]]
            assert sorted(a.id for a in outcomes.accepted) == sorted([ids[0], ids[2]])
            assert len(outcomes.failed) == 1
            events, error = outcomes.failed[0]
            assert [e.id for e in events] == [ids[1]]
            assert error.code == grpc.StatusCode.ABORTED
            assert error.reason == "EVENT_IN_FLIGHT"
            assert error.field_violations == [("id", IN_FLIGHT)]
            assert error.attempts == 3

    run(body())


def test_a_batch_with_one_invalid_event(stack: Stack) -> None:
    async def body() -> None:
        outcomes = Outcomes()
        name = unique("sdk_py_amixed")
        async with _client(
            stack,
            flush_interval=60,
            on_success=outcomes.on_success,
            on_failure=outcomes.on_failure,
        ) as client:
            good = [client.analytics.enqueue(name, user_id="user_mixed") for _ in range(3)]
            bad = client.analytics.enqueue("search", {"resultCount": 3}, user_id="user_mixed")
            assert await client.analytics.flush(timeout=120)
            assert sorted(a.id for a in outcomes.accepted) == sorted(good)
            assert len(outcomes.failed) == 1
            events, error = outcomes.failed[0]
            assert [e.id for e in events] == [bad]
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "properties.query" in [v.field for v in error.field_violations]
            assert await _settled_count(client, name, 3) == 3

    run(body())


def test_full_queue_and_oversize_event(stack: Stack) -> None:
    async def body() -> None:
        name = unique("sdk_py_afull")
        recorder = AsyncRecorder()
        client = _client(stack, max_queue_events=2, flush_interval=60, interceptors=[recorder])
        client.analytics.enqueue(name, user_id="user_full")
        client.analytics.enqueue(name, user_id="user_full")
        with pytest.raises(QueueFull):
            client.analytics.enqueue(name, user_id="user_full")
        blob = {"blob": "x" * MAX_EVENT_BYTES}
        with pytest.raises(EventTooLarge):
            await client.analytics.track(name, blob, user_id="user_full")
        assert recorder.calls == []
        assert await client.close(timeout=120) == 0
        async with _client(stack) as reader:
            assert await _settled_count(reader, name, 2) == 2

    run(body())


def test_close_gives_up_after_its_timeout() -> None:
    async def body() -> None:
        outcomes = Outcomes()
        client = AsyncClient(
            api_key="cak_unused",
            target="127.0.0.1:1",
            flush_interval=0.1,
            timeout=1,
            max_retries=1000,
            min_backoff=0.2,
            max_backoff=0.4,
            on_failure=outcomes.on_failure,
        )
        ids = [client.analytics.enqueue(unique("sdk_py_alost"), user_id="u") for _ in range(3)]
        started = time.monotonic()
        assert await client.close(timeout=1.5) == 3
        assert time.monotonic() - started < 10
        assert sorted(e.id for events, _ in outcomes.failed for e in events) == sorted(ids)
        assert all(isinstance(error, ClientClosed) for _, error in outcomes.failed)

    run(body())

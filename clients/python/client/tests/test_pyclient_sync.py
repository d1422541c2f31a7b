"""The sync ``Client`` against a live stack (see conftest.py). Every expected figure comes from
what the test sent. The project is this suite's own and shared by its tests: only
``test_order_figures_are_exact`` sends an order; other tests use unique custom event names."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from conftest import Stack
from pyclient_support import (
    IN_FLIGHT,
    HoldInFlight,
    LoseFirstReply,
    Recorder,
    count_events,
    poll,
    run,
    unique,
)

from cartlytics_client import (
    MAX_EVENT_BYTES,
    AcceptedEvent,
    AsyncClient,
    CartlyticsError,
    Client,
    ClientClosed,
    Event,
    EventTooLarge,
    QueueFull,
    __version__,
)

LIBRARY = {"name": "cartlytics-python", "version": __version__}


def _client(stack: Stack, **kwargs: Any) -> Client:
    return Client(api_key=stack.key, target=stack.target, **kwargs)


def _export_events(client: Client) -> dict[str, dict[str, Any]]:
    """Today's and yesterday's events of the project, by id (ndjson export)."""
    buffer = io.BytesIO()
    written = client.analytics.export(type="events", format="ndjson", period="2d", to=buffer)
    data = buffer.getvalue()
    assert written == len(data)
    records = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return {record["eventId"]: record for record in records}


def _exported(client: Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    records = poll(lambda: _export_events(client), lambda r: all(i in r for i in ids))
    assert all(i in records for i in ids), "the tracked events are not in the export"
    return records


def _settled_count(client: Client, name: str, expected: int) -> int:
    """The count of ``name`` once it reached ``expected`` (or the poll gave up), read again a
    moment later so that a late duplicate would show."""
    poll(lambda: count_events(client, name), lambda n: n >= expected)
    time.sleep(1.0)
    return count_events(client, name)


# -- the spec's three calls -----------------------------------------------------------------


def test_spec_calls(stack: Stack) -> None:
    with _client(stack) as client:
        result = client.analytics.track(
            "product_view", {"productId": "prod_abc123", "userId": "user_xyz789"}
        )
        assert result.event == "product_view"
        assert result.id.startswith("evt_") and len(result.id) == 4 + 32
        assert abs(result.timestamp - datetime.now(UTC)) < timedelta(minutes=5)

        sales = client.analytics.get_sales(period="30d")
        assert sales.period == "30d"
        assert sales.currency == "USD"
        assert len(sales.series) == 30

        report = client.analytics.query(
            metrics=["revenue", "orders"],
            dimensions=["product_category"],
            filters={"period": "7d"},
        )
        assert isinstance(report, list)
        for row in report:
            assert set(row) == {"product_category", "revenue", "orders"}
            assert isinstance(row["revenue"], int) and isinstance(row["orders"], int)

        # userId was lifted out of the properties to the event; context.library was added.
        record = _exported(client, [result.id])[result.id]
        assert record["userId"] == "user_xyz789"
        assert record["properties"] == {"productId": "prod_abc123"}
        assert record["context"]["library"] == LIBRARY


def test_keyword_arguments_and_lifted_keys(stack: Stack) -> None:
    name = unique("sdk_py_kw")
    own_id = unique("evt_sdk_py")
    when = datetime.now(UTC) - timedelta(minutes=10)
    with _client(stack) as client:
        given = client.analytics.track(
            name,
            {"colour": "blue", "count": 2},
            id=own_id,
            anonymous_id="anon_1",
            session_id="sess_1",
            timestamp=when,
            context={"page": "/shop", "library": {"name": "mine", "version": "9"}},
        )
        lifted = client.analytics.track(
            name,
            {
                "userId": "user_lifted",
                "sessionId": "sess_2",
                "timestamp": when.isoformat(),
                "context": {"locale": "fr-FR"},
                "size": "M",
            },
        )
        assert given.id == own_id
        assert abs(given.timestamp - when) < timedelta(seconds=5)
        assert abs(lifted.timestamp - when) < timedelta(seconds=5)
        records = _exported(client, [own_id, lifted.id])
    first, second = records[own_id], records[lifted.id]
    assert (first["anonymousId"], first["sessionId"], first["userId"]) == ("anon_1", "sess_1", "")
    assert first["properties"] == {"colour": "blue", "count": 2}
    assert first["context"] == {"page": "/shop", "library": {"name": "mine", "version": "9"}}
    assert (second["userId"], second["sessionId"]) == ("user_lifted", "sess_2")
    assert second["properties"] == {"size": "M"}
    assert second["context"] == {"locale": "fr-FR", "library": LIBRARY}


# -- reads: the one order of the project, every figure exact --------------------------------


def test_order_figures_are_exact(stack: Stack) -> None:
    """The only test that sends an order: sales, products, customers, realtime and query figures
    move by exactly this order, read through the sync and the asyncio client. (Against a fresh
    project the figures before are all zero; reading them first keeps a rerun on the same stack
    exact too.)"""
    user, order_id = unique("user_py"), unique("order_py")
    product, category = unique("prod_py"), unique("cat_py")
    total, price, quantity = 4325, 1250, 3
    line = price * quantity
    with _client(stack) as client:
        day = datetime.now(UTC).date()
        sales0 = client.analytics.get_sales(period="30d")
        customers0 = client.analytics.get_customers(period="30d")
        realtime0 = client.analytics.get_realtime(timezone="UTC")
        result = client.analytics.track(
            "order_completed",
            {
                "orderId": order_id,
                "total": total,
                "currency": "USD",
                "items": quantity,
                "products": [
                    {
                        "productId": product,
                        "name": "Stoneware Mug",
                        "category": category,
                        "price": price,
                        "quantity": quantity,
                    }
                ],
            },
            user_id=user,
        )
        assert result.event == "order_completed"

        sales = poll(
            lambda: client.analytics.get_sales(period="30d"), lambda s: s.orders > sales0.orders
        )
        assert (sales.orders, sales.revenue) == (sales0.orders + 1, sales0.revenue + total)
        assert sales.currency == "USD"
        assert sum(b.revenue for b in sales.series) == sales.revenue
        assert sum(b.orders for b in sales.series) == sales.orders
        assert not sales.growth.HasField("revenue")  # nothing the period before
        if sales0.orders == 0:
            assert sales.average_order_value == total

        products = client.analytics.get_products(period="30d", limit=100)
        sellers = {p.product_id: p for p in products.top_sellers}
        assert product in sellers
        assert (sellers[product].revenue, sellers[product].units_sold) == (line, quantity)
        assert sellers[product].name == "Stoneware Mug"

        customers = client.analytics.get_customers(period="30d", limit=100)
        assert customers.total_customers == customers0.total_customers + 1
        assert customers.new_customers == customers0.new_customers + 1
        assert customers.returning_customers == customers0.returning_customers
        top = {c.customer_id: (c.orders, c.revenue) for c in customers.top_customers}
        assert top[user] == (1, total)

        realtime = client.analytics.get_realtime(timezone="UTC")
        if datetime.now(UTC).date() == day:  # "today" did not roll over meanwhile
            assert realtime.orders_today == realtime0.orders_today + 1
            assert realtime.revenue_today == realtime0.revenue_today + total

        by_category = client.analytics.query(
            metrics=["revenue", "orders"],
            dimensions=["product_category"],
            filters={"period": "7d", "product_category": category},
        )
        assert by_category == [{"product_category": category, "revenue": line, "orders": 1}]
        totals = client.analytics.query(
            metrics=["revenue", "orders"], filters={"period": "30d", "currency": "USD"}
        )
        assert totals == [{"revenue": sales.revenue, "orders": sales.orders}]

    async def read_async() -> None:
        async with AsyncClient(api_key=stack.key, target=stack.target) as aclient:
            again = await aclient.analytics.get_sales(period="30d", granularity="week")
            assert (again.orders, again.revenue) == (sales.orders, sales.revenue)
            products = await aclient.analytics.get_products(period="30d", limit=100)
            assert (product, line) in [(p.product_id, p.revenue) for p in products.top_sellers]
            customers = await aclient.analytics.get_customers(period="30d", limit=100)
            assert customers.total_customers == customers0.total_customers + 1
            assert user in [c.customer_id for c in customers.top_customers]
            now = await aclient.analytics.get_realtime()
            if datetime.now(UTC).date() == day:
                assert now.orders_today == realtime0.orders_today + 1
            rows = await aclient.analytics.query(
                metrics=["revenue", "units_sold"],
                dimensions=["product_id"],
                filters={"period": "7d", "product_id": product},
                order_by="revenue:desc",
                limit=10,
            )
            assert rows == [{"product_id": product, "revenue": line, "units_sold": quantity}]

    run(read_async())


def test_funnel_and_realtime(stack: Stack) -> None:
    first, second = unique("sdk_py_step_a"), unique("sdk_py_step_b")
    u1, u2 = unique("user_py"), unique("user_py")
    with _client(stack) as client:
        client.analytics.track(first, user_id=u1)
        client.analytics.track(first, user_id=u2)
        client.analytics.track(second, user_id=u1)
        funnel = poll(
            lambda: client.analytics.get_funnel(period="1d", steps=[first, second]),
            lambda f: [s.count for s in f.stages] == [2, 1],
        )
        assert [s.count for s in funnel.stages] == [2, 1]
        assert [s.rate for s in funnel.stages] == [100, 50]
        assert funnel.conversion_rate == 50
        realtime = client.analytics.get_realtime()
        assert realtime.active_visitors >= 2  # u1 and u2, seen in the last five minutes
        assert realtime.orders_today >= 0 and realtime.revenue_today >= 0


def test_export_streams_events_as_ndjson(stack: Stack) -> None:
    name = unique("sdk_py_export")
    with _client(stack) as client:
        ids = [client.analytics.track(name, {"i": i}, user_id="user_export").id for i in range(3)]
        records = _exported(client, ids)
        for i, event_id in enumerate(ids):
            assert records[event_id]["event"] == name
            assert records[event_id]["properties"] == {"i": i}

        with pytest.raises(CartlyticsError) as info:
            client.analytics.export(type="nonsense", to=io.BytesIO())
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "type" in [v.field for v in info.value.field_violations]


# -- retries --------------------------------------------------------------------------------


def test_a_retried_id_is_stored_once(stack: Stack) -> None:
    """The first TrackEvent reaches the server and is stored, but the SDK is told UNAVAILABLE
    (a lost reply): it retries with the same id, and the server stores the event once."""
    lose = LoseFirstReply()
    name = unique("sdk_py_retry")
    with _client(stack, interceptors=[lose], min_backoff=0.05) as client:
        result = client.analytics.track(name, {"attempt": "any"}, user_id="user_retry")
        assert lose.ids == [result.id, result.id]
        assert _settled_count(client, name, 1) == 1


def test_no_retry_on_invalid_argument(stack: Stack) -> None:
    recorder = Recorder()
    with _client(stack, interceptors=[recorder]) as client, pytest.raises(CartlyticsError) as info:
        client.analytics.track("product_view", {"name": "no productId"}, user_id="u")
    error = info.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.http_status == 400
    assert "properties.productId" in [v.field for v in error.field_violations]
    assert error.reason  # the server's ErrorInfo
    assert error.retry_delay is None
    assert error.attempts == 1
    assert len(recorder.methods("/TrackEvent")) == 1


def _wait_for_token() -> None:
    time.sleep(1.2)  # the throttled stack refills one token a second


def test_backoff_on_429_honours_retry_info(throttled: Stack) -> None:
    """Two tracks back to back on a stack allowing one ingest call a second: the second is
    refused with a real 429 (RetryInfo ~1 s), waits, and is stored; so is the first."""
    recorder = Recorder()
    name = unique("sdk_py_throttle")
    sent = 0
    with _client(throttled, interceptors=[recorder]) as client:
        for _ in range(5):
            _wait_for_token()
            start = time.monotonic()
            client.analytics.track(name, {"n": 1}, user_id="user_throttle")
            second = client.analytics.track(name, {"n": 2}, user_id="user_throttle")
            elapsed = time.monotonic() - start
            sent += 2
            attempts = [c for c in recorder.methods("/TrackEvent") if c[1].event.id == second.id]
            if any(code == grpc.StatusCode.RESOURCE_EXHAUSTED for _, _, code in attempts):
                break
        else:
            pytest.fail("the second call was never throttled: is the stack's limit 1/s?")
        assert attempts[-1][2] is None  # the retry succeeded
        assert elapsed >= 0.9, f"retried after {elapsed:.2f}s, before the server's delay"
        assert _settled_count(client, name, sent) == sent


def test_429_error_carries_the_retry_delay(throttled: Stack) -> None:
    with _client(throttled, max_retries=0) as client:
        for _ in range(5):
            _wait_for_token()
            client.analytics.track(unique("sdk_py_t"), user_id="user_throttle")
            try:
                client.analytics.track(unique("sdk_py_t"), user_id="user_throttle")
            except CartlyticsError as error:
                assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error.http_status == 429
                assert error.retry_delay is not None and 0 < error.retry_delay <= 1.5
                assert error.attempts == 1
                return
        pytest.fail("the second call was never throttled")


# -- batching mode --------------------------------------------------------------------------


class Outcomes:
    """on_success / on_failure recorders (called from the sender thread)."""

    def __init__(self) -> None:
        self.accepted: list[AcceptedEvent] = []
        self.failed: list[tuple[list[Event], CartlyticsError]] = []
        self._lock = threading.Lock()

    def on_success(self, events: list[AcceptedEvent]) -> None:
        with self._lock:
            self.accepted.extend(events)

    def on_failure(self, events: list[Event], error: CartlyticsError) -> None:
        with self._lock:
            self.failed.append((events, error))


def test_enqueue_and_flush_deliver_every_event(stack: Stack) -> None:
    outcomes = Outcomes()
    name = unique("sdk_py_batch")
    n = 25
    with _client(
        stack,
        flush_at=10,
        flush_interval=60,
        on_success=outcomes.on_success,
        on_failure=outcomes.on_failure,
    ) as client:
        ids = [client.analytics.enqueue(name, {"i": i}, user_id="user_batch") for i in range(n)]
        assert len(set(ids)) == n and all(i.startswith("evt_") for i in ids)
        assert client.analytics.flush(timeout=120)
        assert sorted(a.id for a in outcomes.accepted) == sorted(ids)
        assert all(a.event == name and a.source.id == a.id for a in outcomes.accepted)
        assert outcomes.failed == []
        assert _settled_count(client, name, n) == n


def test_close_flushes_the_queue(stack: Stack) -> None:
    name = unique("sdk_py_close")
    client = _client(stack, flush_interval=60)
    for i in range(7):
        client.analytics.enqueue(name, {"i": i}, user_id="user_close")
    assert client.close(timeout=120) == 0
    with _client(stack) as reader:
        assert _settled_count(reader, name, 7) == 7


def test_the_interval_sends_a_partial_batch(stack: Stack) -> None:
    outcomes = Outcomes()
    name = unique("sdk_py_tick")
    with _client(stack, flush_interval=0.5, on_success=outcomes.on_success) as client:
        event_id = client.analytics.enqueue(name, user_id="user_tick")
        accepted = poll(lambda: list(outcomes.accepted), lambda a: len(a) == 1, timeout=60)
        assert [a.id for a in accepted] == [event_id]


def test_a_batch_with_one_invalid_event(stack: Stack) -> None:
    outcomes = Outcomes()
    name = unique("sdk_py_mixed")
    with _client(
        stack, flush_interval=60, on_success=outcomes.on_success, on_failure=outcomes.on_failure
    ) as client:
        good = [client.analytics.enqueue(name, {"i": i}, user_id="user_mixed") for i in range(2)]
        bad = client.analytics.enqueue("product_view", {"name": "no productId"}, user_id="u")
        good.append(client.analytics.enqueue(name, {"i": 2}, user_id="user_mixed"))
        assert client.analytics.flush(timeout=120)
        assert sorted(a.id for a in outcomes.accepted) == sorted(good)
        assert len(outcomes.failed) == 1
        events, error = outcomes.failed[0]
        assert [e.id for e in events] == [bad]
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "properties.productId" in [v.field for v in error.field_violations]
        assert _settled_count(client, name, 3) == 3


def test_an_event_in_flight_to_the_end_fails_after_the_batch_budget(stack: Stack) -> None:
    """The interceptor rewrites one accepted event as refused in flight at every attempt: it is
    sent again within the batch's one budget, 1 + max_retries attempts, then fails ABORTED."""
    outcomes = Outcomes()
    hold = HoldInFlight()
    name = unique("sdk_py_inflight")
    with _client(
        stack,
        interceptors=[hold],
        max_retries=2,
        min_backoff=0.01,
        max_backoff=0.05,
        flush_interval=60,
        on_success=outcomes.on_success,
        on_failure=outcomes.on_failure,
    ) as client:
        ids = [client.analytics.enqueue(name, {"i": i}, user_id="user_inflight") for i in range(3)]
        hold.held.add(ids[1])
        assert client.analytics.flush(timeout=120)
        assert hold.requests == [ids, [ids[1]], [ids[1]]]
        assert sorted(a.id for a in outcomes.accepted) == sorted([ids[0], ids[2]])
        assert len(outcomes.failed) == 1
        events, error = outcomes.failed[0]
        assert [e.id for e in events] == [ids[1]]
        assert error.code == grpc.StatusCode.ABORTED
        assert error.reason == "EVENT_IN_FLIGHT"
        assert error.field_violations == [("id", IN_FLIGHT)]
        assert error.attempts == 3
    assert client.close() == 0


def test_a_full_queue_refuses_at_once(stack: Stack) -> None:
    name = unique("sdk_py_full")
    client = _client(stack, max_queue_events=3, flush_interval=60)
    for i in range(3):
        client.analytics.enqueue(name, {"i": i}, user_id="user_full")
    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        client.analytics.enqueue(name, {"i": 3}, user_id="user_full")
    assert time.monotonic() - started < 1
    assert isinstance(info.value, CartlyticsError) and info.value.reason == "QUEUE_FULL"

    by_bytes = _client(stack, max_queue_bytes=4000, flush_interval=60)
    by_bytes.analytics.enqueue(name, {"blob": "x" * 2000}, user_id="user_full")
    with pytest.raises(QueueFull):
        by_bytes.analytics.enqueue(name, {"blob": "y" * 2000}, user_id="user_full")

    assert client.close(timeout=120) == 0
    assert by_bytes.close(timeout=120) == 0
    with _client(stack) as reader:
        assert _settled_count(reader, name, 4) == 4


def test_calls_after_close_are_refused(stack: Stack) -> None:
    client = _client(stack)
    assert client.close() == 0
    assert client.closed
    with pytest.raises(ClientClosed):
        client.analytics.enqueue(unique("sdk_py_closed"), user_id="u")
    with pytest.raises(ClientClosed):
        client.analytics.track(unique("sdk_py_closed"), user_id="u")
    with pytest.raises(ClientClosed):
        client.analytics.get_sales()
    assert client.close() == 0  # again: the same answer


def test_close_gives_up_after_its_timeout() -> None:
    """Nothing listens on the target: the batch is retried until close's timeout, then given
    up on, reported to on_failure once per event, and counted."""
    outcomes = Outcomes()
    client = Client(
        api_key="cak_unused",
        target="127.0.0.1:1",
        flush_interval=0.1,
        timeout=1,
        max_retries=1000,
        min_backoff=0.2,
        max_backoff=0.4,
        on_failure=outcomes.on_failure,
        on_success=outcomes.on_success,
    )
    ids = [client.analytics.enqueue(unique("sdk_py_lost"), user_id="u") for _ in range(2)]
    started = time.monotonic()
    assert client.close(timeout=1.5) == 2
    assert time.monotonic() - started < 10
    assert sorted(e.id for events, _ in outcomes.failed for e in events) == sorted(ids)
    assert all(isinstance(error, ClientClosed) for _, error in outcomes.failed)
    assert outcomes.accepted == []


def _blob_for(size: int) -> dict[str, Any]:
    """Properties whose JSON plus the default context's is exactly ``size`` bytes."""
    context = len(json.dumps({"library": LIBRARY}))
    overhead = len(json.dumps({"blob": ""}))
    return {"blob": "x" * (size - context - overhead)}


def test_an_oversize_event_is_refused_before_sending(stack: Stack) -> None:
    recorder = Recorder()
    name = unique("sdk_py_big")
    with _client(stack, interceptors=[recorder], flush_interval=60) as client:
        with pytest.raises(EventTooLarge) as info:
            client.analytics.enqueue(name, _blob_for(MAX_EVENT_BYTES + 1), user_id="u")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.reason == "EVENT_TOO_LARGE"
        assert [v.field for v in info.value.field_violations] == ["properties"]
        with pytest.raises(EventTooLarge):
            client.analytics.track(name, _blob_for(MAX_EVENT_BYTES + 1), user_id="u")
        assert recorder.calls == []
        # Exactly at the limit: the server takes it (the SDK measures as the server does).
        client.analytics.track(name, _blob_for(MAX_EVENT_BYTES), user_id="u")
        client.analytics.enqueue(name, _blob_for(MAX_EVENT_BYTES), user_id="u")
        assert client.analytics.flush(timeout=120)
        assert _settled_count(client, name, 2) == 2

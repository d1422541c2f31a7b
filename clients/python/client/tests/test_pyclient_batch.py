"""The batching mode's retry budget without a server: a fake BatchTrackEvents answers each
attempt. A batch has one budget, 1 + max_retries attempts, for its whole-request retries and
the resends of the events refused only because their id is in flight (docs/clients.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2
from pyclient_support import IN_FLIGHT, hold_in_flight, run

from cartlytics_client import AcceptedEvent, AsyncClient, CartlyticsError, Client, Event

# One attempt's answer: the request's event ids -> "ok", "unavailable", or ids to hold in flight.
Script = Callable[[int, list[str]], Any]
FAST: dict[str, Any] = {"min_backoff": 0.001, "max_backoff": 0.005, "flush_interval": 60}


def _unavailable() -> grpc.RpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )


class FakeServer:
    """Answers BatchTrackEvents by ``script(attempt number, ids)``: ``"unavailable"``, or the
    set of ids to refuse as in flight (every other event accepted)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[list[str]] = []

    def answer(self, request: ingest_pb2.BatchTrackEventsRequest) -> Any:
        ids = [e.id for e in request.events]
        assert all(e.HasField("sent_at") for e in request.events)
        self.requests.append(ids)
        verdict = self.script(len(self.requests), ids)
        if verdict == "unavailable":
            raise _unavailable()
        response = ingest_pb2.BatchTrackEventsResponse()
        for index, event in enumerate(request.events):
            response.accepted.add(index=index, id=event.id, event=event.event)
        return hold_in_flight(response, set(verdict))


class _Future:
    def __init__(self, server: FakeServer, request: Any) -> None:
        self._server, self._request = server, request

    def result(self) -> Any:
        return self._server.answer(self._request)

    def cancel(self) -> bool:
        return False


class _SyncMethod:
    def __init__(self, server: FakeServer) -> None:
        self._server = server

    def future(self, request: Any, **_: Any) -> _Future:
        return _Future(self._server, request)


class _AsyncMethod:
    def __init__(self, server: FakeServer) -> None:
        self._server = server

    async def __call__(self, request: Any, **_: Any) -> Any:
        return self._server.answer(request)


class _Ingest:
    def __init__(self, method: Any) -> None:
        self.BatchTrackEvents = method


class Outcomes:
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

    def failed_ids(self) -> list[str]:
        return [e.id for events, _ in self.failed for e in events]


def _send_sync(script: Script, n: int, **settings: Any) -> tuple[FakeServer, Outcomes, list[str]]:
    """Enqueue ``n`` events in one batch, flush, close; the fake server's log and outcomes."""
    server, outcomes = FakeServer(script), Outcomes()
    client = Client(
        api_key="cak_x",
        target="127.0.0.1:1",
        on_success=outcomes.on_success,
        on_failure=outcomes.on_failure,
        **FAST,
        **settings,
    )
    client._ingest = _Ingest(_SyncMethod(server))
    ids = [client.analytics.enqueue("custom_event", user_id="u") for _ in range(n)]
    assert client.analytics.flush(timeout=30)
    assert client.close(timeout=5) == 0
    return server, outcomes, ids


def _send_async(script: Script, n: int, **settings: Any) -> tuple[FakeServer, Outcomes, list[str]]:
    server, outcomes = FakeServer(script), Outcomes()

    async def body() -> list[str]:
        client = AsyncClient(
            api_key="cak_x",
            target="127.0.0.1:1",
            on_success=outcomes.on_success,
            on_failure=outcomes.on_failure,
            **FAST,
            **settings,
        )
        client._ingest = _Ingest(_AsyncMethod(server))
        ids = [client.analytics.enqueue("custom_event", user_id="u") for _ in range(n)]
        assert await client.analytics.flush(timeout=30)
        assert await client.close(timeout=5) == 0
        return ids

    return server, outcomes, run(body(), timeout=60)


SENDERS = (_send_sync, _send_async)


def _assert_in_flight_failure(error: CartlyticsError, attempts: int) -> None:
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "EVENT_IN_FLIGHT"
    assert error.field_violations == [("id", IN_FLIGHT)]
    assert error.attempts == attempts


def test_resends_share_the_batch_budget() -> None:
    """One event always in flight: 1 + max_retries requests in all, then ABORTED once."""
    for send in SENDERS:
        held: list[str] = []

        def script(attempt: int, ids: list[str], held: list[str] = held) -> Any:
            held[:] = held or ids[1:2]
            return held

        server, outcomes, ids = send(script, 3, max_retries=3)
        assert server.requests == [ids] + [[ids[1]]] * 3
        assert sorted(a.id for a in outcomes.accepted) == sorted([ids[0], ids[2]])
        assert len(outcomes.failed) == 1
        events, error = outcomes.failed[0]
        assert [e.id for e in events] == [ids[1]]
        _assert_in_flight_failure(error, 4)


def test_no_retries_means_one_attempt() -> None:
    for send in SENDERS:
        server, outcomes, ids = send(lambda attempt, ids: ids, 2, max_retries=0)
        assert server.requests == [ids]
        assert outcomes.accepted == []
        assert outcomes.failed_ids() == ids
        _assert_in_flight_failure(outcomes.failed[0][1], 1)


def test_request_retries_and_resends_count_together() -> None:
    """UNAVAILABLE, then one event in flight, then UNAVAILABLE to the end: the resend's request
    gets what is left of the budget, not a budget of its own."""
    for send in SENDERS:

        def script(attempt: int, ids: list[str]) -> Any:
            if attempt == 2:
                return ids[:1]
            return "unavailable"

        server, outcomes, ids = send(script, 2, max_retries=4)
        assert server.requests == [ids, ids, [ids[0]], [ids[0]], [ids[0]]]
        assert [a.id for a in outcomes.accepted] == [ids[1]]
        assert len(outcomes.failed) == 1
        events, error = outcomes.failed[0]
        assert [e.id for e in events] == [ids[0]]
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.attempts == 5


def test_in_flight_after_request_retries_fails_at_the_budget() -> None:
    """Two UNAVAILABLE, then the event in flight at the last attempt of the budget."""
    for send in SENDERS:

        def script(attempt: int, ids: list[str]) -> Any:
            return "unavailable" if attempt <= 2 else ids

        server, outcomes, ids = send(script, 1, max_retries=2)
        assert server.requests == [ids] * 3
        assert outcomes.failed_ids() == ids
        _assert_in_flight_failure(outcomes.failed[0][1], 3)


def test_a_resent_event_is_delivered_within_the_budget() -> None:
    for send in SENDERS:

        def script(attempt: int, ids: list[str]) -> Any:
            return ids[-1:] if attempt <= 2 else []

        server, outcomes, ids = send(script, 3, max_retries=2)
        assert server.requests == [ids, ids[-1:], ids[-1:]]
        assert sorted(a.id for a in outcomes.accepted) == sorted(ids)
        assert outcomes.failed == []

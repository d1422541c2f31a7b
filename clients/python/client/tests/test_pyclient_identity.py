"""Identity without a cartlytics server: a local gRPC IngestService (grpc.server on 127.0.0.1)
acknowledges every event and records it as it arrived, as the event's JSON (the REST form:
``userId`` / ``anonymousId`` present only when set), to check the ids each event carried, for
``Client`` and ``AsyncClient`` (docs/clients.md, "Identity")."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf import json_format
from pyclient_support import run

from cartlytics_client import AcceptedEvent, AsyncClient, Client

UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
QUIET: dict[str, Any] = {"flush_interval": 3600, "max_retries": 0}


class WireServer(ingest_pb2_grpc.IngestServiceServicer):
    """Accepts every event; ``events`` holds each one's JSON in arrival order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _record(self, event: ingest_pb2.Event) -> None:
        with self._lock:
            self.events.append(json_format.MessageToDict(event))

    def TrackEvent(
        self, request: ingest_pb2.TrackEventRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.TrackEventResponse:
        self._record(request.event)
        e = request.event
        return ingest_pb2.TrackEventResponse(id=e.id, event=e.event, timestamp=e.timestamp)

    def BatchTrackEvents(
        self, request: ingest_pb2.BatchTrackEventsRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.BatchTrackEventsResponse:
        response = ingest_pb2.BatchTrackEventsResponse()
        for index, e in enumerate(request.events):
            self._record(e)
            response.accepted.add(index=index, id=e.id, event=e.event, timestamp=e.timestamp)
        return response

    def ids(self) -> dict[str, tuple[str | None, str | None]]:
        """``{event name: (userId, anonymousId)}`` as sent (None: not in the JSON)."""
        with self._lock:
            names = [e["event"] for e in self.events]
            assert len(names) == len(set(names)), f"an event arrived twice: {names}"
            return {e["event"]: (e.get("userId"), e.get("anonymousId")) for e in self.events}


@pytest.fixture
def wire() -> Iterator[tuple[WireServer, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = WireServer()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _expected(anon: str, fresh: str) -> dict[str, tuple[str | None, str | None]]:
    return {
        "before": (None, anon),
        "queued_before": (None, anon),  # enqueued before identify: not rewritten
        "after": ("user_1", anon),
        "queued_after": ("user_1", anon),
        # The caller's ids win, whole: the client adds none of its own to an event naming one.
        "own_user_kw": ("user_other", None),
        "own_anon_property": (None, "anon_other"),
        "own_both": ("user_x", "anon_x"),
        "queued_own": ("user_q", None),
        "after_reset": (None, fresh),
        "queued_after_reset": (None, fresh),
    }


def test_sync_identify_and_reset_on_the_wire(wire: tuple[WireServer, str]) -> None:
    server, target = wire
    sources: list[AcceptedEvent] = []
    with Client("cak_test", target, on_success=sources.extend, **QUIET) as client:
        a = client.analytics
        anon = a.anonymous_id
        assert UUID_V4.match(anon) and not a.user_id
        a.track("before", {"n": 1})
        a.enqueue("queued_before")
        sent = len(server.events)
        a.identify("user_1")
        assert len(server.events) == sent, "identify sends nothing"
        assert (a.user_id, a.anonymous_id) == ("user_1", anon)
        a.track("after")
        a.enqueue("queued_after", {"n": 2})
        a.track("own_user_kw", user_id="user_other")
        a.track("own_anon_property", {"anonymousId": "anon_other"})
        a.track("own_both", {"userId": "user_x"}, anonymous_id="anon_x")
        a.enqueue("queued_own", user_id="user_q")
        assert a.flush(timeout=30)
        a.reset()
        fresh = a.anonymous_id
        assert UUID_V4.match(fresh) and fresh != anon and a.user_id is None
        a.track("after_reset")
        a.enqueue("queued_after_reset")
    assert server.ids() == _expected(anon, fresh)
    after = next(e for e in server.events if e["event"] == "queued_after")
    assert after["properties"] == {"n": 2}
    # on_success's source is the event as sent, the client's ids included.
    by_name = {s.source.event: s.source for s in sources}
    assert (by_name["queued_after"].user_id, by_name["queued_after"].anonymous_id) == (
        "user_1",
        anon,
    )


def test_async_identify_and_reset_on_the_wire(wire: tuple[WireServer, str]) -> None:
    server, target = wire

    async def body() -> tuple[str, str]:
        async with AsyncClient("cak_test", target, **QUIET) as client:
            a = client.analytics
            anon = a.anonymous_id
            assert UUID_V4.match(anon) and a.user_id is None
            await a.track("before", {"n": 1})
            a.enqueue("queued_before")
            sent = len(server.events)
            a.identify("user_1")
            assert len(server.events) == sent, "identify sends nothing"
            await a.track("after")
            a.enqueue("queued_after", {"n": 2})
            await a.track("own_user_kw", user_id="user_other")
            await a.track("own_anon_property", {"anonymousId": "anon_other"})
            await a.track("own_both", {"userId": "user_x"}, anonymous_id="anon_x")
            a.enqueue("queued_own", user_id="user_q")
            assert await a.flush(timeout=30)
            a.reset()
            fresh = a.anonymous_id
            assert UUID_V4.match(fresh) and fresh != anon and a.user_id is None
            await a.track("after_reset")
            a.enqueue("queued_after_reset")
        return anon, fresh

    anon, fresh = run(body(), timeout=60)
    assert server.ids() == _expected(anon, fresh)


def test_the_anonymous_id_argument_and_bad_ids(wire: tuple[WireServer, str]) -> None:
    server, target = wire
    with Client("cak_test", target, anonymous_id="anon_given", **QUIET) as client:
        a = client.analytics
        assert a.anonymous_id == "anon_given"
        for bad in ("", "   ", "u" * 257):
            with pytest.raises(ValueError):
                a.identify(bad)
        with pytest.raises(TypeError):
            a.identify(42)  # type: ignore[arg-type]
        assert a.user_id is None
        a.identify("é" * 256)
        a.identify("user_2")
        a.track("given")
    assert server.ids() == {"given": ("user_2", "anon_given")}
    with pytest.raises(ValueError):
        Client("cak_test", target, anonymous_id="")
    with pytest.raises(ValueError):
        AsyncClient("cak_test", target, anonymous_id="a" * 257)
    # Each client is its own visitor.
    with Client("cak_test", target) as one, Client("cak_test", target) as two:
        assert one.analytics.anonymous_id != two.analytics.anonymous_id


def test_identity_from_many_threads(wire: tuple[WireServer, str]) -> None:
    """identify, reset and enqueue from threads at once: every event arrives, each with an
    anonymousId the client had and a userId identify set."""
    server, target = wire
    workers, each = 8, 40
    with Client("cak_test", target, flush_at=50, **QUIET) as client:
        a = client.analytics
        anonymous_ids = {a.anonymous_id}
        lock = threading.Lock()

        def work(w: int) -> None:
            for i in range(each):
                if i % 4 == 0:
                    a.identify(f"user_{w}_{i}")
                elif i % 4 == 1 and w % 2 == 0:
                    a.reset()
                    with lock:
                        anonymous_ids.add(a.anonymous_id)
                a.enqueue(f"e_{w}_{i}")

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a.flush(timeout=30)
    ids = server.ids()
    assert len(ids) == workers * each
    for name, (user, anon) in ids.items():
        assert anon is not None and UUID_V4.match(anon), (name, anon)
        assert user is None or re.fullmatch(r"user_\d+_\d+", user), (name, user)

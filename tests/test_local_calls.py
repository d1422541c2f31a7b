"""In-process calls (common/local_calls.py) run a method as gRPC's server would: through the
process's ServiceInterceptor (auth, scope, error mapping, metrics), answering with the bytes and
metadata a remote call gets, or raising the AioRpcError it raises.

Every REST test of the running system goes through this path too (the gateway's default beside
its services); tests/test_gateway_transcoding.py runs the gateway's own tests both ways.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from cartlytics.common.auth import KeyRing, Principal, current_principal
from cartlytics.common.errors import FieldViolation, invalid_argument
from cartlytics.common.interceptors import RPC_TOTAL, STATUS_DETAILS_KEY, ServiceInterceptor
from cartlytics.common.local_calls import HandlerRecorder, LocalCalls
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2

PING = "/analytics.ingest.v1.IngestService/Ping"
TRACK = "/analytics.ingest.v1.IngestService/TrackEvent"
EXPORT = "/analytics.export.v1.ExportService/ExportData"


class Recording(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
    """Ping records who called; TrackEvent refuses every event naming its field."""

    def __init__(self) -> None:
        self.callers: list[Principal] = []

    async def Ping(self, request: Any, context: Any) -> Any:
        self.callers.append(current_principal.get())
        return ingest_pb2.PingResponse()

    async def TrackEvent(self, request: Any, context: Any) -> Any:
        raise invalid_argument([FieldViolation("event.event", "must not be empty")])


def _calls(servicer: Recording) -> LocalCalls:
    keyring = KeyRing()
    keyring.add("cak_ingest", "shop", frozenset({options_pb2.SCOPE_INGEST}))
    keyring.add("cak_read", "shop", frozenset({options_pb2.SCOPE_READ}))
    recorder = HandlerRecorder(aio.server())
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, recorder)
    return LocalCalls(recorder.handlers, [ServiceInterceptor(keyring)])


def _count(method: str, code: str) -> float:
    return RPC_TOTAL.labels(method, code)._value.get()  # type: ignore[no-any-return]


def test_a_call_is_authenticated_and_its_principal_stays_inside() -> None:
    servicer = Recording()

    async def go() -> bytes:
        calls = _calls(servicer)
        assert calls.serves(PING) and not calls.serves(EXPORT)
        before = _count(PING, "OK")
        data, initial, _ = await calls.unary(PING, b"", (("authorization", "Bearer cak_ingest"),))
        assert _count(PING, "OK") == before + 1  # counted as an RPC
        # The handler's principal was set in its own context, not the caller's.
        with pytest.raises(LookupError):
            current_principal.get()
        assert initial == ()  # no x-http-code: Ping's success code is 200
        return data

    assert ingest_pb2.PingResponse.FromString(asyncio.run(go())) == ingest_pb2.PingResponse()
    assert [(p.project_id, p.operator) for p in servicer.callers] == [("shop", False)]


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("", grpc.StatusCode.UNAUTHENTICATED),
        ("Bearer cak_unknown", grpc.StatusCode.UNAUTHENTICATED),
        ("Bearer cak_read", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_refused_keys_never_reach_the_handler(authorization: str, code: grpc.StatusCode) -> None:
    servicer = Recording()
    metadata = (("authorization", authorization),) if authorization else ()

    async def go() -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as caught:
            await _calls(servicer).unary(PING, b"", metadata)
        return caught.value

    error = asyncio.run(go())
    assert error.code() == code
    assert servicer.callers == []
    details = dict(error.trailing_metadata())[STATUS_DETAILS_KEY]
    assert status_pb2.Status.FromString(details).code == code.value[0]


def test_a_refusal_by_the_handler_carries_its_field_violations() -> None:
    async def go() -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as caught:
            await _calls(Recording()).unary(
                TRACK,
                ingest_pb2.TrackEventRequest().SerializeToString(),
                (("authorization", "Bearer cak_ingest"),),
            )
        return caught.value

    error = asyncio.run(go())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())[STATUS_DETAILS_KEY])
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("event.event", "must not be empty")
    ]

"""IngestService/Ping: a no-op that pays exactly what every call pays (auth, interceptors, gateway).

The benchmark (bench/run.py) divides per-request figures by it, so it must stay behind the same
authentication as ingestion and do nothing else.
"""

from __future__ import annotations

import grpc
import pytest

from cartlytics.common import catalog
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2
from tests.rest import call
from tests.servers import System

PING = "/analytics.ingest.v1.IngestService/Ping"


def test_ping_declares_the_ingest_scope() -> None:
    assert catalog.methods()[PING].scope == options_pb2.SCOPE_INGEST


def test_ping_over_rest_needs_a_key_and_answers_an_empty_object(api: System) -> None:
    missing = call("GET", f"{api.http_url}/analytics/ping")
    assert missing.status == 401
    wrong = call("GET", f"{api.http_url}/analytics/ping", key="cak_not_a_key")
    assert wrong.status == 401
    reply = call("GET", f"{api.http_url}/analytics/ping", key=api.key)
    assert reply.status == 200
    assert reply.json() == {}
    unknown = call("GET", f"{api.http_url}/analytics/ping?x=1", key=api.key)
    assert unknown.status == 400  # like every route: unknown query parameters are refused


def test_ping_over_grpc_needs_a_key(system: System) -> None:
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Ping(ingest_pb2.PingRequest(), timeout=5)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {system.key}"),)
        reply = stub.Ping(ingest_pb2.PingRequest(), metadata=metadata, timeout=5)
        assert reply == ingest_pb2.PingResponse()

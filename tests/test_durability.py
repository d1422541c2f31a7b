"""Ingestion that loses nothing and counts nothing twice, tested by really breaking things:
SIGKILL of the process, Redis stopped. ClickHouse stopped under load, and the other faults, are
in tests/test_faults.py (docs/faults.md)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.load import Stream, logged_ids, stored_ids
from tests.load import clickhouse_url as _clickhouse_url
from tests.load import sales as _sales
from tests.rest import call
from tests.servers import RedisServer, System, start_system


@pytest.mark.parametrize("ingest_log", ["no", "yes"], ids=["insert-ack", "ingest-log"])
def test_acknowledged_events_survive_sigkill(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, ingest_log: str
) -> None:
    """kill -9 under load: no acknowledged event lost, none counted twice after the restart.
    With the ingest log, an acknowledged event is in ClickHouse or in the log at the kill, and
    the restart's replay stores it (once: its writer leaves out rows already stored)."""
    key = "cak_" + uuid.uuid4().hex
    url = _clickhouse_url(backend, request)
    env = {"ANALYTICS_INGEST_LOG": ingest_log}
    system = start_system(tmp_path / "data", key, clickhouse_url=url, extra_env=env)
    stream = Stream(system.grpc_target, key, "DKK")
    stream.start()
    try:
        stream.wait_for(600)
        system.process.send_signal(signal.SIGKILL)
        system.process.wait(timeout=10)
    finally:
        stream.finish()
    acked = set(stream.acked)
    stored = stored_ids(url, tmp_path / "data")
    logged = logged_ids(tmp_path / "data") if ingest_log == "yes" else set()
    lost = acked - set(stored) - logged
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:5]}"
    restarted = start_system(tmp_path / "data", key, clickhouse_url=url, extra_env=env)
    try:
        # Acknowledged orders all count; an unacknowledged one may or may not (the kill may have
        # landed in the middle of its INSERT, between the table and its rollups).
        counted = _sales(restarted, "DKK")["orders"]
        assert len(acked) <= counted <= len(stream.sent)
        # The client retries what was never acknowledged; then every order counts exactly once.
        # Ids the killed process had claimed read as "in flight" until the claim expires
        # (seconds): the client retries those, as it would a 409.
        stream.target = restarted.grpc_target
        stream.settle()
        # Embedded, the engine dies with the process: a kill between `events` and its views
        # leaves an order in some rollups only, and the restart repairs them before serving
        # (storage/repair.py; tests/test_repair.py cuts such writes deterministically).
        counted = _sales(restarted, "DKK")["orders"]
        assert counted == len(stream.sent)
    finally:
        restarted.stop()


@dataclass
class RedisBacked:
    """A system using a Redis server of its own, which a test may stop or flush."""

    system: System
    redis: RedisServer


@pytest.fixture
def redis_backed(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[RedisBacked]:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    system = start_system(
        tmp_path / "data", "cak_" + uuid.uuid4().hex,
        clickhouse_url=_clickhouse_url(backend, request),
        extra_env={"REDIS_URL": redis_server.url},
    )  # fmt: skip
    yield RedisBacked(system, redis_server)
    system.stop()
    redis_server.stop()


def test_redis_stopped_leaves_ingestion_and_queries_working(redis_backed: RedisBacked) -> None:
    system, redis_server = redis_backed.system, redis_backed.redis
    key = system.key
    order = {
        "event": "order_completed",
        "userId": "u",
        "properties": {"orderId": "r1", "total": 500, "currency": "CZK"},
    }
    assert call("POST", f"{system.http_url}/analytics/event", key, order).status == 201
    redis_server.stop()
    started = time.monotonic()
    for n in range(20):
        order["properties"] = {"orderId": f"r_down_{n}", "total": 100, "currency": "CZK"}
        reply = call("POST", f"{system.http_url}/analytics/event", key, order)
        assert reply.status == 201, reply.body
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"20 events took {elapsed:.1f}s with Redis down"
    assert _sales(system, "CZK") == {"orders": 21, "revenue": 2500}


def test_retry_after_the_dedup_window_changes_no_figure(redis_backed: RedisBacked) -> None:
    system, redis_server = redis_backed.system, redis_backed.redis
    key = system.key
    order = {
        "id": "evt_retry_me",
        "event": "order_completed",
        "userId": "u",
        "properties": {"orderId": "w1", "total": 700, "currency": "HUF"},
    }
    first = call("POST", f"{system.http_url}/analytics/event", key, order)
    again = call("POST", f"{system.http_url}/analytics/event", key, order)
    assert first.status == again.status == 201
    assert first.json() == again.json(), "a retry inside the window gets the same answer"
    redis.Redis.from_url(redis_server.url).flushall()  # the window forgets
    late = call("POST", f"{system.http_url}/analytics/event", key, order)
    assert late.status == 201
    assert _sales(system, "HUF") == {"orders": 1, "revenue": 700}


def test_events_are_queryable_as_soon_as_acknowledged(system: System) -> None:
    currency = "RON"
    for n in range(1, 21):
        order = {
            "event": "order_completed",
            "userId": f"fresh_{n}",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "properties": {"orderId": f"fresh_{n}", "total": 10, "currency": currency},
        }
        acked = call("POST", f"{system.http_url}/analytics/event", system.key, order)
        assert acked.status == 201
        assert _sales(system, currency)["orders"] == n  # no wait at all between the two calls

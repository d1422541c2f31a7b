"""Microservices mode: each service in its own process, sharing a ClickHouse server and Redis,
with the REST gateway as a process of its own (what Envoy does in production)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.rest import call
from tests.servers import ClickHouseServer, RedisServer, System, start_system


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    clickhouse_server: ClickHouseServer,
    redis_server: RedisServer,
) -> Iterator[dict[str, System]]:
    key = "cak_" + uuid.uuid4().hex
    database = "analytics_split_" + uuid.uuid4().hex[:8]
    shared = {
        "REDIS_URL": redis_server.url,
        "CLICKHOUSE_URL": clickhouse_server.url.replace("/analytics", "/" + database),
    }
    processes: dict[str, System] = {}
    try:
        for service in ("ingest", "metrics", "export", "privacy"):
            processes[service] = start_system(
                tmp_path_factory.mktemp(service), key, target=service,
                clickhouse_url=shared["CLICKHOUSE_URL"], extra_env=shared,
            )  # fmt: skip
        upstreams = ",".join(f"{name}={p.grpc_target}" for name, p in processes.items())
        processes["gateway"] = start_system(
            tmp_path_factory.mktemp("gateway"), key, target="gateway",
            extra_env={"ANALYTICS_GATEWAY_UPSTREAM": upstreams},
        )  # fmt: skip
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def test_each_service_runs_alone_and_the_gateway_routes_to_it(
    cluster: dict[str, System], tmp_path: Path
) -> None:
    gateway = cluster["gateway"]
    assert not gateway.grpc_target, "the gateway target serves no gRPC of its own"
    assert all(not cluster[s].http_url for s in ("ingest", "metrics", "export", "privacy"))
    assert call("GET", f"{gateway.http_url}/healthz").status == 200
    order = {
        "event": "order_completed",
        "userId": "split_user",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "properties": {"orderId": "split_1", "total": 1234, "currency": "NOK"},
    }
    tracked = call("POST", f"{gateway.http_url}/analytics/event", gateway.key, order)
    assert tracked.status == 201, tracked.body
    # Another process: with the ingest log (the default), it sees the order once the ingest
    # process's writer has stored it (docs/ingest-log.md): milliseconds, well under a second.
    deadline = time.monotonic() + 10
    while True:
        sales = call(
            "GET", f"{gateway.http_url}/analytics/sales?period=1d&currency=NOK", gateway.key
        )
        assert sales.status == 200, sales.body
        if sales.json()["orders"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (sales.json()["orders"], sales.json()["revenue"]) == (1, 1234)
    path = "/analytics/export?type=orders&period=1d&currency=NOK&format=ndjson"
    export = call("GET", f"{gateway.http_url}{path}", gateway.key)
    assert export.status == 200, export.body
    assert [json.loads(line)["orderId"] for line in export.body.splitlines()] == ["split_1"]
    # The erasure goes through the gateway to the privacy service: the order is gone.
    erased = call("DELETE", f"{gateway.http_url}/analytics/users/split_user", gateway.key)
    assert erased.status == 200, erased.body
    assert int(erased.json()["eventsErased"]) == 1
    sales = call("GET", f"{gateway.http_url}/analytics/sales?period=1d&currency=NOK", gateway.key)
    assert (sales.json()["orders"], sales.json()["revenue"]) == (0, 0)


def test_a_stopped_service_is_503_and_the_others_keep_working(cluster: dict[str, System]) -> None:
    gateway = cluster["gateway"]
    assert cluster["metrics"].stop(signal.SIGTERM) == 0
    sales = call("GET", f"{gateway.http_url}/analytics/sales", gateway.key)
    assert sales.status == 503
    event = {"event": "search", "userId": "u", "properties": {"query": "boots"}}
    assert call("POST", f"{gateway.http_url}/analytics/event", gateway.key, event).status == 201

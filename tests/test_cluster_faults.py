"""Faults of a cluster under a stream of orders (tests/load.py's clients, which retry as a
client should): one replica killed and restarted, one shard's both replicas stopped for 10 s.

Afterwards every acknowledged event is stored and counted once; while a shard is down ingest
refuses what it cannot store with 503 / UNAVAILABLE and a retry hint, and reads say so (503).
The ingest log is off here: acknowledged means stored on the cluster (docs/cluster.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartlytics.common.storage import Sql, Storage, open_storage
from tests.cluster import CLUSTER, ClickHouseCluster, ClusterNode, own_cluster
from tests.load import Load, RestStream, Stream, sales, statuses
from tests.rest import call
from tests.servers import System, start_system


@pytest.fixture(scope="module")
def clickhouse_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """This module's own cluster (overrides the session's): its tests kill and stop nodes."""
    yield from own_cluster(tmp_path_factory)


@pytest.fixture
def database() -> str:
    return "faults_" + uuid.uuid4().hex[:8]


@pytest.fixture
def cluster_system(
    clickhouse_cluster: ClickHouseCluster, database: str, tmp_path: Path
) -> Iterator[System]:
    system = start_system(
        tmp_path / "data",
        "cak_" + uuid.uuid4().hex,
        # Shard 1's second replica: the first is the one killed (the node a service connects to
        # is its way in; docs/cluster.md says how to give it others).
        clickhouse_url=clickhouse_cluster.url(database, node=1),
        extra_env={
            "CLICKHOUSE_CLUSTER": CLUSTER,
            "ANALYTICS_INGEST_LOG": "no",
            "ANALYTICS_PEOPLE_SNAPSHOT_SECONDS": "1",  # the keeper's tick (duplicates.py)
        },
        timeout=180,
    )
    yield system
    system.stop()


@pytest.fixture
def reader(
    clickhouse_cluster: ClickHouseCluster, database: str, cluster_system: System
) -> Iterator[Storage]:
    storage = open_storage(clickhouse_cluster.url(database, node=2), Path("/nonexistent"), CLUSTER)
    yield storage
    storage.close()


def _stored(reader: Storage) -> dict[str, int]:
    """Each stored event id (without ``evt_``) and its rows, read through the cluster."""
    rows = reader.query_sync(Sql("SELECT event_id, count() FROM events GROUP BY event_id"))
    return {str(k).removeprefix("evt_"): int(v) for k, v in rows}


def _loads(system: System) -> list[Load]:
    return [
        Stream(system.grpc_target, system.key, "PLN", prefix="g_", workers=2),
        RestStream(system.http_url, system.key, "PLN", prefix="r_", workers=1),
    ]


def _all_back(nodes: list[ClusterNode]) -> None:
    for node in nodes:
        if not node.running():
            node.restart()


def _settled(loads: list[Load], reader: Storage, system: System) -> None:
    """Every id sent is acknowledged at last, stored, and counted once by the figures."""
    for load in loads:
        load.finish()
    for load in loads:
        load.settle()
    acked = set().union(*(load.acked for load in loads))
    deadline = time.monotonic() + 60
    while set(_stored(reader)) != acked and time.monotonic() < deadline:
        time.sleep(0.5)  # a replica back from an outage is passed over until it caught up
    assert set(_stored(reader)) == acked
    for load in loads:
        assert not load.errors, load.errors
    # A request refused after its rows were stored (a shard stopping under it) was sent again:
    # its orders are stored twice. Ingest lists such an orderId when it reads both copies; one
    # that a replica still lacked is listed by the keeper once replication caught up (every
    # second here): then no figure counts it twice.
    deadline = time.monotonic() + 30
    while sales(system, "PLN")["orders"] != len(acked) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sales(system, "PLN")["orders"] == len(acked)


def test_a_replica_killed_and_restarted_under_load(
    clickhouse_cluster: ClickHouseCluster, cluster_system: System, reader: Storage
) -> None:
    """kill -9 of the replica taking shard 1's writes: the other replica takes them at once."""
    victim = clickhouse_cluster.shard(1)[0]
    loads = _loads(cluster_system)
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for(60)
        victim.kill()
        killed = time.monotonic()
        acked_at_kill = [len(load.acked) for load in loads]
        time.sleep(5)
        # Writes went on, to the other replica.
        for load, before in zip(loads, acked_at_kill, strict=True):
            assert len(load.acked) > before + 20, (len(load.acked), before)
            during = [r for r in load.refusals if r.at >= killed]
            assert {r.code for r in during} <= {"UNAVAILABLE", "503"}, statuses(during)
        victim.restart()
        for load in loads:
            load.wait_for(len(load.acked) + 40)
        _settled(loads, reader, cluster_system)
    finally:
        for load in loads:
            load.finish()
        _all_back(clickhouse_cluster.nodes)


def test_a_shard_stopped_for_10_seconds_under_load(
    clickhouse_cluster: ClickHouseCluster, cluster_system: System, reader: Storage
) -> None:
    """Both replicas of shard 2 stopped: what belongs there is refused as retryable, reads say
    the store is unavailable, and once it is back every event sent is stored once."""
    shard = clickhouse_cluster.shard(2)
    loads = _loads(cluster_system)
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for(60)
        for node in shard:
            node.stop()
        stopped = time.monotonic()
        queried = call(
            "GET", f"{cluster_system.http_url}/analytics/sales?currency=PLN", cluster_system.key
        )
        assert queried.status == 503, queried.body
        assert {k.lower() for k in queried.headers} >= {"retry-after"}, queried.headers
        time.sleep(10)
        back = time.monotonic()
        for load in loads:
            during = [r for r in load.refusals if stopped <= r.at <= back]
            assert during, "no send was refused while a shard was down"
            assert {r.code for r in during} <= {"UNAVAILABLE", "503"}, statuses(during)
            assert all(r.hint for r in during), "a refusal without Retry-After / RetryInfo"
        for node in shard:
            node.start()
        for load in loads:
            load.wait_for(len(load.acked) + 40)
        _settled(loads, reader, cluster_system)
    finally:
        for load in loads:
            load.finish()
        _all_back(clickhouse_cluster.nodes)

"""Fixtures: real ClickHouse (chdb in-process and a clickhouse-server) and real systems.

Every storage and service test runs on both backends (``backend`` is "chdb" or "clickhouse").
Without a clickhouse-server binary the server half is skipped, except when
``CARTLYTICS_REQUIRE_CLICKHOUSE_SERVER=1`` (set by .ci/run), where a skip would hide a gap and so
is a failure.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartlytics.common.storage import Storage, open_storage
from tests.cluster import ClickHouseCluster, own_cluster
from tests.servers import ClickHouseServer, EnvoyGateway, RedisServer, System, start_system

BACKENDS = ("chdb", "clickhouse")
REQUIRE_SERVER = os.environ.get("CARTLYTICS_REQUIRE_CLICKHOUSE_SERVER") == "1"
# Each `cartlytics run` the tests start prepares large requests in one worker process, not in
# `auto`'s one per core (decision 74): a worker costs ~0.6 s of CPU as the service starts, and
# the suite starts hundreds (~2 minutes more on CI with two). test_ingest_workers sets its own
# counts; bench/ keeps the default.
os.environ.setdefault("ANALYTICS_INGEST_WORKERS", "1")


def _need_server() -> None:
    if shutil.which("clickhouse-server") is None:
        if REQUIRE_SERVER:
            pytest.fail("clickhouse-server is required here but not on PATH")
        pytest.skip("clickhouse-server not on PATH")


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    _need_server()
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _chdb_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    # chdb allows one data folder per process, so the whole session shares one; tests keep apart
    # by using their own project ids, as tenants do.
    storage = open_storage("", tmp_path_factory.mktemp("chdb"))
    storage.migrate()
    yield storage
    storage.close()


@pytest.fixture(scope="session")
def _server_storage(clickhouse_server: ClickHouseServer) -> Iterator[Storage]:
    storage = open_storage(clickhouse_server.url, Path("/nonexistent"))
    storage.migrate()
    yield storage
    storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(backend: str, request: pytest.FixtureRequest) -> Storage:
    name = "_chdb_storage" if backend == "chdb" else "_server_storage"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def project_id() -> str:
    return "test_" + uuid.uuid4().hex[:12]


def _system(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_url: str, name: str
) -> Iterator[System]:
    system = start_system(
        tmp_path_factory.mktemp(name),
        key="cak_test_" + uuid.uuid4().hex,
        clickhouse_url=clickhouse_url,
        # The people snapshot rebuilt after any new link, every second or so: every test reads
        # visitors through a snapshot and newer rows in whatever mix (and the swaps race reads).
        extra_env={
            "ANALYTICS_PEOPLE_SNAPSHOT_SECONDS": "1",
            "ANALYTICS_PEOPLE_SNAPSHOT_CHANGES": "1",
        },
    )
    yield system
    system.stop()


@pytest.fixture(scope="module")
def _chdb_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from _system(tmp_path_factory, "", "system-chdb")


@pytest.fixture(scope="module")
def _server_system(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_server: ClickHouseServer
) -> Iterator[System]:
    database = "analytics_" + uuid.uuid4().hex[:8]
    url = clickhouse_server.url.replace("/analytics", "/" + database)
    yield from _system(tmp_path_factory, url, "system-server")


@pytest.fixture
def system(backend: str, request: pytest.FixtureRequest) -> System:
    """The whole system (``cartlytics run``) on the given backend, one per test module."""
    name = "_chdb_system" if backend == "chdb" else "_server_system"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


_ENVOYS: dict[str, EnvoyGateway] = {}


@pytest.fixture(scope="session", autouse=True)
def _stop_envoys() -> Iterator[None]:
    yield
    for envoy in _ENVOYS.values():
        envoy.stop()


@pytest.fixture(params=["in-process", "envoy"])
def api(
    system: System, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> System:
    """The system seen through a REST gateway: the in-process one, or Envoy when installed."""
    if request.param == "in-process":
        return system
    if shutil.which("envoy") is None:
        pytest.skip("no envoy binary on PATH (none installs on these machines)")
    envoy = _ENVOYS.get(system.grpc_target)
    if envoy is None:
        envoy = EnvoyGateway(tmp_path_factory.mktemp("envoy"), system.grpc_target)
        envoy.start()
        _ENVOYS[system.grpc_target] = envoy
    return dataclasses.replace(system, http_url=envoy.url)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A valkey-server of the module's own (for systems that share one Redis)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def clickhouse_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """ZooKeeper and 2 shards x 2 replicas of clickhouse-server (tests/cluster.py), for the
    cluster tests (tests/test_cluster*.py); skipped as the server tests are without them."""
    yield from own_cluster(tmp_path_factory)

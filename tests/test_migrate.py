"""Schema migrations applied once for many replicas: `cartlytics migrate` (the Kubernetes Job),
`cartlytics migrate --check` (the replicas' init container), and replicas that only check
(ANALYTICS_MIGRATE_ON_START=no) and refuse to start on a schema behind them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cartlytics.common.storage.migrations import MIGRATIONS
from tests.load import clickhouse_url as _clickhouse_url
from tests.servers import start_system

ALL_VERSIONS = [m.version for m in MIGRATIONS]


def _cartlytics(
    data_dir: Path, url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cartlytics", *args],
        env={**os.environ, "ANALYTICS_DATA_DIR": str(data_dir), "CLICKHOUSE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replicas_that_only_check_start_once_the_job_migrated(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    if url:  # a database of its own, so that its schema starts empty
        url = url.rsplit("/", 1)[0] + "/migrate_" + uuid.uuid4().hex[:8]
    data_dir = tmp_path / "data"

    check = _cartlytics(data_dir, url, "migrate", "--check")
    assert check.returncode == 1, check.stderr
    assert f"pending migrations: {ALL_VERSIONS}" in check.stdout

    # A replica told not to migrate refuses to start on a schema behind it, naming the fix.
    refused = _cartlytics(
        data_dir, url, "run", "--target", "metrics", ANALYTICS_MIGRATE_ON_START="no",
        ANALYTICS_GRPC_PORT="0", REDIS_URL="",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "the schema lacks migrations" in refused.stderr
    assert "run `cartlytics migrate` first" in refused.stderr

    job = _cartlytics(data_dir, url, "migrate")
    assert job.returncode == 0, job.stderr
    assert f"applied migrations: {ALL_VERSIONS}" in job.stdout
    assert _cartlytics(data_dir, url, "migrate", "--check").returncode == 0
    again = _cartlytics(data_dir, url, "migrate")
    assert "none (up to date)" in again.stdout

    key = "cak_" + uuid.uuid4().hex
    system = start_system(
        data_dir, key, clickhouse_url=url, extra_env={"ANALYTICS_MIGRATE_ON_START": "no"}
    )
    try:
        assert "migrations_applied=[]" in system.log()
    finally:
        system.stop()

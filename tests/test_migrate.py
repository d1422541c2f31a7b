"""Schema migrations applied once for many replicas: `cartlytics migrate` (the Kubernetes Job),
`cartlytics migrate --check` (the replicas' init container), replicas that only check
(ANALYTICS_MIGRATE_ON_START=no) and refuse to start on a schema behind them, and
`cartlytics migrate --down-to N` (the way back)."""

from __future__ import annotations

import json
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

    # The operator's way back: the newest migration undone, then applied again; below version 1
    # (events, which nothing rebuilds) is refused with nothing undone.
    newest = ALL_VERSIONS[-1]
    down = _cartlytics(data_dir, url, "migrate", "--down-to", str(newest - 1))
    assert down.returncode == 0, down.stderr
    assert f"undone migrations: [{newest}]" in down.stdout
    assert (
        f"pending migrations: [{newest}]" in _cartlytics(data_dir, url, "migrate", "--check").stdout
    )
    refused_down = _cartlytics(data_dir, url, "migrate", "--down-to", "0")
    assert refused_down.returncode == 1
    assert "migration 1 has no backward statements" in refused_down.stderr
    assert (
        f"pending migrations: [{newest}]" in _cartlytics(data_dir, url, "migrate", "--check").stdout
    )
    assert f"applied migrations: [{newest}]" in _cartlytics(data_dir, url, "migrate").stdout

    key = "cak_" + uuid.uuid4().hex
    system = start_system(
        data_dir, key, clickhouse_url=url, extra_env={"ANALYTICS_MIGRATE_ON_START": "no"}
    )
    try:
        assert "migrations_applied=[]" in system.log()
    finally:
        system.stop()


# Migration 7 on a store holding orders of release 6 (Int64 revenue in sales_15m), with a write by
# "another replica" between the view's drop and its creation (run as an INSERT inside the
# migration): afterwards the revenue column is Decimal128, every order counts once, new orders
# reach the rollup, and sums past Int64 are exact.
MIGRATE_7_SCRIPT = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from cartlytics.common.storage import open_storage
from cartlytics.common.storage.migrations import MIGRATIONS, Migration
from cartlytics.common.storage.sql import Sql
from services.metrics.sales import SalesQuery, SalesReader

storage = open_storage(sys.argv[1], Path(sys.argv[2]))
now = datetime.now(UTC).replace(microsecond=0)
at = now - timedelta(hours=1)
columns = ["project_id", "event_id", "event", "ts", "received_at", "visitor_id", "order_id",
           "total", "currency"]

def order(n, total):
    return ("p", f"e{n}", "order_completed", at, at, "v", f"o{n}", total, "SEK")

def revenue():
    report = asyncio.run(
        SalesReader(storage, "USD", lambda: now).sales("p", SalesQuery("7d", "day", "SEK")))
    return report.revenue, report.orders

assert storage.migrate(MIGRATIONS[:6]) == [1, 2, 3, 4, 5, 6]
storage.insert_sync("events", columns, [order(1, 4 * 10**18), order(2, 4 * 10**18)])
print("before", *revenue())
seven = MIGRATIONS[6]
drop, *rest = seven.statements
gap = Sql("INSERT INTO events (project_id, event_id, event, ts, received_at, visitor_id, order_id,"
       " total, currency) SELECT 'p', 'e3', 'order_completed', now() - 3600, now() - 3600, 'v',"
       " 'o3', toInt64(4000000000000000000), 'SEK'")
in_the_gap = Migration(7, seven.name, (drop, gap, *rest), repair_after=seven.repair_after)
assert storage.migrate((*MIGRATIONS[:6], in_the_gap)) == [7]
print("type", storage.query_sync(Sql(
    "SELECT type FROM system.columns WHERE database = currentDatabase()"
    " AND table = 'sales_15m' AND name = 'revenue'"))[0][0])
storage.query_sync(Sql("OPTIMIZE TABLE sales_15m FINAL"))  # merge the bucket's rows: an Int64 wraps
print("after", *revenue())
storage.insert_sync("events", columns, [order(4, 5)])
print("new", *revenue())
storage.close()
"""


def test_migration_7_makes_revenue_exact_and_keeps_every_order(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    if url:
        url = url.rsplit("/", 1)[0] + "/migrate_" + uuid.uuid4().hex[:8]
    script = tmp_path / "migrate7.py"
    script.write_text(MIGRATE_7_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["before"] == f"{8 * 10**18} 2"
    assert lines["type"] == "Decimal(38, 0)"
    assert lines["after"] == f"{12 * 10**18} 3"  # the gap's order included, by the repair
    assert lines["new"] == f"{12 * 10**18 + 5} 4"


# Backward and forward again: a fresh store, every migration applied, then run backward to the
# lowest version reachable (1 has no backward: its tables hold the events themselves), then
# forward again. The schema must be a fresh store's again (SHOW CREATE of every table and view),
# the rollups must hold what they held (rebuilt from `events` by the backfills), and a store
# asked to go below 1 must refuse before changing anything.
ROUND_TRIP_SCRIPT = """
import json, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from cartlytics.common.storage import Sql, open_storage
from cartlytics.common.storage.migrations import Irreversible

storage = open_storage(sys.argv[1], Path(sys.argv[2]))
def q(text):
    return storage.query_sync(Sql(text))
out = {"applied": storage.migrate()}

def schema():
    names = [r[0] for r in q("SELECT name FROM system.tables WHERE database = currentDatabase()"
                             " AND name != 'schema_migrations' ORDER BY name")]
    return {name: q("SHOW CREATE TABLE " + name)[0][0] for name in names}

at = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
events = [
    ("p", f"e{n}", "order_completed" if n % 3 else "product_view", at + timedelta(minutes=7 * n),
     at, f"v{n % 4}", f"o{n}" if n % 3 else "", 100 * n, "SEK", f"p{n % 5}")
    for n in range(40)
]
storage.insert_sync("events", ["project_id", "event_id", "event", "ts", "received_at",
                               "visitor_id", "order_id", "total", "currency", "product_id"], events)
items = [("p", e[6], e[1], 0, e[3], "name " + e[1], e[9], 5, 1) for e in events if e[6]]
storage.insert_sync("order_items", ["project_id", "order_id", "event_id", "line", "ts", "name",
                                    "product_id", "price", "quantity"], items)
# What ingest writes beside them: the line items' names (their view keeps the latest).
storage.insert_sync("product_names", ["project_id", "product_id", "name", "ts", "event_id",
                                      "line"], [(i[0], i[6], i[5], i[4], i[2], 0) for i in items])
READS = [
    "SELECT * FROM orders ORDER BY event_id",
    "SELECT * FROM order_index ORDER BY event_id",
    "SELECT currency, bucket, sum(orders), toString(sum(revenue)) FROM sales_15m"
    " GROUP BY currency, bucket ORDER BY bucket",
    "SELECT visitor_id, minMerge(first_ts) FROM customer_first GROUP BY visitor_id"
    " ORDER BY visitor_id",
    "SELECT * FROM product_views ORDER BY ts",
    "SELECT product_id, argMaxMerge(latest) FROM product_names_latest GROUP BY product_id"
    " ORDER BY product_id",
]
def rollups():
    return [[[str(v) for v in row] for row in q(read)] for read in READS]

fresh, kept = schema(), rollups()
try:
    storage.migrate_down(0)
except Irreversible as e:
    out["refused"] = [e.version, storage.pending_migrations(), schema() == fresh]
out["undone"] = storage.migrate_down(1)
out["at_1"] = [sorted(schema()), storage.pending_migrations()]
out["again"] = storage.migrate()
out["same_schema"] = schema() == fresh
out["same_rollups"] = rollups() == kept
out["rows"] = [len(rows) for rows in kept]
if not out["same_schema"]:
    out["diff"] = {k: [fresh.get(k), v] for k, v in schema().items() if fresh.get(k) != v}
storage.close()
print(json.dumps(out))
"""


def test_every_migration_runs_backward_and_forward_again_to_a_fresh_schema(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    if url:
        url = url.rsplit("/", 1)[0] + "/migrate_" + uuid.uuid4().hex[:8]
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["applied"] == ALL_VERSIONS
    # Below 1 is refused up front: nothing undone, the schema untouched.
    assert out["refused"] == [1, [], True]
    assert out["undone"] == ALL_VERSIONS[:0:-1]
    assert out["at_1"] == [["events", "order_items"], ALL_VERSIONS[1:]]
    assert out["again"] == ALL_VERSIONS[1:]
    assert out["same_schema"], out.get("diff")
    assert all(out["rows"]), out["rows"]  # every rollup held something to compare
    assert out["same_rollups"]


def test_each_migration_file_holds_its_version_and_name() -> None:
    """One file per migration, ``mNNNN_<name>.py``, listed in order in the registry."""
    import importlib
    import pkgutil

    from cartlytics.common.storage import migrations

    files = sorted(
        info.name for info in pkgutil.iter_modules(migrations.__path__) if info.name[0] == "m"
    )
    files.remove("migration")
    assert [f"m{m.version:04d}_{m.name}" for m in MIGRATIONS] == files
    for name, migration in zip(files, MIGRATIONS, strict=True):
        module = importlib.import_module(f"{migrations.__name__}.{name}")
        assert module.MIGRATION is migration

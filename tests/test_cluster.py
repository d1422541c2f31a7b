"""Cluster mode of the storage (``CLICKHOUSE_CLUSTER``, storage/layout.py) on a real cluster:
2 shards x 2 replicas of clickhouse-server with ZooKeeper (tests/cluster.py).

What the layout makes on every node, where rows land, what an acknowledged write promises, and
that a replica killed and restarted loses nothing. The figures themselves are checked on the
cluster by tests/test_cluster_dataset.py.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client

from cartlytics.common.storage import Storage, open_storage
from cartlytics.common.storage.backends import ServerBackend
from cartlytics.common.storage.layout import (
    EVERYWHERE,
    PER_NODE,
    SHARDED,
    SINGLE,
    ClusterLayout,
    UnplacedTable,
)
from cartlytics.common.storage.migrations import CLASSIC_TYPES, SCHEMA_MIGRATIONS
from cartlytics.common.storage.migrations.registry import MIGRATIONS
from cartlytics.common.storage.purge import NotOnACluster, Purger, Selection
from cartlytics.common.storage.sql import Sql
from tests.cluster import CLUSTER, ClickHouseCluster, ClusterNode, own_cluster

EVENT_COLUMNS = ("project_id", "event_id", "event", "ts", "received_at", "visitor_id",
                 "order_id", "total", "currency")  # fmt: skip


# The layout, statement by statement (no cluster needed).


def _every_statement() -> list[str]:
    statements = [SCHEMA_MIGRATIONS.text]
    for migration in MIGRATIONS:
        statements += migration.render(CLASSIC_TYPES)
        if migration.backward is not None:
            statements += migration.render_backward(CLASSIC_TYPES)
    return statements


def test_one_server_runs_every_statement_as_written() -> None:
    for statement in _every_statement():
        assert SINGLE.statements(statement) == [statement]


def test_every_table_of_the_migrations_has_a_place_in_a_cluster() -> None:
    layout = ClusterLayout(CLUSTER, "db")
    for statement in _every_statement():
        for sql in layout.statements(statement):
            if sql.lstrip().startswith(("CREATE", "DROP", "ALTER")):
                assert f"ON CLUSTER {CLUSTER}" in sql or sql.lstrip().startswith("ALTER TABLE db.")
    assert not set(SHARDED) & EVERYWHERE
    assert not (set(SHARDED) | EVERYWHERE) & PER_NODE


def test_a_sharded_table_is_a_replicated_local_behind_a_distributed_one() -> None:
    layout = ClusterLayout(CLUSTER, "db")
    local, distributed = layout.statements(
        "CREATE TABLE IF NOT EXISTS orders (a String, ts DateTime('UTC')) "
        "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(ts) ORDER BY a"
    )
    assert local.startswith(f"CREATE TABLE IF NOT EXISTS db.orders_local ON CLUSTER {CLUSTER} (")
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/orders', "
        "'{replica}', version) PARTITION BY toYYYYMM(ts) ORDER BY a"
    ) in local
    assert distributed == (
        f"CREATE TABLE IF NOT EXISTS db.orders ON CLUSTER {CLUSTER} AS db.orders_local"
        f" ENGINE = Distributed({CLUSTER}, db, orders_local, {SHARDED['orders']})"
    )
    (everywhere,) = layout.statements(
        "CREATE TABLE IF NOT EXISTS api_keys (a String) ENGINE = ReplacingMergeTree(v) ORDER BY a"
    )
    assert "'/clickhouse/tables/all/db/api_keys', '{shard}-{replica}', v)" in everywhere
    with pytest.raises(UnplacedTable):
        layout.statements("CREATE TABLE IF NOT EXISTS nowhere (a String) ENGINE = MergeTree")


def test_views_join_local_tables_and_alters_remake_the_distributed_table() -> None:
    layout = ClusterLayout(CLUSTER, "db")
    (view,) = layout.statements(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS orders_mv TO orders AS\n"
        "SELECT project_id\nFROM events\nWHERE event = 'order_completed'"
    )
    assert view == (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS db.orders_mv ON CLUSTER {CLUSTER}"
        " TO db.orders_local AS\nSELECT project_id\nFROM db.events_local\n"
        "WHERE event = 'order_completed'"
    )
    alter, drop, create = layout.statements("ALTER TABLE events ADD COLUMN x String")
    assert alter == f"ALTER TABLE db.events_local ON CLUSTER {CLUSTER} ADD COLUMN x String"
    assert drop == f"DROP TABLE IF EXISTS db.events ON CLUSTER {CLUSTER}"
    assert create.startswith(f"CREATE TABLE IF NOT EXISTS db.events ON CLUSTER {CLUSTER} AS")
    backfill = "INSERT INTO orders\nSELECT project_id FROM events"
    assert layout.statements(backfill) == [backfill]


# On the cluster.


@pytest.fixture(scope="module")
def clickhouse_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """This module's own cluster (overrides the session's): its tests kill and stop nodes."""
    yield from own_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def database(clickhouse_cluster: ClickHouseCluster) -> str:
    return "cluster_" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def cluster_storage(clickhouse_cluster: ClickHouseCluster, database: str) -> Iterator[Storage]:
    storage = open_storage(clickhouse_cluster.url(database), Path("/nonexistent"), CLUSTER)
    assert storage.migrate() == [m.version for m in MIGRATIONS]
    yield storage
    storage.close()


def _node_rows(node: ClusterNode, sql: str) -> list[tuple[Any, ...]]:
    client = Client("127.0.0.1", port=node.port, connect_timeout=3)
    try:
        return [tuple(row) for row in client.execute(sql)]
    finally:
        client.disconnect()


def _count(node: ClusterNode, table: str, project: str) -> int:
    rows = _node_rows(node, f"SELECT count() FROM {table} WHERE project_id = '{project}'")
    return int(rows[0][0])


def _wait_until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.2)


def _event(project: str, n: int, visitor: str, order: str = "", total: int = 0) -> tuple[Any, ...]:
    ts = datetime(2026, 1, 5, 10, 0, tzinfo=UTC) + timedelta(seconds=n)
    kind = "order_completed" if order else "page_view"
    return (project, f"e{n}", kind, ts, ts, visitor, order, total, "USD")


def test_every_node_holds_the_schema(
    clickhouse_cluster: ClickHouseCluster, cluster_storage: Storage, database: str
) -> None:
    for node in clickhouse_cluster.nodes:
        engines = dict(
            _node_rows(
                node, f"SELECT name, engine FROM system.tables WHERE database = '{database}'"
            )
        )
        for table in SHARDED:
            assert engines[table] == "Distributed", (node.name, table)
            assert engines[f"{table}_local"].startswith("Replicated") or table == "product_names"
        for table in EVERYWHERE - {"people_snapshot_state"}:  # migration 11 dropped it
            assert engines[table].startswith("Replicated"), (node.name, table)
        for table in PER_NODE:
            assert engines[table] == "Join"
        # Replicated from the node that ran the migrations: within moments.
        _wait_until(
            lambda n=node: (
                _node_rows(n, f"SELECT count() FROM {database}.schema_migrations")
                == [(len(MIGRATIONS),)]
            )
        )


def test_rows_spread_over_both_shards_and_reach_both_replicas(
    clickhouse_cluster: ClickHouseCluster, cluster_storage: Storage, database: str
) -> None:
    project = "p_" + uuid.uuid4().hex[:8]
    # 400 visitors, one row each: with 40 the split of a random project's visitors was
    # uneven enough to fail the bound below about once in 500 runs (9 of 40 on one shard).
    rows = [_event(project, n, f"visitor_{n}") for n in range(400)]
    cluster_storage.insert_sync("events", EVENT_COLUMNS, rows)
    # Acknowledged: all of it readable at once, through any node.
    total = cluster_storage.query_sync(
        Sql("SELECT count() FROM events WHERE project_id = {p}"), {"p": project}
    )
    assert total == [(400,)]
    table = f"{database}.events_local"
    for shard in (1, 2):
        first, second = clickhouse_cluster.shard(shard)
        _wait_until(
            lambda a=first, b=second: _count(a, table, project) == _count(b, table, project)
        )
    shares = [_count(clickhouse_cluster.shard(shard)[0], table, project) for shard in (1, 2)]
    assert sum(shares) == 400
    assert min(shares) > 100, shares  # both shards get a fair share


def test_the_copies_of_an_order_share_a_shard_whoever_sent_them(
    clickhouse_cluster: ClickHouseCluster, cluster_storage: Storage, database: str
) -> None:
    project = "p_" + uuid.uuid4().hex[:8]
    orders = [f"order_{n}" for n in range(30)]
    rows = [
        _event(project, n * 3 + copy, f"visitor_{random.randrange(1000)}", order, 100)
        for n, order in enumerate(orders)
        for copy in range(3)
    ]
    cluster_storage.insert_sync("events", EVENT_COLUMNS, rows)
    shards: dict[str, list[int]] = {}
    for shard in (1, 2):
        node = clickhouse_cluster.shard(shard)[0]
        for order, copies in _node_rows(
            node,
            f"SELECT order_id, count() FROM {database}.events_local"
            f" WHERE project_id = '{project}' GROUP BY order_id",
        ):
            assert copies == 3, order
            shards.setdefault(order, []).append(shard)
    assert sorted(shards) == sorted(orders)
    assert all(len(found) == 1 for found in shards.values())
    assert {found[0] for found in shards.values()} == {1, 2}


def test_identical_blocks_are_all_counted(cluster_storage: Storage) -> None:
    """Replicated tables drop a block identical to a recent one by default: two orders of one
    quarter hour, currency and total, each alone in its INSERT, make identical sales_15m blocks."""
    project = "p_" + uuid.uuid4().hex[:8]
    for n in range(3):  # seconds apart: one quarter hour
        row = _event(project, n, "same_visitor", f"order_{n}", 2500)
        cluster_storage.insert_sync("events", EVENT_COLUMNS, [row])
    got = cluster_storage.query_sync(
        Sql("SELECT sum(orders), sum(revenue) FROM sales_15m WHERE project_id = {p}"),
        {"p": project},
    )
    assert [(int(a), int(b)) for a, b in got] == [(3, 7500)]


def test_subqueries_over_distributed_tables_see_every_shard(cluster_storage: Storage) -> None:
    """IN and JOIN subqueries run whole (GLOBAL), not each shard against its own rows."""
    project = "p_" + uuid.uuid4().hex[:8]
    rows = [_event(project, n, f"visitor_{n % 50}") for n in range(200)]
    cluster_storage.insert_sync("events", EVENT_COLUMNS, rows)
    picked = {f"visitor_{n}" for n in range(0, 50, 7)}
    cluster_storage.insert_sync(
        "identity_links",  # any sharded table holding visitor ids
        ("project_id", "anonymous_id", "user_id"),
        [(project, visitor, "u") for visitor in sorted(picked)],
    )
    expected = sum(1 for row in rows if row[5] in picked)
    in_sql = Sql("""
        SELECT count() FROM events WHERE project_id = {p} AND visitor_id IN
            (SELECT anonymous_id FROM identity_links WHERE project_id = {p})""")
    join_sql = Sql("""
        SELECT count() FROM events
        ANY INNER JOIN (SELECT anonymous_id AS visitor_id FROM identity_links
                        WHERE project_id = {p}) USING visitor_id
        WHERE project_id = {p}""")
    for sql in (in_sql, join_sql):
        assert cluster_storage.query_sync(sql, {"p": project}) == [(expected,)]


def test_a_replica_killed_and_restarted_loses_no_acknowledged_row(
    clickhouse_cluster: ClickHouseCluster, cluster_storage: Storage, database: str
) -> None:
    """kill -9 of the replica that takes a shard's writes: later writes go to the other one and
    are read at once; what the killed one had not passed on yet is missing from reads until it
    is back (docs/cluster.md), then every acknowledged row is counted, once."""
    project = "p_" + uuid.uuid4().hex[:8]
    victim = clickhouse_cluster.shard(2)[0]
    acknowledged = 0
    batch = 0

    def write(count: int) -> None:
        nonlocal acknowledged, batch
        rows = [_event(project, batch * 100 + n, f"visitor_{n}") for n in range(count)]
        rows = [(r[0], f"b{batch}_{r[1]}", *r[2:]) for r in rows]
        batch += 1
        cluster_storage.insert_sync("events", EVENT_COLUMNS, rows)
        acknowledged += count

    def stored() -> int:
        got = cluster_storage.query_sync(
            Sql("SELECT count() FROM events WHERE project_id = {p}"), {"p": project}
        )
        return int(got[0][0])

    write(50)
    before_kill = acknowledged
    victim.kill()
    try:
        for _ in range(5):
            write(50)
            # The rows written since are all read; of the earlier ones, maybe not all.
            assert acknowledged - before_kill <= stored() <= acknowledged
    finally:
        victim.restart()
    write(50)
    _wait_until(lambda: stored() == acknowledged, 60)
    table = f"{database}.events_local"
    first, second = clickhouse_cluster.shard(2)
    _wait_until(lambda: _count(first, table, project) == _count(second, table, project), 60)
    shard_one = _count(clickhouse_cluster.shard(1)[0], table, project)
    assert shard_one + _count(first, table, project) == acknowledged
    assert stored() == acknowledged


def test_a_url_with_other_nodes_outlives_its_first(
    clickhouse_cluster: ClickHouseCluster, cluster_storage: Storage, database: str
) -> None:
    """``?alt_hosts=``: a store whose first node is killed goes on through another."""
    first, other = clickhouse_cluster.shard(1)
    url = f"{first.url_for(database)}?alt_hosts=127.0.0.1:{other.port}"
    storage = open_storage(url, Path("/nonexistent"), CLUSTER)
    count = Sql("SELECT count() FROM schema_migrations")
    try:
        assert storage.query_sync(count) == [(len(MIGRATIONS),)]
        # Replicated to the other node first (a row written on a node killed before it passed
        # it on is elsewhere only once that node is back).
        on_other = f"SELECT count() FROM {database}.schema_migrations"
        _wait_until(lambda: _node_rows(other, on_other) == [(len(MIGRATIONS),)])
        first.kill()
        # New connections (a service starting, a thread's first query) go to the other node.
        backend = ServerBackend(url, CLUSTER)
        try:
            assert backend.execute(count.text) == [(len(MIGRATIONS),)]
        finally:
            backend.close()
    finally:
        first.restart()
        storage.close()


def test_purges_are_refused_before_deleting_anything(cluster_storage: Storage) -> None:
    """Erasure and retention delete with mutations of the tables by their own names, which a
    Distributed table does not take: refused whole on a cluster, never run half."""
    project = "p_" + uuid.uuid4().hex[:8]
    cluster_storage.insert_sync("events", EVENT_COLUMNS, [_event(project, 1, "v")])
    count = Sql("SELECT count() FROM events WHERE project_id = {p}")
    # Just after a node came back (the test before), reads may go to the replica that has not
    # fetched the newest write yet (docs/cluster.md): seen first, then refused, then still there.
    _wait_until(lambda: cluster_storage.query_sync(count, {"p": project}) == [(1,)])
    purger = Purger(cluster_storage)
    every = Sql("1")
    with pytest.raises(NotOnACluster):
        purger.purge(project, Selection(every, every, every, None, None, None))
    with pytest.raises(NotOnACluster):
        purger.drop_months([202601])
    assert cluster_storage.query_sync(count, {"p": project}) == [(1,)]

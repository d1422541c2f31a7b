"""The ClickHouse cluster the benchmark measures: tests/cluster.py's 2 shards x 2 replicas and
ZooKeeper, started for the run in a temporary folder, or an existing cluster named by a node's
URL and the cluster's name (``bench/run.py --cluster-url ... --cluster-name ...``).

The services reach it as they would in production: ``CLICKHOUSE_URL`` at one node (the first)
and ``CLICKHOUSE_CLUSTER`` naming the cluster (docs/cluster.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.cluster import CLUSTER, ClickHouseCluster, missing_binaries

SHARDS, REPLICAS = 2, 2
NAME = f"clickhouse-cluster-{SHARDS}x{REPLICAS}"  # the --backends name of the started cluster
EXISTING = "clickhouse-cluster"  # the report's name of an existing one (--cluster-url)


def missing() -> list[str]:
    """What starting the cluster here needs and is not installed (empty: nothing)."""
    return missing_binaries()


def with_database(url: str, database: str) -> str:
    """``url`` with its database (the path) replaced; user, host, port and query kept (the
    query's ``alt_hosts`` too)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@dataclass
class BenchCluster:
    name: str  # the cluster's name in the servers' remote_servers (CLICKHOUSE_CLUSTER)
    node_url: str  # one node's URL; its database is replaced per use
    shards: int
    replicas: int
    started: ClickHouseCluster | None = None  # None: an existing cluster, not ours to stop
    # On an existing cluster each database the bench makes is this run's own (a suffix), and
    # dropped at the end: a second run must not load its events on top of the first's.
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    databases: set[str] = field(default_factory=set)

    def url(self, database: str) -> str:
        if self.started is None:
            database = f"{database}_{self.tag}"
            self.databases.add(database)
        return with_database(self.node_url, database)

    def pids(self) -> tuple[int, ...]:
        """Every process of a cluster started here (the nodes and ZooKeeper): their CPU is the
        storage's. An existing cluster's is out of reach (empty)."""
        if self.started is None:
            return ()
        processes = [node.process for node in self.started.nodes]
        processes.append(self.started.zookeeper.process)
        return tuple(p.pid for p in processes if p is not None and p.poll() is None)

    def describe(self, version: str) -> str:
        where = (
            "started for the run on this machine (4 clickhouse-servers and ZooKeeper)"
            if self.started is not None
            else f"an existing cluster at {urlsplit(self.node_url).netloc.split('@')[-1]}"
        )
        return (
            f"ClickHouse {version}, cluster `{self.name}`: {self.shards} shards x "
            f"{self.replicas} replicas, {where}"
        )

    def stop(self) -> None:
        """Stop a cluster started here; on an existing one, drop this run's databases."""
        if self.started is not None:
            self.started.stop()
            return
        from clickhouse_driver import Client

        client = Client.from_url(with_database(self.node_url, "system"))
        try:
            for database in sorted(self.databases):
                client.execute(f"DROP DATABASE IF EXISTS {database} ON CLUSTER {self.name}")
        finally:
            client.disconnect()


def start(directory: Path) -> BenchCluster:
    """Start ZooKeeper and 2 x 2 clickhouse-servers under ``directory`` (stopped again if any
    part fails to start)."""
    cluster = ClickHouseCluster(directory, SHARDS, REPLICAS)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return BenchCluster(CLUSTER, cluster.url("default"), SHARDS, REPLICAS, cluster)


def existing(node_url: str, name: str) -> BenchCluster:
    """An existing cluster: its shape read from the node's ``system.clusters``."""
    from clickhouse_driver import Client

    client = Client.from_url(with_database(node_url, "system"))
    try:
        rows = client.execute(
            "SELECT uniqExact(shard_num), max(replica_num) FROM system.clusters "
            "WHERE cluster = %(name)s",
            {"name": name},
        )
    finally:
        client.disconnect()
    shards, replicas = rows[0] if rows else (0, 0)
    if not shards:
        raise ValueError(f"--cluster-name {name}: the node's remote_servers has no such cluster")
    return BenchCluster(name, node_url, int(shards), int(replicas))

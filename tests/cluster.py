"""A real ClickHouse cluster for the tests: ZooKeeper and shards x replicas of clickhouse-server.

Debian's packages (``zookeeper``, ``clickhouse-server``; ``.ci/run`` installs both), each process
on free ports in a folder of its own. Every node is a ``tests.servers.ClickHouseServer`` with the
same config as the single server, plus a ``config.d/cluster.xml`` (ClickHouse merges it) naming
ZooKeeper, the node's ``{shard}`` and ``{replica}`` macros and the cluster ``CLUSTER``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ClickHouseServer, free_port, start_on_a_free_port, wait_for_port

CLUSTER = "c2x2"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
REQUIRE_SERVER = os.environ.get("CARTLYTICS_REQUIRE_CLICKHOUSE_SERVER") == "1"

ZOO_CFG = """tickTime=2000
dataDir={dir}/data
clientPort={port}
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=0
4lw.commands.whitelist=srvr
"""

NODE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node></zookeeper>
  <macros><shard>{shard:02d}</shard><replica>r{replica}</replica></macros>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>{interserver}</interserver_http_port>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <remote_servers><{cluster}>{shards}</{cluster}></remote_servers>
</yandex>
"""


def missing_binaries() -> list[str]:
    """What starting a cluster here needs and is not installed (empty: nothing)."""
    return [
        name
        for name, present in (
            ("clickhouse-server", shutil.which("clickhouse-server") is not None),
            ("java", shutil.which("java") is not None),
            (str(ZOOKEEPER_JAR), ZOOKEEPER_JAR.is_file()),
        )
        if not present
    ]


def need_cluster() -> None:
    """Skip without the binaries (a failure where CI requires the server tests to run)."""
    missing = missing_binaries()
    if missing:
        if REQUIRE_SERVER:
            pytest.fail(f"the ClickHouse cluster tests need {missing} (apt-get install zookeeper)")
        pytest.skip(
            f"no {', '.join(missing)}: the cluster tests need clickhouse-server and zookeeper"
        )


class ZooKeeperServer:
    """A standalone ZooKeeper (Debian's jar, run by java directly: its scripts log to /var)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "zoo.cfg"
        log = (self.directory / "zookeeper.log").open("ab")

        def spawn(port: int) -> subprocess.Popen[bytes]:
            self.port = port
            config.write_text(ZOO_CFG.format(dir=self.directory, port=port))
            self.process = subprocess.Popen(
                ["java", "-Xmx256m", "-cp", f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}",
                 f"-Dzookeeper.log.dir={self.directory}",
                 "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            return self.process

        self.port = start_on_a_free_port(spawn, self.port, 60, first=self.process is None)
        self._wait_serving(60)

    def _wait_serving(self, timeout: float) -> None:
        """Wait until it serves sessions: it listens before, and a clickhouse-server 18.16 whose
        first session fails at its handshake crashes at its first ZooKeeper request."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(b"srvr")
                    reply = b""
                    while chunk := sock.recv(4096):
                        reply += chunk
                if b"Mode: " in reply:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"ZooKeeper did not serve within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ClusterNode(ClickHouseServer):
    """One clickhouse-server of the cluster: shard and replica numbers from 1."""

    def __init__(self, directory: Path, shard: int, replica: int) -> None:
        super().__init__(directory)
        self.shard = shard
        self.replica = replica
        self.interserver_port = free_port()

    @property
    def name(self) -> str:
        return f"shard {self.shard} replica {self.replica}"

    def url_for(self, database: str) -> str:
        return f"clickhouse://default@127.0.0.1:{self.port}/{database}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash or an OOM kill."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """Start again (stopped or killed) on the same ports and data."""
        self.stop()
        self.start()


class ClickHouseCluster:
    """``shards`` x ``replicas`` clickhouse-servers and one ZooKeeper, named ``CLUSTER``."""

    def __init__(self, directory: Path, shards: int = 2, replicas: int = 2) -> None:
        self.directory = directory
        self.zookeeper = ZooKeeperServer(directory / "zookeeper")
        self.nodes = [
            ClusterNode(directory / f"s{shard}r{replica}", shard, replica)
            for shard in range(1, shards + 1)
            for replica in range(1, replicas + 1)
        ]

    def url(self, database: str = "analytics", node: int = 0) -> str:
        return self.nodes[node].url_for(database)

    def shard(self, number: int) -> list[ClusterNode]:
        return [node for node in self.nodes if node.shard == number]

    def _write_configs(self) -> None:
        shards = ""
        for number in sorted({node.shard for node in self.nodes}):
            replicas = "".join(
                f"<replica><host>127.0.0.1</host><port>{node.port}</port></replica>"
                for node in self.shard(number)
            )
            shards += f"<shard><internal_replication>true</internal_replication>{replicas}</shard>"
        for node in self.nodes:
            (node.directory / "config.d").mkdir(parents=True, exist_ok=True)
            (node.directory / "config.d" / "cluster.xml").write_text(
                NODE_CONFIG.format(
                    zookeeper=self.zookeeper.port,
                    shard=node.shard,
                    replica=node.replica,
                    interserver=node.interserver_port,
                    cluster=CLUSTER,
                    shards=shards,
                )
            )

    def start(self) -> None:
        self.zookeeper.start()
        self._write_configs()
        ports = [node.port for node in self.nodes]
        for node in self.nodes:
            node.start()
        if [node.port for node in self.nodes] != ports:
            # A port was lost to another process at start: the nodes read the new cluster
            # definition (remote_servers is reloaded from config.d) within seconds.
            self._write_configs()
            time.sleep(10)
        for node in self.nodes:
            wait_for_port(node.port, 30)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.zookeeper.stop()


def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """A fixture's body: a cluster for one module, started and stopped with it (for tests that
    kill and stop nodes: the others then run on a cluster no fault has touched)."""
    need_cluster()
    cluster = ClickHouseCluster(tmp_path_factory.mktemp("clickhouse-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

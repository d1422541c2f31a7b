"""Redis as an optional helper: a failure never fails the caller's request.

Ingestion and every non-realtime query must keep working when Redis is down, and must not wait
on it: after a failure that says Redis itself is unreachable or unable to serve (a connection
error, a timeout, LOADING, READONLY, OOM, ...) the guard skips Redis for ``cooldown`` seconds
instead of paying a connection timeout on every request.

Any other error is the answer to one command about one key (``WRONGTYPE``, an increment that
would overflow, a script error caused by one project's data): that call gets its default and
nothing else changes. One tenant's bad data must never switch Redis off for every tenant.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Error replies that describe the server, not the command's data: every command would get them.
_SERVER_STATES = ("LOADING", "MISCONF", "MASTERDOWN", "NOREPLICAS", "BUSY ", "CLUSTERDOWN", "OOM")
_UNAVAILABLE = (
    ConnectionError,  # includes BusyLoadingError (LOADING) and AuthenticationError
    RedisTimeout,
    ReadOnlyError,
    MasterDownError,
    OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
    OSError,
    TimeoutError,
)


class Failure(Enum):
    """Why a guarded call got its default instead of an answer."""

    SKIPPED = "skipped"  # no Redis configured, or cooling down after an outage
    UNAVAILABLE = "unavailable"  # the server could not be reached or cannot serve anyone
    DATA = "data"  # this command failed on its own data; Redis is fine


def classify(exc: BaseException) -> Failure:
    """UNAVAILABLE for a failure of the server or the connection, DATA for one command's."""
    if isinstance(exc, _UNAVAILABLE):
        return Failure.UNAVAILABLE
    if isinstance(exc, RedisError) and str(exc).upper().startswith(_SERVER_STATES):
        return Failure.UNAVAILABLE
    return Failure.DATA


class RedisGuard:
    def __init__(
        self,
        client: Redis | None,
        cooldown: float = 5.0,
        on_unavailable: Callable[[], None] | None = None,
    ) -> None:
        """``on_unavailable`` is told of every outage seen (e.g. to distrust the counters)."""
        self.client = client
        self._cooldown = cooldown
        self._down_until = 0.0
        self._on_unavailable = on_unavailable

    @property
    def available(self) -> bool:
        return self.client is not None and time.monotonic() >= self._down_until

    async def run(
        self,
        call: Callable[[Redis], Awaitable[T]],
        default: T,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> T:
        """``call(client)``, or ``default`` when Redis is absent, cooling down or failing.

        ``on_failure`` hears why the default was returned.
        """
        if self.client is None or not self.available:
            if on_failure is not None:
                on_failure(Failure.SKIPPED)
            return default
        try:
            return await call(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            failure = classify(exc)
            if failure is Failure.UNAVAILABLE:
                self._down_until = time.monotonic() + self._cooldown
                log.warning("redis unavailable; continuing without it", error=type(exc).__name__)
                if self._on_unavailable is not None:
                    self._on_unavailable()
            else:
                # No cooldown: the next command (another project's, or a retry) may well work.
                log.warning("redis command failed", error=type(exc).__name__, detail=str(exc)[:200])
            if on_failure is not None:
                on_failure(failure)
            return default

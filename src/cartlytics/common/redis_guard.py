"""Redis as an optional helper: a failure never fails the caller's request.

Ingestion and every non-realtime query must keep working when Redis is down, and must not wait
on it: after one failure the guard skips Redis for ``cooldown`` seconds instead of paying a
connection timeout on every request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

T = TypeVar("T")
log = structlog.get_logger(__name__)


class RedisGuard:
    def __init__(self, client: Redis | None, cooldown: float = 5.0) -> None:
        self.client = client
        self._cooldown = cooldown
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return self.client is not None and time.monotonic() >= self._down_until

    async def run(self, call: Callable[[Redis], Awaitable[T]], default: T) -> T:
        """``call(client)``, or ``default`` when Redis is absent, cooling down or failing."""
        if self.client is None or not self.available:
            return default
        try:
            return await call(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self._cooldown
            log.warning("redis unavailable; continuing without it", error=type(exc).__name__)
            return default

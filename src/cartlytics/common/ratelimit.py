"""Rate limits: a token bucket per API key and scope, kept in Redis and shared by every replica.

Each (key, scope) has a bucket of ``burst`` tokens that refills at ``rate`` tokens a second; a
call takes one token or is refused with RESOURCE_EXHAUSTED (HTTP 429), a ``google.rpc.RetryInfo``
saying when the next token is due and a ``google.rpc.QuotaFailure`` naming the limit.

- One Lua script reads, refills, takes and writes the bucket atomically, so replicas sharing one
  Redis share one budget; it reads the clock with Redis' ``TIME``, so replicas whose clocks
  disagree still agree on the refill. One round trip per call (EVALSHA).
- A call costs one token, a batch of events included: the limit bounds requests, and a batch's
  size is bounded on its own (``ANALYTICS_MAX_BATCH_EVENTS``, ``ANALYTICS_MAX_BODY_BYTES``).
- Redis down, cooling down after a failure (``RedisGuard``) or absent: every call is let through
  (fail open, for every scope), logged and counted in ``cartlytics_rate_limit_requests_total``.
- A rate of 0 means unlimited: no Redis call at all.

docs/rate-limits.md has the settings and the reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from cartlytics.gen.analytics.options.v1 import options_pb2

from .config import Config
from .errors import ApiError
from .redis_guard import RedisGuard

log = structlog.get_logger(__name__)

RATE_LIMIT_REQUESTS = Counter(
    "cartlytics_rate_limit_requests_total",
    "Calls seen by the rate limiter, by scope and result "
    "(allowed, limited, or unchecked: Redis unavailable, let through)",
    ["scope", "result"],
)

# KEYS[1]: the bucket (a hash: tokens, ts in microseconds).
# ARGV: rate (tokens/s), burst (capacity), cost, and optionally the clock in microseconds (tests
# only; otherwise Redis' TIME, so all replicas read one clock).
# Returns {allowed 0/1, microseconds until `cost` tokens are available (0 when allowed),
# tokens left as a string}.
BUCKET_SCRIPT = """
-- Redis < 5 refuses a write after TIME unless effects are replicated; later ones always do.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
-- A clock going back (a failed-over Redis) neither takes tokens away nor gives them twice.
if now < ts then now = ts end
tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000000 / rate)
end
-- %.17g and %d keep every digit (Lua's default tostring keeps 14, too few for microseconds).
local left = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', left, 'ts', string.format('%d', now))
-- A bucket untouched for long enough to be full again is worth nothing: let it expire.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait, left}
"""

SCOPE_NAMES: Mapping[int, str] = {
    options_pb2.SCOPE_INGEST: "ingest",
    options_pb2.SCOPE_READ: "read",
    options_pb2.SCOPE_ADMIN: "admin",
}


@dataclass(frozen=True)
class Limit:
    """``rate`` tokens a second (0: unlimited), at most ``burst`` at once."""

    rate: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the call would be allowed; 0 when allowed
    remaining: float


@dataclass
class RateLimited(ApiError):
    """RESOURCE_EXHAUSTED with RetryInfo (from ApiError) and a QuotaFailure naming the limit."""

    subject: str = ""
    quota: str = ""

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.quota
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(failure)
        status.details.append(packed)
        return status


def bucket_key(key_id: str, scope_name: str) -> str:
    # The key id in braces: a Redis Cluster keeps all of one key's buckets on one shard.
    return f"ratelimit:{{{key_id}}}:{scope_name}"


def describe(limit: Limit) -> str:
    rate = f"{limit.rate:g}"
    return f"{rate} requests/s, bursts of {limit.burst}"


class RateLimiter:
    """Checks and takes one token per call from the caller's bucket for the call's scope."""

    def __init__(self, guard: RedisGuard, limits: Mapping[int, Limit]) -> None:
        self._guard = guard
        self._limits = dict(limits)
        self._script: AsyncScript | None = None

    def limit_for(self, scope: int) -> Limit | None:
        limit = self._limits.get(scope)
        return None if limit is None or limit.unlimited else limit

    async def take(
        self, scope: int, key_id: str, cost: int = 1, now_us: int | None = None
    ) -> Decision | None:
        """Take ``cost`` tokens; ``None`` when not checked (unlimited, or Redis unavailable).

        ``now_us`` replaces Redis' clock; only tests pass it.
        """
        limit = self.limit_for(scope)
        if limit is None:
            return None
        scope_name = SCOPE_NAMES.get(scope, str(scope))
        args: list[str | int | float] = [repr(float(limit.rate)), limit.burst, cost]
        if now_us is not None:
            args.append(now_us)
        keys = [bucket_key(key_id, scope_name)]

        async def call(client: Redis) -> Decision:
            if self._script is None:
                # EVALSHA, and SCRIPT LOAD once if Redis does not know the script (restarted).
                self._script = client.register_script(BUCKET_SCRIPT)
            allowed, wait_us, remaining = await self._script(keys=keys, args=args)
            return Decision(bool(allowed), int(wait_us) / 1e6, float(remaining))

        was_available = self._guard.available
        decision = await self._guard.run(call, None)
        if decision is None:
            RATE_LIMIT_REQUESTS.labels(scope_name, "unchecked").inc()
            if was_available:  # once per outage (then the guard's cooldown), not per call
                log.warning("rate limits not enforced: redis unavailable", scope=scope_name)
            return None
        RATE_LIMIT_REQUESTS.labels(scope_name, "allowed" if decision.allowed else "limited").inc()
        return decision

    async def enforce(self, scope: int, key_id: str, cost: int = 1) -> None:
        """Raise RESOURCE_EXHAUSTED (with the delay until a token is due) when over the limit."""
        decision = await self.take(scope, key_id, cost)
        if decision is None or decision.allowed:
            return
        limit = self.limit_for(scope)
        assert limit is not None
        scope_name = SCOPE_NAMES.get(scope, str(scope))
        quota = f"'{scope_name}' calls of one API key: {describe(limit)}"
        raise RateLimited(
            message=(
                f"rate limit exceeded for this API key's '{scope_name}' calls "
                f"({describe(limit)}); retry in {decision.retry_after:.3f}s"
            ),
            reason="RATE_LIMITED",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            retry_after_seconds=decision.retry_after,
            subject=f"api_key:{key_id}",
            quota=quota,
        )


def retry_after_header(seconds: float) -> str:
    """An HTTP ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def limits_from_config(config: Config) -> dict[int, Limit]:
    return {
        options_pb2.SCOPE_INGEST: Limit(config.rate_limit_ingest, config.rate_limit_ingest_burst),
        options_pb2.SCOPE_READ: Limit(config.rate_limit_read, config.rate_limit_read_burst),
        options_pb2.SCOPE_ADMIN: Limit(config.rate_limit_admin, config.rate_limit_admin_burst),
    }

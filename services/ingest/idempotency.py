"""The short dedup window at ingest: a retried event id is acknowledged again, not stored again.

Per (project, client event id) Redis holds ``pending`` while a request stores the event, then the
acknowledgement (id, event, timestamp) for ``ttl`` seconds. A retry inside the window gets that same
acknowledgement. When Redis is down the window is skipped; the storage layer (ReplacingMergeTree
on the id, and queries that count distinct ids and orderIds) still keeps figures exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from redis.asyncio import Redis

from cartlytics.common.erasure import dedup_key
from cartlytics.common.redis_guard import RedisGuard

PENDING = "pending"

# A claim that is never confirmed (the process died mid-request) must not block the client's
# retries for long: "pending" lives this many seconds, the acknowledgement the full window.
PENDING_TTL_SECONDS = 10

# For each key: SET NX "pending"; return the previous value (nil when newly claimed).
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local ok = redis.call('SET', key, 'pending', 'NX', 'EX', ARGV[1])
  if ok then out[i] = false else out[i] = redis.call('GET', key) or 'pending' end
end
return out
"""


class Ack(NamedTuple):
    """An event's acknowledgement. (A tuple: one is made for every event ingested.)"""

    id: str
    event: str
    timestamp: datetime

    def dumps(self) -> str:
        return json.dumps({"id": self.id, "event": self.event, "ts": self.timestamp.isoformat()})

    @staticmethod
    def loads(text: str) -> Ack:
        data = json.loads(text)
        return Ack(data["id"], data["event"], datetime.fromisoformat(data["ts"]))


@dataclass(frozen=True)
class Claim:
    """What the window knows of one id: new (ours to store), seen (its ack), or in flight."""

    new: bool
    ack: Ack | None = None

    @property
    def in_flight(self) -> bool:
        return not self.new and self.ack is None


class IdempotencyWindow:
    def __init__(self, guard: RedisGuard, ttl_seconds: int = 86_400) -> None:
        self._guard = guard
        self._ttl = ttl_seconds

    @staticmethod
    def _key(project_id: str, event_id: str) -> str:
        return dedup_key(project_id, event_id)  # the erasure deletes these (common/erasure.py)

    async def claim(self, project_id: str, event_ids: Sequence[str]) -> dict[str, Claim]:
        """Claim each id; with Redis unavailable every id counts as new."""
        if not event_ids:
            return {}
        keys = [self._key(project_id, e) for e in event_ids]

        async def call(client: Redis) -> list[str | None]:
            script = client.register_script(_CLAIM)
            result = await script(keys=keys, args=[min(self._ttl, PENDING_TTL_SECONDS)])
            return [None if r is None or r is False else str(r) for r in result]

        nothing_known: list[str | None] = [None] * len(keys)
        found = await self._guard.run(call, nothing_known)
        claims: dict[str, Claim] = {}
        for event_id, value in zip(event_ids, found, strict=True):
            if value is None:
                claims[event_id] = Claim(new=True)
            elif value == PENDING:
                claims[event_id] = Claim(new=False)
            else:
                claims[event_id] = Claim(new=False, ack=Ack.loads(value))
        return claims

    async def confirm(self, project_id: str, acks: Sequence[Ack]) -> None:
        if not acks:
            return

        async def call(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for ack in acks:
                    pipe.set(self._key(project_id, ack.id), ack.dumps(), ex=self._ttl)
                await pipe.execute()

        await self._guard.run(call, None)

    async def release(self, project_id: str, event_ids: Sequence[str]) -> None:
        """Forget claims whose store failed, so the client's retry is stored."""
        if not event_ids:
            return

        async def call(client: Redis) -> None:
            await client.delete(*(self._key(project_id, e) for e in event_ids))

        await self._guard.run(call, None)

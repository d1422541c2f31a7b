"""Realtime counters brought back in line with ClickHouse when Redis lost or missed writes.

ClickHouse holds every acknowledged event; the Redis counters (``realtime.py``) hold those that
were recorded. They part ways when:

- a batch could not be recorded (Redis down or cooling down, or a data error such as WRONGTYPE
  on one of the project's keys): the ingest process that stored it knows, and marks the project;
- Redis lost data: restarted empty, or from an append-only file that lacks the last writes,
  or flushed. ``rt:{.meta}:epoch`` holds the ``run_id`` of the server whose data we vouch for:
  absent (flushed, empty) or another server's (restarted) means every project with events in
  the last ORDER_MAX_AGE is to be rebuilt.

Pending rebuilds live in Redis (``rt:{.meta}:stale``: project -> "<mode> <nonce>", mode ``reset``
after a data error, else ``replay``), so every process sharing the Redis sees them: the realtime
endpoint answers from ClickHouse for a project listed there, or while the epoch is missing.
What a process notices while Redis is unreachable stays in memory (``behind``) until it can be
written there; its own readers honour it meanwhile.

A rebuild replays the project's recent events from ClickHouse through the same script as
ingestion: the first link of each anonymousId seen in the last LINK_TTL (through
``commerce.visitors.PEOPLE``, with that link's time and event id), each order's first event
(orders with an event in the last ORDER_MAX_AGE) and each visitor's and page viewer's latest time
of the last RETENTION, with the anonymousId of a visit without a userId, so that the script
counts every visit for its person as live recording did: the rebuilt keys equal the live ones.
Recording is idempotent (a claim only moves to an earlier event; ZADD GT), so the replay and live
ingestion may interleave freely;
events stored after the replay's read are recorded by ingestion itself. ``reset`` first deletes
the project's counters, so data a bad write left half done (a script stops at its first error)
goes too. The mark is removed only if nobody marked the project again meanwhile (its nonce).

Every process that ingests or reads realtime runs the keeper loop (``run``); a lock in Redis lets
one of them do the rebuilds at a time (the others still verify the epoch and write their marks).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .commerce.orders import ORDERS_SEEN_SINCE
from .commerce.visitors import PEOPLE
from .realtime import (
    EPOCH_KEY,
    LINK_TTL,
    ORDER_MAX_AGE,
    RETENTION,
    STALE_KEY,
    RealtimeCounters,
    RealtimeEvent,
    project_key_pattern,
)
from .redis_guard import Failure
from .storage import Sql, Storage

log = structlog.get_logger(__name__)

LOCK_KEY = "rt:{.meta}:lock"
LOCK_MS = 60_000  # renewed after each project; another keeper takes over if this one dies
REPLAY_CHUNK = 500  # events per script call
MAX_BACKOFF_SECONDS = 30.0  # one project's failing rebuild
MAX_WAIT_SECONDS = 5.0  # the loop while Redis or ClickHouse is down

# KEYS[1] stale hash; ARGV: mode, nonce, projects... A project already awaiting a reset keeps the
# reset; every mark gets the new nonce, so a rebuild that started earlier does not clear it.
_MARK = """
for i = 3, #ARGV do
  local mode = ARGV[1]
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old and string.sub(old, 1, 6) == 'reset ' then mode = 'reset' end
  redis.call('HSET', KEYS[1], ARGV[i], mode .. ' ' .. ARGV[2])
end
return #ARGV - 2
"""
# KEYS[1] stale hash, KEYS[2] epoch; ARGV: epoch value, nonce, projects... Every project is
# marked before the epoch says the counters can be trusted again: no reader sees one without the
# other.
_SET_UP = """
for i = 3, #ARGV do
  local mode = 'replay'
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old and string.sub(old, 1, 6) == 'reset ' then mode = 'reset' end
  redis.call('HSET', KEYS[1], ARGV[i], mode .. ' ' .. ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[1])
return #ARGV - 2
"""
# KEYS[1]: a hash or a lock; ARGV: field (empty for the lock), the value we wrote.
_DONE = """
if ARGV[1] == '' then
  if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
elseif redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

ACTIVE_PROJECTS = Sql("""
    SELECT DISTINCT project_id FROM events
    WHERE ts >= {since} AND toDate(ts) >= toDate({since})
""")
# Each order with an event since {since}: its first event over all time, as every figure picks
# it (cartlytics.common.commerce.orders). An order whose first event is older than ORDER_MAX_AGE
# is then not counted, as live recording would not have counted its later duplicate either.
RECENT_ORDERS = Sql("""
    SELECT order_id, first_event_id, {first_ms}, order_total, toString(order_currency),
           order_visitor
    FROM ({orders_seen_since})
""").fill(orders_seen_since=ORDERS_SEEN_SINCE)
# Each visitor's latest event, and latest view of each page, since {since}; ``alone`` is the
# anonymousId of a visit without a userId (its person depends on links), else empty.
RECENT_VISITS = Sql("""
    SELECT visitor_id, if(user_id = '', anonymous_id, '') AS alone,
           if(event = 'page_view', page, '') AS viewed, {latest_ms}
    FROM events
    WHERE project_id = {project} AND visitor_id != ''
      AND ts >= {since} AND toDate(ts) >= toDate({since})
    GROUP BY visitor_id, alone, viewed
""")
# The link that decides each anonymousId seen since {since} (any event carrying it): its user
# by PEOPLE (the first link, cartlytics.common.commerce.visitors), with that link's first event
# (time as {first_ms} of ``first``, event id), as live recording keeps it in the claim.
RECENT_LINKS = Sql("""
    SELECT linked_id, linked_user, tupleElement(first, 2), {first_ms}
    FROM ({people}) AS people
    ANY INNER JOIN (
        SELECT anonymous_id AS linked_id, user_id AS linked_user,
               minMerge(first_link) AS first
        FROM identity_links
        WHERE project_id = {project}
        GROUP BY anonymous_id, user_id
    ) AS pairs USING (linked_id, linked_user)
    WHERE linked_id IN (
        SELECT anonymous_id FROM events
        WHERE project_id = {project} AND anonymous_id != ''
          AND ts >= {since} AND toDate(ts) >= toDate({since})
    )
""").fill(people=PEOPLE)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _from_millis(ms: int | str) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RealtimeRecovery:
    """What this process knows of counters behind ClickHouse, and the loop that repairs them."""

    def __init__(
        self,
        redis: Redis,
        counters: RealtimeCounters,
        storage: Storage,
        interval: float = 1.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._redis = redis
        self._counters = counters
        self._storage = storage
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, bool] = {}  # project -> reset; not yet marked in Redis
        self._suspect = False  # an outage seen, Redis not verified since
        self._outages = 0
        self._retry_at: dict[str, tuple[float, float]] = {}  # project -> (when, backoff)
        self._token = secrets.token_hex(8)
        self._wake = asyncio.Event()
        self._mark = redis.register_script(_MARK)
        self._set_up = redis.register_script(_SET_UP)
        self._done = redis.register_script(_DONE)
        self._renew = redis.register_script(_RENEW)

    # What the process noticed ----------------------------------------------------------------

    def record_failed(self, project_id: str, failure: Failure) -> None:
        """A batch of ``project_id`` was stored but not (or not wholly) recorded."""
        self._pending[project_id] = self._pending.get(project_id, False) or (
            failure is Failure.DATA
        )

    def unavailable(self) -> None:
        """Redis was unreachable or restarted: it may have lost writes (until verified)."""
        self._suspect = True
        self._outages += 1

    def wake(self) -> None:
        """Check now (Redis is back) rather than at the end of the current wait."""
        self._wake.set()

    def behind(self, project_id: str) -> bool:
        """Whether this process knows the project's counters to be (possibly) behind."""
        return self._suspect or project_id in self._pending

    # The keeper ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick forever; a failure (Redis or ClickHouse down) backs off, up to 5 s."""
        delay = self._interval
        while True:
            try:
                await self.tick()
                delay = self._interval
            except Exception as exc:  # the loop must outlive any outage
                delay = min(max(delay, 0.5) * 2, MAX_WAIT_SECONDS)
                log.warning("realtime keeper waiting", error=type(exc).__name__, retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    async def tick(self) -> int:
        """Verify the epoch, write this process's marks, then rebuild what is pending (if no
        other process holds the lock). Returns the number of projects rebuilt."""
        outages = self._outages
        await self._verify_epoch()
        await self._flush()
        if outages == self._outages:
            self._suspect = False
        return await self._drain()

    async def _verify_epoch(self) -> None:
        try:
            info = await self._redis.info("server")
            run_id: str | None = str(info["run_id"])
        except ResponseError:  # INFO renamed away (some hosted Redis): flushes are still seen
            run_id = None
        epoch = _text(await self._redis.get(EPOCH_KEY))
        if epoch is not None and (run_id is None or epoch == run_id):
            return
        if epoch is not None:
            # Another server's data (a restart, a failover): it may lack the last writes.
            await self._redis.delete(EPOCH_KEY)
        since = self._clock() - ORDER_MAX_AGE
        rows = await self._storage.query(ACTIVE_PROJECTS, {"since": since})
        projects = sorted(str(row[0]) for row in rows)
        nonce = secrets.token_hex(8)
        await self._set_up(
            keys=[STALE_KEY, EPOCH_KEY], args=[run_id or secrets.token_hex(20), nonce, *projects]
        )
        log.warning(
            "realtime counters to be rebuilt from ClickHouse",
            reason="redis restarted" if epoch is not None else "redis empty or flushed",
            projects=len(projects),
        )

    async def _flush(self) -> None:
        pending = dict(self._pending)
        for reset in (True, False):
            projects = sorted(p for p, r in pending.items() if r is reset)
            if projects:
                mode = "reset" if reset else "replay"
                await self._mark(keys=[STALE_KEY], args=[mode, secrets.token_hex(8), *projects])
        for project, reset in pending.items():
            if self._pending.get(project) is reset:
                del self._pending[project]

    async def _drain(self) -> int:
        if not await self._redis.hlen(STALE_KEY):
            return 0  # the usual tick: nothing pending, no lock taken
        if not await self._redis.set(LOCK_KEY, self._token, nx=True, px=LOCK_MS):
            return 0
        rebuilt = 0
        try:
            stale = {
                _text(k) or "": _text(v) or ""
                for k, v in (await self._redis.hgetall(STALE_KEY)).items()
            }
            for project, mark in sorted(stale.items()):
                when, _ = self._retry_at.get(project, (0.0, 0.0))
                if time.monotonic() < when:
                    continue
                if await self._rebuild_one(project, mark):
                    rebuilt += 1
                await self._renew(keys=[LOCK_KEY], args=[self._token, LOCK_MS])
        finally:
            await self._done(keys=[LOCK_KEY], args=["", self._token])
        return rebuilt

    async def _rebuild_one(self, project: str, mark: str) -> bool:
        started = time.monotonic()
        try:
            orders, visits, links = await self.rebuild(project, reset=mark.startswith("reset "))
        except Exception as exc:  # one project's failure must not stop the rest
            _, backoff = self._retry_at.get(project, (0.0, self._interval / 2))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self._retry_at[project] = (time.monotonic() + backoff, backoff)
            log.warning(
                "realtime rebuild failed",
                project=project,
                error=type(exc).__name__,
                retry_in=backoff,
            )
            return False
        self._retry_at.pop(project, None)
        await self._done(keys=[STALE_KEY], args=[project, mark])
        log.info(
            "realtime counters rebuilt",
            project=project,
            orders=orders,
            visitors=visits,
            links=links,
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    async def rebuild(self, project_id: str, reset: bool = False) -> tuple[int, int, int]:
        """Replay the project's recent events from ClickHouse into its counters (after deleting
        them when ``reset``). Returns (orders, visitor rows, links) replayed.

        First the links of the anonymousIds seen in the last LINK_TTL (live recording keeps a
        claim that long after an anonymousId's last event), each as its first linking event;
        then each order's first event; then each visitor's latest visit and page views of the
        last RETENTION, with the anonymousId of those without a userId, so that the script
        counts them for their person as live recording does.
        """
        if reset:
            await self._delete(project_id)
        now = self._clock()
        links = await self._storage.query(
            RECENT_LINKS,
            {
                "project": project_id,
                "since": now - LINK_TTL,
                "first_ms": self._millis("tupleElement(first, 1)"),
            },
        )
        events = [
            RealtimeEvent(
                event_id=str(event_id),
                event="identify",
                ts=_from_millis(ms),
                visitor_id=str(user),
                page="",
                order_id="",
                total=0,
                currency="",
                user_id=str(user),
                anonymous_id=str(anonymous),
            )
            for anonymous, user, event_id, ms in links
        ]
        rows = await self._storage.query(
            RECENT_ORDERS,
            {
                "project": project_id,
                "since": now - ORDER_MAX_AGE,
                "first_ms": self._millis("first_ts"),
            },
        )
        # No visitor: the order's visit is among the visits below, with the ids it needs.
        events += [
            RealtimeEvent(
                event_id=str(event_id),
                event="order_completed",
                ts=_from_millis(ms),
                visitor_id="",
                page="",
                order_id=str(order_id),
                total=int(total),
                currency=str(currency),
            )
            for order_id, event_id, ms, total, currency, _ in rows
        ]
        visits = await self._storage.query(
            RECENT_VISITS,
            {"project": project_id, "since": now - RETENTION, "latest_ms": self._millis("max(ts)")},
        )
        events += [
            RealtimeEvent(
                event_id="",
                event="page_view" if page else "visit",
                ts=_from_millis(ms),
                visitor_id=str(visitor),
                page=str(page),
                order_id="",
                total=0,
                currency="",
                anonymous_id=str(alone),
            )
            for visitor, alone, page, ms in visits
        ]
        for chunk in _chunks(events, REPLAY_CHUNK):
            await self._counters.record(project_id, chunk)
        return len(rows), len(visits), len(links)

    def _millis(self, expression: str) -> Sql:
        """Epoch milliseconds of a time, as an integer on either backend (seconds on servers
        without DateTime64, as they store them)."""
        if self._storage.datetime64:
            return Sql(f"toUnixTimestamp64Milli({expression})")
        return Sql(f"toInt64(toUnixTimestamp({expression})) * 1000")

    async def _delete(self, project_id: str) -> None:
        batch: list[str | bytes] = []
        async for key in self._redis.scan_iter(match=project_key_pattern(project_id), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self._redis.unlink(*batch)
                batch = []
        if batch:
            await self._redis.unlink(*batch)


def _chunks(items: Sequence[RealtimeEvent], size: int) -> list[Sequence[RealtimeEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]

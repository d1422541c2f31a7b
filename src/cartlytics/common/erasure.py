"""Erasure of one shopper on request (GDPR art. 17), and the suppression of their new events.

Plain Python over ``Storage`` and Redis; ``services/privacy`` is the gRPC wire to it, and
``cartlytics users erase`` calls that. docs/privacy.md says what is erased and how.

The shopper's events, by the identity rule (``commerce.visitors``): those with ``user_id`` = U,
and those with no userId whose anonymousId's first link is to U. ``Eraser.erase``:

1. resolves them: U's linked anonymousIds (A), the distinct event ids (E), the products whose
   names they carried (P);
2. writes that scope to ``erasure_scope`` and then the request as ``pending`` to ``erasures``
   (the ids only as keyed hashes there), and adds the hashes to the suppression list, so that
   this process drops the shopper's new events at once (others within their refresh interval);
3. purges (``storage/purge.py``): the events, their per-event rows, every rollup exact again;
4. cleans Redis: the realtime counters (``RealtimeCounters.erase``, then the project's counters
   marked for a reset rebuild from ClickHouse, which is exact for orders today as well) and the
   dedup window entries of the erased event ids;
5. records the request as ``done`` with its number of events, and deletes its scope rows.

Every step can run again with the same result, so a request cut by a crash is finished by running
3-5 again from its scope: ``Eraser.resume`` does it for every pending request (the privacy module
at start and then periodically). Asking again erases what is left (nothing) and is recorded too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter, Histogram

from .commerce.visitors import PEOPLE
from .realtime import STALE_KEY, RealtimeCounters
from .storage import Sql, Storage
from .storage.purge import Purger, Selection, chunks
from .storage.sql import EMPTY

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

ERASURES = Counter("cartlytics_erasures_total", "User erasures completed", ["resumed"])
ERASED_EVENTS = Counter("cartlytics_erased_events_total", "Events removed by user erasures")
ERASURE_SECONDS = Histogram(
    "cartlytics_erasure_seconds",
    "Time to complete one user erasure",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
SUPPRESSED_EVENTS = Counter(
    "cartlytics_suppressed_events_total", "Events of erased users dropped at ingest"
)

MAX_USER_ID_CHARS = 256


def dedup_key(project_id: str, event_id: str) -> str:
    """The dedup window's Redis key of a client event id (``services/ingest/idempotency.py``)."""
    return f"idem:{{{project_id}}}:{event_id}"


def subject_hash(salt: bytes, project_id: str, kind: str, value: str) -> str:
    """The keyed hash an erased id is recorded by: HMAC-SHA256 with the server's salt (the IP
    hash's, ``ANALYTICS_IP_SALT``) over the project, the kind (``user`` or ``anonymous``) and
    the id; hex. Without the salt it cannot be matched to an id."""
    message = "\0".join((project_id, kind, value)).encode("utf-8", "surrogatepass")
    return hmac.new(salt, message, hashlib.sha256).hexdigest()


# --- Resolution -------------------------------------------------------------------------------

_LINKED = Sql("SELECT linked_id FROM ({people}) WHERE linked_user = {user}").fill(people=PEOPLE)
_OWN_EVENTS = Sql("user_id = {user}")
_LINKED_EVENTS = Sql("user_id = {user} OR (user_id = '' AND anonymous_id IN {anonymous})")
_EVENT_IDS = Sql("SELECT DISTINCT event_id FROM events WHERE project_id = {project} AND ({which})")
_PRODUCTS = Sql("""
    SELECT DISTINCT product_id FROM (
        SELECT product_id FROM events
        WHERE project_id = {project} AND ({which}) AND product_id != ''
        UNION ALL
        SELECT product_id FROM order_items
        WHERE project_id = {project} AND visitor_id IN {visitors} AND event_id IN (
            SELECT event_id FROM events WHERE project_id = {project} AND ({which})
        )
    )
""")
_PENDING = Sql("""
    SELECT project_id, request_id, argMax(requested_by, version),
           toString(argMax(requested_at, version))
    FROM erasures
    GROUP BY project_id, request_id
    HAVING argMax(state, version) = 'pending'
""")
_SCOPE = Sql("SELECT kind, value FROM erasure_scope WHERE request_id = {request}")
_SUPPRESSED = Sql("""
    SELECT project_id, 'user', subject FROM erasures WHERE requested_at >= {since}
    UNION ALL
    SELECT project_id, 'anonymous', arrayJoin(anonymous) FROM erasures
    WHERE requested_at >= {since}
""")

RECORD_COLUMNS = (
    "project_id", "request_id", "subject", "anonymous", "requested_by", "requested_at", "state",
    "events", "completed_at", "version",
)  # fmt: skip


@dataclass(frozen=True)
class Scope:
    """What one erasure removes: a userId, its linked anonymousIds, the event ids and the
    products whose names are recomputed."""

    user: str
    anonymous: tuple[str, ...]
    events: tuple[str, ...]
    products: tuple[str, ...]

    @property
    def visitors(self) -> tuple[str, ...]:
        """The visitor ids of the erased events (as ingest wrote ``visitor_id``)."""
        return (self.user, *self.anonymous)

    def rows(self, request_id: str) -> list[tuple[str, str, str]]:
        return [
            (request_id, "user", self.user),
            *((request_id, "anonymous", value) for value in self.anonymous),
            *((request_id, "event", value) for value in self.events),
            *((request_id, "product", value) for value in self.products),
        ]

    @staticmethod
    def from_rows(rows: Iterable[Sequence[object]]) -> Scope:
        found: dict[str, list[str]] = {"user": [], "anonymous": [], "event": [], "product": []}
        for kind, value in rows:
            found.setdefault(str(kind), []).append(str(value))
        if len(found["user"]) != 1:
            raise ValueError("an erasure's scope names one user")
        return Scope(
            found["user"][0],
            tuple(sorted(found["anonymous"])),
            tuple(sorted(found["event"])),
            tuple(sorted(found["product"])),
        )

    def selection(self) -> Selection:
        """The purge's conditions for this scope (``storage/purge.py``)."""
        which = _LINKED_EVENTS if self.anonymous else _OWN_EVENTS
        params: dict[str, object] = {
            "user": self.user,
            "visitors": self.visitors,
            "event_ids": self.events,
        }
        if self.anonymous:
            params["anonymous"] = self.anonymous
        if self.products:
            params["products"] = self.products
        return Selection(
            events=which,
            rows=Sql("visitor_id IN {visitors} AND event_id IN {event_ids}"),
            views=Sql("visitor_id IN {visitors}"),
            visitors=Sql("visitor_id IN {visitors}"),
            products=Sql("product_id IN {products}") if self.products else EMPTY,
            links=Sql("user_id = {user}"),
            people=Sql("anonymous_id IN {anonymous}") if self.anonymous else EMPTY,
            params=params,
            row_lists="event_ids",
        )


@dataclass(frozen=True)
class ErasureResult:
    request_id: str
    events: int
    requested_at: datetime
    completed_at: datetime
    suppressed_until: datetime | None


# --- Suppression ------------------------------------------------------------------------------


@dataclass
class Suppression:
    """The keyed hashes of the userIds and anonymousIds erased in the last ``days`` days, per
    project: ingest drops an event whose userId is one of them, or that has no userId and
    whose anonymousId is one (``suppressed``). Refreshed from ``erasures`` by every ingest
    process (``run``), and at once in the process that erases."""

    salt: bytes
    days: int
    users: dict[str, set[str]] = field(default_factory=dict)
    anonymous: dict[str, set[str]] = field(default_factory=dict)
    _added: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    """What ``add`` was given since the last refresh began: a refresh whose query ran before
    an erasure's record was written must not forget it."""

    @property
    def enabled(self) -> bool:
        return self.days > 0

    def add(self, project_id: str, users: Iterable[str], anonymous: Iterable[str]) -> None:
        if not self.enabled:
            return
        users, anonymous = list(users), list(anonymous)
        self.users.setdefault(project_id, set()).update(users)
        self.anonymous.setdefault(project_id, set()).update(anonymous)
        self._added.append((project_id, users, anonymous))

    def suppressed(self, project_id: str, user_id: str, anonymous_id: str) -> bool:
        """Whether an event of ``project_id`` with these ids belongs to an erased shopper."""
        if user_id:
            users = self.users.get(project_id)
            if not users:
                return False
            return subject_hash(self.salt, project_id, "user", user_id) in users
        known = self.anonymous.get(project_id)
        if not anonymous_id or not known:
            return False
        return subject_hash(self.salt, project_id, "anonymous", anonymous_id) in known

    async def refresh(self, storage: Storage, now: datetime | None = None) -> None:
        if not self.enabled:
            return
        since = (now or datetime.now(UTC)) - timedelta(days=self.days)
        added_before = len(self._added)
        # Not behind this process's ingest log: its writer drops the events of shoppers on
        # this list, and waiting for it to store what it holds first would store the very
        # events of an erasure this refresh is about to read.
        rows = await storage.query(_SUPPRESSED, {"since": since}, behind_log=False)
        users: dict[str, set[str]] = {}
        anonymous: dict[str, set[str]] = {}
        for project, kind, value in rows:
            into = users if kind == "user" else anonymous
            into.setdefault(str(project), set()).add(str(value))
        added = self._added[added_before:]  # recorded before they were added: maybe not read
        for project_id, user_hashes, anonymous_hashes in added:
            users.setdefault(project_id, set()).update(user_hashes)
            anonymous.setdefault(project_id, set()).update(anonymous_hashes)
        self.users, self.anonymous, self._added = users, anonymous, added

    async def run(self, storage: Storage, interval: float) -> None:
        """Refresh every ``interval`` seconds, forever (an outage only delays it)."""
        while True:
            try:
                await self.refresh(storage)
            except Exception as exc:  # storage down: keep the last list, try again
                log.warning("suppression list not refreshed", error=type(exc).__name__)
            await asyncio.sleep(interval)


# --- The eraser -------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Eraser:
    """Erases users of a project from storage and Redis (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        redis: Redis | None,
        suppression: Suppression,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._storage = storage
        self._redis = redis
        self._suppression = suppression
        self._purger = Purger(storage)
        self._clock = clock
        self._lock = asyncio.Lock()  # one erasure at a time per process: mutations queue anyway

    def _hashes(self, project_id: str, scope: Scope) -> tuple[str, list[str]]:
        salt = self._suppression.salt
        subject = subject_hash(salt, project_id, "user", scope.user)
        anonymous = [subject_hash(salt, project_id, "anonymous", a) for a in scope.anonymous]
        return subject, anonymous

    async def erase(self, project_id: str, user_id: str, requested_by: str) -> ErasureResult:
        """Erase ``user_id`` of ``project_id`` (the caller checked the request); return once
        every table and Redis are clean."""
        async with self._lock:
            started = asyncio.get_running_loop().time()
            if self._storage.read_barrier is not None:
                # The ingest log of this process: every event acknowledged so far is stored
                # before the scope is read, so none is written back after the purge.
                await self._storage.read_barrier()
            scope = await asyncio.to_thread(self.resolve, project_id, user_id)
            request_id = "era_" + secrets.token_hex(8)
            requested_at = self._clock()
            subject, anonymous = self._hashes(project_id, scope)
            # The scope first: a pending request always has its scope (a scope without its
            # request is of one that never started deleting, and is ignored).
            await self._storage.insert(
                "erasure_scope", ("request_id", "kind", "value"), scope.rows(request_id)
            )
            record = [project_id, request_id, subject, anonymous, requested_by, requested_at]
            await self._storage.insert(
                "erasures",
                RECORD_COLUMNS,
                [(*record, "pending", len(scope.events), requested_at, 1)],
            )
            self._suppression.add(project_id, [subject], anonymous)
            log.info(
                "user erasure started",
                project=project_id,
                request=request_id,
                events=len(scope.events),
                requested_by=requested_by,
            )
            completed_at = await self._finish(project_id, request_id, scope, record)
            ERASURES.labels(resumed="no").inc()
            ERASURE_SECONDS.observe(asyncio.get_running_loop().time() - started)
            until = None
            if self._suppression.enabled:
                until = requested_at + timedelta(days=self._suppression.days)
            return ErasureResult(request_id, len(scope.events), requested_at, completed_at, until)

    async def resume(self) -> int:
        """Finish every pending erasure (cut by a crash or an outage); return how many."""
        async with self._lock:
            pending = await self._storage.query(_PENDING)
            done = 0
            for project_id, request_id, requested_by, requested_at in pending:
                rows = await self._storage.query(_SCOPE, {"request": str(request_id)})
                scope = Scope.from_rows(rows)
                subject, anonymous = self._hashes(str(project_id), scope)
                self._suppression.add(str(project_id), [subject], anonymous)
                when = datetime.fromisoformat(str(requested_at)).replace(tzinfo=UTC)
                record = [
                    str(project_id), str(request_id), subject, anonymous, str(requested_by), when
                ]  # fmt: skip
                log.warning("user erasure resumed", project=project_id, request=request_id)
                await self._finish(str(project_id), str(request_id), scope, record)
                ERASURES.labels(resumed="yes").inc()
                done += 1
            return done

    def resolve(self, project_id: str, user_id: str) -> Scope:
        """The shopper's scope as stored now (blocking)."""
        params: dict[str, object] = {"project": project_id, "user": user_id}
        rows = self._storage.query_sync(_LINKED, params)
        anonymous = tuple(sorted(str(row[0]) for row in rows))
        which = _OWN_EVENTS
        if anonymous:
            params["anonymous"] = anonymous
            which = _LINKED_EVENTS
        params["which"] = which
        params["visitors"] = (user_id, *anonymous)
        events = self._storage.query_sync(_EVENT_IDS, params)
        products = self._storage.query_sync(_PRODUCTS, params)
        return Scope(
            user_id,
            anonymous,
            tuple(sorted(str(row[0]) for row in events)),
            tuple(sorted(str(row[0]) for row in products)),
        )

    async def _finish(
        self, project_id: str, request_id: str, scope: Scope, record: list[object]
    ) -> datetime:
        report = await asyncio.to_thread(self._purger.purge, project_id, scope.selection())
        await self._clean_redis(project_id, scope)
        completed_at = self._clock()
        await self._storage.insert(
            "erasures", RECORD_COLUMNS, [(*record, "done", len(scope.events), completed_at, 2)]
        )
        await asyncio.to_thread(self._forget_scope, request_id)
        ERASED_EVENTS.inc(len(scope.events))
        log.info(
            "user erasure done",
            project=project_id,
            request=request_id,
            events=len(scope.events),
            mutations=report.mutations,
            seconds=report.seconds,
        )
        return completed_at

    def _forget_scope(self, request_id: str) -> None:
        self._purger.delete("erasure_scope", Sql("request_id = {request}"), {"request": request_id})

    async def _clean_redis(self, project_id: str, scope: Scope) -> None:
        """The shopper's ids out of the realtime counters, the project's counters to be rebuilt
        from ClickHouse (so orders today are exact), the erased ids out of the dedup window.
        Without Redis (not configured) there is nothing to clean; Redis down raises, and the
        request stays pending until ``resume`` gets through."""
        if self._redis is None:
            return
        await RealtimeCounters(self._redis).erase(project_id, scope.user, list(scope.anonymous))
        await self._redis.hset(STALE_KEY, project_id, "reset " + secrets.token_hex(8))
        for ids in chunks(list(scope.events), 500):
            await self._redis.unlink(*(dedup_key(project_id, event_id) for event_id in ids))

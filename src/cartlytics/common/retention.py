"""Retention: a project's events older than it keeps them are dropped, with what they count for.

``ANALYTICS_RETENTION_DAYS`` says how long (``RetentionPolicy``: ``400``, or
``projA=30,projB=365,*=400``; empty: for ever). A project kept N days keeps every event from
midnight UTC N days ago; older ones go (so an event is kept at least N and less than N + 1 days).
The job (``Retention.apply``, run by the privacy module every
``ANALYTICS_RETENTION_INTERVAL_SECONDS``, and once at start):

1. records, per project with events past its cutoff, a ``pending`` run (``retention_runs``);
2. drops whole months (``ALTER TABLE ... DROP PARTITION``: ``events``, ``order_items``,
   ``order_lines``, ``orders``, ``product_views``, ``sales_15m``, ``order_line_counts``) that
   every project stored in them is past: partitions are shared by all projects, so a month goes
   this way only when no project keeps any of it (a project without retention keeps every month);
3. purges each such project's remaining older events by delete mutations and makes every rollup
   exact again from what remains (``storage/purge.py``, the same core as erasure): the summing
   rollups per bucket, ``customer_first``, ``identity_links``, ``order_dups`` and product names
   recomputed for the project;
4. marks the run ``done``. A run cut by a crash is pending at the next start, and run again
   (every step can be).

What remains is counted as if the dropped events had never been sent: an orderId whose first
event was dropped while a later duplicate is kept counts once, from that duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter, Histogram

from .realtime import ORDER_MAX_AGE, STALE_KEY
from .storage import Sql, Storage
from .storage.purge import Purger, Selection

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

RETENTION_RUNS = Counter("cartlytics_retention_runs_total", "Retention job runs", ["outcome"])
RETENTION_PROJECTS = Counter(
    "cartlytics_retention_projects_purged_total", "Projects whose older events were dropped"
)
RETENTION_MONTHS = Counter(
    "cartlytics_retention_partitions_dropped_total", "Whole months dropped by partition"
)
RETENTION_SECONDS = Histogram(
    "cartlytics_retention_seconds",
    "Time one retention run takes",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)

_MONTHS = Sql("""
    SELECT toYYYYMM(ts) AS month, project_id, min(ts) FROM events
    GROUP BY month, project_id
""")
_PENDING_RUNS = Sql("""
    SELECT project_id, toString(cutoff) FROM retention_runs
    GROUP BY project_id, cutoff
    HAVING argMax(state, version) = 'pending'
""")
RUN_COLUMNS = ("project_id", "cutoff", "started_at", "state", "version")


@dataclass(frozen=True)
class RetentionPolicy:
    """Days kept per project (``per_project``), else ``default`` (None: for ever)."""

    default: int | None = None
    per_project: Mapping[str, int] = field(default_factory=dict)

    @staticmethod
    def parse(text: str) -> RetentionPolicy:
        text = text.strip()
        if not text:
            return RetentionPolicy()
        if "=" not in text:
            return RetentionPolicy(_days(text))
        default: int | None = None
        per_project: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"cannot read {part!r}: write project=days or *=days")
            if name == "*":
                default = _days(value)
            else:
                per_project[name] = _days(value)
        return RetentionPolicy(default, per_project)

    @property
    def empty(self) -> bool:
        return self.default is None and not self.per_project

    def days(self, project: str) -> int | None:
        return self.per_project.get(project, self.default)

    def cutoff(self, project: str, now: datetime) -> datetime | None:
        """The first moment kept: midnight UTC ``days`` days before ``now``'s day."""
        days = self.days(project)
        if days is None:
            return None
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=days)


def _days(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a whole number of days") from None
    if value < 1:
        raise ValueError("a retention is at least 1 day")
    return value


def _month_end(month: int) -> datetime:
    year, number = divmod(month, 100)
    return datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _parse_time(text: object) -> datetime:
    value = str(text)
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in value else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(value, fmt).replace(tzinfo=UTC)


@dataclass
class RetentionReport:
    months: list[int] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _selection(cutoff: datetime) -> Selection:
    older = Sql("ts < {cutoff}")
    return Selection(
        events=older,
        rows=older,
        views=older,
        visitors=None,
        products=None,
        links=None,
        params={"cutoff": cutoff},
    )


class Retention:
    """Applies a ``RetentionPolicy`` to a store (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        policy: RetentionPolicy,
        redis: Redis | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._policy = policy
        self._redis = redis
        self._clock = clock
        self._purger = Purger(storage)

    async def apply(self) -> RetentionReport:
        """One run: pending runs finished, then what is past retention now dropped."""
        started = time.monotonic()
        try:
            report = await asyncio.to_thread(self.apply_sync, self._clock())
        except Exception:
            RETENTION_RUNS.labels(outcome="error").inc()
            raise
        RETENTION_RUNS.labels(outcome="ok").inc()
        RETENTION_SECONDS.observe(time.monotonic() - started)
        if report.projects and self._redis is not None:
            # Counters of the last ORDER_MAX_AGE hold nothing older than a retention of a few
            # days; a shorter one may have dropped some: the counters are rebuilt.
            for project in report.projects:
                cutoff = self._policy.cutoff(project, self._clock())
                if cutoff is not None and cutoff > self._clock() - ORDER_MAX_AGE:
                    await self._redis.hset(STALE_KEY, project, "reset retention")
        return report

    def apply_sync(self, now: datetime) -> RetentionReport:
        started = time.monotonic()
        report = RetentionReport()
        # project -> cutoffs of its pending runs (the latest covers the others)
        pending: dict[str, set[datetime]] = {}
        for project, cutoff in self._storage.query_sync(_PENDING_RUNS):
            pending.setdefault(str(project), set()).add(_parse_time(cutoff))
        if not self._policy.empty:
            months: dict[int, set[str]] = {}
            oldest: dict[str, datetime] = {}
            for month, project, first in self._storage.query_sync(_MONTHS):
                months.setdefault(int(month), set()).add(str(project))
                first_ts = _parse_time(first)
                oldest[str(project)] = min(first_ts, oldest.get(str(project), first_ts))
            cutoffs = {p: self._policy.cutoff(p, now) for p in oldest}
            due = {
                p: cutoff
                for p, cutoff in cutoffs.items()
                if cutoff is not None and oldest[p] < cutoff
            }
            new_runs = {p: c for p, c in due.items() if c not in pending.get(p, set())}
            if new_runs:
                # Recorded before anything is dropped: a crash from here on is finished later.
                self._storage.insert_sync(
                    "retention_runs",
                    RUN_COLUMNS,
                    [(p, c, now, "pending", 1) for p, c in sorted(new_runs.items())],
                )
            for project, cutoff in due.items():
                pending.setdefault(project, set()).add(cutoff)
            expired = [
                month
                for month, projects in months.items()
                if all(
                    (cutoff := cutoffs.get(p)) is not None and cutoff >= _month_end(month)
                    for p in projects
                )
            ]
            report.months = self._purger.drop_months(expired)
            RETENTION_MONTHS.inc(len(report.months))
            if report.months:
                log.info("retention dropped whole months", months=report.months)
        for project, runs in sorted(pending.items()):
            cutoff = max(runs)
            purged = self._purger.purge(project, _selection(cutoff))
            self._storage.insert_sync(
                "retention_runs",
                RUN_COLUMNS,
                [(project, run, now, "done", 2) for run in sorted(runs)],
            )
            RETENTION_PROJECTS.inc()
            report.projects.append(project)
            log.info(
                "retention applied",
                project=project,
                cutoff=cutoff.isoformat(),
                mutations=purged.mutations,
                seconds=purged.seconds,
            )
        report.seconds = round(time.monotonic() - started, 3)
        return report

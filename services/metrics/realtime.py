"""GET /analytics/realtime: from the Redis counters kept at ingest, or from ClickHouse when Redis
is unavailable or its counters are known to be behind, until rebuilt (common/realtime_rebuild.py)
(slower, same definitions)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from cartlytics.common.commerce.orders import FIRST_ORDERS, ORDER_COUNT, ORDER_REVENUE
from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.money import parse_currency
from cartlytics.common.periods import parse_timezone
from cartlytics.common.realtime import RealtimeCounters, RealtimeSnapshot
from cartlytics.common.realtime_rebuild import RealtimeRecovery
from cartlytics.common.redis_guard import Failure, RedisGuard
from cartlytics.common.storage import Sql, Storage

from .reports import RealtimeReport

ACTIVE_WINDOW = timedelta(minutes=5)

# The recent events' visitors as people (commerce.visitors), as the Redis counters count them.
_RECENT = Sql("""
        SELECT visitor_id, event, page FROM events
        WHERE project_id = {project} AND ts >= {since} AND toDate(ts) >= toDate({since})""")
_RECENT_PEOPLE = as_people(_RECENT, ("visitor_id", "event", "page"), "visitor_id", hashed=True)
ACTIVE_VISITORS = Sql("""
    SELECT uniqExact(visitor_id) FROM ({recent})
""").fill(recent=_RECENT_PEOPLE)
TOP_PAGES = Sql("""
    SELECT page, uniqExact(visitor_id) AS visitors FROM ({recent})
    WHERE event = 'page_view' AND page != ''
    GROUP BY page ORDER BY visitors DESC, page ASC LIMIT 10
""").fill(recent=_RECENT_PEOPLE)
ORDERS_TODAY = Sql("""
    SELECT {order_count}, {order_revenue} FROM ({first_orders})
    WHERE order_currency = {currency} AND first_ts >= {midnight}
""").fill(order_count=ORDER_COUNT, order_revenue=ORDER_REVENUE, first_orders=FIRST_ORDERS)


class RealtimeReader:
    def __init__(
        self,
        storage: Storage,
        counters: RealtimeCounters | None,
        guard: RedisGuard,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        recovery: RealtimeRecovery | None = None,
    ) -> None:
        """With ``recovery``, counters known to be behind ClickHouse are never served."""
        self._storage = storage
        self._counters = counters
        self._guard = guard
        self._default_currency = default_currency
        self._clock = clock
        self._recovery = recovery

    async def realtime(self, project_id: str, timezone: str, currency: str) -> RealtimeReport:
        zone = parse_timezone(timezone)
        code = parse_currency(currency, self._default_currency)
        if self._storage.read_barrier is not None:
            # With the ingest log, the counters follow the writer's blocks: wait, as a query
            # would, until what was acknowledged before this call is stored and counted.
            await self._storage.read_barrier()
        recovery = self._recovery
        if self._counters is not None and not (recovery and recovery.behind(project_id)):
            counters = self._counters

            def failed(failure: Failure) -> None:
                if recovery is not None and failure is Failure.DATA:
                    recovery.record_failed(project_id, failure)  # e.g. WRONGTYPE: reset them

            async def read(_: Redis) -> RealtimeSnapshot | None:
                if recovery is None:
                    return await counters.snapshot(project_id, zone, code)
                # None while the counters are behind (Redis lost data, or a rebuild pending).
                return await counters.current_snapshot(project_id, zone, code)

            snapshot = await self._guard.run(read, None, failed)
            if snapshot is not None:
                return RealtimeReport(
                    snapshot.active_visitors,
                    snapshot.orders_today,
                    snapshot.revenue_today,
                    list(snapshot.top_pages),
                )
        return await self._from_storage(project_id, zone.key, code)

    async def _from_storage(self, project_id: str, zone: str, currency: str) -> RealtimeReport:
        now = self._clock()
        local = now.astimezone(parse_timezone(zone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
        since = now - ACTIVE_WINDOW
        params = {"project": project_id, "since": since, "currency": currency, "midnight": midnight}
        (active,) = (await self._storage.query(ACTIVE_VISITORS, params))[0]
        pages = await self._storage.query(TOP_PAGES, params)
        orders, revenue = (await self._storage.query(ORDERS_TODAY, params))[0]
        return RealtimeReport(
            active_visitors=int(active),
            orders_today=int(orders),
            revenue_today=int(revenue or 0),
            top_pages=[(str(page), int(visitors)) for page, visitors in pages],
        )

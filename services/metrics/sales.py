"""Sales overview: revenue, orders, average order value, growth and a zero-filled series.

Orders count each (project, orderId) once: the first ``order_completed`` by timestamp (then by
event id) wins, over all time, so a late duplicate of an old order never lands in a new period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cartlytics.common.money import average, growth, parse_currency
from cartlytics.common.periods import (
    bucket_sql,
    bucket_starts,
    parse_granularity,
    parse_timezone,
    resolve_period,
)
from cartlytics.common.storage import Storage

from .orders import FIRST_ORDERS

PREVIOUS = "previous"

SALES_BY_BUCKET = """
    SELECT if(first_ts >= {start}, {bucket}, 'previous') AS bucket,
           count() AS orders,
           sum(order_total) AS revenue
    FROM ({first_orders})
    WHERE order_currency = {currency}
      AND ((first_ts >= {start} AND first_ts < {end})
           OR (first_ts >= {prev_start} AND first_ts < {prev_end}))
    GROUP BY bucket
"""


@dataclass(frozen=True)
class SalesQuery:
    period: str = ""
    granularity: str = ""
    currency: str = ""
    timezone: str = ""


@dataclass(frozen=True)
class Bucket:
    date: str
    revenue: int
    orders: int


@dataclass(frozen=True)
class SalesReport:
    period: str
    revenue: int
    orders: int
    average_order_value: int
    currency: str
    revenue_growth: float | None
    orders_growth: float | None
    series: list[Bucket]  # newest first


class SalesReader:
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._default_currency = default_currency
        self._clock = clock

    async def sales(self, project_id: str, query: SalesQuery) -> SalesReport:
        zone = parse_timezone(query.timezone)
        window = resolve_period(query.period, zone, self._clock())
        granularity = parse_granularity(query.granularity)
        currency = parse_currency(query.currency, self._default_currency)
        sql = SALES_BY_BUCKET.replace("{first_orders}", FIRST_ORDERS).replace(
            "{bucket}", bucket_sql(granularity, "first_ts")
        )
        rows = await self._storage.query(
            sql,
            {
                "project": project_id,
                "currency": currency,
                "tz": window.zone_name,
                "start": window.start,
                "end": window.end,
                "prev_start": window.prev_start,
                "prev_end": window.prev_end,
            },
        )
        by_bucket = {str(key): (int(orders), int(revenue)) for key, orders, revenue in rows}
        prev_orders, prev_revenue = by_bucket.pop(PREVIOUS, (0, 0))
        series = [
            Bucket(label, by_bucket.get(key, (0, 0))[1], by_bucket.get(key, (0, 0))[0])
            for key, label in reversed(bucket_starts(window, granularity))
        ]
        orders = sum(o for o, _ in by_bucket.values())
        revenue = sum(r for _, r in by_bucket.values())
        return SalesReport(
            period=window.label,
            revenue=revenue,
            orders=orders,
            average_order_value=average(revenue, orders),
            currency=currency,
            revenue_growth=growth(revenue, prev_revenue),
            orders_growth=growth(orders, prev_orders),
            series=series,
        )

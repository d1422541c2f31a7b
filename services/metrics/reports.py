"""What each metrics reader answers: plain data, independent of the wire (the servicer maps it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProductsQuery:
    period: str = ""
    limit: int = 0  # 0: the default (10); 1..100
    currency: str = ""
    timezone: str = ""


@dataclass(frozen=True)
class ProductRow:
    product_id: str
    name: str
    revenue: int
    units_sold: int
    conversion_rate: float


@dataclass(frozen=True)
class ProductsReport:
    top_sellers: list[ProductRow]


@dataclass(frozen=True)
class CustomersQuery:
    period: str = ""
    limit: int = 0  # 0: the default (10); 1..100
    currency: str = ""
    timezone: str = ""


@dataclass(frozen=True)
class CustomerRow:
    customer_id: str
    orders: int
    revenue: int


@dataclass(frozen=True)
class CustomersReport:
    period: str
    currency: str
    total_customers: int
    new_customers: int
    returning_customers: int
    repeat_purchase_rate: float
    revenue_per_customer: int
    top_customers: list[CustomerRow]


@dataclass(frozen=True)
class FunnelQuery:
    period: str = ""
    steps: list[str] = field(default_factory=list)  # empty: the default purchase funnel
    window: int = 0  # seconds; 0: the default (86400)
    timezone: str = ""


@dataclass(frozen=True)
class FunnelStageRow:
    name: str
    count: int
    rate: float


@dataclass(frozen=True)
class FunnelReport:
    stages: list[FunnelStageRow]
    conversion_rate: float


@dataclass(frozen=True)
class CustomQuery:
    metrics: list[str]
    dimensions: list[str]
    filters: dict[str, str]
    order_by: str = ""
    limit: int = 0  # 0: the default (100); 1..10000


@dataclass(frozen=True)
class QueryReport:
    rows: list[dict[str, str | int | float]]


@dataclass(frozen=True)
class RealtimeReport:
    active_visitors: int
    orders_today: int
    revenue_today: int
    top_pages: list[tuple[str, int]]

"""MetricsService over gRPC: translate the wire to the readers and back. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.figures import exact, int32
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from .reports import (
    CustomersQuery,
    CustomersReport,
    CustomQuery,
    FunnelQuery,
    FunnelReport,
    ProductsQuery,
    ProductsReport,
    QueryReport,
    RealtimeReport,
)
from .sales import SalesQuery, SalesReader

Context: TypeAlias = aio.ServicerContext[Any, Any]


class ProductsSource(Protocol):
    async def top_sellers(self, project_id: str, query: ProductsQuery) -> ProductsReport: ...


class CustomersSource(Protocol):
    async def customers(self, project_id: str, query: CustomersQuery) -> CustomersReport: ...


class FunnelSource(Protocol):
    async def funnel(self, project_id: str, query: FunnelQuery) -> FunnelReport: ...


class RealtimeSource(Protocol):
    async def realtime(self, project_id: str, timezone: str, currency: str) -> RealtimeReport: ...


class QuerySource(Protocol):
    async def run(self, project_id: str, query: CustomQuery) -> QueryReport: ...


@dataclass(frozen=True)
class Readers:
    sales: SalesReader
    products: ProductsSource
    customers: CustomersSource
    funnel: FunnelSource
    realtime: RealtimeSource
    query: QuerySource


def _project() -> str:
    return current_principal.get().project_id


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, readers: Readers) -> None:
        self._r = readers

    async def GetSales(
        self, request: metrics_pb2.GetSalesRequest, context: Context
    ) -> metrics_pb2.GetSalesResponse:
        report = await self._r.sales.sales(
            _project(),
            SalesQuery(
                period=request.period,
                granularity=request.granularity,
                currency=request.currency,
                timezone=request.timezone,
            ),
        )
        response = metrics_pb2.GetSalesResponse(
            period=report.period,
            revenue=exact("revenue", report.revenue),
            orders=int32("orders", report.orders),
            average_order_value=exact("averageOrderValue", report.average_order_value),
            currency=report.currency,
            series=[
                metrics_pb2.SalesBucket(
                    date=b.date,
                    revenue=exact("series.revenue", b.revenue),
                    orders=int32("series.orders", b.orders),
                )
                for b in report.series
            ],
        )
        response.growth.SetInParent()
        if report.revenue_growth is not None:
            response.growth.revenue = report.revenue_growth
        if report.orders_growth is not None:
            response.growth.orders = report.orders_growth
        return response

    async def GetProducts(
        self, request: metrics_pb2.GetProductsRequest, context: Context
    ) -> metrics_pb2.GetProductsResponse:
        report = await self._r.products.top_sellers(
            _project(),
            ProductsQuery(request.period, request.limit, request.currency, request.timezone),
        )
        return metrics_pb2.GetProductsResponse(
            top_sellers=[
                metrics_pb2.ProductPerformance(
                    product_id=p.product_id,
                    name=p.name,
                    revenue=exact("topSellers.revenue", p.revenue),
                    units_sold=exact("topSellers.unitsSold", p.units_sold),
                    conversion_rate=p.conversion_rate,
                )
                for p in report.top_sellers
            ]
        )

    async def GetCustomers(
        self, request: metrics_pb2.GetCustomersRequest, context: Context
    ) -> metrics_pb2.GetCustomersResponse:
        report = await self._r.customers.customers(
            _project(),
            CustomersQuery(request.period, request.limit, request.currency, request.timezone),
        )
        return metrics_pb2.GetCustomersResponse(
            period=report.period,
            currency=report.currency,
            total_customers=int32("totalCustomers", report.total_customers),
            new_customers=int32("newCustomers", report.new_customers),
            returning_customers=int32("returningCustomers", report.returning_customers),
            repeat_purchase_rate=report.repeat_purchase_rate,
            revenue_per_customer=exact("revenuePerCustomer", report.revenue_per_customer),
            top_customers=[
                metrics_pb2.CustomerValue(
                    customer_id=c.customer_id,
                    orders=int32("topCustomers.orders", c.orders),
                    revenue=exact("topCustomers.revenue", c.revenue),
                )
                for c in report.top_customers
            ],
        )

    async def GetFunnel(
        self, request: metrics_pb2.GetFunnelRequest, context: Context
    ) -> metrics_pb2.GetFunnelResponse:
        report = await self._r.funnel.funnel(
            _project(),
            FunnelQuery(request.period, list(request.steps), request.window, request.timezone),
        )
        return metrics_pb2.GetFunnelResponse(
            stages=[
                metrics_pb2.FunnelStage(
                    name=s.name, count=int32("stages.count", s.count), rate=s.rate
                )
                for s in report.stages
            ],
            conversion_rate=report.conversion_rate,
        )

    async def GetRealtime(
        self, request: metrics_pb2.GetRealtimeRequest, context: Context
    ) -> metrics_pb2.GetRealtimeResponse:
        report = await self._r.realtime.realtime(_project(), request.timezone, request.currency)
        return metrics_pb2.GetRealtimeResponse(
            active_visitors=int32("activeVisitors", report.active_visitors),
            orders_today=int32("ordersToday", report.orders_today),
            revenue_today=exact("revenueToday", report.revenue_today),
            top_pages=[
                metrics_pb2.PageVisitors(page=page, visitors=int32("topPages.visitors", visitors))
                for page, visitors in report.top_pages
            ],
        )

    async def RunQuery(
        self, request: metrics_pb2.RunQueryRequest, context: Context
    ) -> metrics_pb2.RunQueryResponse:
        report = await self._r.query.run(
            _project(),
            CustomQuery(
                metrics=list(request.metrics),
                dimensions=list(request.dimensions),
                filters=dict(request.filters),
                order_by=request.order_by,
                limit=request.limit,
            ),
        )
        response = metrics_pb2.RunQueryResponse()
        for row in report.rows:
            response.rows.add().update(
                {
                    name: exact(name, value) if isinstance(value, int) else value
                    for name, value in row.items()
                }
            )
        return response

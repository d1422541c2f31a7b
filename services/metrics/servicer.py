"""MetricsService over gRPC: translate the wire to the readers and back. Nothing else."""

from __future__ import annotations

from typing import Any, TypeAlias

from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.errors import unimplemented
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from .sales import SalesQuery, SalesReader

Context: TypeAlias = aio.ServicerContext[Any, Any]


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sales: SalesReader) -> None:
        self._sales = sales

    async def GetSales(
        self, request: metrics_pb2.GetSalesRequest, context: Context
    ) -> metrics_pb2.GetSalesResponse:
        report = await self._sales.sales(
            current_principal.get().project_id,
            SalesQuery(
                period=request.period,
                granularity=request.granularity,
                currency=request.currency,
                timezone=request.timezone,
            ),
        )
        response = metrics_pb2.GetSalesResponse(
            period=report.period,
            revenue=report.revenue,
            orders=report.orders,
            average_order_value=report.average_order_value,
            currency=report.currency,
            series=[
                metrics_pb2.SalesBucket(date=b.date, revenue=b.revenue, orders=b.orders)
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
        raise unimplemented("GetProducts", "issue 4")

    async def GetCustomers(
        self, request: metrics_pb2.GetCustomersRequest, context: Context
    ) -> metrics_pb2.GetCustomersResponse:
        raise unimplemented("GetCustomers", "issue 4")

    async def GetFunnel(
        self, request: metrics_pb2.GetFunnelRequest, context: Context
    ) -> metrics_pb2.GetFunnelResponse:
        raise unimplemented("GetFunnel", "issue 4")

    async def GetRealtime(
        self, request: metrics_pb2.GetRealtimeRequest, context: Context
    ) -> metrics_pb2.GetRealtimeResponse:
        raise unimplemented("GetRealtime", "issue 4")

    async def RunQuery(
        self, request: metrics_pb2.RunQueryRequest, context: Context
    ) -> metrics_pb2.RunQueryResponse:
        raise unimplemented("RunQuery", "issue 4")

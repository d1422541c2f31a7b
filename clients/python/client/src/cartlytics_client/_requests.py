"""Requests and results shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cartlytics_protos.analytics.export.v1 import export_pb2
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2
from cartlytics_protos.analytics.metrics.v1 import metrics_pb2

from ._events import TrackResult, struct_to_python


def track_request(message: ingest_pb2.Event) -> ingest_pb2.TrackEventRequest:
    return ingest_pb2.TrackEventRequest(event=message)


def stamp_track(request: ingest_pb2.TrackEventRequest) -> None:
    """``sent_at``: now (each attempt)."""
    request.event.sent_at.FromDatetime(datetime.now(UTC))


def track_result(response: ingest_pb2.TrackEventResponse) -> TrackResult:
    return TrackResult(
        id=response.id,
        event=response.event,
        timestamp=response.timestamp.ToDatetime(tzinfo=UTC),
    )


def sales_request(
    period: str | None, granularity: str | None, currency: str | None, timezone: str | None
) -> metrics_pb2.GetSalesRequest:
    return metrics_pb2.GetSalesRequest(
        period=period or "",
        granularity=granularity or "",
        currency=currency or "",
        timezone=timezone or "",
    )


def products_request(
    period: str | None, limit: int | None, currency: str | None, timezone: str | None
) -> metrics_pb2.GetProductsRequest:
    return metrics_pb2.GetProductsRequest(
        period=period or "", limit=limit or 0, currency=currency or "", timezone=timezone or ""
    )


def customers_request(
    period: str | None, limit: int | None, currency: str | None, timezone: str | None
) -> metrics_pb2.GetCustomersRequest:
    return metrics_pb2.GetCustomersRequest(
        period=period or "", limit=limit or 0, currency=currency or "", timezone=timezone or ""
    )


def funnel_request(
    period: str | None, steps: Sequence[str] | None, window: int | None, timezone: str | None
) -> metrics_pb2.GetFunnelRequest:
    if isinstance(steps, str):
        steps = [steps]  # the server also splits "a,b,c"
    return metrics_pb2.GetFunnelRequest(
        period=period or "", steps=list(steps or ()), window=window or 0, timezone=timezone or ""
    )


def realtime_request(timezone: str | None, currency: str | None) -> metrics_pb2.GetRealtimeRequest:
    return metrics_pb2.GetRealtimeRequest(timezone=timezone or "", currency=currency or "")


def query_request(
    metrics: Sequence[str],
    dimensions: Sequence[str] | None,
    filters: Mapping[str, Any] | None,
    order_by: str | None,
    limit: int | None,
) -> metrics_pb2.RunQueryRequest:
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    return metrics_pb2.RunQueryRequest(
        metrics=list(metrics),
        dimensions=list(dimensions or ()),
        filters={str(k): str(v) for k, v in (filters or {}).items()},
        order_by=order_by or "",
        limit=limit or 0,
    )


def query_rows(response: metrics_pb2.RunQueryResponse) -> list[dict[str, Any]]:
    """Each row as a dict: dimensions and metrics by name, whole numbers as ints."""
    return [struct_to_python(row) for row in response.rows]


def export_request(
    type: str,
    format: str | None,
    period: str | None,
    currency: str | None,
    timezone: str | None,
    from_date: str | None,
    to_date: str | None,
) -> export_pb2.ExportDataRequest:
    request = export_pb2.ExportDataRequest(
        type=type,
        format=format or "",
        period=period or "",
        currency=currency or "",
        timezone=timezone or "",
    )
    # `from` is a keyword: set through setattr.
    setattr(request, "from", from_date or "")
    request.to = to_date or ""
    return request

"""The generated gRPC stubs (untyped code of cartlytics-protos) made in one place."""

from __future__ import annotations

from typing import Any, NamedTuple

from cartlytics_protos.analytics.export.v1 import export_pb2_grpc
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2_grpc
from cartlytics_protos.analytics.metrics.v1 import metrics_pb2_grpc


class Stubs(NamedTuple):
    ingest: Any  # IngestService: TrackEvent, BatchTrackEvents
    metrics: Any  # MetricsService: GetSales ... RunQuery
    export: Any  # ExportService: ExportData (server stream of google.api.HttpBody)


def make_stubs(channel: Any) -> Stubs:
    """The stubs over a ``grpc.Channel`` or a ``grpc.aio.Channel``."""
    return Stubs(
        ingest=ingest_pb2_grpc.IngestServiceStub(channel),  # type: ignore[no-untyped-call]
        metrics=metrics_pb2_grpc.MetricsServiceStub(channel),  # type: ignore[no-untyped-call]
        export=export_pb2_grpc.ExportServiceStub(channel),  # type: ignore[no-untyped-call]
    )

"""ExportService over gRPC. Streaming export lands with issue 5; until then it says so (501)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from grpc import aio

from cartlytics.common.errors import unimplemented
from cartlytics.gen.analytics.export.v1 import export_pb2, export_pb2_grpc


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    async def ExportData(
        self, request: export_pb2.ExportDataRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        raise unimplemented("ExportData", "issue 5")
        yield httpbody_pb2.HttpBody()  # pragma: no cover - makes this an async generator

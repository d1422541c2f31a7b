"""ExportService over gRPC: the wire to ``Exporter`` and back, nothing else.

The request is checked before anything is sent (a bad parameter is a plain 400). The file name
goes out as the ``content-disposition`` initial metadata, which the gateways turn into the HTTP
header, together with the first chunk (so an error before it is not answered as an attachment);
each chunk is one ``google.api.HttpBody`` carrying the format's content type. An export holds
one of the process's export slots (slots.py) from before its query until its stream ends; none
free is a 429 with Retry-After, also before anything is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from google.api import httpbody_pb2
from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.gen.analytics.export.v1 import export_pb2, export_pb2_grpc

from .exporter import Exporter
from .formats import ENCODERS
from .request import ExportQuery
from .slots import ExportSlots


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    def __init__(self, exporter: Exporter, slots: ExportSlots | None = None) -> None:
        self._exporter = exporter
        self._slots = slots or ExportSlots()

    async def ExportData(
        self, request: export_pb2.ExportDataRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        plan = self._exporter.plan(
            ExportQuery(
                type=request.type,
                period=request.period,
                format=request.format,
                currency=request.currency,
                timezone=request.timezone,
                start=getattr(request, "from"),  # `from` is a Python keyword
                end=request.to,
            )
        )
        content_type = ENCODERS[plan.format].content_type
        principal = current_principal.get()
        first = True
        with self._slots.hold(principal.key_id):
            async with aclosing(self._exporter.export(principal.project_id, plan)) as chunks:
                async for chunk in chunks:
                    if first:
                        first = False
                        await context.send_initial_metadata(
                            (("content-disposition", plan.content_disposition),)
                        )
                    yield httpbody_pb2.HttpBody(content_type=content_type, data=chunk)

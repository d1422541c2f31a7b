"""IngestService over gRPC: translate the wire to the Ingestor and back. Nothing else.

The REST twins (``...Json``) answer the JSON that acknowledgement.py renders, as an HttpBody."""

from __future__ import annotations

from typing import Any

import grpc
from google.api import httpbody_pb2
from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.errors import ApiError, FieldViolation, invalid_argument
from cartlytics.common.timestamps import epoch_parts
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from .acknowledgement import CONTENT_TYPE, batch_json, single_json
from .ingestor import Ingestor
from .outcome import IN_FLIGHT, Acknowledged, IngestResult
from .proto_events import incoming_of


def _client_ip(context: aio.ServicerContext[Any, Any]) -> str:
    """The shopper's address: the gateway's X-Forwarded-For, else the gRPC peer."""
    for item in context.invocation_metadata() or ():
        if item.key == "x-forwarded-for":
            return str(item.value).split(",")[0].strip()
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]").replace("%5B", "").replace("%5D", "")
    return ""


def _fill(target: Any, ack: Acknowledged) -> None:
    target.id = ack.id
    target.event = ack.event
    # FromDatetime's own arithmetic, without its conversions (a tenth of a batch's response).
    seconds, micros = epoch_parts(ack.timestamp)
    target.timestamp.seconds = seconds
    target.timestamp.nanos = micros * 1_000


def _refuse(result: IngestResult) -> None:
    """Raise the error a one-event request's refusal is (nothing when it was accepted)."""
    if result.rejected:
        rejected = result.rejected[0]
        if rejected.in_flight:
            raise ApiError(IN_FLIGHT, "EVENT_IN_FLIGHT", grpc.StatusCode.ABORTED)
        raise invalid_argument(rejected.violations)


def _json_body(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=data)


def _fill_batch(target: ingest_pb2.BatchTrackEventsResponse, result: IngestResult) -> None:
    target.accepted_count = len(result.accepted)
    target.rejected_count = len(result.rejected)
    for index, ack in result.accepted:
        _fill(target.accepted.add(index=index), ack)
    for rejected in result.rejected:
        for violation in rejected.violations:
            target.rejected.add(
                index=rejected.index, field=violation.field, description=violation.description
            )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: Ingestor, max_batch_events: int, max_batch_bytes: int) -> None:
        self._ingestor = ingestor
        self._max_events = max_batch_events
        self._max_bytes = max_batch_bytes

    async def TrackEvent(
        self, request: ingest_pb2.TrackEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.TrackEventResponse:
        project_id = current_principal.get().project_id
        result = await self._ingestor.ingest(
            project_id, [incoming_of(request.event)], _client_ip(context)
        )
        _refuse(result)
        response = ingest_pb2.TrackEventResponse()
        _fill(response, result.accepted[0][1])
        return response

    async def TrackEventJson(
        self, request: ingest_pb2.TrackEventJsonRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.TrackEventJsonResponse:
        body = request.body
        project_id = current_principal.get().project_id
        result = await self._ingestor.ingest_json(
            project_id, body.data, body.content_type, True, _client_ip(context)
        )
        _refuse(result)
        return ingest_pb2.TrackEventJsonResponse(body=_json_body(single_json(result)))

    async def Ping(
        self, request: ingest_pb2.PingRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.PingResponse:
        # Deliberately empty: the interceptors (auth, errors, logs, metrics) and the gateway
        # still run, so a benchmark can subtract the per-request path from every other call.
        return ingest_pb2.PingResponse()

    async def BatchTrackEvents(
        self, request: ingest_pb2.BatchTrackEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.BatchTrackEventsResponse:
        if not request.events:
            raise invalid_argument([FieldViolation("events", "must hold at least one event")])
        if len(request.events) > self._max_events:
            raise invalid_argument(
                [FieldViolation("events", f"must hold at most {self._max_events} events")]
            )
        if request.ByteSize() > self._max_bytes:
            raise invalid_argument(
                [FieldViolation("events", f"must be at most {self._max_bytes} bytes in all")]
            )
        project_id = current_principal.get().project_id
        result = await self._ingestor.ingest_protos(project_id, request, _client_ip(context))
        response = ingest_pb2.BatchTrackEventsResponse()
        _fill_batch(response, result)
        return response

    async def BatchTrackEventsJson(
        self,
        request: ingest_pb2.BatchTrackEventsJsonRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.BatchTrackEventsJsonResponse:
        body = request.body
        project_id = current_principal.get().project_id
        result = await self._ingestor.ingest_json(
            project_id, body.data, body.content_type, False, _client_ip(context)
        )
        return ingest_pb2.BatchTrackEventsJsonResponse(body=_json_body(batch_json(result)))

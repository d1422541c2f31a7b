"""IngestService over gRPC: translate the wire to the Ingestor and back. Nothing else."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import json_format
from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.errors import FieldViolation, invalid_argument
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from .ingestor import Ingestor
from .validation import IncomingEvent, ValidEvent

MAX_BATCH_EVENTS = 1000


def _incoming(message: ingest_pb2.Event) -> IncomingEvent:
    return IncomingEvent(
        event=message.event,
        id=message.id,
        user_id=message.user_id,
        anonymous_id=message.anonymous_id,
        session_id=message.session_id,
        timestamp=message.timestamp.ToDatetime(UTC) if message.HasField("timestamp") else None,
        sent_at=message.sent_at.ToDatetime(UTC) if message.HasField("sent_at") else None,
        properties=_plain(json_format.MessageToDict(message.properties)),
        context=_plain(json_format.MessageToDict(message.context)),
    )


def _plain(value: Any) -> Any:
    """JSON numbers arrive as doubles; whole ones become ints so amounts stay integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ack(event: ValidEvent) -> ingest_pb2.TrackEventResponse:
    response = ingest_pb2.TrackEventResponse(id=event.id, event=event.event)
    response.timestamp.FromDatetime(event.timestamp)
    return response


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def TrackEvent(
        self, request: ingest_pb2.TrackEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.TrackEventResponse:
        result = self._ingestor.check([_incoming(request.event)])
        if result.rejected:
            raise invalid_argument(result.rejected[0].violations)
        event = result.accepted[0][1]
        await self._ingestor.store(current_principal.get().project_id, [event])
        return _ack(event)

    async def BatchTrackEvents(
        self, request: ingest_pb2.BatchTrackEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.BatchTrackEventsResponse:
        if not request.events:
            raise invalid_argument([FieldViolation("events", "must hold at least one event")])
        if len(request.events) > MAX_BATCH_EVENTS:
            raise invalid_argument(
                [FieldViolation("events", f"must hold at most {MAX_BATCH_EVENTS} events")]
            )
        result = self._ingestor.check([_incoming(e) for e in request.events])
        valid = [event for _, event in result.accepted]
        await self._ingestor.store(current_principal.get().project_id, valid)
        response = ingest_pb2.BatchTrackEventsResponse(
            accepted_count=len(result.accepted), rejected_count=len(result.rejected)
        )
        for index, event in result.accepted:
            item = response.accepted.add(index=index, id=event.id, event=event.event)
            item.timestamp.FromDatetime(event.timestamp)
        for rejected in result.rejected:
            for violation in rejected.violations:
                response.rejected.add(
                    index=rejected.index, field=violation.field, description=violation.description
                )
        return response

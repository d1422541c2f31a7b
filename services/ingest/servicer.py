"""IngestService over gRPC: translate the wire to the Ingestor and back. Nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.errors import ApiError, FieldViolation, invalid_argument
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from .idempotency import Ack
from .ingestor import IN_FLIGHT, Ingestor
from .validation import IncomingEvent


def _incoming(message: ingest_pb2.Event) -> IncomingEvent:
    problems: list[FieldViolation] = []
    return IncomingEvent(
        event=message.event,
        id=message.id,
        user_id=message.user_id,
        anonymous_id=message.anonymous_id,
        session_id=message.session_id,
        timestamp=_time(message, "timestamp", "timestamp", problems),
        sent_at=_time(message, "sent_at", "sentAt", problems),
        properties=_plain(json_format.MessageToDict(message.properties)),
        context=_plain(json_format.MessageToDict(message.context)),
        decode_violations=problems,
    )


def _time(
    message: ingest_pb2.Event, name: str, shown: str, problems: list[FieldViolation]
) -> datetime | None:
    """A Timestamp field as a datetime; one out of protobuf's range (a gRPC client can send
    any seconds and nanos) is a violation, not a ValueError and a 500."""
    if not message.HasField(name):
        return None
    try:
        return getattr(message, name).ToDatetime(UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        problems.append(FieldViolation(shown, "must be a time from 0001-01-01 to 9999-12-31"))
        return None


def _plain(value: Any) -> Any:
    """JSON numbers arrive as doubles; whole ones become ints so amounts stay integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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


def _fill(target: Any, ack: Ack) -> None:
    target.id = ack.id
    target.event = ack.event
    target.timestamp.FromDatetime(ack.timestamp)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingestor: Ingestor, max_batch_events: int, max_batch_bytes: int) -> None:
        self._ingestor = ingestor
        self._max_events = max_batch_events
        self._max_bytes = max_batch_bytes

    async def TrackEvent(
        self, request: ingest_pb2.TrackEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.TrackEventResponse:
        result = await self._ingestor.ingest(
            current_principal.get().project_id, [_incoming(request.event)], _client_ip(context)
        )
        if result.rejected:
            violations = result.rejected[0].violations
            if violations[0].description == IN_FLIGHT:
                raise ApiError(IN_FLIGHT, "EVENT_IN_FLIGHT", grpc.StatusCode.ABORTED)
            raise invalid_argument(violations)
        response = ingest_pb2.TrackEventResponse()
        _fill(response, result.accepted[0][1])
        return response

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
        result = await self._ingestor.ingest(
            current_principal.get().project_id,
            [_incoming(e) for e in request.events],
            _client_ip(context),
        )
        response = ingest_pb2.BatchTrackEventsResponse(
            accepted_count=len(result.accepted), rejected_count=len(result.rejected)
        )
        for index, ack in result.accepted:
            _fill(response.accepted.add(index=index), ack)
        for rejected in result.rejected:
            for violation in rejected.violations:
                response.rejected.add(
                    index=rejected.index, field=violation.field, description=violation.description
                )
        return response

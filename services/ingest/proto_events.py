"""gRPC ingest messages to IncomingEvents (``ingest.v1.Event``: typed fields, Structs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2

from cartlytics.common.errors import FieldViolation
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2

from .validation import IncomingEvent

_SAFE_INTEGER = 2**53


def incoming_of(message: ingest_pb2.Event) -> IncomingEvent:
    problems: list[FieldViolation] = []
    unsafe = [False]  # a number beyond +-(2^53 - 1), infinite or NaN met (``_value``)
    incoming = IncomingEvent(
        event=message.event,
        id=message.id,
        user_id=message.user_id,
        anonymous_id=message.anonymous_id,
        session_id=message.session_id,
        timestamp=_time(message, "timestamp", "timestamp", problems),
        sent_at=_time(message, "sent_at", "sentAt", problems),
        properties=plain_struct(message.properties, unsafe),
        context=plain_struct(message.context, unsafe),
        decode_violations=problems,
    )
    # Validation's number rule then need not walk them again (it does when one is unsafe, to
    # name its path), as for REST bodies (json_events).
    incoming.numbers_checked = not unsafe[0]
    return incoming


def events_of_batch(request: bytes) -> list[IncomingEvent]:
    """The events of a serialized ``BatchTrackEventsRequest``."""
    message = ingest_pb2.BatchTrackEventsRequest.FromString(request)
    return [incoming_of(event) for event in message.events]


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


def plain_struct(struct: struct_pb2.Struct, unsafe: list[bool] | None = None) -> dict[str, Any]:
    """A Struct as plain Python, read directly: json_format.MessageToDict raises on an inf or NaN
    number (a gRPC client can send one: validation refuses it by path), and is slower.
    ``unsafe[0]`` becomes True at a number validation's number rule refuses."""
    flag = [False] if unsafe is None else unsafe
    return {key: _value(value, flag) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, unsafe: list[bool]) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        # Numbers arrive as doubles; whole ones become ints so that amounts stay integers.
        number = value.number_value
        if -_SAFE_INTEGER < number < _SAFE_INTEGER:
            return int(number) if number.is_integer() else number
        unsafe[0] = True  # beyond, infinite or NaN (every comparison with NaN is false)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return plain_struct(value.struct_value, unsafe)
    if kind == "list_value":
        return [_value(item, unsafe) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or no kind set (protobuf's JSON printer also gives null)

"""Events as the SDK prepares them: the client-made id, the lifted keys, context.library, the size
check and the protobuf message (docs/clients.md)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from cartlytics_protos.analytics.ingest.v1 import ingest_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from ._identity import Visitor
from ._version import LIBRARY_NAME, __version__
from .errors import EventTooLarge

# The server's limit on an event's properties and context together, as JSON
# (len(json.dumps(properties)) + len(json.dumps(context)) in services/ingest/validation.py).
MAX_EVENT_BYTES = 32 * 1024
_SAFE_INTEGER = 2**53 - 1
# Keys of the properties lifted to the event's top level (when that field is not given).
LIFTED_KEYS = ("userId", "anonymousId", "sessionId", "timestamp", "context")


@dataclass(frozen=True)
class Event:
    """An event as the SDK sent it: its id and timestamp filled in, the lifted keys moved out of
    the properties, ``context.library`` added. Handed to ``on_success`` / ``on_failure``."""

    id: str
    event: str
    user_id: str = ""
    anonymous_id: str = ""
    session_id: str = ""
    timestamp: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackResult:
    """The acknowledgement of a tracked event: its id, name and timestamp as stored (UTC, the
    client's clock skew corrected)."""

    id: str
    event: str
    timestamp: datetime


@dataclass(frozen=True)
class AcceptedEvent:
    """An event of the batching mode the server stored (``on_success``): id, name and timestamp
    as stored, and the event as it was enqueued."""

    id: str
    event: str
    timestamp: datetime
    source: Event


@dataclass
class Prepared:
    """An event ready to send: its message (``sent_at`` is stamped per attempt), the event handed
    to callbacks, and its size for the queue and batch limits."""

    message: ingest_pb2.Event
    source: Event
    size: int


def new_event_id() -> str:
    """``evt_`` + 32 random hex digits."""
    return "evt_" + secrets.token_hex(16)


def _plain(value: Any, path: str) -> Any:
    """``value`` as JSON-like Python for a protobuf Struct: mappings with string keys, lists,
    strings, numbers, booleans, None; datetimes and dates as ISO 8601 text, Decimals as numbers."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be strings, not {type(key).__name__}")
            out[key] = _plain(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{path}: {type(value).__name__} is not a JSON value")


def to_struct(values: Mapping[str, Any], path: str) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_plain(values, path))
    return struct


def value_to_python(value: struct_pb2.Value) -> Any:
    """A Struct value as plain Python, as the server reads it: whole numbers within 2^53 as
    ints (amounts and counts stay integers), other numbers as floats."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and -_SAFE_INTEGER < number < _SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: value_to_python(item) for key, item in struct.fields.items()}


def _json_size(values: dict[str, Any]) -> int:
    # As the server measures it (json.dumps defaults); an infinity or NaN, which the server
    # refuses by path, is counted as its Python spelling rather than failing here.
    return len(json.dumps(values, allow_nan=True))


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def prepare(
    event: str,
    properties: Mapping[str, Any] | None,
    *,
    id: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    session_id: str | None,
    timestamp: datetime | None,
    context: Mapping[str, Any] | None,
    now: datetime,
    visitor: Visitor | None = None,
) -> Prepared:
    """Validate an event's size, assign its id and timestamp, lift the known keys out of its
    properties, give an event that names neither a user id nor an anonymous id the ``visitor``'s
    ids, and build its message. The caller's mappings are not modified."""
    if not isinstance(event, str):
        raise TypeError(f"event must be a string, not {type(event).__name__}")
    props: dict[str, Any] = dict(properties or {})
    fields: dict[str, str] = {
        "userId": user_id or "",
        "anonymousId": anonymous_id or "",
        "sessionId": session_id or "",
    }
    for key in ("userId", "anonymousId", "sessionId"):
        value = props.get(key)
        if not fields[key] and isinstance(value, str) and value:
            fields[key] = value
            del props[key]
    if visitor is not None and not fields["userId"] and not fields["anonymousId"]:
        # The client's ids, both, only for an event that names none: never mixed with the
        # caller's (docs/clients.md, "Identity").
        fields["userId"] = visitor.user_id
        fields["anonymousId"] = visitor.anonymous_id
    when = timestamp
    if when is None and "timestamp" in props:
        lifted = _as_time(props["timestamp"])
        if lifted is not None:
            when = lifted
            del props["timestamp"]
    ctx: Mapping[str, Any] | None = context
    if ctx is None and isinstance(props.get("context"), Mapping):
        ctx = props.pop("context")
    if when is None:
        when = now
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # a naive time is taken as UTC
    properties_struct = to_struct(props, "properties")
    context_struct = to_struct(ctx or {}, "context")
    if "library" not in context_struct.fields:
        context_struct.fields["library"].struct_value.update(
            {"name": LIBRARY_NAME, "version": __version__}
        )
    plain_properties = struct_to_python(properties_struct)
    plain_context = struct_to_python(context_struct)
    json_size = _json_size(plain_properties) + _json_size(plain_context)
    if json_size > MAX_EVENT_BYTES:
        raise EventTooLarge(json_size, MAX_EVENT_BYTES)
    event_id = id or new_event_id()
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    message = ingest_pb2.Event(
        id=event_id,
        event=event,
        user_id=fields["userId"],
        anonymous_id=fields["anonymousId"],
        session_id=fields["sessionId"],
        timestamp=stamp,
        properties=properties_struct,
        context=context_struct,
    )
    source = Event(
        id=event_id,
        event=event,
        user_id=fields["userId"],
        anonymous_id=fields["anonymousId"],
        session_id=fields["sessionId"],
        timestamp=when,
        properties=plain_properties,
        context=plain_context,
    )
    # The queue and batch limits count the larger of the event's JSON and its protobuf form
    # (what the server measures over gRPC), with room for sent_at and the other fields.
    identity = sum(len(v) for v in (event_id, event, *fields.values()))
    size = max(message.ByteSize() + 24, json_size + 200 + identity)
    return Prepared(message=message, source=source, size=size)

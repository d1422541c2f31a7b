"""REST ingest bodies: raw JSON to IncomingEvents, each event parsed on its own.

Both gateways hand the bodies of ``POST /analytics/event`` and ``POST /analytics/event/batch`` to
the service as raw bytes (google.api.HttpBody): protobuf's JSON mapping, which they would use for a
typed body, refuses a whole batch for one unknown field or odd value. Here:

- the body is UTF-8 JSON, whatever its Content-Type (``curl -d`` sends form-urlencoded,
  sendBeacon text/plain; before the raw bodies the gateways ignored it too), parsed once; what is
  not JSON is a 400 for the whole request naming ``body``;
- each event is parsed on its own: one that is not an object, or a known field of the wrong type,
  is refused by index naming the field, and the others go on to validation;
- known fields take their JSON or proto name (``userId`` or ``user_id``), as protobuf's parser
  does; unknown top-level fields are ignored (docs/decisions.md, "REST ingest bodies"), and
  Segment's ``messageId`` is the id when ``id`` is absent (its refusals then name ``messageId``);
- numbers never fail: an integer of more than 30 digits or a float past a double's range becomes
  ±inf (refused by validation, by field path), whole floats below 2^53 become ints (as from a
  Struct), ``NaN``/``Infinity`` are not JSON (400);
- a lone surrogate (``"\\ud800"``) in a key or string, or nesting deeper than MAX_DEPTH inside
  ``properties``/``context``, refuses the event naming the path (never a codec error or 500).

Plain Python over the parsed JSON: the common case costs one ``json.loads`` and, per event, a few
dict lookups and a walk over the containers of its properties and context.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cartlytics.common.errors import ApiError, FieldViolation, invalid_argument

from .outcome import Rejected
from .validation import IncomingEvent

MAX_DEPTH = 32
"""Objects and arrays nested in ``properties`` or ``context``, the object itself included
(protobuf's parser allowed ~49; every reader of stored JSON stays far from recursion limits)."""
LONG_INTEGER = 10**30  # an integer literal of more than 30 digits becomes ±inf
SAFE_INTEGER = 2**53
MAX_PATH = 200  # characters of a field path in a refusal (keys are the client's)
TIME_RULE = "must be an RFC 3339 time such as 2026-01-15T10:35:00Z"
RANGE_RULE = "must be a time from 0001-01-01 to 9999-12-31"
SURROGATE_RULE = "must be valid Unicode (no lone surrogates)"
DEPTH_RULE = f"must not nest objects and arrays more than {MAX_DEPTH} deep"
OBJECT_RULE = "must be an object"
STRING_RULE = "must be a string"
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only an escape can make one in UTF-8 JSON
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True)
class Batch:
    """A request's events: those parsed (with their positions) and those refused already."""

    raw: list[Any]
    """The request's events as JSON values, in order."""
    events: list[IncomingEvent] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    """The position in ``raw`` of each of ``events``."""
    refused: list[Rejected] = field(default_factory=list)


class _NotJson(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NotJson(name)


def _long_int(text: str) -> int | float:
    if len(text) - text.startswith("-") <= 30:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


# Made once: json.loads with any keyword builds a decoder per call (half of a small body's
# decoding).
_DECODER = json.JSONDecoder(parse_constant=_constant)
_LONG_INT_DECODER = json.JSONDecoder(parse_constant=_constant, parse_int=_long_int)


def _load(text: str, parse_int: Any = None) -> Any:
    try:
        return (_DECODER if parse_int is None else _LONG_INT_DECODER).decode(text)
    except _NotJson as exc:
        raise _body(f"must be valid JSON ({exc} is not a JSON number)") from None
    except json.JSONDecodeError as exc:
        raise _body(f"must be valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise _body("must not be nested so deeply") from None
    except ValueError:
        if parse_int is None:  # an integer literal past Python's 4300 digits: read it as inf
            return _load(text, _long_int)
        raise _body("must be valid JSON") from None


def _body(rule: str) -> ApiError:
    return invalid_argument([FieldViolation("body", rule)])


def read_body(body: bytes, content_type: str) -> tuple[Any, bool]:
    """The body's JSON value, and whether a string in it may hold a lone surrogate.

    Raises ApiError (INVALID_ARGUMENT, field ``body``) for what is not UTF-8 JSON.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _body("must be UTF-8 text") from None
    return _load(text), _SURROGATE_ESCAPE.search(text) is not None


def parse_batch(body: bytes, content_type: str, max_events: int, max_bytes: int) -> Batch:
    """``{"events": [...]}``: the limits for the whole request, then each event on its own."""
    if len(body) > max_bytes:
        raise invalid_argument(
            [FieldViolation("events", f"must be at most {max_bytes} bytes in all")]
        )
    value, surrogates = (
        read_body(body, content_type) if body and not body.isspace() else ({}, False)
    )
    if not isinstance(value, dict):
        raise _body('must be a JSON object such as {"events": [...]}')
    raw = value.get("events")
    if raw is None or raw == []:
        raise invalid_argument([FieldViolation("events", "must hold at least one event")])
    if not isinstance(raw, list):
        raise invalid_argument([FieldViolation("events", "must be an array of events")])
    if len(raw) > max_events:
        raise invalid_argument([FieldViolation("events", f"must hold at most {max_events} events")])
    batch = Batch(raw)
    events, positions, refused = batch.events, batch.positions, batch.refused
    for index, item in enumerate(raw):
        if type(item) is not dict:
            refused.append(Rejected(index, [FieldViolation(f"events[{index}]", OBJECT_RULE)]))
            continue
        parsed = parse_event(item, surrogates)
        if isinstance(parsed, list):
            refused.append(Rejected(index, parsed))
        else:
            events.append(parsed)
            positions.append(index)
    return batch


def parse_single(body: bytes, content_type: str, max_bytes: int) -> Batch:
    """One event as the whole body: a batch of one, or ApiError naming what cannot be parsed."""
    if len(body) > max_bytes:
        raise _body(f"must be at most {max_bytes} bytes")
    value, surrogates = (
        read_body(body, content_type) if body and not body.isspace() else (None, False)
    )
    if type(value) is not dict:
        raise _body("must be a JSON object (an event)")
    parsed = parse_event(value, surrogates)
    if isinstance(parsed, list):
        raise invalid_argument(parsed)
    return Batch([value], [parsed], [0])


def parse_event(
    raw: dict[str, Any], check_text: bool = True
) -> IncomingEvent | list[FieldViolation]:
    """One event object, or every field that cannot be read (type, time format, surrogates).

    ``check_text=False`` skips the lone-surrogate search (``read_body`` says when none can exist).
    """
    problems: list[FieldViolation] = []
    # Segment's messageId is the id when there is none; a refusal then names it (see `finish`).
    id_name = "messageId" if id_from_message_id(raw) else "id"
    # Whether a number out of the safe range was met walking properties and context.
    unsafe = [False]
    plain = _PROTO_NAMES.isdisjoint(raw)  # the usual case: JSON names only, one lookup each

    def pick(name: str, proto_name: str) -> Any:
        return raw.get(name) if plain else _value(raw, name, proto_name, problems)

    incoming = IncomingEvent(
        event=_string_of(raw.get("event"), "event", problems, check_text),
        id=_string_of(raw.get(id_name), id_name, problems, check_text),
        user_id=_string_of(pick("userId", "user_id"), "userId", problems, check_text),
        anonymous_id=_string_of(
            pick("anonymousId", "anonymous_id"), "anonymousId", problems, check_text
        ),
        session_id=_string_of(pick("sessionId", "session_id"), "sessionId", problems, check_text),
        timestamp=_time_of(raw.get("timestamp"), "timestamp", problems),
        sent_at=_time_of(pick("sentAt", "sent_at"), "sentAt", problems),
        properties=_object(raw, "properties", problems, check_text, unsafe),
        context=_object(raw, "context", problems, check_text, unsafe),
    )
    if problems:
        return problems
    incoming.numbers_checked = not unsafe[0]
    return incoming


# The proto names of the fields whose JSON name differs (protobuf's parser takes either).
_PROTO_NAMES = frozenset(("user_id", "anonymous_id", "session_id", "sent_at"))


def _value(raw: dict[str, Any], name: str, proto_name: str, problems: list[FieldViolation]) -> Any:
    """The value under the JSON name or the proto name (null is absent, as for protobuf)."""
    value = raw.get(name)
    if proto_name != name:
        other = raw.get(proto_name)
        if other is not None:
            if value is not None:
                problems.append(FieldViolation(name, f"is given twice ({name} and {proto_name})"))
            return other
    return value


def _string_of(value: Any, name: str, problems: list[FieldViolation], check: bool) -> str:
    if type(value) is str:
        if check and not value.isascii() and _SURROGATE.search(value):
            problems.append(FieldViolation(name, SURROGATE_RULE))
            return ""
        return value
    if value is not None:
        problems.append(FieldViolation(name, STRING_RULE))
    return ""


def _time_of(value: Any, name: str, problems: list[FieldViolation]) -> datetime | None:
    """An RFC 3339 time as protobuf's Timestamp reads it (``T``, ``Z`` or an offset, at most 9
    fractional digits), in UTC; one outside 0001-9999 once in UTC is refused like over gRPC."""
    if value is None:
        return None
    if type(value) is not str or not _RFC3339.fullmatch(value):
        problems.append(FieldViolation(name, TIME_RULE))
        return None
    try:
        # fromisoformat keeps microseconds (as Timestamp.ToDatetime does) from up to 9 digits.
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:  # a 13th month, a 61st second...
        problems.append(FieldViolation(name, TIME_RULE))
    except OverflowError:
        problems.append(FieldViolation(name, RANGE_RULE))
    return None


def _object(
    raw: dict[str, Any],
    name: str,
    problems: list[FieldViolation],
    check: bool,
    unsafe: list[bool],
) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if type(value) is not dict:
        problems.append(FieldViolation(name, OBJECT_RULE))
        return {}
    found = _walk(value, 1, check, unsafe)
    if found is not None:
        problems.append(FieldViolation(_bounded(name + found[0]), found[1]))
    return value


def _walk(node: Any, depth: int, check: bool, unsafe: list[bool]) -> tuple[str, str] | None:
    """The first problem below a container as (path below it, rule), or None; ``unsafe[0]``
    becomes True at a number validation's number rule refuses (beyond +-(2^53 - 1)).

    Numbers are normalised in place: integers too long to be amounts or counts become ±inf, so
    that no later ``float()`` of them raises OverflowError (validation refuses non-finite numbers
    by path), and whole floats below 2^53 become ints.
    """
    if depth > MAX_DEPTH:
        return "", DEPTH_RULE
    pairs = node.items() if type(node) is dict else enumerate(node)
    for key, value in pairs:
        kind = type(value)
        if kind is str:  # the most common value: one test, then the next
            if check and not value.isascii() and _SURROGATE.search(value):
                return _step(key), SURROGATE_RULE
        elif kind is dict or kind is list:
            found = _walk(value, depth + 1, check, unsafe)
            if found is not None:
                return _step(key) + found[0], found[1]
        elif kind is int:
            if not -SAFE_INTEGER < value < SAFE_INTEGER:
                unsafe[0] = True
                if not -LONG_INTEGER < value < LONG_INTEGER:
                    node[key] = math.inf if value > 0 else -math.inf
        elif kind is float:
            if -SAFE_INTEGER < value < SAFE_INTEGER:
                if value.is_integer():
                    node[key] = int(value)  # 2999.0 is 2999, as a Struct's doubles have always been
            else:  # beyond, infinite (1e999) or not a number
                unsafe[0] = True
        if check and type(key) is str and not key.isascii() and _SURROGATE.search(key):
            return _step(key), SURROGATE_RULE
    return None


def _step(key: int | str) -> str:
    if type(key) is int:
        return f"[{key}]"
    # A key with a lone surrogate is named with the escape, so the refusal can be encoded.
    return "." + str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _bounded(path: str) -> str:
    return path if len(path) <= MAX_PATH else path[: MAX_PATH - 3] + "..."


def refusals(batch: Batch, rejected: list[Rejected]) -> list[Rejected]:
    """The request's refusals, by position: ``rejected`` (validation's, by request position)
    with those made while parsing; an id refusal names ``messageId`` when that is where the id
    came from."""
    merged = list(batch.refused)
    for entry in rejected:
        violations = entry.violations
        if any(v.field == "id" for v in violations) and id_from_message_id(batch.raw[entry.index]):
            violations = [
                FieldViolation("messageId", v.description) if v.field == "id" else v
                for v in violations
            ]
            entry = replace(entry, violations=violations)
        merged.append(entry)
    if batch.refused:
        merged.sort(key=lambda r: r.index)
    return merged


def id_from_message_id(raw: Any) -> bool:
    """No ``id`` (absent, null or empty) but a ``messageId`` (Segment's)."""
    if type(raw) is not dict or raw.get("messageId") is None:
        return False
    event_id = raw.get("id")
    return event_id is None or event_id == ""

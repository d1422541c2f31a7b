"""REST ingest bodies parsed by the ingest service, event by event (issue 12, item 6).

The REST ingest paths hand the raw JSON body to the service (google.api.HttpBody), which parses
each event on its own (services/ingest/json_events.py): one odd event is refused by index, the
others are stored. First the parser in plain Python (against protobuf's own JSON parser where the
input is valid), then the whole system over REST on both backends, read back through the export.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from cartlytics.common.errors import ApiError, FieldViolation
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest import json_events
from services.ingest.json_events import (
    DEPTH_RULE,
    MAX_DEPTH,
    OBJECT_RULE,
    RANGE_RULE,
    STRING_RULE,
    SURROGATE_RULE,
    TIME_RULE,
    parse_batch,
    parse_event,
    parse_single,
    read_body,
)
from services.ingest.outcome import Rejected
from services.ingest.proto_events import incoming_of, plain_struct
from services.ingest.validation import IncomingEvent, validate
from tests.rest import Reply, call
from tests.servers import System

JSON = "application/json"
LIMIT = 200_000  # bytes of a batch in the parser's tests
NOW = datetime.now(UTC)


def _violations(error: ApiError) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.violations]


def _parsed(event: dict[str, Any]) -> IncomingEvent:
    parsed = parse_event(event)
    assert not isinstance(parsed, list), parsed
    return parsed


def _refusal(event: dict[str, Any]) -> list[tuple[str, str]]:
    parsed = parse_event(event)
    assert isinstance(parsed, list), parsed
    return [(v.field, v.description) for v in parsed]


# ============================================================================ the parser


def test_known_fields_take_json_and_proto_names_and_unknown_ones_are_ignored() -> None:
    for names in (
        ("userId", "anonymousId", "sessionId", "sentAt"),
        ("user_id", "anonymous_id", "session_id", "sent_at"),
    ):
        user, anonymous, session, sent = names
        event = {
            "event": "search",
            user: "u1",
            anonymous: "a1",
            session: "s1",
            "timestamp": "2026-01-15T10:35:00.123456789+01:00",
            sent: "2026-01-15T09:36:00Z",
            "properties": {"query": "socks"},
            "context": None,
            # Segment's envelope and anything else: ignored.
            "type": "track",
            "integrations": {"All": True},
            "channel": "server",
            "originalTimestamp": "2026-01-15T10:34:00Z",
            "writeKey": 5,
        }
        parsed = _parsed(event)
        assert (parsed.event, parsed.user_id, parsed.anonymous_id, parsed.session_id) == (
            "search",
            "u1",
            "a1",
            "s1",
        )
        assert parsed.timestamp == datetime(2026, 1, 15, 9, 35, 0, 123456, tzinfo=UTC)
        assert parsed.sent_at == datetime(2026, 1, 15, 9, 36, tzinfo=UTC)
        assert (parsed.properties, parsed.context, parsed.id) == ({"query": "socks"}, {}, "")


def test_message_id_is_the_id_when_there_is_none() -> None:
    event: dict[str, Any] = {"event": "search", "userId": "u", "messageId": "ajs-1"}
    assert _parsed(event).id == "ajs-1"
    for given_id in (None, ""):
        assert _parsed({**event, "id": given_id}).id == "ajs-1"
    assert _parsed({**event, "id": "evt_mine"}).id == "evt_mine"
    assert _refusal({**event, "messageId": 5}) == [("messageId", STRING_RULE)]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"properties": "oops"}, [("properties", OBJECT_RULE)]),
        ({"context": [1]}, [("context", OBJECT_RULE)]),
        ({"userId": 5}, [("userId", STRING_RULE)]),
        ({"event": ["search"]}, [("event", STRING_RULE)]),
        ({"id": 7}, [("id", STRING_RULE)]),
        ({"timestamp": "yesterday"}, [("timestamp", TIME_RULE)]),
        ({"timestamp": 1700000000}, [("timestamp", TIME_RULE)]),
        ({"timestamp": "2026-01-15T10:35:00"}, [("timestamp", TIME_RULE)]),  # no zone
        ({"timestamp": "2026-01-15 10:35:00Z"}, [("timestamp", TIME_RULE)]),
        ({"timestamp": "2026-13-15T10:35:00Z"}, [("timestamp", TIME_RULE)]),
        ({"timestamp": "2026-01-15T10:35:00.1234567890Z"}, [("timestamp", TIME_RULE)]),
        ({"timestamp": "٢٠٢٦-01-15T10:35:00Z"}, [("timestamp", TIME_RULE)]),
        ({"sent_at": "0001-01-01T00:00:00+01:00"}, [("sentAt", RANGE_RULE)]),
        ({"timestamp": "9999-12-31T23:59:59-01:00"}, [("timestamp", RANGE_RULE)]),
        ({"userId": "a", "user_id": "b"}, [("userId", "is given twice (userId and user_id)")]),
        (
            {"userId": 5, "properties": "oops", "sentAt": False},
            [("userId", STRING_RULE), ("sentAt", TIME_RULE), ("properties", OBJECT_RULE)],
        ),
    ],
)
def test_a_known_field_of_the_wrong_type_names_the_field(
    event: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    base = {"event": "search", "userId": "u", "properties": {"query": "q"}}
    assert _refusal({**base, **event}) == expected


def test_protobuf_agrees_on_the_time_edges() -> None:
    """What the parser refuses as a time, protobuf's Timestamp refuses too, and vice versa."""
    from google.protobuf import timestamp_pb2

    for text in (
        "2026-01-15T10:35:00Z",
        "2026-01-15T10:35:00.5-08:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "2026-01-15t10:35:00z",
        "2026-01-15T10:35:00",
        "2026-02-30T10:35:00Z",
        "0001-01-01T00:00:00+01:00",
    ):
        ours = parse_event({"event": "x", "userId": "u", "timestamp": text})
        try:
            timestamp_pb2.Timestamp().FromJsonString(text)
            theirs = True
        except ValueError:
            theirs = False
        assert (not isinstance(ours, list)) == theirs, text


def test_numbers_never_fail() -> None:
    body = (
        b'{"events": [{"event": "x", "userId": "u", "properties": {'
        b'"big": 1e400, "small": -1e400, "long": ' + b"9" * 400 + b', "neg": -' + b"9" * 31 + b","
        b'"edge": ' + b"9" * 30 + b', "whole": 2999.0, "half": 0.5, "huge": 1e300, "t": true}}]}'
    )
    [event] = parse_batch(body, JSON, 10, 1 << 20).events
    props = event.properties
    assert (props["big"], props["small"], props["long"], props["neg"]) == (
        math.inf,
        -math.inf,
        math.inf,
        -math.inf,
    )
    assert props["edge"] == 10**30 - 1 and type(props["edge"]) is int
    assert props["whole"] == 2999 and type(props["whole"]) is int
    assert (props["half"], props["huge"], props["t"]) == (0.5, 1e300, True)
    # Past Python's 4300-digit int limit: read as inf, not a ValueError.
    value, _ = read_body(b'{"n": [-' + b"1" * 5000 + b"]}", JSON)
    assert value == {"n": [-math.inf]}


def test_lone_surrogates_refuse_the_event_naming_the_path() -> None:
    text = (
        '{"events": ['
        + ",".join(
            [
                '{"event": "x", "userId": "u", "properties": {"\\ud800": 1}}',
                '{"event": "x", "userId": "u", "properties": {"a": [{"b": "x\\uDC00y"}]}}',
                '{"event": "x", "userId": "\\ud800", "context": {"page": "/"}}',
                '{"event": "x", "userId": "u", "context": {"k\\udbff": {"deep": 1}}}',
                '{"event": "x", "userId": "u", "properties": {"emoji": "\\ud83d\\ude00"}}',
            ]
        )
        + "]}"
    )
    batch = parse_batch(text.encode(), JSON, 10, 1 << 20)
    assert [(r.index, _violations_of(r)) for r in batch.refused] == [
        (0, [("properties.\\ud800", SURROGATE_RULE)]),
        (1, [("properties.a[0].b", SURROGATE_RULE)]),
        (2, [("userId", SURROGATE_RULE)]),
        (3, [("context.k\\udbff", SURROGATE_RULE)]),
    ]
    assert batch.positions == [4]
    assert batch.events[0].properties == {"emoji": "\U0001f600"}
    # Each refusal can be encoded (it goes back to the client as JSON and protobuf).
    for rejected in batch.refused:
        for violation in rejected.violations:
            violation.field.encode("utf-8")


def _violations_of(rejected: Rejected) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in rejected.violations]


def _lists(count: int) -> Any:
    """``count`` arrays nested in one another around a 1."""
    value: Any = 1
    for _ in range(count):
        value = [value]
    return value


def test_nesting_is_bounded_inside_properties_and_context() -> None:
    # The properties object is level 1: MAX_DEPTH - 1 arrays inside it are the most allowed.
    deepest = {"event": "x", "userId": "u", "properties": {"a": _lists(MAX_DEPTH - 1)}}
    assert not isinstance(parse_event(deepest), list)
    too_deep = {"event": "x", "userId": "u", "context": {"a": {"b": _lists(MAX_DEPTH - 1)}}}
    [(field, rule)] = _refusal(too_deep)
    assert field == "context.a.b" + "[0]" * (MAX_DEPTH - 2) and rule == DEPTH_RULE


def test_field_paths_are_bounded() -> None:
    long_key = "k" * 10_000
    [(field, _)] = _refusal({"event": "x", "properties": {long_key: {"\ud800": 1}}})
    assert len(field) == json_events.MAX_PATH and field.startswith("properties.kkk")


@pytest.mark.parametrize(
    ("body", "content_type", "field", "fragment"),
    [
        (b"{not json", JSON, "body", "must be valid JSON (line 1, column 2)"),
        (b'{"events": [{"n": NaN}]}', JSON, "body", "NaN is not a JSON number"),
        (b'{"events": [{"n": -Infinity}]}', JSON, "body", "-Infinity is not a JSON number"),
        (b"\xff\xfe{}", JSON, "body", "must be UTF-8 text"),
        (b'{"events": [{"userId": "\xed\xa0\x80"}]}', JSON, "body", "must be UTF-8 text"),
        (b"[" * 50_000 + b"]" * 50_000, JSON, "body", "nested so deeply"),
        (b'[{"event": "x"}]', JSON, "body", 'must be a JSON object such as {"events": [...]}'),
        (b"{}", JSON, "events", "must hold at least one event"),
        (b"", JSON, "events", "must hold at least one event"),
        (b'{"events": []}', JSON, "events", "must hold at least one event"),
        (b'{"events": {"event": "x"}}', JSON, "events", "must be an array of events"),
        (b'{"events": [1, 2, 3, 4]}', JSON, "events", "must hold at most 3 events"),
        (b'{"events": [1]}' + b" " * LIMIT, JSON, "events", f"at most {LIMIT} bytes in all"),
    ],
)
def test_what_cannot_be_a_batch_is_refused_whole(
    body: bytes, content_type: str, field: str, fragment: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_batch(body, content_type, 3, LIMIT)
    [(named, rule)] = _violations(caught.value)
    assert named == field and fragment in rule, (named, rule)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        JSON,
        "application/json; charset=utf-8",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",  # what `curl -d` sends without -H
    ],
)
def test_json_text_plain_and_no_content_type_are_read(content_type: str) -> None:
    batch = parse_batch(b'{"events": [{"event": "x", "userId": "u"}]}', content_type, 3, LIMIT)
    assert [e.event for e in batch.events] == ["x"]


def test_each_element_of_a_batch_is_parsed_on_its_own() -> None:
    events: list[Any] = [
        {"event": "a", "userId": "u"},
        "not an event",
        {"event": "b", "userId": 5},
        None,
        {"event": "c", "user_id": "u", "extra": {"\ud800": 1}},  # unknown: not even looked at
    ]
    batch = parse_batch(json.dumps({"events": events}).encode(), JSON, 10, 1 << 20)
    assert [e.event for e in batch.events] == ["a", "c"]
    assert batch.positions == [0, 4]
    assert [(r.index, _violations_of(r)) for r in batch.refused] == [
        (1, [("events[1]", OBJECT_RULE)]),
        (2, [("userId", STRING_RULE)]),
        (3, [("events[3]", OBJECT_RULE)]),
    ]


def test_refusals_merge_the_parsers_and_name_messageid_where_the_id_came_from() -> None:
    events: list[Any] = [
        {"event": "a", "userId": "u", "messageId": "bad id!"},
        7,
        {"event": "b", "userId": "u", "id": "bad id!"},
        {"event": "c", "userId": "u"},
    ]
    batch = parse_batch(json.dumps({"events": events}).encode(), JSON, 10, 1 << 20)
    assert batch.positions == [0, 2, 3]
    rule = "must be 1-64 characters"
    # Validation's refusals, already by request position (preparation.prepare's positions).
    validated = [
        Rejected(0, [FieldViolation("id", rule), FieldViolation("userId", "x")]),
        Rejected(2, [FieldViolation("id", rule)]),
    ]
    merged = json_events.refusals(batch, validated)
    assert [(r.index, _violations_of(r)) for r in merged] == [
        (0, [("messageId", rule), ("userId", "x")]),
        (1, [("events[1]", OBJECT_RULE)]),
        (2, [("id", rule)]),
    ]


def test_single_event_problems_are_errors_naming_the_field() -> None:
    for body, expected in [
        (b'"an event"', [("body", "must be a JSON object (an event)")]),
        (b"", [("body", "must be a JSON object (an event)")]),
        (b'{"event": "x", "properties": "oops"}', [("properties", OBJECT_RULE)]),
        (b'{"event": "x", "userId": "\\udfff"}', [("userId", SURROGATE_RULE)]),
    ]:
        with pytest.raises(ApiError) as caught:
            parse_single(body, JSON, 1 << 20)
        assert _violations(caught.value) == expected, body
    batch = parse_single(b'{"event": "x", "user_id": "u", "colour": "red"}', "", 1 << 20)
    assert (batch.events[0].user_id, batch.positions) == ("u", [0])


# Valid events as protobuf's JSON parser (the gateways' parser until now) reads them: the same
# values come out of ours.

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@st.composite
def _valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for json_name, proto_name in (
        ("id", "id"),
        ("event", "event"),
        ("userId", "user_id"),
        ("anonymousId", "anonymous_id"),
        ("sessionId", "session_id"),
    ):
        if draw(st.booleans()):
            event[draw(st.sampled_from([json_name, proto_name]))] = draw(_text | st.none())
    for json_name, proto_name in (("timestamp", "timestamp"), ("sentAt", "sent_at")):
        if draw(st.booleans()):
            moment = draw(_times)
            offset = draw(st.sampled_from(["Z", "+00:00", "-00:00"]))
            fraction = draw(st.sampled_from(["", ".5", ".123", ".123456", ".123456789"]))
            text = f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{fraction}{offset}"
            event[draw(st.sampled_from([json_name, proto_name]))] = text
    for name in ("properties", "context"):
        if draw(st.booleans()):
            event[name] = draw(st.dictionaries(_text, _json_value, max_size=5) | st.none())
    return event


def _whole_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_as_int(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(_valid_events())
def test_valid_events_read_as_protobuf_reads_them(event: dict[str, Any]) -> None:
    text = json.dumps(event)
    message = json_format.Parse(text, ingest_pb2.Event())
    [parsed] = parse_batch(json.dumps({"events": [event]}).encode(), JSON, 1, 1 << 20).events
    assert (parsed.id, parsed.event, parsed.user_id) == (message.id, message.event, message.user_id)
    assert (parsed.anonymous_id, parsed.session_id) == (message.anonymous_id, message.session_id)
    for name, got in (("timestamp", parsed.timestamp), ("sent_at", parsed.sent_at)):
        expected = getattr(message, name).ToDatetime(UTC) if message.HasField(name) else None
        assert got == expected, name
    assert parsed.properties == _whole_as_int(json_format.MessageToDict(message.properties))
    assert parsed.context == _whole_as_int(json_format.MessageToDict(message.context))


def test_grpc_structs_are_read_directly_and_pass_inf_and_nan() -> None:
    struct = struct_pb2.Struct()
    struct.update(
        {"inf": math.inf, "whole": 2999.0, "half": 0.5, "big": 2.0**60, "none": None,
         "list": [1.0, "a", True, {"x": -math.inf}], "nested": {"y": {"z": 3.0}}}
    )  # fmt: skip
    plain = plain_struct(struct)
    assert plain["inf"] == math.inf and plain["list"][3] == {"x": -math.inf}
    assert plain == {
        "inf": math.inf, "whole": 2999, "half": 0.5, "big": 2.0**60, "none": None,
        "list": [1, "a", True, {"x": -math.inf}], "nested": {"y": {"z": 3}},
    }  # fmt: skip
    assert type(plain["whole"]) is int and type(plain["big"]) is float
    nan = struct_pb2.Struct()
    nan.update({"n": math.nan})
    assert math.isnan(plain_struct(nan)["n"])


@pytest.mark.parametrize(
    ("properties", "context", "refused"),
    [
        ({"page": "/", "a": {"b": [1.0, 2.0**60]}}, {"x": 0.5}, ["properties.a.b[1]"]),
        ({"page": "/"}, {"deep": {"x": -math.inf}}, ["context.deep.x"]),
        ({"page": "/", "n": math.nan, "m": 2.0**53}, {}, ["properties.m", "properties.n"]),
        ({"page": "/", "edge": 2.0**53 - 1, "neg": -(2.0**53 - 1), "f": 1.5}, {"z": []}, []),
    ],
    ids=["nested-list", "context-infinity", "nan-and-2^53", "safe-edges"],
)
def test_grpc_numbers_checked_while_read_refuse_by_path(
    properties: dict[str, Any], context: dict[str, Any], refused: list[str]
) -> None:
    """A gRPC event's numbers are checked as its Structs are read (validation then skips its own
    walk), and an unsafe one is still refused under its path, as when validation walks them."""
    message = ingest_pb2.Event(event="page_view", user_id="u1")
    message.properties.update(properties)
    message.context.update(context)
    incoming = incoming_of(message)
    assert incoming.numbers_checked is (not refused)
    outcome = validate(incoming, datetime.now(UTC), lambda: "evt_x")
    walked = validate(replace(incoming, numbers_checked=False), datetime.now(UTC), lambda: "evt_x")
    found = sorted(v.field for v in outcome) if isinstance(outcome, list) else []
    assert found == refused
    assert found == (sorted(v.field for v in walked) if isinstance(walked, list) else [])


# ============================================================================ over REST


def _uid() -> str:
    return uuid.uuid4().hex[:12]


def _details(reply: Reply) -> tuple[str, list[tuple[str, str]]]:
    """The ErrorInfo reason and the BadRequest violations of an error reply."""
    reason, violations = "", []
    for detail in reply.json().get("details", []):
        if detail["@type"].endswith("google.rpc.ErrorInfo"):
            reason = detail["reason"]
        if detail["@type"].endswith("google.rpc.BadRequest"):
            violations = [(v["field"], v["description"]) for v in detail["fieldViolations"]]
    return reason, violations


def _exported(api: System, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The exported events (NDJSON, last two days) whose ids are among ``ids``."""
    url = f"{api.http_url}/analytics/export?type=events&format=ndjson&period=2d"
    reply = call("GET", url, api.key, timeout=120)
    assert reply.status == 200, reply.body[:500]
    rows = [json.loads(line) for line in reply.body.decode().splitlines() if line]
    return {row["eventId"]: row for row in rows if row["eventId"] in ids}


def _order(run: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{run}_{n}",
        "event": "order_completed",
        "userId": f"u_{run}",
        "properties": {"orderId": f"o_{run}_{n}", "total": 1000 + n, "currency": "EUR"},
        **extra,
    }


def test_one_odd_event_refuses_only_itself(api: System) -> None:
    run = _uid()
    good = {
        0: _order(run, 0, integrations={"All": True}, channel="server", messageId="m0"),
        2: {"id": f"evt_{run}_2", "event": "page_view", "user_id": f"u_{run}",
            "properties": {"page": "/p", "n": 2.0}, "context": {"library": {"name": "x"}}},
        11: _order(run, 11, sentAt=NOW.strftime("%Y-%m-%dT%H:%M:%SZ"), colour="red"),
    }  # fmt: skip
    odd = {
        1: _order(run, 1, properties="oops"),
        3: _order(run, 3, userId=5),
        4: _order(run, 4, timestamp="yesterday"),
        5: 7,
        6: _order(run, 6, properties={"orderId": "o", "total": 1, "currency": "EUR", "\ud800": 1}),
        7: _order(run, 7, userId="\ud800abc"),
        8: _order(run, 8, properties={"orderId": "o", "total": 1, "currency": "EUR", "x": "BIG"}),
        9: _order(run, 9, properties={"orderId": "o", "total": 1, "currency": "EUR", "x": "LONG"}),
        10: _order(run, 10, context={"a": _lists(MAX_DEPTH)}),
    }  # fmt: skip
    events = [good.get(i, odd.get(i)) for i in range(12)]
    # json.dumps writes lone surrogates as \ud800 escapes; 1e400 and 400 digits by hand.
    raw = json.dumps({"events": events}).replace('"BIG"', "1e400").replace('"LONG"', "7" * 400)
    reply = call("POST", f"{api.http_url}/analytics/event/batch", api.key, raw=raw.encode())
    assert reply.status == 200, reply.body[:1000]
    body = reply.json()
    assert [a["index"] for a in body["accepted"]] == [0, 2, 11]
    assert [a["id"] for a in body["accepted"]] == [good[i]["id"] for i in (0, 2, 11)]
    assert body["acceptedCount"] == 3 and body["rejectedCount"] == len(body["rejected"])
    refused = {(r["index"], r["field"], r["description"]) for r in body["rejected"]}
    assert {
        (1, "properties", OBJECT_RULE),
        (3, "userId", STRING_RULE),
        (4, "timestamp", TIME_RULE),
        (5, "events[5]", OBJECT_RULE),
        (6, "properties.\\ud800", SURROGATE_RULE),
        (7, "userId", SURROGATE_RULE),
        (10, "context.a" + "[0]" * (MAX_DEPTH - 1), DEPTH_RULE),
    } <= refused
    # 1e400 and a 400-digit integer: refused by index naming the property (the numbers rule).
    assert {(r[0], r[1]) for r in refused if r[0] in (8, 9)} == {
        (8, "properties.x"),
        (9, "properties.x"),
    }
    assert {r[0] for r in refused} == set(odd)

    stored = _exported(api, {f"evt_{run}_{i}" for i in range(12)})
    assert set(stored) == {good[i]["id"] for i in good}
    for i, sent in good.items():
        row = stored[sent["id"]]
        assert row["event"] == sent["event"]
        assert row["userId"] == f"u_{run}"
        expected = dict(sent["properties"])
        if "n" in expected:
            expected["n"] = 2  # a whole double is stored as an integer, as before
        assert row["properties"] == expected, i


def test_segment_events_are_accepted_and_message_id_dedupes_a_retry(api: System) -> None:
    run = _uid()
    message_id = f"ajs-next-{run}"
    at = (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    segment = {
        "type": "track",
        "event": "order_completed",
        "userId": f"u_{run}",
        "anonymousId": f"a_{run}",
        "messageId": message_id,
        "timestamp": at,
        "originalTimestamp": at,
        "sentAt": at,
        "receivedAt": at,
        "channel": "client",
        "integrations": {"All": True, "Mixpanel": False},
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {"path": "/checkout", "url": "https://shop.example/checkout"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            "locale": "en-US",
        },
        "properties": {"orderId": f"o_{run}", "total": 4200, "currency": "EUR"},
        "writeKey": "wk_123",
        "version": 2,
    }
    url = f"{api.http_url}/analytics/event"
    first = call("POST", url, api.key, segment)
    assert first.status == 201, first.body
    assert set(first.json()) == {"id", "event", "timestamp"}
    assert first.json()["id"] == message_id
    retry = call("POST", url, api.key, {**segment, "sentAt": NOW.isoformat()})
    assert (retry.status, retry.json()) == (201, first.json())
    batch = call("POST", f"{url}/batch", api.key, {"events": [segment, {**segment, "batch": True}]})
    assert batch.status == 200, batch.body
    assert [a["id"] for a in batch.json()["accepted"]] == [message_id, message_id]
    stored = _exported(api, {message_id})
    assert list(stored) == [message_id]
    assert stored[message_id]["properties"] == segment["properties"]
    # A messageId that cannot be an id is refused naming messageId.
    bad = call("POST", url, api.key, {**segment, "messageId": "not an id!"})
    assert bad.status == 400, bad.body
    reason, violations = _details(bad)
    assert reason == "INVALID_ARGUMENT" and [v[0] for v in violations] == ["messageId"]


def test_single_event_endpoint_answers_as_before(api: System) -> None:
    run = _uid()
    url = f"{api.http_url}/analytics/event"
    event = _order(run, 0, integrations={"All": True})
    reply = call("POST", url, api.key, event)
    assert reply.status == 201, reply.body
    assert set(reply.json()) == {"id", "event", "timestamp"}
    assert reply.json()["id"] == event["id"]
    # sendBeacon sends text/plain; no Content-Type at all is read as JSON too.
    beacon = _order(run, 1)
    reply = call(
        "POST",
        url,
        api.key,
        raw=json.dumps(beacon).encode(),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert reply.status == 201, reply.body
    assert set(_exported(api, {event["id"], beacon["id"]})) == {event["id"], beacon["id"]}


@pytest.mark.parametrize(
    ("path", "raw", "content_type", "field"),
    [
        ("/analytics/event", b'{"event": "search", "userId": "u", "properties": "oops"}', JSON,
         "properties"),
        ("/analytics/event", b'{"event": "search", "userId": "u", "timestamp": 5}', JSON,
         "timestamp"),
        ("/analytics/event", b'{"event": "search", "userId": "\\ud800"}', JSON, "userId"),
        ("/analytics/event", b'{"event": "search", "userId": "u", "n": 1e400', JSON, "body"),
        ("/analytics/event", b'event=x&userId=u', "application/x-www-form-urlencoded", "body"),
        ("/analytics/event/batch", b'{"events": [{"n": NaN}]}', JSON, "body"),
        ("/analytics/event/batch", b'[{"event": "x"}]', JSON, "body"),
        ("/analytics/event/batch", b'{"events": {"event": "x"}}', JSON, "events"),
        ("/analytics/event/batch", b'{"batch": [{"event": "x"}]}', JSON, "events"),
    ],
)  # fmt: skip
def test_refusals_are_400s_with_details_naming_the_field(
    api: System, path: str, raw: bytes, content_type: str, field: str
) -> None:
    reply = call(
        "POST", f"{api.http_url}{path}", api.key, raw=raw, headers={"Content-Type": content_type}
    )
    assert reply.status == 400, reply.body
    assert reply.json()["code"] == 3
    reason, violations = _details(reply)
    assert reason == "INVALID_ARGUMENT"
    assert [v[0] for v in violations] == [field], violations
    # Nothing internal: no protobuf type names, no Python exception or codec text.
    for word in (
        "analytics.ingest",
        "google.protobuf",
        "Traceback",
        "Exception",
        "codec",
        "surrogates not allowed",
        "OverflowError",
        "ValueError",
    ):
        assert word not in reply.body.decode(), reply.body


def test_grpc_struct_numbers_that_json_cannot_hold_are_400s(system: System) -> None:
    """A gRPC client can put inf or NaN in a Struct: refused naming the field, not a 500."""
    metadata = (("authorization", f"Bearer {system.key}"),)
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for name, value in (("total", math.inf), ("total", math.nan), ("custom", -math.inf)):
            event = ingest_pb2.Event(event="order_completed", user_id="grpc_inf")
            event.properties.update(
                {"orderId": f"o_{_uid()}", "total": 100, "currency": "EUR", name: value}
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.TrackEvent(
                    ingest_pb2.TrackEventRequest(event=event), metadata=metadata, timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            status = rpc_status.from_call(caught.value)
            assert status is not None
            assert f"properties.{name}" in status.message


# The parser checks the number rule while it walks properties and context (validation then skips
# its own walk): numbers at and beyond the edges of the safe range, as JSON text.
_edge_numbers = st.sampled_from(
    ["9007199254740991", "-9007199254740991", "9007199254740992", "-9007199254740992",
     "9007199254740991.0", "9007199254740992.0", "1e400", "-1e400", "1" + "0" * 40, "0.5",
     "1e15", "2999.0", "-0.0"]
)  # fmt: skip
_numbers_tree = st.recursive(
    _edge_numbers | st.sampled_from(['"a"', "null", "true"]),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.sampled_from(["k", "total", "x"]), inner, max_size=3).map(
            lambda pairs: "{" + ",".join(f'"{k}":{v}' for k, v in pairs.items()) + "}"
        )
    ),
    max_leaves=8,
)


def _unsafe_numbers(value: Any) -> bool:
    """Oracle: a number of the decoded JSON outside +-(2^53 - 1), or not finite."""
    if isinstance(value, dict):
        return any(_unsafe_numbers(v) for v in value.values())
    if isinstance(value, list):
        return any(_unsafe_numbers(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not (math.isfinite(value) and abs(value) <= 2**53 - 1)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["my_event", "order_completed", "page_view"]),
    st.dictionaries(st.sampled_from(["total", "n", "page"]), _numbers_tree, max_size=3),
    st.dictionaries(st.sampled_from(["screen", "n"]), _numbers_tree, max_size=2),
)
def test_the_parsers_number_check_refuses_what_validation_would(
    event: str, properties: dict[str, str], context: dict[str, str]
) -> None:
    def obj(pairs: dict[str, str]) -> str:
        return "{" + ",".join(f'"{k}":{v}' for k, v in pairs.items()) + "}"

    text = f'{{"event":"{event}","userId":"u","properties":{obj(properties)},'
    text += f'"context":{obj(context)}}}'
    [parsed] = parse_single(text.encode(), JSON, 1 << 20).events
    raw = json.loads(text)
    assert parsed.numbers_checked == (
        not _unsafe_numbers(raw["properties"]) and not _unsafe_numbers(raw["context"])
    )
    at = datetime(2026, 6, 1, tzinfo=UTC)
    walked = validate(replace(parsed, numbers_checked=False), at, lambda: "evt_x")
    assert validate(parsed, at, lambda: "evt_x") == walked

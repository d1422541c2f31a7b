"""The ingest paths' REST answers, rendered by the service, against protobuf's own JSON mapping.

The service renders ``TrackEventResponse`` and ``BatchTrackEventsResponse`` as JSON itself
(services/ingest/acknowledgement.py) and hands them to the gateways raw. The oracle here builds
the typed message from the same outcome with protobuf's constructors and prints it with
``json_format.MessageToJson`` (every field printed, as both gateways print typed answers).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from cartlytics.common.errors import FieldViolation
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2
from services.ingest.acknowledgement import batch_json, single_json, timestamp_text
from services.ingest.idempotency import Ack
from services.ingest.outcome import Acknowledged, IngestResult, Rejected
from services.ingest.preparation import EventKey


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    # protobuf reads a naive datetime as UTC, as the service does.
    stamp.FromDatetime(moment)
    return stamp


def _printed(message: Any) -> Any:
    return json.loads(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))


def _batch_oracle(result: IngestResult) -> Any:
    message = ingest_pb2.BatchTrackEventsResponse(
        accepted_count=len(result.accepted),
        rejected_count=len(result.rejected),
        accepted=[
            ingest_pb2.AcceptedEvent(
                index=index, id=ack.id, event=ack.event, timestamp=_timestamp(ack.timestamp)
            )
            for index, ack in result.accepted
        ],
        rejected=[
            ingest_pb2.RejectedEvent(index=r.index, field=v.field, description=v.description)
            for r in result.rejected
            for v in r.violations
        ],
    )
    return _printed(message)


# Any text, including quotes, backslashes, control characters, non-ASCII and lone surrogates
# (a rule's description may quote what the client sent).
texts = st.text(max_size=12)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
) | st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
# An event stored now is acknowledged by its own EventKey; one the dedup window answers, by its Ack.
acks = st.builds(Ack, texts, texts, moments) | st.builds(
    EventKey,
    st.integers(0, 999),
    texts,
    texts,
    moments,
    st.booleans(),
    texts,
    texts,
    st.just((0, 1, 0, 0)),
)
rejections = st.builds(
    Rejected,
    st.integers(0, 999),
    st.lists(st.builds(FieldViolation, texts, texts), min_size=1, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 999), acks), max_size=8), st.lists(rejections, max_size=4))
def test_a_batch_answer_is_protobufs_json_of_the_same_outcome(
    accepted: list[tuple[int, Acknowledged]], rejected: list[Rejected]
) -> None:
    result = IngestResult(accepted=accepted, rejected=rejected)
    rendered = batch_json(result)
    rendered.decode("ascii")  # escaped: valid whatever the texts hold
    assert json.loads(rendered) == _batch_oracle(result)


@settings(max_examples=300, deadline=None)
@given(acks)
def test_a_single_answer_is_protobufs_json_of_the_same_ack(ack: Acknowledged) -> None:
    rendered = single_json(IngestResult(accepted=[(0, ack)]))
    oracle = ingest_pb2.TrackEventResponse(
        id=ack.id, event=ack.event, timestamp=_timestamp(ack.timestamp)
    )
    assert json.loads(rendered) == _printed(oracle)


def test_times_print_as_protobuf_prints_them() -> None:
    # The fraction has 0, 3 or 6 digits, as the microseconds need; every zone comes out as UTC.
    cases = {
        datetime(2024, 1, 15, 10, 36, tzinfo=UTC): "2024-01-15T10:36:00Z",
        datetime(2024, 1, 15, 10, 36, 0, 120_000, tzinfo=UTC): "2024-01-15T10:36:00.120Z",
        datetime(2024, 1, 15, 10, 36, 0, 7, tzinfo=UTC): "2024-01-15T10:36:00.000007Z",
        datetime(2024, 1, 15, 11, 36, tzinfo=timezone(timedelta(hours=1))): "2024-01-15T10:36:00Z",
        datetime(1969, 12, 31, 23, 59, 59, 500_000): "1969-12-31T23:59:59.500Z",
        datetime(1, 1, 1): "0001-01-01T00:00:00Z",
    }
    for moment, text in cases.items():
        assert timestamp_text(moment) == text == _timestamp(moment).ToJsonString()


def test_an_empty_outcome_prints_every_field() -> None:
    assert json.loads(batch_json(IngestResult())) == {
        "acceptedCount": 0,
        "rejectedCount": 0,
        "accepted": [],
        "rejected": [],
    }

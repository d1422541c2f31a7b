"""The REST answers of the ingest paths, rendered as JSON from what a request came to.

``POST /analytics/event`` answers a ``TrackEventResponse`` and ``.../event/batch`` a
``BatchTrackEventsResponse``, in protobuf's JSON mapping as a transcoder prints it (every field,
lowerCamelCase names, RFC 3339 times in UTC). The service renders them itself and hands them to
the gateways as a ``google.api.HttpBody``: Envoy's transcoder takes a ``response_body`` only when
it is an HttpBody, and a batch's acknowledgement of 500 events cost ~7 µs an event built as a
message and then printed (upb field by field, a dict, ``json.dumps``), ~1 µs rendered here.
tests/test_acknowledgement.py compares both renderings with protobuf's own JSON printer.
"""

from __future__ import annotations

from datetime import datetime
from json.encoder import encode_basestring_ascii as _quoted  # C: escapes, quotes, ASCII only

from cartlytics.common.timestamps import epoch_parts, timestamp_json

from .outcome import IngestResult

CONTENT_TYPE = "application/json"


def single_json(result: IngestResult) -> bytes:
    """A one-event request's acknowledgement (the caller turns a refusal into its error)."""
    _, ack = result.accepted[0]
    return (
        f'{{"id":{_quoted(ack.id)},"event":{_quoted(ack.event)},'
        f'"timestamp":"{timestamp_text(ack.timestamp)}"}}'
    ).encode()


def batch_json(result: IngestResult) -> bytes:
    """A batch's acknowledgement: counts, the stored events and one entry per broken rule."""
    parts = [f'{{"acceptedCount":{len(result.accepted)},"rejectedCount":{len(result.rejected)}']
    accepted: list[str] = []
    # A batch's events share a few names and, stamped on arrival, often one time: each is
    # rendered once.
    names: dict[str, str] = {}
    times: dict[datetime, str] = {}
    for index, ack in result.accepted:
        name = names.get(ack.event)
        if name is None:
            name = names[ack.event] = _quoted(ack.event)
        moment = times.get(ack.timestamp)
        if moment is None:
            moment = times[ack.timestamp] = timestamp_text(ack.timestamp)
        accepted.append(
            f'{{"index":{index},"id":{_quoted(ack.id)},"event":{name},"timestamp":"{moment}"}}'
        )
    parts.append(',"accepted":[' + ",".join(accepted) + "]")
    rejected = [
        f'{{"index":{refused.index},"field":{_quoted(violation.field)},'
        f'"description":{_quoted(violation.description)}}}'
        for refused in result.rejected
        for violation in refused.violations
    ]
    parts.append(',"rejected":[' + ",".join(rejected) + "]}")
    return "".join(parts).encode()


def timestamp_text(moment: datetime) -> str:
    """``google.protobuf.Timestamp``'s JSON form of a time (as ``Timestamp.ToJsonString``); a
    naive time is read as UTC."""
    seconds, micros = epoch_parts(moment)
    return timestamp_json(seconds, micros * 1_000)

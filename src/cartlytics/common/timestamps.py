"""``google.protobuf.Timestamp`` arithmetic and JSON text without building a Timestamp.

The gateway prints every Timestamp of a response (gateway/json_printer.py), the ingest service
fills and renders an acknowledgement's time for each event (services/ingest/servicer.py,
acknowledgement.py): protobuf's own ``FromDatetime`` / ``ToJsonString`` convert through
datetimes and time zones for each, and a batch's acknowledgements share a few seconds.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def epoch_parts(moment: datetime) -> tuple[int, int]:
    """Whole seconds since the epoch and the microseconds past them, exactly (integer
    arithmetic, as ``Timestamp.FromDatetime``); a naive time is read as UTC."""
    since = moment - (_NAIVE_EPOCH if moment.tzinfo is None else _EPOCH)
    return since.days * 86_400 + since.seconds, since.microseconds


def timestamp_json(seconds: int, nanos: int) -> str:
    """``Timestamp.ToJsonString`` of an in-range value (0001-01-01 to 9999-12-31, nanos in
    [0, 1e9)): UTC, ``Z``, and 0, 3, 6 or 9 fraction digits as the nanoseconds need."""
    text = _whole_second(seconds)
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4096)
def _whole_second(seconds: int) -> str:
    """The date and time of a second, made once: a batch's times share a few seconds."""
    return (_NAIVE_EPOCH + timedelta(seconds=seconds)).isoformat()

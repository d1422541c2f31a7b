"""The errors a service may answer with, and their one mapping to gRPC rich status (AIP-193).

One exception type, ``ApiError``: a gRPC code, a stable ``reason``, a message, and what the
status carries besides (field violations, RetryInfo, ErrorInfo metadata, quota violations). It
is made by the helpers here or where the error belongs, for instance:

    invalid_argument / invalid_field   INVALID_ARGUMENT   (HTTP 400) + google.rpc.BadRequest
    unauthenticated                    UNAUTHENTICATED    (HTTP 401)
    permission_denied                  PERMISSION_DENIED  (HTTP 403)
    unavailable                        UNAVAILABLE        (HTTP 503) + google.rpc.RetryInfo
    RateLimited (ratelimit.py)         RESOURCE_EXHAUSTED (HTTP 429) + RetryInfo, QuotaFailure

and the rarer ones as ``ApiError(message, reason, code)`` where they arise (NOT_FOUND for a key,
OUT_OF_RANGE for a figure too large, ABORTED for an event another request is storing, ...).

Domain code raises these; the server interceptor turns them into a status with an ErrorInfo
(stable ``reason``, domain ``cartlytics``). Anything else becomes INTERNAL with no detail, so no
stack trace, SQL or driver message ever reaches a client.

Every status is bounded when it is built (``build_status``): it travels as gRPC trailers (the
message percent-encoded in ``grpc-message``, the whole Status base64-encoded in
``grpc-status-details-bin``), and past gRPC's 8 KiB metadata limit the call is dropped and the
caller sees RESOURCE_EXHAUSTED (a 429) instead of our error. So a field is cut to
MAX_FIELD_BYTES, a description to MAX_DESCRIPTION_BYTES, the message to MAX_MESSAGE_BYTES, at
most MAX_VIOLATIONS violations are listed (the rest counted in the ErrorInfo metadata), and the
two trailers together stay within MAX_TRAILER_BYTES (half the limit): violations are dropped
from the end, then metadata, until they fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "cartlytics"

MAX_VIOLATIONS = 20  # field violations listed in one BadRequest; the rest are only counted
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 512
# grpc-message (percent-encoded) + grpc-status-details-bin (base64): half of gRPC's default
# 8 KiB metadata limit, leaving room for the other trailers and the HTTP/2 entry overheads.
MAX_TRAILER_BYTES = 4096
# ErrorInfo metadata keys when violations are left out of the BadRequest.
VIOLATION_COUNT_KEY = "violationCount"
REPORTED_VIOLATIONS_KEY = "reportedViolations"
_CUT = "…"


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: the field's path (as the client named it) and the rule."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    message: str
    reason: str
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    violations: list[FieldViolation] = field(default_factory=list)
    retry_after_seconds: float | None = None
    # ErrorInfo.metadata: what a client may act on (a catalogue of accepted names, a limit).
    metadata: dict[str, str] = field(default_factory=dict)
    # google.rpc.QuotaFailure violations: (subject, description).
    quota_violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields: an ingest worker process raises it to the event loop's
        # (Exception's own pickling would call __init__ with no arguments).
        return (
            ApiError,
            (self.message, self.reason, self.code, self.violations, self.retry_after_seconds,
             self.metadata, self.quota_violations),
        )  # fmt: skip

    def to_status(self) -> status_pb2.Status:
        extra: list[Message] = []
        if self.quota_violations:
            extra.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                        for s, d in self.quota_violations
                    ]
                )
            )
        return build_status(
            self.code,
            self.message,
            self.reason,
            self.violations,
            metadata=self.metadata,
            retry_after_seconds=self.retry_after_seconds,
            extra=extra,
        )


def clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, cut at a character and marked with "…";
    what is not UTF-8 (a lone surrogate) is replaced, as protobuf refuses it."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode()
    if limit < 2 * len(_CUT.encode()):
        return ""
    return data[: limit - len(_CUT.encode())].decode("utf-8", "ignore") + _CUT


def trailer_bytes(status: status_pb2.Status) -> int:
    """What ``status`` takes in gRPC trailers: its message percent-encoded (grpc-message) plus
    the serialized Status in base64 (grpc-status-details-bin)."""
    message = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in status.message.encode())
    return message + 4 * math.ceil(int(status.ByteSize()) / 3)


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    violations: Sequence[FieldViolation] = (),
    *,
    metadata: Mapping[str, str] | None = None,
    retry_after_seconds: float | None = None,
    extra: Sequence[Message] = (),
) -> status_pb2.Status:
    """The rich status, within MAX_TRAILER_BYTES whatever it is given (see the module doc)."""
    shown = [
        FieldViolation(clip(v.field, MAX_FIELD_BYTES), clip(v.description, MAX_DESCRIPTION_BYTES))
        for v in violations[:MAX_VIOLATIONS]
    ]
    info = {clip(k, 64): clip(v, MAX_METADATA_VALUE_BYTES) for k, v in (metadata or {}).items()}
    text = clip(message, MAX_MESSAGE_BYTES)
    reason = clip(reason, 64)
    while True:
        status = _compose(code, text, reason, shown, len(violations), info, retry_after_seconds)
        for detail in extra:
            status.details.append(_pack(detail))
        if trailer_bytes(status) <= MAX_TRAILER_BYTES:
            return status
        if shown:
            shown.pop()  # the last listed violation; still counted in the metadata
        elif info:
            info = {}
        elif extra:
            extra = ()
        elif text:  # only the message is left: a non-ASCII one may take 3x its bytes encoded
            text = clip(text, len(text.encode()) // 2)
        else:
            return status  # code, reason and a delay: a few dozen bytes


def _compose(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    shown: Sequence[FieldViolation],
    total: int,
    metadata: Mapping[str, str],
    retry_after_seconds: float | None,
) -> status_pb2.Status:
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    if total > len(shown):
        info.metadata[VIOLATION_COUNT_KEY] = str(total)
        info.metadata[REPORTED_VIOLATIONS_KEY] = str(len(shown))
    details.append(_pack(info))
    if shown:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in shown
            ]
        )
        details.append(_pack(bad_request))
    if retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after_seconds * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def bounded(status: status_pb2.Status) -> status_pb2.Status:
    """``status`` if it fits MAX_TRAILER_BYTES, else its code and a cut message with only its
    ErrorInfo and RetryInfo (for statuses not made by ``build_status``)."""
    if trailer_bytes(status) <= MAX_TRAILER_BYTES:
        return status
    kept = [
        d
        for d in status.details
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
        or d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    ]
    small = status_pb2.Status(code=status.code, message=clip(status.message, 256), details=kept)
    if trailer_bytes(small) <= MAX_TRAILER_BYTES:
        return small
    return status_pb2.Status(code=status.code, message=clip(status.message, 256))


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid_argument(
    violations: list[FieldViolation],
    reason: str = "INVALID_ARGUMENT",
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """A 400 whose message names the first offending fields and rules (as many as fit in
    MAX_MESSAGE_BYTES, then "and K more"); the BadRequest detail lists them (see build_status)."""
    prefix = "invalid request: "
    named: list[str] = []
    used = len(prefix.encode())
    for v in violations:
        part = f"{clip(v.field, MAX_FIELD_BYTES)}: {clip(v.description, MAX_DESCRIPTION_BYTES)}"
        # Room for "; " and for the count of the rest.
        room = MAX_MESSAGE_BYTES - used - len("; and 1000000 more")
        if named and len(part.encode()) + 2 > room:
            break
        named.append(part if named or len(part.encode()) <= room else clip(part, room))
        used += len(named[-1].encode()) + 2
    summary = "; ".join(named)
    if len(named) < len(violations):
        summary += f"; and {len(violations) - len(named)} more"
    return ApiError(
        message=prefix + summary,
        reason=reason,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        violations=violations,
        metadata=dict(metadata or {}),
    )


def invalid_field(name: str, description: str) -> ApiError:
    return invalid_argument([FieldViolation(name, description)])


def unauthenticated(message: str) -> ApiError:
    return ApiError(message, "UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED)


def permission_denied(message: str) -> ApiError:
    return ApiError(message, "PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED)


def unavailable(message: str, reason: str = "BACKEND_UNAVAILABLE") -> ApiError:
    return ApiError(message, reason, grpc.StatusCode.UNAVAILABLE, retry_after_seconds=1.0)


INTERNAL_STATUS = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")

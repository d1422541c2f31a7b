"""The SDK's one error type, ``CartlyticsError``, and how a failed gRPC call becomes one.

The server answers errors as gRPC rich status (AIP-193): the code, the message, and a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer carrying an ``ErrorInfo``
(``reason``), a ``BadRequest`` (field violations) and, for RESOURCE_EXHAUSTED and UNAVAILABLE, a
``RetryInfo`` (also sent as the ``retry-after`` trailer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after"

# The HTTP status the REST API answers for each code (google.rpc.Code's mapping).
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class FieldViolation(NamedTuple):
    """One broken rule of a ``google.rpc.BadRequest`` (or one refusal of an event of a batch):
    the field, as a path inside the request or event, and the rule. A plain tuple too:
    ``("properties.productId", "is required")``."""

    field: str
    description: str


class CartlyticsError(Exception):
    """Every error of the SDK: what the server answered (and transport failures, as UNAVAILABLE
    or DEADLINE_EXCEEDED), and the SDK's own refusals (``QueueFull``, ``ClientClosed``,
    ``EventTooLarge``).

    Attributes:
        code: the canonical gRPC code (``grpc.StatusCode.INVALID_ARGUMENT``, ...).
        message: the server's message.
        field_violations: the ``google.rpc.BadRequest`` details, ``(field, description)``.
        reason: the ``google.rpc.ErrorInfo`` reason (``RATE_LIMITED``...), or None.
        metadata: the ``ErrorInfo`` metadata (empty without one).
        retry_delay: the ``google.rpc.RetryInfo`` delay in seconds (else the ``retry-after``
            trailer), or None.
        attempts: how many attempts the SDK made (1 without retries; 0 for the SDK's refusals).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Iterable[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = [FieldViolation(f, d) for f, d in field_violations]
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay
        self.attempts = attempts
        super().__init__(message)

    @property
    def http_status(self) -> int:
        """The HTTP status the REST API answers for ``code`` (400, 429, 503...)."""
        return _HTTP_STATUS.get(self.code, 500)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for violation in self.field_violations:
            shown = f"{violation.field}: {violation.description}"
            if shown not in self.message:  # the server's message names the first ones
                text += f"; {shown}"
        if self.reason:
            text += f" (reason {self.reason})"
        if self.attempts > 1:
            text += f" after {self.attempts} attempts"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self})"


class QueueFull(CartlyticsError):
    """``enqueue`` found the queue at ``max_queue_events`` or ``max_queue_bytes``: the event
    was not queued (reason ``QUEUE_FULL``)."""

    def __init__(self, message: str = "the event queue is full") -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason="QUEUE_FULL", attempts=0
        )


class ClientClosed(CartlyticsError):
    """A call on a closed client, or a queued event the client gave up on when it was closed
    (reason ``CLIENT_CLOSED``)."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION, message, reason="CLIENT_CLOSED", attempts=0
        )


class EventTooLarge(CartlyticsError):
    """An event whose properties and context are over 32 KB of JSON, which the server would
    refuse: refused at once by ``track`` and ``enqueue`` (reason ``EVENT_TOO_LARGE``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the event's properties and context are {size} bytes of JSON, over {limit}",
            field_violations=[("properties", f"event must be at most {limit} bytes")],
            reason="EVENT_TOO_LARGE",
            attempts=0,
        )


def _metadata_items(metadata: Any) -> list[tuple[str, Any]]:
    """(key, value) pairs of a call's trailing metadata (a tuple of pairs or grpc.aio's
    Metadata), tolerant of absent or odd values."""
    if not metadata:
        return []
    items: list[tuple[str, Any]] = []
    for item in metadata:
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        items.append((str(key), value))
    return items


def _retry_after(value: Any) -> float | None:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        seconds = float(text.strip())
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _call_part(error: Any, name: str) -> Any:
    method = getattr(error, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # an odd RpcError (raised by an interceptor) may not implement it
        return None


def error_from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Any, attempts: int = 1
) -> CartlyticsError:
    """The error of a call that ended with ``code``, ``message`` and ``trailing_metadata``."""
    status: status_pb2.Status | None = None
    retry_after: float | None = None
    for key, value in _metadata_items(trailing_metadata):
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                parsed = status_pb2.Status.FromString(value)
            except DecodeError:
                continue
            # As grpc_status.rpc_status.from_call: details of another code are not this error's.
            if parsed.code == code.value[0]:
                status = parsed
        elif key == RETRY_AFTER_KEY:
            retry_after = _retry_after(value)
    violations: list[tuple[str, str]] = []
    reason: str | None = None
    info_metadata: dict[str, str] = {}
    retry_delay: float | None = None
    if status is not None:
        if status.message:
            message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason or None
                info_metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                delay = retry.retry_delay.ToNanoseconds() / 1e9
                retry_delay = delay if delay > 0 else None
    if retry_delay is None:
        retry_delay = retry_after
    return CartlyticsError(
        code,
        message,
        field_violations=violations,
        reason=reason,
        metadata=info_metadata,
        retry_delay=retry_delay,
        attempts=attempts,
    )


def error_from_rpc(error: BaseException, attempts: int = 1) -> CartlyticsError:
    """A ``grpc.RpcError`` (sync or ``grpc.aio``) as a CartlyticsError; any other exception
    (raised by a client interceptor, say) becomes UNKNOWN with its text."""
    if isinstance(error, CartlyticsError):
        return error
    code = _call_part(error, "code")
    if not isinstance(code, grpc.StatusCode):
        result = CartlyticsError(
            grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}", attempts=attempts
        )
    else:
        details = _call_part(error, "details")
        message = details if isinstance(details, str) else ""
        trailing = _call_part(error, "trailing_metadata")
        result = error_from_status(code, message, trailing, attempts)
    result.__cause__ = error
    return result

"""The errors a service may answer with, and their one mapping to gRPC rich status (AIP-193).

    ApiError
    ├── InvalidArgument     INVALID_ARGUMENT  (HTTP 400) + google.rpc.BadRequest field violations
    ├── Unauthenticated     UNAUTHENTICATED   (HTTP 401)
    ├── PermissionDenied    PERMISSION_DENIED (HTTP 403)
    ├── NotFound            NOT_FOUND         (HTTP 404)
    ├── ResourceExhausted   RESOURCE_EXHAUSTED (HTTP 429) + google.rpc.RetryInfo
    ├── Unimplemented       UNIMPLEMENTED     (HTTP 501)
    └── Unavailable         UNAVAILABLE       (HTTP 503)

Domain code raises these; the server interceptor turns them into a status with an ErrorInfo
(stable ``reason``, domain ``cartlytics``). Anything else becomes INTERNAL with no detail, so no
stack trace, SQL or driver message ever reaches a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "cartlytics"


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

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        details.append(_pack(info))
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad_request))
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid_argument(
    violations: list[FieldViolation], reason: str = "INVALID_ARGUMENT"
) -> ApiError:
    """A 400 whose message names every offending field and rule."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ApiError(
        message=f"invalid request: {summary}",
        reason=reason,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        violations=violations,
    )


def invalid_field(name: str, description: str) -> ApiError:
    return invalid_argument([FieldViolation(name, description)])


def unauthenticated(message: str) -> ApiError:
    return ApiError(message, "UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED)


def permission_denied(message: str) -> ApiError:
    return ApiError(message, "PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED)


def unimplemented(method: str, issue: str) -> ApiError:
    return ApiError(
        f"{method} is not implemented yet ({issue})",
        "NOT_IMPLEMENTED",
        grpc.StatusCode.UNIMPLEMENTED,
    )


def unavailable(message: str, reason: str = "BACKEND_UNAVAILABLE") -> ApiError:
    return ApiError(message, reason, grpc.StatusCode.UNAVAILABLE, retry_after_seconds=1.0)


INTERNAL_STATUS = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")

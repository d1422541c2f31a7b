"""gRPC status -> HTTP status and the google.rpc.Status JSON error body.

Clients see the same error whether they go through Envoy (production) or this gateway: the HTTP
code Envoy's `Grpc::Utility::grpcToHttpStatus` gives, and the body Envoy's `convert_grpc_status`
prints, i.e. the `grpc-status-details-bin` trailer (a google.rpc.Status) rendered as JSON with
its details (BadRequest, RetryInfo, ...) unpacked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "GatewayError",
    "error_body",
    "http_status_for",
    "retry_after_from_rpc",
    "status_from_rpc",
]

_log = structlog.get_logger(__name__)


# error_details_pb2 is also imported for its side effect: the google.rpc.* detail messages must be
# in the default pool so that the Any values of a Status can be unpacked to JSON.

_HTTP_BY_GRPC: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER: Mapping[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}
_DETAILS_KEY = "grpc-status-details-bin"


class GatewayError(Exception):
    """A request the gateway answers itself (bad input, unknown route, body too large).

    `http_status` overrides the usual mapping of `code` (413 and 405 have no gRPC equivalent);
    `headers` are added to the response (`Allow` on a 405).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or http_status_for(code)
        self.headers = dict(headers or {})


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status Envoy answers for a gRPC status code (500 for everything unlisted)."""
    return _HTTP_BY_GRPC.get(code, 500)


def code_number(code: grpc.StatusCode) -> int:
    """The numeric value of a gRPC status code (what google.rpc.Status.code carries)."""
    number: int = code.value[0]
    return number


def code_from_number(number: int) -> grpc.StatusCode:
    """The gRPC status code for a number; UNKNOWN for numbers outside the enum."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_body(
    code: grpc.StatusCode, message: str, details: Iterable[dict[str, Any]] = ()
) -> bytes:
    """The JSON body of an error: {"code", "message"} plus "details" when there are any."""
    body: dict[str, Any] = {"code": code_number(code), "message": message}
    details = list(details)
    if details:
        body["details"] = details
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def status_from_rpc(
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> bytes:
    """The error body for a failed call, from `grpc-status-details-bin` when the service sent it.

    `pool` resolves detail types declared in our own protos; google.rpc ones come from the
    default pool. A detail whose type resolves in neither is left out (and logged), rather than
    turning a well-formed error into a 500.
    """
    raw = _details_bin(trailing_metadata)
    if raw is None:
        return error_body(code, message)
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a corrupt trailer must not hide the real error
        _log.warning("gateway.bad_status_details", grpc_code=code.name)
        return error_body(code, message)
    details = [d for d in (_detail_json(a, pool) for a in status.details) if d is not None]
    return error_body(code_from_number(status.code), status.message, details)


def retry_after_from_rpc(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """An HTTP ``Retry-After`` (whole seconds, rounded up, at least 1) from a status' RetryInfo.

    For services that send the RetryInfo detail but not the ``retry-after`` metadata.
    """
    raw = _details_bin(trailing_metadata)
    if raw is None:
        return None
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a corrupt trailer: status_from_rpc has logged it
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return str(max(1, math.ceil(seconds)))
    return None


def _details_bin(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def _detail_json(
    detail: any_pb2.Any, pool: descriptor_pool.DescriptorPool | None
) -> dict[str, Any] | None:
    type_name = detail.type_url.rpartition("/")[2]
    for candidate in (descriptor_pool.Default(), pool):
        if candidate is None:
            continue
        try:
            descriptor = candidate.FindMessageTypeByName(type_name)
        except KeyError:
            continue
        message = message_factory.GetMessageClass(descriptor)()
        if not detail.Unpack(message):
            break
        value: Any = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        if not isinstance(value, dict):  # a well-known type printed as a JSON scalar/array
            value = {"value": value}
        return {"@type": detail.type_url, **value}
    _log.warning("gateway.unresolvable_status_detail", type_url=detail.type_url)
    return None

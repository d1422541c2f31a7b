"""PrivacyService over gRPC: the wire to ``cartlytics.common.erasure.Eraser`` and back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2
from grpc import aio

from cartlytics.common.auth import Principal, current_principal
from cartlytics.common.erasure import MAX_USER_ID_CHARS, Eraser
from cartlytics.common.errors import ApiError, invalid_field
from cartlytics.common.keys import PROJECT_PATTERN
from cartlytics.gen.analytics.privacy.v1 import privacy_pb2, privacy_pb2_grpc


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def project_of(caller: Principal, requested: str) -> str:
    """The project a request is about: the caller's own, or any for the operator key (another
    project is answered as one that does not exist, as the key management does)."""
    import grpc

    if not requested:
        return caller.project_id
    if not PROJECT_PATTERN.fullmatch(requested):
        raise invalid_field("project_id", "must be 1-64 characters of [A-Za-z0-9_-]")
    if not caller.operator and requested != caller.project_id:
        raise ApiError(f"project '{requested}' not found", "NOT_FOUND", grpc.StatusCode.NOT_FOUND)
    return requested


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):  # type: ignore[misc]
    def __init__(self, eraser: Eraser) -> None:
        self._eraser = eraser

    async def EraseUser(
        self, request: privacy_pb2.EraseUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.EraseUserResponse:
        caller = current_principal.get()
        project = project_of(caller, request.project_id)
        user_id = request.user_id
        if not user_id or len(user_id) > MAX_USER_ID_CHARS:
            raise invalid_field("user_id", f"must be 1-{MAX_USER_ID_CHARS} characters")
        result = await self._eraser.erase(project, user_id, caller.key_id or "operator")
        reply = privacy_pb2.EraseUserResponse(
            request_id=result.request_id,
            events_erased=result.events,
            request_time=_timestamp(result.requested_at),
            complete_time=_timestamp(result.completed_at),
        )
        if result.suppressed_until is not None:
            reply.suppressed_until.CopyFrom(_timestamp(result.suppressed_until))
        return reply

"""AdminService over gRPC: the wire to ``KeyManager`` and back, nothing else."""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2
from grpc import aio

from cartlytics.common.auth import current_principal
from cartlytics.common.keys import StoredKey
from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2

from .manager import KeyManager


def _timestamp(value: Any) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _api_key(key: StoredKey) -> admin_pb2.ApiKey:
    message = admin_pb2.ApiKey(
        key_id=key.key_id,
        project_id=key.project_id,
        scopes=[options_pb2.Scope.Name(s) for s in sorted(key.scopes)],
        name=key.name,
        create_time=_timestamp(key.created_at),
        revoked=key.revoked,
    )
    if key.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(key.revoked_at))
    return message


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, manager: KeyManager) -> None:
        self._manager = manager

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CreateKeyResponse:
        key, secret = await self._manager.create(
            current_principal.get(), request.project_id, list(request.scopes), request.name
        )
        return admin_pb2.CreateKeyResponse(key=_api_key(key), secret=secret)

    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListKeysResponse:
        keys = await self._manager.list_keys(current_principal.get(), request.project_id)
        return admin_pb2.ListKeysResponse(keys=[_api_key(k) for k in keys])

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RevokeKeyResponse:
        key = await self._manager.revoke(current_principal.get(), request.key_id)
        return admin_pb2.RevokeKeyResponse(key=_api_key(key))

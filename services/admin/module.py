"""The admin service's module (``cartlytics run --target admin``): AdminService (API keys) on
the process's gRPC server; gRPC only, never behind the gateway.

Registered by the app (``cartlytics/modules.py``); the machinery is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

from cartlytics.common.runtime import Module, Runtime, Stop


async def init(runtime: Runtime) -> Stop | None:
    from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc

    from .manager import KeyManager
    from .servicer import AdminServicer

    assert runtime.key_refresher is not None, "the admin module depends on auth"
    servicer = AdminServicer(KeyManager(runtime.key_refresher))
    server = runtime.register_grpc(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    return None


# auth: the stored keys it manages, refreshed from ClickHouse (the grpc-server needs it too).
MODULE = Module("admin", dependencies=("storage", "auth", "grpc-server"), init=init, target=True)

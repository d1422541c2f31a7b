"""What the contracts declare about each RPC: its scope and its HTTP success code.

Read from the generated descriptors (the proto options in ``analytics/options/v1``), so adding an
RPC needs no table edited by hand; a test fails on an RPC that declares no scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from cartlytics.gen.analytics.admin.v1 import admin_pb2
from cartlytics.gen.analytics.export.v1 import export_pb2
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2
from cartlytics.gen.analytics.options.v1 import options_pb2
from cartlytics.gen.analytics.privacy.v1 import privacy_pb2

FILES: tuple[FileDescriptor, ...] = (
    ingest_pb2.DESCRIPTOR,
    metrics_pb2.DESCRIPTOR,
    export_pb2.DESCRIPTOR,
    privacy_pb2.DESCRIPTOR,
    admin_pb2.DESCRIPTOR,  # gRPC only: no google.api.http binding, not behind the gateway
)


@dataclass(frozen=True)
class MethodInfo:
    path: str  # "/analytics.ingest.v1.IngestService/TrackEvent"
    scope: int  # options_pb2.Scope; SCOPE_UNSPECIFIED when the proto declares none
    http_success_code: int  # 0 when the default (200)


def services() -> list[ServiceDescriptor]:
    return [svc for f in FILES for svc in f.services_by_name.values()]


def methods() -> dict[str, MethodInfo]:
    found: dict[str, MethodInfo] = {}
    for service in services():
        for method in service.methods:
            options = method.GetOptions()
            path = f"/{service.full_name}/{method.name}"
            found[path] = MethodInfo(
                path=path,
                # The generated stubs type extensions loosely; the values are plain ints.
                scope=options.Extensions[options_pb2.required_scope],  # type: ignore[index]
                http_success_code=options.Extensions[options_pb2.http_success_code],  # type: ignore[index]
            )
    return found

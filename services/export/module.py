"""The export service's module (``cartlytics run --target export``): ExportService on the
process's gRPC server, streaming stored data out within the export slots.

Registered by the app (``cartlytics/modules.py``); the machinery is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

from cartlytics.common.runtime import Module, Runtime, Stop


async def init(runtime: Runtime) -> Stop | None:
    from cartlytics.gen.analytics.export.v1 import export_pb2, export_pb2_grpc

    from .exporter import Exporter
    from .servicer import ExportServicer
    from .slots import ExportLimits, ExportSlots

    config = runtime.config
    limits = ExportLimits(config.export_max_concurrent, config.export_max_per_key)
    servicer = ExportServicer(Exporter(runtime.require_storage()), ExportSlots(limits))
    server = runtime.register_grpc(
        export_pb2.DESCRIPTOR.services_by_name["ExportService"].full_name
    )
    export_pb2_grpc.add_ExportServiceServicer_to_server(servicer, server)
    return None


MODULE = Module("export", dependencies=("storage", "grpc-server"), init=init, target=True)

"""The ingest service's module (``cartlytics run --target ingest``): IngestService on the
process's gRPC server, writing through a group committer, deduplicating and counting in Redis.

Registered by the app (``cartlytics/modules.py``); the machinery is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

from cartlytics.common.runtime import Module, Runtime, Stop


async def init(runtime: Runtime) -> Stop:
    from cartlytics.common.realtime import RealtimeCounters
    from cartlytics.common.redis_guard import RedisGuard
    from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc

    from .idempotency import IdempotencyWindow
    from .ingestor import IngestLimits, Ingestor
    from .servicer import IngestServicer

    config = runtime.config
    storage = runtime.require_storage()
    recovery = runtime.recovery()
    guard = RedisGuard(runtime.redis, on_unavailable=recovery.unavailable if recovery else None)
    ingestor = Ingestor(
        storage,
        IdempotencyWindow(guard, config.dedup_window_seconds),
        RealtimeCounters(runtime.redis) if runtime.redis is not None else None,
        guard,
        ip_salt=runtime.salt(),
        limits=IngestLimits(max_event_bytes=config.max_event_bytes, ip_mode=config.ip_mode),
        recovery=recovery,
        suppression=await runtime.suppression_list(),
    )
    servicer = IngestServicer(ingestor, config.max_batch_events, config.max_body_bytes)
    server = runtime.register_grpc(
        ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    return ingestor.close


MODULE = Module("ingest", dependencies=("storage", "redis", "grpc-server"), init=init, target=True)

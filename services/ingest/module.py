"""The ingest service's module (``cartlytics run --target ingest``): IngestService on the
process's gRPC server, writing through a group committer, deduplicating and counting in Redis.

Registered by the app (``cartlytics/modules.py``); the machinery is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

import asyncio

from cartlytics.common.runtime import Module, Runtime, Stop

REPLAY_WAIT_SECONDS = 120.0


async def init(runtime: Runtime) -> Stop:
    from cartlytics.common.realtime import RealtimeCounters
    from cartlytics.common.redis_guard import RedisGuard
    from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc

    from .idempotency import IdempotencyWindow
    from .ingest_log import IngestLog, Record
    from .ingestor import Ingestor
    from .log_writer import LogWriter
    from .preparation import IngestLimits
    from .rows import TABLES
    from .servicer import IngestServicer
    from .workers import WorkerSetup

    config = runtime.config
    storage = runtime.require_storage()
    ingest_log: IngestLog | None = None
    writer: LogWriter | None = None
    replay: list[Record] = []
    if config.ingest_log:
        ingest_log = IngestLog(
            config.ingest_log_path,
            fsync=config.ingest_log_fsync,
            max_bytes=config.ingest_log_max_bytes,
            fsync_interval=config.ingest_log_fsync_interval,
        )
        # Replayed first (records a stop left unstored), before any request is taken.
        replay = await asyncio.to_thread(ingest_log.open)
        writer = LogWriter(
            storage,
            ingest_log,
            TABLES,
            max_rows=config.ingest_log_block_rows,
            linger_seconds=config.ingest_log_linger_seconds,
            read_wait_seconds=config.ingest_log_read_wait_seconds,
        )
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
        ingest_log=ingest_log,
        log_writer=writer,
        max_batch_events=config.max_batch_events,
        max_body_bytes=config.max_body_bytes,
        workers=config.ingest_workers,
        worker_setup=WorkerSetup(config.log_level, config.log_format, config.gc_gen0_threshold),
    )
    ingestor.preparer.start()
    if ingest_log is not None and writer is not None:
        writer.on_stored = ingestor.count_stored  # realtime counted per stored block
        writer.keep = ingestor.without_suppressed  # erased since acknowledged: never stored
        writer.start(replay)
        await writer.requeue()  # records an operator put back from quarantine (docs/ingest-log.md)
        if replay:
            # Served once the replay is stored, so that no read misses an acknowledged event.
            await writer.caught_up(limit_seconds=REPLAY_WAIT_SECONDS)
        # This process's readers see every acknowledged event (other processes: once stored).
        storage.read_barrier = writer.caught_up
    servicer = IngestServicer(ingestor, config.max_batch_events, config.max_body_bytes)
    server = runtime.register_grpc(
        ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    async def stop() -> None:
        storage.read_barrier = None
        await ingestor.close(config.shutdown_grace)

    return stop


MODULE = Module("ingest", dependencies=("storage", "redis", "grpc-server"), init=init, target=True)

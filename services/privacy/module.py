"""The privacy service's module (``cartlytics run --target privacy``): PrivacyService (user
erasure) on the process's gRPC server, the erasures a crash left pending finished at start, the
retention job (docs/privacy.md), and the keeper of the people snapshot that visitor figures read
(``common/storage/people_snapshot.py``).

One replica is enough (erasures are rare; the retention job is one per store): in Kubernetes the
``privacy`` Deployment has one. Registered by the app (``cartlytics/modules.py``); the machinery
is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

import asyncio

import structlog

from cartlytics.common.runtime import Module, Runtime, Stop, cancelling

log = structlog.get_logger("cartlytics")


async def init(runtime: Runtime) -> None:
    from cartlytics.common.erasure import Eraser
    from cartlytics.gen.analytics.privacy.v1 import privacy_pb2, privacy_pb2_grpc

    from .servicer import PrivacyServicer

    storage = runtime.require_storage()
    eraser = Eraser(storage, runtime.redis, await runtime.suppression_list())
    runtime.eraser = eraser
    servicer = PrivacyServicer(eraser)
    server = runtime.register_grpc(
        privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name
    )
    privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(servicer, server)


async def start(runtime: Runtime) -> Stop:
    """The keeper: pending erasures finished, then the retention applied, once before serving
    and then every ``ANALYTICS_RETENTION_INTERVAL_SECONDS``."""
    from cartlytics.common.retention import Retention, RetentionPolicy

    config = runtime.config
    eraser = runtime.eraser
    assert eraser is not None
    retention = Retention(
        runtime.require_storage(), RetentionPolicy.parse(config.retention), runtime.redis
    )

    async def tick() -> None:
        resumed = await eraser.resume()
        if resumed:
            log.warning("pending erasures finished", erasures=resumed)
        report = await retention.apply()
        if report.projects or report.months:
            log.info(
                "retention run",
                projects=len(report.projects),
                months=report.months,
                seconds=report.seconds,
            )

    # Before the process reports ready: an erasure a crash cut is complete before anything is
    # served again, and the retention holds from the first request.
    try:
        await tick()
    except Exception as exc:  # storage or Redis down: the keeper tries again
        log.warning("privacy keeper waiting", error=type(exc).__name__, detail=str(exc))

    async def keep() -> None:
        while True:
            await asyncio.sleep(config.retention_interval_seconds)
            try:
                await tick()
            except Exception as exc:  # storage or Redis down: the next tick tries again
                log.warning("privacy keeper waiting", error=type(exc).__name__, detail=str(exc))

    # The people snapshot (storage/people_snapshot.py): built now if due, then kept; readers
    # are exact meanwhile.
    from cartlytics.common.storage import people_snapshot

    snapshot = cancelling(
        asyncio.get_running_loop().create_task(
            people_snapshot.keep(
                runtime.require_storage(),
                config.people_snapshot_seconds,
                config.people_snapshot_changes,
            )
        )
    )
    retention_task = cancelling(asyncio.get_running_loop().create_task(keep()))

    async def stop() -> None:
        await snapshot()
        await retention_task()

    return stop


MODULE = Module(
    "privacy",
    dependencies=("storage", "redis", "grpc-server"),
    init=init,
    start=start,
    target=True,
)

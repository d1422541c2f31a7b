"""Run targets, in the manner of Grafana Loki's ``-target``: one process or many, same code.

``MODULES`` is the one registry the run targets read, as Loki's ``modules.go`` (dskit's
``RegisterModule``): each module names its dependencies and its init/start steps, which return
what stops it. A target (``all``, ``ingest``, ``metrics,gateway``, ...) runs the modules it
needs, dependencies first, and stops them in reverse (``cartlytics.common.runtime``).

Where each module is declared, so that imports go one way (app → services, gateway → common):

- each service declares its own module beside its code (``services.ingest.module``,
  ``services.metrics.module``, ``services.export.module``, ``services.admin.module``,
  ``gateway.module``), against the types of ``cartlytics.common.runtime``; it never imports the
  app or another service;
- this file, the app, declares what every process shares (``storage``, ``redis``, ``auth``,
  ``grpc-server``) and the ``all`` target, and registers them all. Adding a component is one
  module declaration and one line here.

No module is treated apart: the gRPC server serves in its start step, which runs once every
module has initialised (so after every service has registered its servicer), and the REST
gateway declares that it starts after the gRPC server when both run (``after``).
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable
from typing import Any

import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

import gateway.module
import services.admin.module
import services.export.module
import services.ingest.module
import services.metrics.module
import services.privacy.module
from cartlytics.common import catalog
from cartlytics.common.auth import ALL_SCOPES, load_bootstrap_key
from cartlytics.common.config import Config, grpc_message_options
from cartlytics.common.datadir import secure_data_dir
from cartlytics.common.gc_tuning import tune_gc
from cartlytics.common.interceptors import ServiceInterceptor
from cartlytics.common.redis_server import EmbeddedRedis, RedisSupervisor, connect
from cartlytics.common.reflection import enable_reflection
from cartlytics.common.runtime import Module, Registry, Runtime, Stop, cancelling
from cartlytics.common.storage import SchemaBehind, open_storage
from cartlytics.common.storage.repair import repair_rollups

log = structlog.get_logger("cartlytics")


async def init_storage(runtime: Runtime) -> Stop:
    config = runtime.config
    storage = await asyncio.to_thread(
        open_storage, config.clickhouse_url, config.data_dir, config.clickhouse_cluster
    )
    if config.migrate_on_start:
        applied = await asyncio.to_thread(storage.migrate)
    else:
        # Many replicas of one store: `cartlytics migrate` (the Kubernetes Job) applies the
        # schema once; a replica that finds it behind refuses to start, and is restarted.
        applied = []
        pending = await asyncio.to_thread(storage.pending_migrations)
        if pending:
            await asyncio.to_thread(storage.close)
            raise SchemaBehind(pending)
    if storage.backend.interrupted:
        # Before serving: the last process died with the engine, maybe mid-write (repair.py).
        report = await asyncio.to_thread(repair_rollups, storage.backend)
        log.warning(
            "rollups repaired after an unclean stop",
            events=report.window_events,
            orders=report.orders,
            buckets=report.buckets,
            seconds=report.seconds,
        )
    log.info("storage ready", backend=storage.backend_name, migrations_applied=applied)
    runtime.storage = storage

    async def stop() -> None:
        await asyncio.to_thread(storage.close)

    return stop


async def init_redis(runtime: Runtime) -> Stop:
    url = runtime.config.redis_url
    embedded: EmbeddedRedis | None = None
    if not url:
        embedded = EmbeddedRedis(runtime.config.data_dir / "redis")
        await asyncio.to_thread(embedded.start)
        url = embedded.url
    client = runtime.redis = connect(url)
    supervisor: Stop | None = None
    if embedded:
        # Restarted whenever it dies; health says NOT_SERVING meanwhile (docs/faults.md).
        report = functools.partial(_redis_health, runtime)
        watch = RedisSupervisor(embedded, report, backoff=runtime.config.redis_restart_backoff)
        supervisor = cancelling(asyncio.get_running_loop().create_task(watch.run()))

    async def stop() -> None:
        if supervisor:
            await supervisor()
        await client.aclose()
        if embedded:
            await asyncio.to_thread(embedded.stop)

    return stop


async def _redis_health(runtime: Runtime, up: bool) -> None:
    """The embedded Redis died (False) or is back (True): report it through gRPC health, and
    distrust the realtime counters until checked (it may have missed writes)."""
    runtime.redis_serving = up
    if runtime.realtime_recovery is not None:
        runtime.realtime_recovery.unavailable()
        if up:
            runtime.realtime_recovery.wake()
    if runtime.health is not None:
        answer = health_pb2.HealthCheckResponse
        status = answer.SERVING if up else answer.NOT_SERVING
        for name in runtime.health_names:
            await runtime.health.set(name, status)


async def init_auth(runtime: Runtime) -> Stop:
    from cartlytics.common.keys import KeyRefresher, KeyStore

    config = runtime.config
    key, generated = load_bootstrap_key(config.bootstrap_key, config.data_dir)
    runtime.keyring.add(key, config.default_project, ALL_SCOPES, operator=True)
    runtime.bootstrap_key = key
    if generated:
        log.warning("generated a bootstrap API key", path=str(config.data_dir))
    refresher = KeyRefresher(
        KeyStore(runtime.require_storage()), runtime.keyring, config.key_refresh_seconds
    )
    await refresher.refresh()  # stored keys work from the first call
    runtime.key_refresher = refresher
    return cancelling(asyncio.get_running_loop().create_task(refresher.run()))


async def init_grpc_server(runtime: Runtime) -> None:
    """The process's gRPC server, with health: the service modules add their servicers to it."""
    from cartlytics.common.ratelimit import RateLimiter, limits_from_config
    from cartlytics.common.redis_guard import RedisGuard

    limiter = RateLimiter(RedisGuard(runtime.redis), limits_from_config(runtime.config))
    runtime.grpc_interceptors = [ServiceInterceptor(runtime.keyring, limiter)]
    server = aio.server(
        interceptors=runtime.grpc_interceptors, options=grpc_message_options(runtime.config)
    )
    runtime.health = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, server)
    runtime.grpc_server = server


async def start_grpc_server(runtime: Runtime) -> Stop:
    """Serve what the service modules registered (every module is initialised by now)."""
    server, health_servicer, config = runtime.grpc_server, runtime.health, runtime.config
    assert server is not None and health_servicer is not None
    served = [s.full_name for s in catalog.services() if s.full_name in runtime.grpc_services]
    # Reflection v1 and v1alpha (grpcio-reflection has only v1alpha; common/reflection.py).
    enable_reflection([*served, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)
    runtime.grpc_port = server.add_insecure_port(f"{config.grpc_host}:{config.grpc_port}")
    await server.start()
    # NOT_SERVING if the embedded Redis died while starting; its supervisor flips it back.
    runtime.health_names = [*served, ""]
    answer = health_pb2.HealthCheckResponse
    status = answer.SERVING if runtime.redis_serving else answer.NOT_SERVING
    for name in runtime.health_names:
        await health_servicer.set(name, status)
    log.info("grpc serving", address=f"{config.grpc_host}:{runtime.grpc_port}", services=served)
    grace = config.shutdown_grace

    async def stop() -> None:
        # Report NOT_SERVING first so balancers stop sending, then drain in-flight calls with
        # what is left of the one grace period the whole shutdown has (the gateway in front
        # drains first, from the same deadline).
        await health_servicer.enter_graceful_shutdown()
        await server.stop(max(0.5, runtime.time_left(grace)))

    return stop


MODULES = Registry(
    [
        Module(
            "all",
            dependencies=("ingest", "metrics", "export", "admin", "privacy", "gateway"),
            target=True,
        ),
        services.ingest.module.MODULE,
        services.metrics.module.MODULE,
        services.export.module.MODULE,
        services.admin.module.MODULE,
        services.privacy.module.MODULE,
        gateway.module.MODULE,
        Module("storage", init=init_storage),
        Module("redis", init=init_redis),
        # Stored API keys, refreshed from ClickHouse.
        Module("auth", dependencies=("storage",), init=init_auth),
        # redis: the rate-limit buckets every replica shares.
        Module(
            "grpc-server",
            dependencies=("auth", "redis"),
            init=init_grpc_server,
            start=start_grpc_server,
        ),
    ]
)
TARGETS = MODULES.targets


async def run_until_signalled(
    config: Config, targets: list[str], on_ready: Callable[[Runtime], Any]
) -> None:
    runtime = Runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # Before anything writes there: secrets and stored events are owner-only (datadir.py).
        secure_data_dir(config.data_dir)
        if config.prometheus_port:
            start_http_server(config.prometheus_port)
        await runtime.start(MODULES.resolve(targets))
        # What is alive once started lives as long as the process: out of every collection.
        tune_gc(config.gc_gen0_threshold)
        on_ready(runtime)
        await stop.wait()
        log.info("shutting down", grace_seconds=config.shutdown_grace)
    finally:
        await runtime.stop()

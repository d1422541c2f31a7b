"""Run targets, in the manner of Grafana Loki's ``-target``: one process or many, same code.

Each module has an init step and a stop step; ``DEPENDENCIES`` says what each needs. A target
(``all``, ``ingest``, ``metrics,gateway``, ...) starts the modules it needs, dependencies first,
and stops them in reverse. Adding a component is one init method and one line in the map.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server
from redis.asyncio import Redis

from cartlytics.common import catalog
from cartlytics.common.auth import ALL_SCOPES, KeyRing, load_bootstrap_key, load_secret
from cartlytics.common.config import Config
from cartlytics.common.datadir import secure_data_dir
from cartlytics.common.interceptors import ServiceInterceptor
from cartlytics.common.redis_server import EmbeddedRedis, RedisSupervisor, connect
from cartlytics.common.reflection import enable_reflection
from cartlytics.common.storage import SchemaBehind, Storage, open_storage
from cartlytics.common.storage.repair import repair_rollups

if TYPE_CHECKING:
    from cartlytics.common.keys import KeyRefresher
    from cartlytics.common.realtime_rebuild import RealtimeRecovery

log = structlog.get_logger("cartlytics")

DEPENDENCIES: dict[str, list[str]] = {
    "storage": [],
    "redis": [],
    "auth": ["storage"],  # stored API keys, refreshed from ClickHouse
    "grpc-server": ["auth", "redis"],  # redis: the rate-limit buckets every replica shares
    "ingest": ["storage", "redis", "grpc-server"],
    "metrics": ["storage", "redis", "grpc-server"],
    "export": ["storage", "grpc-server"],
    "admin": ["storage", "grpc-server"],  # AdminService: gRPC only, never behind the gateway
    "serve-grpc": [],  # filled in by resolve(): after every service module
    "gateway": [],
    "all": ["ingest", "metrics", "export", "admin", "gateway"],
}
SERVICES = ("ingest", "metrics", "export")
GRPC_MODULES = (*SERVICES, "admin")  # modules that register a gRPC service
TARGETS = ("all", *SERVICES, "admin", "gateway")


def resolve(targets: list[str]) -> list[str]:
    """The modules to start for ``targets``, dependencies first."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in DEPENDENCIES[name]:
            visit(dep)
        order.append(name)

    for target in targets:
        visit(target)
    if "grpc-server" in order:
        # Serve only once every service is registered, and before the gateway calls it.
        order.insert(max(order.index(s) for s in GRPC_MODULES if s in order) + 1, "serve-grpc")
    if "gateway" in order:
        order.remove("gateway")
        order.append("gateway")
    return [m for m in order if m != "all"]


def parse_upstreams(value: str) -> tuple[str, dict[str, str]]:
    """``host:port`` or ``ingest=host:port,metrics=...`` -> (default address, per service)."""
    default, per_service = "", {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, address = part.partition("=")
        if not sep:
            default = part
        elif name in SERVICES and address:
            per_service[name] = address
        else:
            raise ValueError(f"ANALYTICS_GATEWAY_UPSTREAM: cannot read {part!r}")
    return default, per_service


def grpc_message_options(config: Config) -> list[tuple[str, int]]:
    """The largest gRPC message, both ways, for servers and the gateway's channels (gRPC's
    defaults are 4 MB in and unlimited out; a deliberate bound both ways)."""
    size = config.grpc_max_message_bytes
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]


# The gateway finds a restarted service again within a second. gRPC's default reconnect backoff
# grows to 120 s, and while it waits every call fails at once: a service back after a crash
# stayed 503 through the gateway for that long (tests/test_faults.py).
GATEWAY_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Runtime:
    """What the running modules share. Built once per process."""

    config: Config
    storage: Storage | None = None
    redis: Redis | None = None
    embedded_redis: EmbeddedRedis | None = None
    redis_serving: bool = True  # False while the embedded valkey-server is down (restarting)
    realtime_recovery: RealtimeRecovery | None = None  # one per process; see _recovery()
    health_names: list[str] = field(default_factory=list)  # what serve-grpc reports SERVING
    keyring: KeyRing = field(default_factory=KeyRing)
    bootstrap_key: str = ""
    key_refresher: KeyRefresher | None = None
    grpc_server: aio.Server | None = None
    grpc_port: int = 0
    health: health.aio.HealthServicer | None = None
    gateway_runner: web.AppRunner | None = None
    gateway_port: int = 0
    started_services: set[str] = field(default_factory=set)
    stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    stopping_since: float | None = None  # time.monotonic() when the shutdown began

    # Module init steps -------------------------------------------------------------------------
    async def init_storage(self) -> None:
        storage = await asyncio.to_thread(
            open_storage, self.config.clickhouse_url, self.config.data_dir
        )
        if self.config.migrate_on_start:
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
        self.storage = storage

        async def stop() -> None:
            await asyncio.to_thread(storage.close)

        self.stoppers.append(stop)

    async def init_redis(self) -> None:
        url = self.config.redis_url
        if not url:
            embedded = EmbeddedRedis(self.config.data_dir / "redis")
            await asyncio.to_thread(embedded.start)
            self.embedded_redis = embedded
            url = embedded.url
        self.redis = connect(url)
        client, embedded_server = self.redis, self.embedded_redis
        supervisor: asyncio.Task[None] | None = None
        if embedded_server:
            # Restarted whenever it dies; health says NOT_SERVING meanwhile (docs/faults.md).
            watch = RedisSupervisor(
                embedded_server, self._redis_health, backoff=self.config.redis_restart_backoff
            )
            supervisor = asyncio.get_running_loop().create_task(watch.run())

        async def stop() -> None:
            if supervisor:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            await client.aclose()
            if embedded_server:
                await asyncio.to_thread(embedded_server.stop)

        self.stoppers.append(stop)

    async def _redis_health(self, up: bool) -> None:
        """The embedded Redis died (False) or is back (True): report it through gRPC health,
        and distrust the realtime counters until checked (it may have missed writes)."""
        self.redis_serving = up
        if self.realtime_recovery is not None:
            self.realtime_recovery.unavailable()
            if up:
                self.realtime_recovery.wake()
        if self.health is not None:
            answer = health_pb2.HealthCheckResponse
            status = answer.SERVING if up else answer.NOT_SERVING
            for name in self.health_names:
                await self.health.set(name, status)

    def _recovery(self) -> RealtimeRecovery | None:
        """The process's realtime keeper (``realtime_rebuild.py``), started on first use."""
        from cartlytics.common.realtime import RealtimeCounters
        from cartlytics.common.realtime_rebuild import RealtimeRecovery

        if self.realtime_recovery is not None or self.redis is None or self.storage is None:
            return self.realtime_recovery
        recovery = RealtimeRecovery(
            self.redis,
            RealtimeCounters(self.redis),
            self.storage,
            interval=self.config.realtime_check_seconds,
        )
        self.realtime_recovery = recovery
        task = asyncio.get_running_loop().create_task(recovery.run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.stoppers.append(stop)
        return recovery

    async def init_auth(self) -> None:
        from cartlytics.common.keys import KeyRefresher, KeyStore

        key, generated = load_bootstrap_key(self.config.bootstrap_key, self.config.data_dir)
        self.keyring.add(key, self.config.default_project, ALL_SCOPES, operator=True)
        self.bootstrap_key = key
        if generated:
            log.warning("generated a bootstrap API key", path=str(self.config.data_dir))
        assert self.storage is not None
        refresher = KeyRefresher(
            KeyStore(self.storage), self.keyring, self.config.key_refresh_seconds
        )
        await refresher.refresh()  # stored keys work from the first call
        self.key_refresher = refresher
        task = asyncio.get_running_loop().create_task(refresher.run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.stoppers.append(stop)

    async def init_grpc_server(self) -> None:
        from cartlytics.common.ratelimit import RateLimiter, limits_from_config
        from cartlytics.common.redis_guard import RedisGuard

        limiter = RateLimiter(RedisGuard(self.redis), limits_from_config(self.config))
        server = aio.server(
            interceptors=[ServiceInterceptor(self.keyring, limiter)],
            options=grpc_message_options(self.config),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.grpc_server = server

    def _require(self) -> tuple[aio.Server, Storage]:
        assert self.grpc_server is not None and self.storage is not None
        return self.grpc_server, self.storage

    async def init_ingest(self) -> None:
        from cartlytics.common.realtime import RealtimeCounters
        from cartlytics.common.redis_guard import RedisGuard
        from cartlytics.common.storage.group_commit import GroupCommitter
        from cartlytics.gen.analytics.ingest.v1 import ingest_pb2_grpc
        from services.ingest.idempotency import IdempotencyWindow
        from services.ingest.ingestor import TABLES, IngestLimits, Ingestor
        from services.ingest.servicer import IngestServicer

        server, storage = self._require()
        config = self.config
        recovery = self._recovery()
        guard = RedisGuard(self.redis, on_unavailable=recovery.unavailable if recovery else None)
        salt, _ = load_secret(
            config.ip_salt, config.data_dir, "ip_salt", lambda: secrets.token_hex(32)
        )
        committer = GroupCommitter(storage, TABLES)
        ingestor = Ingestor(
            committer,
            IdempotencyWindow(guard, config.dedup_window_seconds),
            RealtimeCounters(self.redis) if self.redis is not None else None,
            guard,
            ip_salt=salt.encode(),
            limits=IngestLimits(max_event_bytes=config.max_event_bytes, ip_mode=config.ip_mode),
            recovery=recovery,
        )
        servicer = IngestServicer(ingestor, config.max_batch_events, config.max_body_bytes)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        self.stoppers.append(committer.close)

    async def init_metrics(self) -> None:
        from cartlytics.common.realtime import RealtimeCounters
        from cartlytics.common.redis_guard import RedisGuard
        from cartlytics.gen.analytics.metrics.v1 import metrics_pb2_grpc
        from services.metrics.customers import CustomersReader
        from services.metrics.funnel import FunnelReader
        from services.metrics.products import ProductsReader
        from services.metrics.query import QueryRunner
        from services.metrics.realtime import RealtimeReader
        from services.metrics.sales import SalesReader
        from services.metrics.servicer import MetricsServicer, Readers

        server, storage = self._require()
        currency = self.config.default_currency
        counters = RealtimeCounters(self.redis) if self.redis is not None else None
        recovery = self._recovery()
        guard = RedisGuard(self.redis, on_unavailable=recovery.unavailable if recovery else None)
        readers = Readers(
            sales=SalesReader(storage, currency),
            products=ProductsReader(storage, currency),
            customers=CustomersReader(storage, currency),
            funnel=FunnelReader(storage, currency),
            realtime=RealtimeReader(storage, counters, guard, currency, recovery=recovery),
            query=QueryRunner(storage, currency),
        )
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(readers), server)

    async def init_export(self) -> None:
        from cartlytics.gen.analytics.export.v1 import export_pb2_grpc
        from services.export.exporter import Exporter
        from services.export.servicer import ExportServicer
        from services.export.slots import ExportLimits, ExportSlots

        server, storage = self._require()
        limits = ExportLimits(self.config.export_max_concurrent, self.config.export_max_per_key)
        servicer = ExportServicer(Exporter(storage), ExportSlots(limits))
        export_pb2_grpc.add_ExportServiceServicer_to_server(servicer, server)

    async def init_admin(self) -> None:
        from cartlytics.gen.analytics.admin.v1 import admin_pb2_grpc
        from services.admin.manager import KeyManager
        from services.admin.servicer import AdminServicer

        server, _ = self._require()
        assert self.key_refresher is not None
        servicer = AdminServicer(KeyManager(self.key_refresher))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)

    async def init_serve_grpc(self) -> None:
        server, health_servicer = self.grpc_server, self.health
        assert server is not None and health_servicer is not None
        served = [
            svc.full_name
            for svc in catalog.services()
            if svc.full_name.split(".")[1] in self.started_services
        ]
        # Reflection v1 and v1alpha (grpcio-reflection has only v1alpha; common/reflection.py).
        enable_reflection(
            [*served, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
        )
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        self.grpc_port = server.add_insecure_port(address)
        await server.start()
        # NOT_SERVING if the embedded Redis died while starting; its supervisor flips it back.
        self.health_names = [*served, ""]
        answer = health_pb2.HealthCheckResponse
        status = answer.SERVING if self.redis_serving else answer.NOT_SERVING
        for name in self.health_names:
            await health_servicer.set(name, status)
        log.info(
            "grpc serving", address=f"{self.config.grpc_host}:{self.grpc_port}", services=served
        )
        grace = self.config.shutdown_grace

        async def stop() -> None:
            # Report NOT_SERVING first so balancers stop sending, then drain in-flight calls
            # with what is left of the one grace period the whole shutdown has (the gateway
            # in front drains first, from the same deadline).
            await health_servicer.enter_graceful_shutdown()
            await server.stop(max(0.5, self.time_left(grace)))

        self.stoppers.append(stop)

    async def init_gateway(self) -> None:
        from gateway.cors import CorsPolicy
        from gateway.server import GatewayLimits, GatewayRunner, create_app

        default, per_service = parse_upstreams(self.config.gateway_upstream)
        if not default:
            if not self.grpc_port and len(per_service) < len(SERVICES):
                raise ValueError("the gateway target alone needs ANALYTICS_GATEWAY_UPSTREAM")
            default = f"127.0.0.1:{self.grpc_port}" if self.grpc_port else per_service["ingest"]
        options = [*grpc_message_options(self.config), *GATEWAY_RECONNECT_OPTIONS]
        channel = aio.insecure_channel(default, options=options)
        upstreams = {
            svc.full_name: aio.insecure_channel(
                per_service[svc.full_name.split(".")[1]], options=options
            )
            for svc in catalog.services()
            if svc.full_name.split(".")[1] in per_service
        }
        config = self.config
        limits = GatewayLimits(
            max_body_bytes=config.max_body_bytes,
            max_url_bytes=config.http_max_url_bytes,
            max_query_params=config.http_max_query_params,
            max_header_bytes=config.http_max_header_bytes,
            max_headers=config.http_max_headers,
            header_timeout=config.http_header_timeout,
            body_timeout=config.http_body_timeout,
        )
        app = create_app(
            channel,
            upstreams=upstreams,
            limits=limits,
            cors=CorsPolicy.parse(config.cors_origins),
        )
        channels = [channel, *upstreams.values()]
        # The gateway stops first: it waits for its requests in flight up to the grace period
        # (aiohttp's default is 60 s); the gRPC server then drains with what is left of it.
        runner = GatewayRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.shutdown_grace,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.http_host, self.config.http_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.gateway_port = sockets[0].getsockname()[1] if sockets else self.config.http_port
        self.gateway_runner = runner
        log.info("rest gateway serving", address=f"{self.config.http_host}:{self.gateway_port}")

        async def stop() -> None:
            await runner.cleanup()
            for open_channel in channels:
                await open_channel.close()

        self.stoppers.append(stop)

    # Lifecycle ---------------------------------------------------------------------------------

    async def start(self, targets: list[str]) -> None:
        # Before anything writes there: secrets and stored events are owner-only (datadir.py).
        secure_data_dir(self.config.data_dir)
        if self.config.prometheus_port:
            start_http_server(self.config.prometheus_port)
        for module in resolve(targets):
            log.debug("starting module", module=module)
            await getattr(self, "init_" + module.replace("-", "_"))()
            if module in GRPC_MODULES:
                self.started_services.add(module)

    def time_left(self, grace: float) -> float:
        """Seconds left of ``grace`` since the shutdown began (all of it before)."""
        if self.stopping_since is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.stopping_since))

    async def stop(self) -> None:
        self.stopping_since = time.monotonic()
        while self.stoppers:
            stopper = self.stoppers.pop()
            try:
                await stopper()
            except Exception:
                log.exception("error while stopping")


async def run_until_signalled(
    config: Config, targets: list[str], on_ready: Callable[[Runtime], Any]
) -> None:
    runtime = Runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runtime.start(targets)
        on_ready(runtime)
        await stop.wait()
        log.info("shutting down", grace_seconds=config.shutdown_grace)
    finally:
        await runtime.stop()

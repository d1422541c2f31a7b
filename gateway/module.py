"""The REST gateway's module (``cartlytics run --target gateway``): the in-process REST/JSON
gateway, in front of this process's gRPC server or of the services' own processes
(``ANALYTICS_GATEWAY_UPSTREAM``), one or several replicas of each (``open_channel``).

It depends on nothing: run alone it needs the upstream addresses; run beside services it starts
after the process's gRPC server (``after``) and calls it, and at shutdown stops first, draining
its requests in flight. Registered by the app (``cartlytics/modules.py``); the machinery is
``cartlytics.common.runtime``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from cartlytics.common.config import grpc_message_options
from cartlytics.common.runtime import Module, Runtime, Stop
from cartlytics.common.upstreams import SERVICES, grpc_target, parse_upstreams

if TYPE_CHECKING:
    from grpc import aio

log = structlog.get_logger("cartlytics")

# The services behind the gateway (admin is gRPC only).
ROUTED = SERVICES

# The gateway finds a restarted service again within a second. gRPC's default reconnect backoff
# grows to 120 s, and while it waits every call fails at once: a service back after a crash
# stayed 503 through the gateway for that long (tests/test_faults.py).
GATEWAY_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# A service's replicas: gRPC's round_robin sends each call to the next replica that is connected
# and whose health service says SERVING (a replica stopping says NOT_SERVING first, so it gets no
# new call while it drains). A replica that refuses connections is skipped; a call gRPC knows
# never reached the service (a stream refused, a GOAWAY before it was read) is retried on another
# (gRPC's transparent retry); one that may have reached it is never sent again: it fails (503).
# Only for lists: one address keeps gRPC's default, so that a lone process whose embedded Redis
# died (NOT_SERVING, yet serving) still gets its calls.
BALANCED = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def open_channel(addresses: Sequence[str], options: list[tuple[str, int | str]]) -> aio.Channel:
    """One channel to a service: its one address, or its replicas balanced by gRPC."""
    from grpc import aio

    if len(addresses) > 1:
        options = [*options, ("grpc.service_config", BALANCED)]
    return aio.insecure_channel(grpc_target(addresses), options=options)


async def start(runtime: Runtime) -> Stop:
    from aiohttp import web

    from cartlytics.common import catalog

    from .cors import CorsPolicy
    from .server import GatewayLimits, GatewayRunner, create_app

    config = runtime.config
    parsed = parse_upstreams(config.gateway_upstream)  # checked at start by Config.from_env
    default, per_service = parsed.default, parsed.per_service
    if not default:
        if not runtime.grpc_port and len(per_service) < len(ROUTED):
            raise ValueError("the gateway target alone needs ANALYTICS_GATEWAY_UPSTREAM")
        default = (
            (f"127.0.0.1:{runtime.grpc_port}",) if runtime.grpc_port else per_service["ingest"]
        )
    options: list[tuple[str, int | str]] = [
        *grpc_message_options(config),
        *GATEWAY_RECONNECT_OPTIONS,
    ]
    # One channel per list of addresses: services served by the same processes share it.
    channels: dict[tuple[str, ...], aio.Channel] = {}

    def channel_to(addresses: tuple[str, ...]) -> aio.Channel:
        if addresses not in channels:
            channels[addresses] = open_channel(addresses, options)
        return channels[addresses]

    channel = channel_to(default)
    upstreams = {
        svc.full_name: channel_to(per_service[svc.full_name.split(".")[1]])
        for svc in catalog.services()
        if svc.full_name.split(".")[1] in per_service
    }
    limits = GatewayLimits(
        max_body_bytes=config.max_body_bytes,
        max_url_bytes=config.http_max_url_bytes,
        max_query_params=config.http_max_query_params,
        max_header_bytes=config.http_max_header_bytes,
        max_headers=config.http_max_headers,
        header_timeout=config.http_header_timeout,
        body_timeout=config.http_body_timeout,
    )
    # Served by this process and not sent elsewhere: called without the gRPC hop.
    in_process = config.gateway_local_calls and runtime.grpc_port and not parsed.default
    local = runtime.local_calls(excluded=upstreams) if in_process else None
    app = create_app(
        channel,
        upstreams=upstreams,
        limits=limits,
        cors=CorsPolicy.parse(config.cors_origins),
        local=local,
    )
    # The gateway stops first: it waits for its requests in flight up to the grace period
    # (aiohttp's default is 60 s); the gRPC server then drains with what is left of it.
    runner = GatewayRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace
    )

    async def stop() -> None:
        await runner.cleanup()
        for each in channels.values():
            await each.close()

    try:
        await runner.setup()
        await web.TCPSite(runner, config.http_host, config.http_port).start()
    except BaseException:
        await stop()
        raise
    addresses = runner.addresses  # (host, port, ...) of each bound socket
    runtime.gateway_port = int(addresses[0][1]) if addresses else config.http_port
    log.info("rest gateway serving", address=f"{config.http_host}:{runtime.gateway_port}")
    return stop


MODULE = Module("gateway", after=("grpc-server",), start=start, target=True)

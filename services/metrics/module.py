"""The metrics service's module (``cartlytics run --target metrics``): MetricsService on the
process's gRPC server, reading ClickHouse and the realtime counters in Redis.

Registered by the app (``cartlytics/modules.py``); the machinery is ``cartlytics.common.runtime``.
"""

from __future__ import annotations

from cartlytics.common.runtime import Module, Runtime, Stop


async def init(runtime: Runtime) -> Stop | None:
    from cartlytics.common.realtime import RealtimeCounters
    from cartlytics.common.redis_guard import RedisGuard
    from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc

    from .customers import CustomersReader
    from .funnel import FunnelReader
    from .products import ProductsReader
    from .query import QueryRunner
    from .realtime import RealtimeReader
    from .sales import SalesReader
    from .servicer import MetricsServicer, Readers

    storage = runtime.require_storage()
    currency = runtime.config.default_currency
    counters = RealtimeCounters(runtime.redis) if runtime.redis is not None else None
    recovery = runtime.recovery()
    guard = RedisGuard(runtime.redis, on_unavailable=recovery.unavailable if recovery else None)
    readers = Readers(
        sales=SalesReader(storage, currency),
        products=ProductsReader(storage, currency),
        customers=CustomersReader(storage, currency),
        funnel=FunnelReader(storage, currency),
        realtime=RealtimeReader(storage, counters, guard, currency, recovery=recovery),
        query=QueryRunner(storage, currency),
    )
    server = runtime.register_grpc(
        metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name
    )
    metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(readers), server)
    return None


MODULE = Module("metrics", dependencies=("storage", "redis", "grpc-server"), init=init, target=True)

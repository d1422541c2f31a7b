"""Prometheus metrics of the REST gateway.

Labels are bounded on purpose: `route` is the annotation's template (`GET /analytics/sales`, or
`unmatched`), never the raw path, so a scanner cannot blow up the series count.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["REQUESTS", "REQUEST_LATENCY", "UNMATCHED", "observe"]

UNMATCHED = "unmatched"

REQUESTS = Counter(
    "cartlytics_gateway_requests_total",
    "REST requests answered by the gateway, by route, gRPC method and gRPC status code.",
    ["route", "grpc_method", "code"],
)
REQUEST_LATENCY = Histogram(
    "cartlytics_gateway_request_duration_seconds",
    "Time from a REST request's arrival to the end of its response (whole stream for exports).",
    ["route", "grpc_method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def observe(route: str, grpc_method: str, code: str, seconds: float) -> None:
    """Count one answered request and record how long it took."""
    REQUESTS.labels(route, grpc_method, code).inc()
    REQUEST_LATENCY.labels(route, grpc_method, code).observe(seconds)

"""The REST/JSON gateway that runs in-process (embedded mode).

Production puts Envoy's grpc_json_transcoder (`gateway/envoy.yaml`) in front of the services;
this package answers the same REST API the same way, from the same `google.api.http`
annotations, so the embedded mode and the tests exercise the real contract.
"""

from .server import create_app
from .transcoding import Route, RouteMatch, RouteTable, load_routes, routes_from_descriptor_set

__all__ = [
    "Route",
    "RouteMatch",
    "RouteTable",
    "create_app",
    "load_routes",
    "routes_from_descriptor_set",
]

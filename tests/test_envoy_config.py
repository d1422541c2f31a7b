"""Offline checks of the production Envoy bootstrap, gateway/envoy.yaml.

No Envoy binary exists here, so the file is checked the way Envoy itself reads it: YAML to JSON,
JSON into the v3 API messages (xds-protos), every typed_config unpacked from its Any. Then:

- the protoc-gen-validate rules Envoy enforces at start (required fields, minimum counts, positive
  durations...) hold, and no deprecated field is used;
- the transcoder serves exactly the services of the descriptor set the services are built from,
  with the options the REST API relies on;
- every method with a google.api.http rule reaches a route, and every route an HTTP/2 cluster;
- the filters are in an order that works (see the comment above http_filters in envoy.yaml), and
  the Lua filter's 201 rewrite does what it says (run in a real Lua when lupa is installed).

The last tests feed deliberately broken copies of the file to the same checks, so a check that
could never fail is itself caught.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

# Every module whose messages appear in a typed_config is imported so that json_format can resolve
# the Any type URLs (envoy.yaml's "@type"). Several are used only for that side effect.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.api import annotations_pb2
from google.protobuf import any_pb2, descriptor, descriptor_pb2, json_format, symbol_database
from google.protobuf.message import Message
from validate import validate_pb2

from cartlytics.common.config import SETTINGS
from cartlytics.gen.analytics.options.v1 import options_pb2

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "gateway" / "envoy.yaml"
DESCRIPTOR_SET = ROOT / "src" / "cartlytics" / "gen" / "analytics.pb"
DESCRIPTOR_PATH_IN_CONTAINER = "/etc/envoy/analytics.pb"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

RawConfig = dict[str, Any]
M = TypeVar("M", bound=Message)


# ---------------------------------------------------------------------------------------------
# The API, as the descriptor set describes it


@dataclass(frozen=True)
class Api:
    """What the gateway has to serve, read from src/cartlytics/gen/analytics.pb."""

    files: tuple[descriptor_pb2.FileDescriptorProto, ...]
    # The public services: those with a google.api.http rule, which Envoy transcodes and routes.
    services: frozenset[str]
    # gRPC paths (`/<package>.<Service>/<Method>`) of the methods with a google.api.http rule.
    http_methods: tuple[str, ...]
    # gRPC path -> (analytics.options.v1.http_success_code), for the methods that declare one.
    success_codes: dict[str, int]
    # Services with no google.api.http rule at all (AdminService): gRPC only, inside the
    # cluster; Envoy must neither transcode nor route them.
    grpc_only: frozenset[str] = frozenset()


def load_api(path: Path = DESCRIPTOR_SET) -> Api:
    # annotations_pb2 and options_pb2 are imported above, so the google.api.http and
    # analytics.options.v1 extensions in the method options parse as extensions.
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    services: set[str] = set()
    http_methods: list[str] = []
    success_codes: dict[str, int] = {}
    grpc_only: set[str] = set()
    for file in fds.file:
        if not file.package.startswith("analytics."):
            continue
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            bound = any(m.options.HasExtension(annotations_pb2.http) for m in service.method)
            (services if bound else grpc_only).add(full_name)
            for method in service.method:
                grpc_path = f"/{full_name}/{method.name}"
                if method.options.HasExtension(annotations_pb2.http):
                    http_methods.append(grpc_path)
                code_option = options_pb2.http_success_code
                if method.options.HasExtension(code_option):  # type: ignore[arg-type]
                    success_codes[grpc_path] = method.options.Extensions[code_option]  # type: ignore[index]
    return Api(
        tuple(fds.file),
        frozenset(services),
        tuple(http_methods),
        success_codes,
        frozenset(grpc_only),
    )


API = load_api()


# ---------------------------------------------------------------------------------------------
# The gateway, as Envoy would read it


@dataclass(frozen=True)
class Gateway:
    bootstrap: bootstrap_pb2.Bootstrap
    hcm: http_connection_manager_pb2.HttpConnectionManager
    filters: tuple[Message, ...]  # the HTTP filters' unpacked typed_configs, in order

    @property
    def routes(self) -> list[Any]:
        return [r for vh in self.hcm.route_config.virtual_hosts for r in vh.routes]

    @property
    def clusters(self) -> dict[str, cluster_pb2.Cluster]:
        return {c.name: c for c in self.bootstrap.static_resources.clusters}

    def only(self, kind: type[M]) -> M:
        found = [f for f in self.filters if isinstance(f, kind)]
        assert len(found) == 1, f"expected one {kind.DESCRIPTOR.full_name} filter, got {len(found)}"
        return found[0]

    @property
    def transcoder(self) -> transcoder_pb2.GrpcJsonTranscoder:
        return self.only(transcoder_pb2.GrpcJsonTranscoder)

    @property
    def lua(self) -> lua_pb2.Lua:
        return self.only(lua_pb2.Lua)


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside an Any, of the class its type URL names."""
    name = packed.type_url.rpartition("/")[2]
    cls = symbol_database.Default().GetSymbol(name)
    inner: Message = cls()
    assert packed.Unpack(inner), f"cannot unpack {packed.type_url}"
    return inner


def load_raw(path: Path = ENVOY_YAML) -> RawConfig:
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict)
    return raw


def load_gateway(raw: RawConfig) -> Gateway:
    # Through JSON, as Envoy does with YAML: a YAML-only construct (a date, a non-string key) fails.
    bootstrap = json_format.ParseDict(json.loads(json.dumps(raw)), bootstrap_pb2.Bootstrap())
    listeners = bootstrap.static_resources.listeners
    assert len(listeners) == 1, "one listener"
    chains = listeners[0].filter_chains
    assert len(chains) == 1 and len(chains[0].filters) == 1, "one chain with one network filter"
    hcm = unpack(chains[0].filters[0].typed_config)
    assert isinstance(hcm, http_connection_manager_pb2.HttpConnectionManager)
    filters = tuple(unpack(f.typed_config) for f in hcm.http_filters)
    return Gateway(bootstrap, hcm, filters)


# ---------------------------------------------------------------------------------------------
# protoc-gen-validate rules, the subset that Envoy's config uses


_NUMERIC_RULES = ("float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64")
_WRAPPERS = {
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
}


def _is_set(msg: Message, field: descriptor.FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(msg, field.name)) > 0
    if field.has_presence:
        return msg.HasField(field.name)
    return bool(getattr(msg, field.name) != field.default_value)


def _bound_errors(value: Any, rules: Any, where: str) -> Iterator[str]:
    checks: list[tuple[str, Callable[[Any, Any], bool], str]] = [
        ("gt", lambda v, b: v > b, ">"),
        ("gte", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("lte", lambda v, b: v <= b, "<="),
    ]
    for name, holds, symbol in checks:
        if rules.HasField(name):
            bound = getattr(rules, name)
            if hasattr(bound, "ToTimedelta"):
                bound = bound.ToTimedelta()
            if not holds(value, bound):
                yield f"{where}: {value} must be {symbol} {bound}"


def _field_rule_errors(
    msg: Message, field: descriptor.FieldDescriptor, where: str
) -> Iterator[str]:
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.rules):
        return
    oneof = field.containing_oneof
    if oneof is not None and msg.WhichOneof(oneof.name) != field.name:
        return  # PGV checks only the member of a oneof that is set
    rules = options.Extensions[validate_pb2.rules]
    is_set = _is_set(msg, field)
    kind = rules.WhichOneof("type")
    if rules.message.required and not is_set:
        yield f"{where}: required"
    if kind == "repeated" and len(getattr(msg, field.name)) < rules.repeated.min_items:
        yield f"{where}: at least {rules.repeated.min_items} items"
    if kind in ("any", "duration") and getattr(rules, kind).required and not is_set:
        yield f"{where}: required"
    if not is_set or field.is_repeated:
        return
    value = getattr(msg, field.name)
    if kind == "string":
        if len(value) < rules.string.min_len:
            yield f"{where}: at least {rules.string.min_len} characters"
        if rules.string.max_len and len(value) > rules.string.max_len:
            yield f"{where}: at most {rules.string.max_len} characters"
    elif kind in _NUMERIC_RULES:
        if field.message_type is not None and field.message_type.full_name in _WRAPPERS:
            value = value.value
        yield from _bound_errors(value, getattr(rules, kind), where)
    elif kind == "duration":
        yield from _bound_errors(value.ToTimedelta(), rules.duration, where)
    elif kind == "enum" and rules.enum.defined_only:
        enum = field.enum_type
        if enum is None or enum.values_by_number.get(value) is None:
            yield f"{where}: {value} is not a defined enum value"


def validation_errors(msg: Message, where: str = "") -> Iterator[str]:
    """What Envoy's start-up validation would refuse in msg (and deprecated fields it warns on)."""
    if isinstance(msg, any_pb2.Any):
        yield from validation_errors(unpack(msg), f"{where}<{msg.type_url.rpartition('/')[2]}>")
        return
    for oneof in msg.DESCRIPTOR.oneofs:
        options = oneof.GetOptions()
        required = (
            options.HasExtension(validate_pb2.required)
            and options.Extensions[validate_pb2.required]
        )
        if required and msg.WhichOneof(oneof.name) is None:
            yield f"{where}: one of {oneof.name} is required"
    for field in msg.DESCRIPTOR.fields:
        here = f"{where}.{field.name}"
        yield from _field_rule_errors(msg, field, here)  # type: ignore[arg-type]
        if not _is_set(msg, field):  # type: ignore[arg-type]
            continue
        if field.GetOptions().deprecated:
            yield f"{here}: deprecated"
        if field.enum_type is not None and not field.is_repeated:
            value = field.enum_type.values_by_number.get(getattr(msg, field.name))
            if value is not None and value.GetOptions().deprecated:
                yield f"{here}: enum value {value.name} is deprecated"
        if field.message_type is None:
            continue
        value = getattr(msg, field.name)
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    yield from validation_errors(item, f"{here}[{key}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from validation_errors(item, f"{here}[{index}]")
        else:
            yield from validation_errors(value, here)


# ---------------------------------------------------------------------------------------------
# The checks. Each raises AssertionError; the tests below run them on envoy.yaml and on broken
# copies of it.


def check_envoy_accepts(gw: Gateway) -> None:
    errors = list(validation_errors(gw.bootstrap))
    assert not errors, "\n".join(errors)
    # Envoy refuses duplicate cluster names and routes to clusters that do not exist.
    names = [c.name for c in gw.bootstrap.static_resources.clusters]
    assert len(names) == len(set(names)), f"duplicate clusters: {names}"
    for route in gw.routes:
        if route.HasField("route"):
            assert route.route.cluster in gw.clusters, f"{route.name}: no cluster"


def check_transcoder_services(gw: Gateway, api: Api) -> None:
    configured = set(gw.transcoder.services)
    missing, unknown = sorted(api.services - configured), sorted(configured - api.services)
    assert not missing and not unknown, f"missing: {missing}, unknown: {unknown}"
    assert len(gw.transcoder.services) == len(set(gw.transcoder.services)), "duplicate service"


def check_transcoder_options(gw: Gateway) -> None:
    t = gw.transcoder
    assert t.proto_descriptor == DESCRIPTOR_PATH_IN_CONTAINER
    assert t.convert_grpc_status
    assert not t.auto_mapping
    assert t.request_validation_options.reject_unknown_method
    assert t.request_validation_options.reject_unknown_query_parameters
    assert not t.ignore_unknown_query_parameters
    assert list(t.ignored_query_parameters) == []
    assert t.print_options.always_print_primitive_fields
    assert not t.print_options.always_print_enums_as_ints
    assert not t.print_options.preserve_proto_field_names
    assert not t.print_options.add_whitespace
    assert not t.match_incoming_request_route, "routes match the gRPC path, not the REST one"


def check_request_size_limit(gw: Gateway) -> None:
    t = gw.transcoder
    assert t.HasField("max_request_body_size"), "no request body limit"
    # What the in-process gateway refuses by default, Envoy refuses too (413 before any upstream).
    assert t.max_request_body_size.value == int(SETTINGS["max_body_bytes"].default)


def check_filter_order(gw: Gateway) -> None:
    kinds = [type(f) for f in gw.filters]
    assert kinds[-1] is router_pb2.Router, "the router must be the last HTTP filter"
    assert kinds.count(router_pb2.Router) == 1
    transcoder = kinds.index(transcoder_pb2.GrpcJsonTranscoder)
    lua = kinds.index(lua_pb2.Lua)
    assert transcoder < len(kinds) - 1, "the transcoder must run before the router"
    # Responses pass the filters in reverse: the Lua filter must see them after the transcoder
    # has set :status from grpc-status, or the transcoder overwrites its 201 with 200.
    assert lua < transcoder, "the Lua filter must be listed before the transcoder"


def lua_source(gw: Gateway) -> str:
    lua = gw.lua
    return str(lua.default_source_code.inline_string or lua.inline_code)


def check_lua(gw: Gateway) -> None:
    code = lua_source(gw)
    assert "envoy_on_response" in code
    assert '"x-http-code"' in code
    assert '":status"' in code


def route_for(gw: Gateway, grpc_path: str) -> Any:
    """The first route whose prefix matches grpc_path, as Envoy picks it (None if none)."""
    for route in gw.routes:
        if grpc_path.startswith(route.match.prefix):
            return route
    return None


def check_service_routes(gw: Gateway, api: Api) -> None:
    for service in sorted(api.services):
        prefix = f"/{service}/"
        routes = [r for r in gw.routes if r.match.prefix == prefix]
        assert len(routes) == 1, f"{service}: expected one route with prefix {prefix}"
        route = routes[0]
        assert route.HasField("route"), f"{service}: route does not forward"
        assert route.match.HasField("grpc"), f"{service}: route must match gRPC requests only"
        cluster = gw.clusters.get(route.route.cluster)
        assert cluster is not None, f"{service}: cluster {route.route.cluster!r} does not exist"
        options = cluster.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS_KEY)
        assert options is not None, f"{cluster.name}: no {HTTP_PROTOCOL_OPTIONS_KEY}"
        http = unpack(options)
        assert isinstance(http, http_protocol_options_pb2.HttpProtocolOptions)
        assert http.explicit_http_config.HasField("http2_protocol_options"), (
            f"{cluster.name}: gRPC needs HTTP/2 upstream"
        )


def check_methods_reachable(gw: Gateway, api: Api) -> None:
    assert api.http_methods, "the descriptor set has no google.api.http rule"
    for grpc_path in api.http_methods:
        service = grpc_path.split("/")[1]
        assert service in gw.transcoder.services, f"{grpc_path}: service not transcoded"
        route = route_for(gw, grpc_path)
        assert route is not None and route.HasField("route"), f"{grpc_path}: no route forwards it"
        assert route.match.prefix == f"/{service}/", f"{grpc_path}: caught by {route.name}"


def check_grpc_only_unreachable(gw: Gateway, api: Api) -> None:
    assert api.grpc_only, "the descriptor set has a gRPC-only service (AdminService)"
    for service in sorted(api.grpc_only):
        assert service not in gw.transcoder.services, f"{service}: transcoded by the gateway"
        route = route_for(gw, f"/{service}/CreateKey")
        assert route is not None and route.HasField("direct_response"), (
            f"{service}: the public gateway forwards it ({route.name if route else 'no route'})"
        )


def check_clusters(gw: Gateway) -> None:
    for cluster in gw.clusters.values():
        assert cluster.type == cluster_pb2.Cluster.STRICT_DNS, cluster.name
        assert cluster.connect_timeout.ToTimedelta().total_seconds() == 1, cluster.name
        assert len(cluster.health_checks) == 1, f"{cluster.name}: one health check"
        assert cluster.health_checks[0].HasField("grpc_health_check"), cluster.name
        (endpoint,) = [e for g in cluster.load_assignment.endpoints for e in g.lb_endpoints]
        address = endpoint.endpoint.address.socket_address
        assert (address.address, address.port_value) == (cluster.name, 50051), cluster.name


def check_timeouts(gw: Gateway, api: Api) -> None:
    for service in sorted(api.services):
        route = route_for(gw, f"/{service}/")
        assert route is not None and route.route.HasField("timeout"), f"{service}: no timeout"
        seconds = route.route.timeout.ToTimedelta().total_seconds()
        if service == "analytics.export.v1.ExportService":
            assert seconds == 0, "exports stream: their route timeout must be disabled (0s)"
        elif service == "analytics.privacy.v1.PrivacyService":
            assert seconds == 600, "an erasure waits for its mutations (docs/privacy.md)"
        else:
            assert seconds == 30, f"{service}: route timeout {seconds}s"


def check_catch_all(gw: Gateway) -> None:
    last = gw.routes[-1]
    assert last.match.prefix == "/", "the last route must catch every other path"
    assert last.direct_response.status == 404
    body = json.loads(last.direct_response.body.inline_string)
    assert body["code"] == 5 and body["message"]


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def raw() -> RawConfig:
    return load_raw()


@pytest.fixture(scope="module")
def gw(raw: RawConfig) -> Gateway:
    return load_gateway(raw)


def test_descriptor_set_has_the_four_services() -> None:
    assert API.services == {
        "analytics.ingest.v1.IngestService",
        "analytics.metrics.v1.MetricsService",
        "analytics.export.v1.ExportService",
        "analytics.privacy.v1.PrivacyService",
    }
    assert API.grpc_only == {"analytics.admin.v1.AdminService"}


def test_admin_service_is_not_behind_the_public_gateway(gw: Gateway) -> None:
    check_grpc_only_unreachable(gw, API)


def test_envoy_accepts_the_config(gw: Gateway) -> None:
    check_envoy_accepts(gw)


def test_listener_and_admin(gw: Gateway) -> None:
    listener = gw.bootstrap.static_resources.listeners[0].address.socket_address
    assert (listener.address, listener.port_value) == ("0.0.0.0", 8080)
    admin = gw.bootstrap.admin.address.socket_address
    assert (admin.address, admin.port_value) == ("127.0.0.1", 9901), "admin must stay on loopback"


def test_connection_manager_limits(gw: Gateway) -> None:
    assert gw.hcm.max_request_headers_kb.value == 60
    action = gw.hcm.common_http_protocol_options.headers_with_underscores_action
    assert action == gw.hcm.common_http_protocol_options.REJECT_REQUEST


def test_transcoder_serves_exactly_the_api_services(gw: Gateway) -> None:
    check_transcoder_services(gw, API)


def test_transcoder_options(gw: Gateway) -> None:
    check_transcoder_options(gw)


def test_request_body_size_is_limited(gw: Gateway) -> None:
    check_request_size_limit(gw)


def test_filter_order(gw: Gateway) -> None:
    check_filter_order(gw)


def test_lua_rewrites_status_from_x_http_code(gw: Gateway) -> None:
    check_lua(gw)


def test_every_service_routes_to_an_http2_cluster(gw: Gateway) -> None:
    check_service_routes(gw, API)


@pytest.mark.parametrize("grpc_path", API.http_methods)
def test_every_http_annotated_method_is_reachable(gw: Gateway, grpc_path: str) -> None:
    check_methods_reachable(gw, Api(API.files, API.services, (grpc_path,), {}))


def test_clusters(gw: Gateway) -> None:
    check_clusters(gw)


def test_route_timeouts(gw: Gateway) -> None:
    check_timeouts(gw, API)


def test_unknown_paths_get_a_json_404(gw: Gateway) -> None:
    check_catch_all(gw)


def test_declared_success_codes_are_ones_the_lua_filter_applies() -> None:
    assert API.success_codes, "TrackEvent declares 201"
    for grpc_path, code in API.success_codes.items():
        assert 200 <= code <= 299, f"{grpc_path}: the Lua filter applies 2xx codes only"
        assert grpc_path in API.http_methods, f"{grpc_path}: a success code without a REST path"


def test_raw_json_bodies_are_http_bodies_envoy_passes_through() -> None:
    """A method whose REST body the service parses itself (per-event leniency: Envoy's transcoder
    would refuse a whole batch for one unknown field) binds `body:` to a singular
    google.api.HttpBody field: Envoy then passes the bytes and Content-Type on untouched
    ("sending arbitrary content"), for any Content-Type."""
    messages = {f".{f.package}.{m.name}": m for f in API.files for m in f.message_type if f.package}
    raw_json: list[str] = []
    for file in API.files:
        for service in file.service:
            for method in service.method:
                schema: str = method.options.Extensions[options_pb2.json_body_schema]  # type: ignore[index]
                if not schema:
                    continue
                raw_json.append(method.name)
                rule = method.options.Extensions[annotations_pb2.http]
                request = messages[method.input_type]
                (body,) = [f for f in request.field if f.name == rule.body]
                assert body.type_name == ".google.api.HttpBody", method.name
                assert body.label != body.LABEL_REPEATED, method.name
                assert f".{schema}" in messages, f"{method.name}: {schema} is not in the set"
    assert sorted(raw_json) == ["BatchTrackEventsJson", "TrackEventJson"]


def test_every_response_body_is_an_http_body_as_envoy_requires() -> None:
    """Envoy's transcoder refuses a `response_body:` that names anything but a singular
    google.api.HttpBody field ("Setting response_body is not supported yet for non-HttpBody
    fields", envoyproxy/envoy#11136, closed unbuilt): the whole filter config would fail to load.
    A method answering raw JSON names the message its answer is the JSON form of."""
    messages = {f".{f.package}.{m.name}": m for f in API.files for m in f.message_type if f.package}
    with_response_body: list[str] = []
    for file in API.files:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                if not rule.response_body:
                    continue
                with_response_body.append(method.name)
                response = messages[method.output_type]
                (body,) = [f for f in response.field if f.name == rule.response_body]
                assert body.type_name == ".google.api.HttpBody", method.name
                assert body.label != body.LABEL_REPEATED, method.name
                schema: str = method.options.Extensions[options_pb2.json_response_schema]  # type: ignore[index]
                assert f".{schema}" in messages, f"{method.name}: {schema!r} is not in the set"
    assert sorted(with_response_body) == ["BatchTrackEventsJson", "TrackEventJson"]


def test_error_detail_types_are_in_the_descriptor_set() -> None:
    # Envoy adds google.rpc.Status and google.protobuf.Any itself; any type packed in
    # Status.details must be in the descriptor set, or the JSON conversion fails as a whole.
    messages = {f"{f.package}.{m.name}" for f in API.files for m in f.message_type}
    sent = {"google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"}
    assert sent <= messages, f"missing: {sorted(sent - messages)}"


# The Lua filter, run for real in LuaJIT with a stand-in for Envoy's response handle. lupa (Lua
# for Python) is not a dependency of the project: these are skipped unless it is installed.

_LUA_HARNESS = """
local headers = {}
for key, value in pairs(input) do headers[key] = value end
local handle = {
  headers = function(self)
    return {
      get = function(_, key) return headers[key] end,
      replace = function(_, key, value) headers[key] = value end,
      remove = function(_, key) headers[key] = nil end,
    }
  end,
}
envoy_on_response(handle)
return headers
"""


JSON = "application/json"
GRPC = "application/grpc"


@pytest.mark.parametrize(
    ("status", "content_type", "x_http_code", "answered", "keeps_header"),
    [
        pytest.param("200", JSON, "201", "201", False, id="rest-success-becomes-201"),
        pytest.param("200", GRPC, "201", "200", True, id="native-grpc-keeps-200"),
        pytest.param("400", JSON, "201", "400", False, id="error-stays-error"),
        pytest.param("200", JSON, "302", "200", False, id="only-2xx-applied"),
        pytest.param("200", JSON, None, "200", False, id="no-header-no-change"),
    ],
)
def test_lua_filter_behaviour(
    gw: Gateway,
    status: str,
    content_type: str,
    x_http_code: str | None,
    answered: str,
    keeps_header: bool,
) -> None:
    luajit = pytest.importorskip("lupa.luajit21")  # Envoy embeds LuaJIT 2.1
    runtime = luajit.LuaRuntime()
    runtime.execute(lua_source(gw))
    run = runtime.eval(f"function(input) {_LUA_HARNESS} end")
    headers = {":status": status, "content-type": content_type}
    if x_http_code is not None:
        headers["x-http-code"] = x_http_code
    result = dict(run(runtime.table_from(headers)).items())
    assert result[":status"] == answered
    assert ("x-http-code" in result) is keeps_header


# The checks can fail: each broken copy of envoy.yaml must be caught by the check named.


def _hcm(raw: RawConfig) -> dict[str, Any]:
    config: dict[str, Any] = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][
        0
    ]["typed_config"]
    return config


def _http_filter(raw: RawConfig, suffix: str) -> dict[str, Any]:
    filters: list[dict[str, Any]] = _hcm(raw)["http_filters"]
    (found,) = [f for f in filters if f["typed_config"]["@type"].endswith(suffix)]
    return found


def _routes(raw: RawConfig) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(raw)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _drop_service(raw: RawConfig) -> None:
    _http_filter(raw, "GrpcJsonTranscoder")["typed_config"]["services"].remove(
        "analytics.metrics.v1.MetricsService"
    )


def _drop_route(raw: RawConfig) -> None:
    routes = _routes(raw)
    routes[:] = [r for r in routes if r["name"] != "export"]


def _drop_size_limit(raw: RawConfig) -> None:
    del _http_filter(raw, "GrpcJsonTranscoder")["typed_config"]["max_request_body_size"]


def _lua_after_transcoder(raw: RawConfig) -> None:
    filters = _hcm(raw)["http_filters"]
    names = [f["name"] for f in filters]
    lua = filters.pop(names.index("envoy.filters.http.lua"))
    filters.insert(names.index("envoy.filters.http.grpc_json_transcoder"), lua)


def _router_first(raw: RawConfig) -> None:
    filters = _hcm(raw)["http_filters"]
    filters.insert(0, filters.pop())


def _http1_cluster(raw: RawConfig) -> None:
    options = raw["static_resources"]["clusters"][1]["typed_extension_protocol_options"]
    options[HTTP_PROTOCOL_OPTIONS_KEY]["explicit_http_config"] = {"http_protocol_options": {}}


def _route_to_missing_cluster(raw: RawConfig) -> None:
    _routes(raw)[0]["route"]["cluster"] = "ingest-v2"


def _no_health_check_thresholds(raw: RawConfig) -> None:
    del raw["static_resources"]["clusters"][0]["health_checks"][0]["unhealthy_threshold"]


def _deprecated_lua_field(raw: RawConfig) -> None:
    config = _http_filter(raw, "lua.v3.Lua")["typed_config"]
    config["inline_code"] = config.pop("default_source_code")["inline_string"]


def _catch_all_first(raw: RawConfig) -> None:
    routes = _routes(raw)
    routes.insert(0, routes.pop())


def _lenient_query(raw: RawConfig) -> None:
    config = _http_filter(raw, "GrpcJsonTranscoder")["typed_config"]
    config["request_validation_options"]["reject_unknown_query_parameters"] = False


def _lua_without_header(raw: RawConfig) -> None:
    config = _http_filter(raw, "lua.v3.Lua")["typed_config"]
    config["default_source_code"]["inline_string"] = "function envoy_on_response(h) end"


def _route_admin(raw: RawConfig) -> None:
    routes = _routes(raw)
    admin = copy.deepcopy(next(r for r in routes if r["name"] == "metrics"))
    admin["name"] = "admin"
    admin["match"]["prefix"] = "/analytics.admin.v1.AdminService/"
    routes.insert(0, admin)


def _transcode_admin(raw: RawConfig) -> None:
    config = _http_filter(raw, "GrpcJsonTranscoder")["typed_config"]
    config["services"].append("analytics.admin.v1.AdminService")


def _export_timeout(raw: RawConfig) -> None:
    next(r for r in _routes(raw) if r["name"] == "export")["route"]["timeout"] = "30s"


Check = Callable[[Gateway], None]

MUTATIONS: list[tuple[Callable[[RawConfig], None], Check]] = [
    (_drop_service, lambda gw: check_transcoder_services(gw, API)),
    (_drop_service, lambda gw: check_methods_reachable(gw, API)),
    (_drop_route, lambda gw: check_service_routes(gw, API)),
    (_drop_route, lambda gw: check_methods_reachable(gw, API)),
    (_catch_all_first, lambda gw: check_methods_reachable(gw, API)),
    (_drop_size_limit, check_request_size_limit),
    (_lua_after_transcoder, check_filter_order),
    (_router_first, check_filter_order),
    (_http1_cluster, lambda gw: check_service_routes(gw, API)),
    (_route_to_missing_cluster, check_envoy_accepts),
    (_no_health_check_thresholds, check_envoy_accepts),
    (_deprecated_lua_field, check_envoy_accepts),
    (_lenient_query, check_transcoder_options),
    (_lua_without_header, check_lua),
    (_export_timeout, lambda gw: check_timeouts(gw, API)),
    (_route_admin, lambda gw: check_grpc_only_unreachable(gw, API)),
    (_transcode_admin, lambda gw: check_grpc_only_unreachable(gw, API)),
]


@pytest.mark.parametrize(
    ("mutate", "check"), MUTATIONS, ids=[f"{i}{m.__name__}" for i, (m, _) in enumerate(MUTATIONS)]
)
def test_checks_catch_a_broken_config(
    raw: RawConfig, mutate: Callable[[RawConfig], None], check: Check
) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(load_gateway(broken))


def test_unknown_fields_are_refused(raw: RawConfig) -> None:
    broken = copy.deepcopy(raw)
    _http_filter(broken, "GrpcJsonTranscoder")["typed_config"]["max_body_size"] = 1
    with pytest.raises(json_format.ParseError):
        load_gateway(broken)


def test_cors_policy_is_the_in_process_gateways(gw: Gateway) -> None:
    from gateway import cors

    assert type(gw.filters[0]) is cors_pb2.Cors, "CORS must answer preflights before the rest"
    (host,) = gw.hcm.route_config.virtual_hosts
    policy = cors_pb2.CorsPolicy()
    assert host.typed_per_filter_config["envoy.filters.http.cors"].Unpack(policy)
    assert [m.safe_regex.regex for m in policy.allow_origin_string_match] == [".*"]
    assert not policy.allow_credentials.value
    assert policy.allow_methods == cors.ALLOWED_METHODS
    assert policy.allow_headers == cors.ALLOWED_HEADERS
    assert policy.expose_headers == cors.EXPOSED_HEADERS
    assert policy.max_age == cors.MAX_AGE_SECONDS

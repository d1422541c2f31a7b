"""HTTP/JSON <-> gRPC transcoding driven only by the `google.api.http` annotations.

Production runs Envoy's grpc_json_transcoder over the same descriptor set; this module is its
in-process twin, so the route table is derived from the annotations (never written by hand) and
every rule below mirrors Envoy (grpc-httpjson-transcoding):

- path variables and query parameters are bound into the request message by field path
  (`a.b=1`), repeated fields by repeating the key, scalars converted by the field's type;
- a query parameter that names no field is refused (Envoy's `reject_unknown_query_parameters`);
- the body is parsed with protobuf's own JSON mapping (unknown fields are an error), into the
  whole message (`body: "*"`) or one field (`body: "event"`);
- responses are printed with protobuf's JSON mapping, every field included, and doubles that hold
  whole numbers (amounts in cents) printed as integers, as Envoy's C++ printer does.

Nothing here knows about aiohttp; `server.py` feeds it raw paths, query strings and bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

import cartlytics.gen
from cartlytics.gen.analytics.options.v1 import options_pb2

from .json_printer import message_to_json_value
from .pathtemplate import PathTemplate, percent_decode, split_path
from .status import GatewayError

__all__ = [
    "HTTP_BODY",
    "Rendered",
    "Route",
    "RouteMatch",
    "RouteTable",
    "build_request",
    "default_descriptor_set_path",
    "load_routes",
    "render_json",
    "render_response",
    "routes_from_descriptor_set",
]

HTTP_BODY = "google.api.HttpBody"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT

_T = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int, str]] = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1, "int32"),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "int32"),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1, "int64"),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "int64"),
    _T.TYPE_UINT32: (0, 2**32 - 1, "uint32"),
    _T.TYPE_FIXED32: (0, 2**32 - 1, "uint32"),
    _T.TYPE_UINT64: (0, 2**64 - 1, "uint64"),
    _T.TYPE_FIXED64: (0, 2**64 - 1, "uint64"),
}
_INT_TEXT = re.compile(r"[-+]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_FLOAT_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38
# Message types a single query/path string can set, as Envoy allows: they have a JSON string form.
_STRING_FORM_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPER_TYPES = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


# --------------------------------------------------------------------------- route table


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP binding of one RPC (a method with additional_bindings has several routes)."""

    http_method: str
    template: PathTemplate
    method: MethodDescriptor
    request_class: type[Message]
    response_class: type[Message]
    body: str
    """Empty (no body), "*" (the whole request) or the path of the field the body fills."""
    body_fields: tuple[FieldDescriptor, ...]
    response_body: str
    response_fields: tuple[FieldDescriptor, ...]
    success_code: int
    """`(analytics.options.v1.http_success_code)`, 0 when unset. The gateway answers with it
    (and the service, told so by metadata, does not send it); an `x-http-code` the service sends
    anyway wins, as it does in Envoy's Lua filter, so both gateways agree."""

    @property
    def grpc_path(self) -> str:
        """The HTTP/2 path of the RPC, e.g. `/analytics.ingest.v1.IngestService/TrackEvent`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def label(self) -> str:
        """A short, bounded name for logs and metrics, e.g. `GET /analytics/sales`."""
        return f"{self.http_method} {self.template.text}"

    @property
    def returns_http_body(self) -> bool:
        """True when the selected response is a google.api.HttpBody: sent as raw bytes."""
        if self.response_fields:
            last = self.response_fields[-1]
            selected = None if last.is_repeated else last.message_type
        else:
            selected = self.method.output_type
        return selected is not None and selected.full_name == HTTP_BODY

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A route and the (decoded) values of its path variables."""

    route: Route
    path_bindings: dict[tuple[str, ...], str] = field(default_factory=dict)


class RouteTable:
    """All routes of a descriptor set, matched in Envoy's order (literals before wildcards)."""

    def __init__(self, routes: Sequence[Route], pool: descriptor_pool.DescriptorPool) -> None:
        self._routes = sorted(routes, key=lambda r: r.template.precedence)
        self.pool = pool
        """The pool the routes' message classes come from (also resolves error detail types)."""
        seen: set[tuple[str, str, str]] = set()
        for route in self._routes:
            key = (route.http_method, route.template.text, route.template.verb)
            if key in seen:
                # Envoy marks such a path as ambiguous and answers 404; fail loudly instead.
                raise ValueError(f"two RPCs bind {route.label}")
            seen.add(key)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, http_method: str, raw_path: str) -> RouteMatch | None:
        """The route for a method and raw (percent-encoded, query-less) path, or None.

        Raises GatewayError (400) when a path variable is not valid UTF-8 once decoded.
        """
        parts = split_path(raw_path)
        for route in self._routes:
            if route.http_method != http_method:
                continue
            try:
                bindings = route.template.match(parts)
            except UnicodeDecodeError:
                raise GatewayError(_INVALID, "path is not valid UTF-8 once decoded") from None
            if bindings is not None:
                return RouteMatch(route, bindings)
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The HTTP methods bound to a path (empty when no route has it): a request with another
        method is a 405 listing these in `Allow`, not a 404 for a path that exists."""
        parts = split_path(raw_path)
        allowed: set[str] = set()
        for route in self._routes:
            try:
                if route.template.match(parts) is not None:
                    allowed.add(route.http_method)
            except UnicodeDecodeError:
                raise GatewayError(_INVALID, "path is not valid UTF-8 once decoded") from None
        return sorted(allowed)


def default_descriptor_set_path() -> Path:
    """`analytics.pb`, next to the generated code (written by `make gen`)."""
    return Path(cartlytics.gen.__file__).parent / "analytics.pb"


def load_routes(descriptor_set: Path | str | None = None) -> RouteTable:
    """Read a FileDescriptorSet file (default: the generated one) and build its route table."""
    path = Path(descriptor_set) if descriptor_set is not None else default_descriptor_set_path()
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return routes_from_descriptor_set(fds)


def routes_from_descriptor_set(fds: descriptor_pb2.FileDescriptorSet) -> RouteTable:
    """Build the route table from the `google.api.http` annotations of every method.

    The files go into a fresh pool (not the process-wide default one) so the gateway serves
    exactly the contract in the descriptor set, as Envoy does. Files must come in dependency
    order, which `protoc --include_imports` guarantees.
    """
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.AddSerializedFile(file.SerializeToString())
    routes: list[Route] = []
    for file in fds.file:
        prefix = f"{file.package}." if file.package else ""
        for service in file.service:
            for method_proto in service.method:
                # Re-parse the options: extensions parsed before their module was imported, or
                # read from a fresh pool, can come back as unknown fields.
                options = descriptor_pb2.MethodOptions.FromString(
                    method_proto.options.SerializeToString()
                )
                if not options.HasExtension(annotations_pb2.http):
                    continue
                # Any: the generated stubs type extensions as plain FieldDescriptors.
                extensions: Any = options.Extensions
                rule: http_pb2.HttpRule = extensions[annotations_pb2.http]
                success_code = int(extensions[options_pb2.http_success_code])
                method = pool.FindMethodByName(f"{prefix}{service.name}.{method_proto.name}")
                for binding in (rule, *rule.additional_bindings):
                    route = _route(method, binding, success_code)
                    if route is not None:
                        routes.append(route)
    return RouteTable(routes, pool)


def _route(method: MethodDescriptor, rule: Any, success_code: int) -> Route | None:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return None
    if pattern == "custom":
        http_method, path = rule.custom.kind, rule.custom.path
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    template = PathTemplate.parse(path)
    request_type: Descriptor = method.input_type
    response_type: Descriptor = method.output_type
    where = f"{method.full_name} ({http_method} {path})"
    for variable in template.variables:
        fields = _resolve(request_type, variable.field_path)
        if fields is None or fields[-1].is_repeated or _is_plain_message(fields[-1]):
            name = ".".join(variable.field_path)
            raise ValueError(f"{where}: path variable {name} is not a scalar field")
    body_fields: tuple[FieldDescriptor, ...] = ()
    if rule.body and rule.body != "*":
        body_fields = _resolve_or_raise(request_type, rule.body, where)
    response_fields: tuple[FieldDescriptor, ...] = ()
    if rule.response_body:
        response_fields = _resolve_or_raise(response_type, rule.response_body, where)
    return Route(
        http_method=http_method,
        template=template,
        method=method,
        request_class=message_factory.GetMessageClass(request_type),
        response_class=message_factory.GetMessageClass(response_type),
        body=rule.body,
        body_fields=body_fields,
        response_body=rule.response_body,
        response_fields=response_fields,
        success_code=success_code,
    )


def _resolve_or_raise(
    descriptor: Descriptor, dotted: str, where: str
) -> tuple[FieldDescriptor, ...]:
    fields = _resolve(descriptor, tuple(dotted.split(".")))
    if fields is None:
        raise ValueError(f"{where}: {dotted!r} is not a field of {descriptor.full_name}")
    return fields


def _resolve(descriptor: Descriptor, names: Sequence[str]) -> tuple[FieldDescriptor, ...] | None:
    """Field path -> fields; names may be proto or JSON names. None if it names no field.

    Every field but the last must be a singular message (not a map): that is all a dotted path
    can walk through.
    """
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in names:
        if current is None:
            return None
        found = current.fields_by_name.get(name) or _by_json_name(current, name)
        if found is None or _is_map(found):
            return None
        fields.append(found)
        current = None if found.is_repeated else found.message_type
    return tuple(fields)


def _by_json_name(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _is_plain_message(fd: FieldDescriptor) -> bool:
    """A message field that a single string cannot set (not a wrapper/Timestamp/...)."""
    if fd.message_type is None:
        return False
    name = fd.message_type.full_name
    return name not in _STRING_FORM_TYPES and name not in _WRAPPER_TYPES


# --------------------------------------------------------------------------- requests


def build_request(
    match: RouteMatch, raw_query: str, body: bytes, content_type: str | None = None
) -> Message:
    """The request message for a matched route: body first, then query, then path variables.

    Path variables are applied last so the URL, which routed the request, wins over a body that
    names the same field. Raises GatewayError(INVALID_ARGUMENT) naming what was wrong.
    """
    route = match.route
    message = route.request_class()
    if route.body:
        _bind_body(message, route, body, content_type)
    _bind_query(message, route.method.input_type, raw_query)
    for names, value in match.path_bindings.items():
        fields = _resolve(route.method.input_type, names)
        if fields is None:  # validated when the route was built
            raise GatewayError(grpc.StatusCode.INTERNAL, "unresolvable path variable")
        _assign(message, fields, [value], f'path variable "{".".join(names)}"')
    return message


def _bind_query(message: Message, descriptor: Descriptor, raw_query: str) -> None:
    """Bind `name=value` pairs; like Envoy, pairs without `=` or without a name are ignored."""
    grouped: dict[str, list[str]] = {}
    for pair in raw_query.split("&") if raw_query else ():
        raw_name, sep, raw_value = pair.partition("=")
        if not sep or not raw_name:
            continue
        try:
            name = percent_decode(raw_name)
            value = percent_decode(raw_value)
        except UnicodeDecodeError:
            raise GatewayError(_INVALID, "query string is not valid UTF-8 once decoded") from None
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        fields = _resolve(descriptor, tuple(name.split(".")))
        if fields is None:
            raise GatewayError(_INVALID, f'unknown query parameter "{name}"')
        _assign(message, fields, values, f'query parameter "{name}"')


def _assign(
    message: Message, fields: Sequence[FieldDescriptor], values: Sequence[str], what: str
) -> None:
    target: Any = message
    for fd in fields[:-1]:
        target = getattr(target, fd.name)
    leaf = fields[-1]
    if _is_plain_message(leaf):
        raise GatewayError(_INVALID, f"{what} names a message, not a value")
    if leaf.is_repeated:
        container = getattr(target, leaf.name)
        for text in values:
            if leaf.message_type is not None:
                container.add().CopyFrom(_message_from_text(leaf.message_type, text, what))
            else:
                container.append(_scalar(leaf, text, what))
    elif leaf.message_type is not None:
        getattr(target, leaf.name).CopyFrom(_message_from_text(leaf.message_type, values[-1], what))
    else:
        # Several values for a singular field: the last wins, as when Envoy weaves them in.
        setattr(target, leaf.name, _scalar(leaf, values[-1], what))


def _message_from_text(message_type: Descriptor, text: str, what: str) -> Message:
    """A wrapper, Timestamp, Duration or FieldMask from its JSON string form."""
    message = message_factory.GetMessageClass(message_type)()
    if message_type.full_name in _WRAPPER_TYPES:
        wrapper: Any = message
        wrapper.value = _scalar(message_type.fields_by_name["value"], text, what)
        return message
    try:
        json_format.Parse(json.dumps(text), message)
    except json_format.ParseError as exc:
        raise GatewayError(_INVALID, f"invalid value for {what}: {_first_line(exc)}") from None
    return message


def _scalar(fd: FieldDescriptor, text: str, what: str) -> object:
    """Convert one query/path string to the field's Python value, or 400 naming `what`."""
    kind = fd.type
    if kind == _T.TYPE_STRING:
        return text
    if kind in _INT_RANGES:
        low, high, label = _INT_RANGES[kind]
        if _INT_TEXT.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        raise _bad_value(text, what, label)
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        if text in _FLOAT_NAMES:
            return _FLOAT_NAMES[text]
        label = "double" if kind == _T.TYPE_DOUBLE else "float"
        if not _FLOAT_TEXT.fullmatch(text):
            raise _bad_value(text, what, label)
        number = float(text)
        if math.isinf(number) or (kind == _T.TYPE_FLOAT and abs(number) > _FLOAT32_MAX):
            raise _bad_value(text, what, label)
        return number
    if kind == _T.TYPE_BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise _bad_value(text, what, "true or false")
    if kind == _T.TYPE_ENUM:
        return _enum_number(fd, text, what)
    if kind == _T.TYPE_BYTES:
        try:
            return base64.urlsafe_b64decode(_pad(text.replace("+", "-").replace("/", "_")))
        except (binascii.Error, ValueError):
            raise _bad_value(text, what, "base64") from None
    raise _bad_value(text, what, "a supported type")


def _enum_number(fd: FieldDescriptor, text: str, what: str) -> int:
    enum = fd.enum_type
    if enum is None:
        raise _bad_value(text, what, "an enum value")
    by_name = enum.values_by_name.get(text)
    if by_name is not None:
        return int(by_name.number)
    if _INT_TEXT.fullmatch(text) and int(text) in enum.values_by_number:
        return int(text)
    raise _bad_value(text, what, "one of " + ", ".join(v.name for v in enum.values))


def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def _bad_value(text: str, what: str, expected: str) -> GatewayError:
    shown = text if len(text) <= 64 else text[:61] + "..."
    return GatewayError(_INVALID, f"invalid value {shown!r} for {what}: expected {expected}")


def _bind_body(message: Message, route: Route, body: bytes, content_type: str | None) -> None:
    target_type: Descriptor | None = (
        route.body_fields[-1].message_type if route.body_fields else route.method.input_type
    )
    singular = not (route.body_fields and route.body_fields[-1].is_repeated)
    if target_type is not None and target_type.full_name == HTTP_BODY and singular:
        # google.api.HttpBody takes the raw bytes, whatever their type (as Envoy does).
        target: Any = message
        for fd in route.body_fields:
            target = getattr(target, fd.name)
        target.content_type = content_type or ""
        target.data = body
        return
    if not body.strip():
        return  # an empty body is an empty message, as with Envoy
    value = _parse_json(body)
    plain = singular and target_type is not None and _is_plain_message_type(target_type)
    if plain and not isinstance(value, dict):
        raise GatewayError(_INVALID, "request body must be a JSON object")
    for fd in reversed(route.body_fields):
        value = {fd.json_name: value}
    _check_ascii_numbers(value, route.method.input_type, "")
    try:
        json_format.ParseDict(value, message)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise GatewayError(
            _INVALID, f"invalid request body: {_body_problem(exc, route.method.input_type)}"
        ) from None


# Fields whose JSON string form protobuf's Python parser reads with int(), float() or strptime:
# those take any script's digits ("٣٣") and `_` separators ("1_0"), which Envoy's C++ parser
# refuses. Such strings are refused here too, naming the field.
_NUMERIC_KINDS = frozenset({*_INT_RANGES, _T.TYPE_DOUBLE, _T.TYPE_FLOAT})
_NUMERIC_TEXT_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration"}
    | {w for w in _WRAPPER_TYPES if w not in ("google.protobuf.StringValue",
                                              "google.protobuf.BytesValue",
                                              "google.protobuf.BoolValue")}
)  # fmt: skip


def _check_ascii_numbers(value: Any, descriptor: Descriptor, where: str) -> None:
    """Refuse a number, time or duration written as a JSON string with non-ASCII digits or `_`."""
    if not isinstance(value, dict):
        return  # not an object: ParseDict says what is wrong
    fields = {**descriptor.fields_by_name, **{fd.json_name: fd for fd in descriptor.fields}}
    for key, item in value.items():
        fd = fields.get(key) if isinstance(key, str) else None
        if fd is None:
            continue  # unknown field: ParseDict refuses it
        name = f"{where}.{fd.json_name}" if where else fd.json_name
        entry = fd.message_type
        if entry is not None and _is_map(fd):
            key_fd, value_fd = entry.fields_by_name["key"], entry.fields_by_name["value"]
            if isinstance(item, dict):
                for map_key, map_value in item.items():
                    _check_ascii_value(key_fd, map_key, f"{name}[{map_key!r}]")
                    _check_ascii_value(value_fd, map_value, f"{name}[{map_key!r}]")
        elif fd.is_repeated and isinstance(item, list):
            for index, element in enumerate(item):
                _check_ascii_value(fd, element, f"{name}[{index}]")
        else:
            _check_ascii_value(fd, item, name)


def _check_ascii_value(fd: FieldDescriptor, value: Any, where: str) -> None:
    message_type = fd.message_type
    if message_type is not None and message_type.full_name not in _NUMERIC_TEXT_TYPES:
        if _is_plain_message_type(message_type):
            _check_ascii_numbers(value, message_type, where)
        return  # Struct, Value, Any, FieldMask...: no number is read from text
    if message_type is None and fd.type not in _NUMERIC_KINDS:
        return
    if isinstance(value, str) and (not value.isascii() or "_" in value):
        shown = value if len(value) <= 64 else value[:61] + "..."
        raise GatewayError(
            _INVALID, f"invalid value {shown!r} for field {where}: write numbers with ASCII digits"
        )


_NO_FIELD = re.compile(r'has no field named "([^"]*)"')
_BAD_FIELD = re.compile(r"Failed to parse (\w+) field")
_JSON_KINDS = {
    _T.TYPE_STRING: "a string",
    _T.TYPE_BOOL: "true or false",
    _T.TYPE_DOUBLE: "a number",
    _T.TYPE_FLOAT: "a number",
    _T.TYPE_BYTES: "base64 text",
    _T.TYPE_ENUM: "an enum name",
    _T.TYPE_MESSAGE: "an object",
}


def _body_problem(exc: BaseException, descriptor: Descriptor) -> str:
    """What protobuf's JSON parser refused, in the API's words: the field as the client named
    it and the JSON it takes. Never its own text, which names internal message types and
    Python's (``invalid literal for int()``, ``expected string or bytes-like object``)."""
    text = str(exc)
    unknown = _NO_FIELD.search(text)
    if unknown:
        return f'unknown field "{unknown.group(1)[:64]}"'
    bad = _BAD_FIELD.search(text)
    name = bad.group(1) if bad else ""
    leaf = descriptor.fields_by_name.get(name) or _by_json_name(descriptor, name)
    if leaf is None:
        return "a field has a value of the wrong type"
    if leaf.type in _INT_RANGES:
        low, high, _ = _INT_RANGES[leaf.type]
        expected = f"an integer from {low} to {high}"
    else:
        expected = _JSON_KINDS.get(leaf.type, "a value of its type")
    if _is_map(leaf) and leaf.message_type is not None:
        value = leaf.message_type.fields_by_name["value"]
        kind = _JSON_KINDS.get(value.type, "a value").removeprefix("a ").removeprefix("an ")
        expected = f"an object of {kind}s"
    elif leaf.is_repeated:
        expected = f"a list of {expected.removeprefix('a ').removeprefix('an ')}s"
    return f'field "{leaf.json_name}" must be {expected}'


def _is_plain_message_type(descriptor: Descriptor) -> bool:
    return not descriptor.full_name.startswith("google.protobuf.")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise GatewayError(_INVALID, "request body is not valid UTF-8") from None
    except RecursionError:
        raise GatewayError(_INVALID, "request body is nested too deeply") from None
    except ValueError as exc:
        raise GatewayError(_INVALID, f"request body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0].strip()


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response body and its content type."""

    body: bytes
    content_type: str


def render_response(route: Route, message: Message) -> Rendered:
    """The HTTP body for one response message (honouring `response_body` and HttpBody)."""
    if route.returns_http_body:
        http_body: Any = message
        for fd in route.response_fields:
            http_body = getattr(http_body, fd.name)
        return Rendered(bytes(http_body.data), http_body.content_type or "application/octet-stream")
    return Rendered(render_json(route, message), "application/json")


def render_json(route: Route, message: Message) -> bytes:
    """Protobuf's JSON mapping, all fields printed, whole doubles as integers, compact."""
    value: Any = message_to_json_value(message)  # json_format's mapping, compiled per type
    for fd in route.response_fields:
        fallback: Any = {} if fd.message_type is not None and not fd.is_repeated else None
        value = value.get(fd.json_name, fallback) if isinstance(value, dict) else fallback
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

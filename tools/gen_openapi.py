"""Generate the OpenAPI 3 document of the REST API from the descriptor set.

Usage: python tools/gen_openapi.py [OUT]   (default: docs/openapi.json; `-` prints it)

Nothing here is written per endpoint: the paths are the REST gateway's own route table (built
from the `google.api.http` annotations by `gateway.transcoding`, so the document
exposes exactly what the gateway serves), and every schema is derived from the message
descriptors: JSON names, scalar types and ranges, repeated fields, maps, enums, optional fields,
the well-known types (Struct, Value, Timestamp, wrappers, ...) and google.api.HttpBody (a raw
request body that the service parses as JSON names its message with the
`(analytics.options.v1.json_body_schema)` method option), with the comments of the .proto files
as descriptions. Errors are the google.rpc.Status body the
gateway answers (see `gateway/status.py`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

import cartlytics
from cartlytics.gen.analytics.options.v1 import options_pb2
from gateway.transcoding import (
    HTTP_BODY,
    Route,
    routes_from_descriptor_set,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "openapi.json"
# This checkout's descriptor set (not whichever one the installed package points at).
DESCRIPTOR_SET = ROOT / "src" / "cartlytics" / "gen" / "analytics.pb"
STATUS = "google.rpc.Status"
ERROR_RESPONSE = "#/components/responses/Error"
# google.rpc detail types the services attach to errors; documented as schemas of their own.
ERROR_DETAILS = (
    "google.rpc.BadRequest",
    "google.rpc.ErrorInfo",
    "google.rpc.RetryInfo",
    "google.rpc.QuotaFailure",
)
# Statuses every operation can answer, with why (gateway/status.py maps gRPC codes to them).
COMMON_ERRORS = {
    "400": "Invalid argument: the message and a google.rpc.BadRequest detail name the field.",
    "401": "No API key, or an unknown one (UNAUTHENTICATED).",
    "403": "The key lacks the scope this operation requires (PERMISSION_DENIED).",
    "414": "The request line (path and query string) is too long.",
    "429": "Rate limited (RESOURCE_EXHAUSTED); `Retry-After` says when to retry.",
    "431": "Too many request headers, or one is too large.",
    "503": "A backend is unavailable (UNAVAILABLE); safe to retry.",
}
BODY_ERRORS = {"413": "The request body is larger than the gateway accepts."}

_T = FieldDescriptor
_INT32 = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_UINT32 = {_T.TYPE_UINT32, _T.TYPE_FIXED32}
_INT64 = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UINT64 = {_T.TYPE_UINT64, _T.TYPE_FIXED64}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}
# Message types a query string can set: they have a JSON string (or scalar) form.
_STRING_FORM = _WRAPPERS | {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
# Well-known types with a JSON form of their own (the protobuf JSON mapping).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.NullValue": {"nullable": True, "enum": [None]},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}


class Comments:
    """Leading comments of messages, fields, enums and methods, from the source info."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._by_name: dict[str, str] = {}
        for file in files:
            self._index(file)

    def _index(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        prefix = f"{file.package}." if file.package else ""
        by_path = {
            tuple(loc.path): loc.leading_comments.strip()
            for loc in file.source_code_info.location
            if loc.leading_comments.strip()
        }

        def messages(
            protos: Iterable[descriptor_pb2.DescriptorProto], path: tuple[int, ...], scope: str
        ) -> None:
            for i, message in enumerate(protos):
                here, name = (*path, i), f"{scope}{message.name}"
                self._put(name, by_path.get(here))
                for j, fd in enumerate(message.field):
                    self._put(f"{name}.{fd.name}", by_path.get((*here, 2, j)))
                messages(message.nested_type, (*here, 3), f"{name}.")
                enums(message.enum_type, (*here, 4), f"{name}.")

        def enums(
            protos: Iterable[descriptor_pb2.EnumDescriptorProto], path: tuple[int, ...], scope: str
        ) -> None:
            for i, enum in enumerate(protos):
                self._put(f"{scope}{enum.name}", by_path.get((*path, i)))

        messages(file.message_type, (4,), prefix)
        enums(file.enum_type, (5,), prefix)
        for i, service in enumerate(file.service):
            for j, method in enumerate(service.method):
                self._put(f"{prefix}{service.name}.{method.name}", by_path.get((6, i, 2, j)))

    def _put(self, name: str, text: str | None) -> None:
        if text:
            lines = (line.strip() for line in text.splitlines())
            self._by_name[name] = " ".join(line for line in lines if line)

    def get(self, name: str) -> str:
        return self._by_name.get(name, "")


class Builder:
    """Builds the document; message schemas land in components as they are referenced."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.routes = routes_from_descriptor_set(fds)
        self.comments = Comments(fds.file)
        self.schemas: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ schemas

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        """A schema for a message: inline for well-known types, else a $ref to components."""
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in _WRAPPERS:
            inner = self.field_schema(descriptor.fields_by_name["value"], with_doc=False)
            return {**inner, "nullable": True}
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages terminate
            self.schemas[name] = self.message_schema(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def message_schema(self, descriptor: Descriptor) -> dict[str, Any]:
        """An object with one property per field, by JSON name.

        A field without presence is always printed in responses (the gateway prints every
        field), so it is listed as required; fields with presence (optional, messages, oneofs)
        may be absent.
        """
        properties = {fd.json_name: self.field_schema(fd) for fd in descriptor.fields}
        required = [fd.json_name for fd in descriptor.fields if not fd.has_presence]
        schema: dict[str, Any] = {"type": "object"}
        doc = self.comments.get(descriptor.full_name)
        if doc:
            schema["description"] = doc
        schema["properties"] = properties
        if required:
            schema["x-always-present"] = required
        return schema

    def field_schema(self, fd: FieldDescriptor, *, with_doc: bool = True) -> dict[str, Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value = self.field_schema(fd.message_type.fields_by_name["value"], with_doc=False)
            schema: dict[str, Any] = {"type": "object", "additionalProperties": value}
        elif fd.is_repeated:
            schema = {"type": "array", "items": self.single_schema(fd)}
        else:
            schema = self.single_schema(fd)
        doc = self.comments.get(fd.full_name) if with_doc else ""
        if doc:
            if "$ref" in schema:  # OpenAPI 3.0 ignores siblings of $ref: wrap it
                schema = {"allOf": [schema]}
            schema["description"] = doc
        return schema

    def single_schema(self, fd: FieldDescriptor) -> dict[str, Any]:
        kind = fd.type
        if fd.message_type is not None:
            return self.ref(fd.message_type)
        if fd.enum_type is not None:
            return enum_schema(fd.enum_type, self.comments.get(fd.enum_type.full_name))
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "int32", "minimum": 0}
        if kind in _INT64:  # proto3 JSON prints 64-bit integers as strings
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
        if kind in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
        if kind == _T.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if kind == _T.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if kind == _T.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _T.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}

    # ------------------------------------------------------------------ operations

    def operation(self, route: Route, operation_id: str) -> dict[str, Any]:
        method = route.method
        scope = required_scope(route)
        doc = self.comments.get(method.full_name)
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [method.containing_service.name],
            "summary": doc.split(". ")[0].rstrip(".") if doc else method.name,
        }
        if doc:
            operation["description"] = doc
        operation["x-grpc-method"] = route.grpc_path
        if scope:
            operation["x-required-scope"] = scope
        parameters = self.path_parameters(route) + self.query_parameters(route)
        if parameters:
            operation["parameters"] = parameters
        if route.body:
            operation["requestBody"] = self.request_body(route)
        code = str(route.success_code or 200)
        responses: dict[str, Any] = {code: self.success_response(route)}
        errors = {**COMMON_ERRORS, **(BODY_ERRORS if route.body else {})}
        for status in sorted(errors):
            responses[status] = {"$ref": ERROR_RESPONSE, "description": errors[status]}
        responses["default"] = {"$ref": ERROR_RESPONSE}
        operation["responses"] = responses
        return operation

    def path_parameters(self, route: Route) -> list[dict[str, Any]]:
        parameters = []
        for variable in route.template.variables:
            fd = leaf(route.method.input_type, variable.field_path)
            parameters.append(
                {
                    "name": ".".join(variable.field_path),
                    "in": "path",
                    "required": True,
                    "schema": self.single_schema(fd),
                    **self.describe(fd),
                }
            )
        return parameters

    def query_parameters(self, route: Route) -> list[dict[str, Any]]:
        """Every field neither in the path nor in the body, as the transcoder binds them."""
        if route.body == "*":
            return []
        bound = {variable.field_path for variable in route.template.variables}
        if route.body:
            bound.add(tuple(fd.name for fd in route.body_fields))
        parameters = []
        for path, fd in query_fields(route.method.input_type, (), bound, set()):
            schema = self.field_schema(fd, with_doc=False)
            parameter: dict[str, Any] = {"name": ".".join(path), "in": "query", "schema": schema}
            if fd.is_repeated:  # repeat the key: ?steps=a&steps=b
                parameter.update(style="form", explode=True)
            parameter.update(self.describe(fd))
            parameters.append(parameter)
        return parameters

    def describe(self, fd: FieldDescriptor) -> dict[str, str]:
        doc = self.comments.get(fd.full_name)
        return {"description": doc} if doc else {}

    def request_body(self, route: Route) -> dict[str, Any]:
        last = route.body_fields[-1] if route.body_fields else None
        target = route.method.input_type if last is None else last.message_type
        if target is not None and target.full_name == HTTP_BODY and not (last and last.is_repeated):
            shape = json_body_schema(route)
            if not shape:
                return {
                    "required": True,
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                }
            # A raw body the service parses itself, as the JSON form of the message named.
            schema = self.ref(self.routes.pool.FindMessageTypeByName(shape))
        elif last is None:
            schema = self.ref(route.method.input_type)
        elif last.is_repeated:
            schema = self.field_schema(last, with_doc=False)
        else:
            schema = self.single_schema(last)
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def success_response(self, route: Route) -> dict[str, Any]:
        output: Descriptor = route.method.output_type
        shape = json_response_schema(route)
        if route.returns_http_body and shape:
            # A JSON answer the service renders itself, as the JSON form of the message named.
            output = self.routes.pool.FindMessageTypeByName(shape)
            return {
                "description": self.comments.get(output.full_name) or output.name,
                "content": {"application/json": {"schema": self.ref(output)}},
            }
        if route.returns_http_body:
            return {
                "description": "The raw bytes of each google.api.HttpBody chunk, streamed; the "
                "Content-Type is the one the service sets.",
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        if route.response_fields:
            selected = route.response_fields[-1]
            schema = self.field_schema(selected, with_doc=False)
            if selected.message_type is not None and not selected.is_repeated:
                output = selected.message_type  # what the client sees is described
        else:
            schema = self.ref(output)
        if route.server_streaming:  # the gateway sends every message, as one JSON array
            schema = {"type": "array", "items": schema}
        return {
            "description": self.comments.get(output.full_name) or output.name,
            "content": {"application/json": {"schema": schema}},
        }

    # ------------------------------------------------------------------ document

    def document(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        seen: dict[str, int] = {}
        for route in sorted(self.routes, key=lambda r: (r.template.text, r.http_method)):
            count = seen.get(route.method.full_name, 0)
            seen[route.method.full_name] = count + 1
            operation_id = route.method.name + (str(count + 1) if count else "")
            path = openapi_path(route)
            paths.setdefault(path, {})[route.http_method.lower()] = self.operation(
                route, operation_id
            )
        self.status_schemas()
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "cartlytics REST API",
                "version": cartlytics.__version__,
                "description": "Generated from the protos by tools/gen_openapi.py (make gen): "
                "do not edit. Every operation is a gRPC method transcoded by the REST gateway "
                "(google.api.http annotations). Amounts are integers in minor units. Errors are "
                "google.rpc.Status as JSON. Properties listed in `x-always-present` are always "
                "printed in responses; requests may omit any field.",
            },
            "security": [{"apiKey": []}],
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An API key: `Authorization: Bearer <key>`. Each "
                        "operation's `x-required-scope` names the scope the key needs.",
                    }
                },
                "responses": {
                    "Error": {
                        "description": "An error, as google.rpc.Status JSON.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{STATUS}"}
                            }
                        },
                    }
                },
                "schemas": dict(sorted(self.schemas.items())),
            },
        }

    def status_schemas(self) -> None:
        """google.rpc.Status (code and message always present) and the detail types."""
        pool = self.routes.pool
        status = pool.FindMessageTypeByName(STATUS)
        self.ref(status)
        schema = self.schemas[STATUS]
        schema.pop("x-always-present", None)
        schema["required"] = ["code", "message"]  # `details` is left out when empty
        schema["properties"]["details"]["items"] = {
            "allOf": [dict(_WELL_KNOWN["google.protobuf.Any"])],
            "description": "A detail: `@type` names it, its fields sit beside it "
            "(" + ", ".join(ERROR_DETAILS) + ").",
        }
        for name in ERROR_DETAILS:
            self.ref(pool.FindMessageTypeByName(name))


def enum_schema(enum: EnumDescriptor, doc: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.values]}
    if doc:
        schema["description"] = doc
    return schema


def _extensions(route: Route) -> Any:
    # Re-parse the options: extensions read from a fresh pool can come back as unknown fields.
    options = descriptor_pb2.MethodOptions.FromString(route.method.GetOptions().SerializeToString())
    return options.Extensions


def json_body_schema(route: Route) -> str:
    """`(analytics.options.v1.json_body_schema)`: the message a raw JSON body has the form of."""
    return str(_extensions(route)[options_pb2.json_body_schema])


def json_response_schema(route: Route) -> str:
    """`(analytics.options.v1.json_response_schema)`: the message a raw JSON answer has the form
    of."""
    return str(_extensions(route)[options_pb2.json_response_schema])


def required_scope(route: Route) -> str:
    number = int(_extensions(route)[options_pb2.required_scope])
    if not number:
        return ""
    return str(options_pb2.Scope.Name(number)).removeprefix("SCOPE_").lower()


def leaf(descriptor: Descriptor, path: tuple[str, ...]) -> FieldDescriptor:
    current: Descriptor | None = descriptor
    found: FieldDescriptor | None = None
    for name in path:
        assert current is not None, f"{name} is below a scalar"
        found = current.fields_by_name.get(name) or next(
            (f for f in current.fields if f.json_name == name), None
        )
        assert found is not None, f"{name} is not a field of {current.full_name}"
        current = found.message_type
    assert found is not None
    return found


def query_fields(
    descriptor: Descriptor,
    prefix: tuple[str, ...],
    bound: set[tuple[str, ...]],
    visiting: set[str],
) -> Iterable[tuple[tuple[str, ...], FieldDescriptor]]:
    """(JSON-name path, field) of every field a query parameter can set.

    As the transcoder: scalars, enums, repeated scalars, and the message types with a string
    form (wrappers, Timestamp, Duration, FieldMask); singular messages are walked into with
    dotted names; maps, repeated messages and Struct cannot be set from a query string.
    """
    for fd in descriptor.fields:
        names = (*prefix, fd.name)
        if names in bound:
            continue
        path = (*prefix, fd.json_name)
        message = fd.message_type
        if message is None or message.full_name in _STRING_FORM:
            yield path, fd
        elif (
            not fd.is_repeated
            and not message.full_name.startswith("google.protobuf.")
            and message.full_name not in visiting
        ):
            yield from query_fields(message, names, bound, visiting | {message.full_name})


def openapi_path(route: Route) -> str:
    """`/v1/{name=projects/*}/items:list` -> `/v1/{name}/items:list`."""
    template = route.template
    pieces: list[str] = []
    for index, segment in enumerate(template.segments):
        variable = next((v for v in template.variables if v.start == index), None)
        if variable is not None:
            pieces.append("{" + ".".join(variable.field_path) + "}")
        elif not any(v.start < index < v.end for v in template.variables):
            pieces.append(segment.literal or "*")
    return "/" + "/".join(pieces) + (f":{template.verb}" if template.verb else "")


def generate(descriptor_set: Path | None = None) -> str:
    """The document as text (stable: paths and schemas sorted, two-space indent)."""
    path = descriptor_set or DESCRIPTOR_SET
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    document = Builder(fds).document()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> None:
    text = generate()
    target = argv[0] if argv else str(DEFAULT_OUT)
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])

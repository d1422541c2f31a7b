"""docs/openapi.json: fresh, and saying what the descriptors and the gateway say.

The document is generated (tools/gen_openapi.py, run by `make gen`); these checks compare it
with the descriptor set itself, not with the generator's own helpers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from cartlytics.gen.analytics.options.v1 import options_pb2
from gateway import Route, load_routes

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return loaded


def _path(route: Route) -> str:
    """The OpenAPI form of a route's template: `{name=shelves/*}` -> `{name}`."""
    return re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", route.template.text)


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema or "allOf" in schema:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        else:
            schema = schema["allOf"][0]
    return schema


def test_committed_document_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_openapi.py"), str(out)], check=True, cwd=ROOT
    )
    assert out.read_text() == DOCUMENT.read_text(), "stale: run `make gen` and commit"


def test_every_route_the_gateway_serves_is_documented_and_nothing_else() -> None:
    document = _document()
    served = {(route.http_method.lower(), _path(route)) for route in load_routes()}
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert documented == served
    assert document["openapi"].startswith("3.")


def test_parameters_and_bodies_follow_the_request_messages() -> None:
    document = _document()
    scalar_types = {
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_INT32: "integer",
        FieldDescriptor.TYPE_BOOL: "boolean",
        FieldDescriptor.TYPE_DOUBLE: "number",
    }
    for route in load_routes():
        operation = document["paths"][_path(route)][route.http_method.lower()]
        fields = route.method.input_type.fields
        parameters = {p["name"]: p for p in operation.get("parameters", [])}
        if route.body == "*":
            assert not parameters
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            properties = _schema(document, body)["properties"]
            assert set(properties) == {f.json_name for f in fields}
        elif route.body:
            assert "requestBody" in operation
        else:
            assert "requestBody" not in operation
            # A field bound in the path template is named as there (its proto name).
            in_path = {f.name for f in fields if "{" + f.name + "}" in _path(route)}
            names = {f.name: f.name if f.name in in_path else f.json_name for f in fields}
            assert set(parameters) == set(names.values()), route.label
            for fd in fields:
                schema = parameters[names[fd.name]]["schema"]
                if fd.is_repeated:
                    assert schema["type"] == "array"
                    schema = schema["items"]
                if fd.type in scalar_types:
                    assert schema["type"] == scalar_types[fd.type], (route.label, fd.name)
                if fd.enum_type is not None:
                    assert schema["enum"] == [v.name for v in fd.enum_type.values]


def test_responses_and_errors() -> None:
    document = _document()
    status = document["components"]["schemas"]["google.rpc.Status"]
    assert status["required"] == ["code", "message"]
    assert set(status["properties"]) == {"code", "message", "details"}
    routes = load_routes()
    for route in routes:
        operation = document["paths"][_path(route)][route.http_method.lower()]
        responses = operation["responses"]
        success = str(route.success_code or 200)
        assert success in responses, route.label
        for code in ("400", "401", "403", "429", "503", "default"):
            assert responses[code]["$ref"] == "#/components/responses/Error"
        if route.body:
            assert "413" in responses
        options: Any = descriptor_pb2.MethodOptions.FromString(
            route.method.GetOptions().SerializeToString()
        )
        answer = options.Extensions[options_pb2.json_response_schema]
        if route.returns_http_body and not answer:
            assert "*/*" in responses[success]["content"]
        else:
            schema = responses[success]["content"]["application/json"]["schema"]
            output = route.method.output_type
            selected = route.response_fields[-1].message_type if route.response_fields else None
            if answer:  # a raw JSON answer the service renders: the message it is the form of
                output = routes.pool.FindMessageTypeByName(answer)
            elif selected is not None:  # `response_body`: the client sees that field only
                output = selected
            assert _schema(document, schema)["properties"].keys() == {
                f.json_name for f in output.fields
            }
        scope = options_pb2.Scope.Name(options.Extensions[options_pb2.required_scope])
        assert operation["x-required-scope"] == scope.removeprefix("SCOPE_").lower()


def test_raw_json_bodies_are_documented_as_the_message_they_hold() -> None:
    """The REST ingest methods take a raw google.api.HttpBody that the service parses as JSON;
    `(analytics.options.v1.json_body_schema)` names the message the body is the JSON form of."""
    document = _document()
    raw_json = {}
    for route in load_routes():
        options: Any = descriptor_pb2.MethodOptions.FromString(
            route.method.GetOptions().SerializeToString()
        )
        shape = options.Extensions[options_pb2.json_body_schema]
        if shape:
            body_type = route.body_fields[-1].message_type
            assert body_type is not None and body_type.full_name == "google.api.HttpBody"
            operation = document["paths"][_path(route)][route.http_method.lower()]
            body = operation["requestBody"]["content"]
            assert body == {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}
            }
            raw_json[route.label] = shape
    assert raw_json == {
        "POST /analytics/event": "analytics.ingest.v1.Event",
        "POST /analytics/event/batch": "analytics.ingest.v1.BatchTrackEventsRequest",
    }
    assert "google.api.HttpBody" not in document["components"]["schemas"]


def test_well_known_types_have_their_json_forms() -> None:
    schemas = _document()["components"]["schemas"]
    event = schemas["analytics.ingest.v1.Event"]["properties"]
    assert _plain(event["properties"]) == {"type": "object", "additionalProperties": True}
    assert _plain(event["timestamp"]) == {"type": "string", "format": "date-time"}
    rows = schemas["analytics.metrics.v1.RunQueryResponse"]["properties"]["rows"]
    assert rows["type"] == "array" and rows["items"]["type"] == "object"
    filters = schemas["analytics.metrics.v1.RunQueryRequest"]["properties"]["filters"]
    assert filters["additionalProperties"] == {"type": "string"}  # map<string, string>
    growth = schemas["analytics.metrics.v1.Growth"]
    assert "x-always-present" not in growth  # both fields are proto3 optional


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "description"}

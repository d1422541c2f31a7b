"""The abuse suite: what a hostile or broken client can send, through the REST gateway.

- property-based fuzzing of every operation of docs/openapi.json (generated from the protos):
  no 5xx, every 4xx the documented google.rpc.Status JSON;
- SQL injection through every string that reaches a query, read back as literal values;
- oversized and deeply nested payloads, invalid UTF-8 in body, path, query and headers, huge
  headers, many query parameters, long request targets (the gateway's request limits);
- slow clients: slowloris headers, slow bodies, a very slow export reader, while other
  clients are served;
- and, everywhere, no stack trace, SQL or ClickHouse error text in anything a client sees.

Runs on both storage backends against `cartlytics run` (a subprocess, as a user starts it);
docs/abuse.md lists what is covered and what was found.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from tests.rest import Reply, call
from tests.servers import ClickHouseServer, System, start_system

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())

# Short timeouts so the slow-client cases take seconds; rate limits off so fuzzing is not a
# test of the rate limiter (which has its own tests).
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
ABUSE_ENV = {
    "ANALYTICS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "ANALYTICS_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "ANALYTICS_RATE_LIMIT_INGEST": "0",
    "ANALYTICS_RATE_LIMIT_READ": "0",
    # Four slow readers of one key beside a fifth export (the caps: tests/test_export_limits.py).
    "ANALYTICS_EXPORT_MAX_CONCURRENT": "8",
    "ANALYTICS_EXPORT_MAX_PER_KEY": "8",
}
# The defaults of the config table, which these tests exercise as shipped.
MAX_BODY = 524288
MAX_URL = 8190
MAX_QUERY_PARAMS = 64
MAX_HEADER = 8190
MAX_HEADERS = 100


# ------------------------------------------------------------------------------ the leak check

_LEAKS = [
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'File "[^"\n]*", line \d+'),
    re.compile(r"\bSELECT\s"),
    re.compile(r"\bFROM\s"),
    re.compile(r"\bWHERE\s"),
    re.compile(r"DB::Exception"),
    re.compile(r"\bCode: \d+"),
    re.compile(r"(?i)clickhouse|chdb"),
    re.compile(r"(?i)stack ?trace"),
    re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b"),
]


def _echo_forms(sent: str) -> Iterator[str]:
    """The ways an error message may quote what the client sent (whole or shortened)."""
    for text in (sent, sent[:64], sent[:61]):
        yield text
        yield json.dumps(text)[1:-1]
        yield json.dumps(text, ensure_ascii=False)[1:-1]
        yield repr(text)[1:-1]


def leaks(text: str | bytes, echoed: Iterable[str] = ()) -> list[str]:
    """What in a client-visible text looks like a stack trace, SQL or a database error.

    `echoed`: strings the client sent, which an error may legitimately quote back.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    echoed = list(echoed)
    for sent in sorted(echoed, key=len, reverse=True):
        for form in sorted(set(_echo_forms(sent)), key=len, reverse=True):
            if form:
                text = text.replace(form, "")
    # A pattern the client's own strings match may be quoted in pieces (a parser quoting the
    # part it stopped at): only the others can tell a leak from an echo.
    patterns = [p for p in _LEAKS if not any(p.search(sent) for sent in echoed)]
    return [m.group(0) for pattern in patterns for m in [pattern.search(text)] if m]


def assert_no_leak(reply: Reply, echoed: Iterable[str] = ()) -> None:
    found = leaks(reply.body, echoed) + leaks(
        " ".join(f"{k}: {v}" for k, v in reply.headers.items()), echoed
    )
    assert not found, f"leaked {found} in {reply.status} {reply.body[:500]!r}"


def assert_error(reply: Reply, status: int | Iterable[int], echoed: Iterable[str] = ()) -> Any:
    """The reply is an error with `status` and the documented google.rpc.Status JSON body."""
    statuses = {status} if isinstance(status, int) else set(status)
    assert reply.status in statuses, (reply.status, reply.body[:500])
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    body = json.loads(reply.body)
    assert isinstance(body, dict), body
    assert conforms(body, {"$ref": "#/components/schemas/google.rpc.Status"}), body
    assert set(body) <= {"code", "message", "details"}, body
    assert isinstance(body["code"], int) and body["code"] > 0, body
    assert isinstance(body["message"], str) and body["message"], body
    for detail in body.get("details", []):
        assert isinstance(detail.get("@type"), str), body
    assert_no_leak(reply, echoed)
    return body


def violations(body: Any) -> list[dict[str, str]]:
    return [
        v
        for d in body.get("details", [])
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    ]


def names_field(body: Any, field: str) -> bool:
    """The error names `field` (a field violation, or its message)."""
    fields = [v["field"] for v in violations(body)]
    return any(f == field or f.startswith(field + ".") for f in fields) or field in body["message"]


# ------------------------------------------------------------------------- schema conformance


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema or ("allOf" in schema and len(schema["allOf"]) == 1):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = OPENAPI["components"]["schemas"][name]
        else:
            schema = {**schema["allOf"][0], **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A small OpenAPI 3.0 schema check (the subset tools/gen_openapi.py writes)."""
    schema = _resolve(schema)
    if value is None:
        return bool(schema.get("nullable"))
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return False
        required = schema.get("required", []) + schema.get("x-always-present", [])
        if any(name not in value for name in required):
            return False
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                if not conforms(item, properties[key]):
                    return False
            elif extra is False or (isinstance(extra, dict) and not conforms(item, extra)):
                return False
        return True
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema["items"]) for v in value)
    if kind == "string":
        return isinstance(value, str) and ("enum" not in schema or value in schema["enum"])
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return True  # {} (google.protobuf.Value): any JSON


# ---------------------------------------------------------------------------------- fixtures


@dataclass
class Target:
    system: System
    backend: str
    clickhouse_url: str

    @property
    def url(self) -> str:
        return self.system.http_url

    @property
    def port(self) -> int:
        return int(self.system.http_url.rsplit(":", 1)[1])


def _start(tmp: Path, clickhouse_url: str) -> System:
    return start_system(
        tmp, key="cak_abuse_" + uuid.uuid4().hex, clickhouse_url=clickhouse_url, extra_env=ABUSE_ENV
    )


@pytest.fixture(scope="module")
def _abuse_chdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    system = _start(tmp_path_factory.mktemp("abuse-chdb"), "")
    yield Target(system, "chdb", "")
    system.stop()


@pytest.fixture(scope="module")
def _abuse_server(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_server: ClickHouseServer
) -> Iterator[Target]:
    url = clickhouse_server.url.replace("/analytics", "/abuse_" + uuid.uuid4().hex[:8])
    system = _start(tmp_path_factory.mktemp("abuse-server"), url)
    yield Target(system, "clickhouse", url)
    system.stop()


@pytest.fixture
def target(backend: str, request: pytest.FixtureRequest) -> Target:
    name = "_abuse_chdb" if backend == "chdb" else "_abuse_server"
    found: Target = request.getfixturevalue(name)
    assert found.system.process.poll() is None, found.system.log()[-3000:]
    return found


def _internal_errors(target: Target) -> list[str]:
    """Lines of the system log about INTERNAL errors or unhandled exceptions."""
    return [
        line
        for line in target.system.log().splitlines()
        if "INTERNAL" in line or "unhandled" in line or "Traceback" in line
    ]


# -------------------------------------------------------------------------------- HTTP helpers


def raw_request(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library to fix them up); status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before we are done
            sock.sendall(data)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return 0, {}, data
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    with contextlib.suppress(OSError):
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def raw_reply(port: int, data: bytes) -> Reply:
    status, headers, body = raw_request(port, data)
    # Title-case the names as urllib does, so the same checks apply.
    return Reply(status, {k.title(): v for k, v in headers.items()}, body)


def _request_bytes(
    method: str, target: str, key: str, body: bytes = b"", headers: Iterable[bytes] = ()
) -> bytes:
    lines = [
        f"{method} ".encode() + target.encode("latin-1") + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        f"Authorization: Bearer {key}".encode(),
        b"Connection: close",
        *headers,
    ]
    if body or method == "POST":
        lines += [b"Content-Type: application/json", f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def track(target: Target, event: dict[str, Any]) -> Reply:
    return call("POST", f"{target.url}/analytics/event", target.system.key, event)


def export_events(target: Target, user_id: str) -> list[dict[str, Any]]:
    """Every exported event of `user_id` (NDJSON, the last two days)."""
    reply = call(
        "GET",
        f"{target.url}/analytics/export?type=events&format=ndjson&period=2d",
        target.system.key,
    )
    assert reply.status == 200, reply.body[:500]
    rows = [json.loads(line) for line in reply.body.decode().splitlines() if line]
    return [row for row in rows if row["userId"] == user_id]


def test_limit_settings_are_checked_at_start() -> None:
    from cartlytics.common.config import Config, ConfigError

    config = Config.from_env({})
    assert (config.http_max_url_bytes, config.http_max_headers) == (MAX_URL, MAX_HEADERS)
    with pytest.raises(ConfigError, match="ANALYTICS_GRPC_MAX_MESSAGE_BYTES"):
        Config.from_env({"ANALYTICS_MAX_BODY_BYTES": str(1 << 20)})
    bigger = {
        "ANALYTICS_MAX_BODY_BYTES": str(1 << 20),
        "ANALYTICS_GRPC_MAX_MESSAGE_BYTES": "8388608",
    }
    assert Config.from_env(bigger).grpc_max_message_bytes == 8 << 20
    for name in ("ANALYTICS_HTTP_HEADER_TIMEOUT", "ANALYTICS_HTTP_BODY_TIMEOUT"):
        for value in ("0", "inf"):
            with pytest.raises(ConfigError, match=name):
                Config.from_env({name: value})
    with pytest.raises(ConfigError, match="ANALYTICS_HTTP_MAX_HEADERS"):
        Config.from_env({"ANALYTICS_HTTP_MAX_HEADERS": "0"})


# ============================================================================ 1. fuzzing

# Values that reach deeper than random text: what each parameter (by name) usually holds,
# valid and not. Random text and injection strings are mixed in by the strategies.
_HINTS: dict[str, list[Any]] = {
    "period": ["30d", "7d", "1d", "12m", "24m", "0d", "367d", "25m", "1y", "-1d", "d", "30D"],
    "granularity": ["hour", "day", "week", "month", "year", "HOUR"],
    "currency": ["USD", "EUR", "JPY", "usd", "XXX", "US", "USDD"],
    "timezone": ["UTC", "Europe/Paris", "Asia/Kolkata", "America/St_Johns", "Mars/Base", "../etc"],
    "type": ["orders", "order_items", "events", "products", "customers", "users"],
    "format": ["csv", "json", "ndjson", "xlsx", "xml"],
    "from": ["2026-01-01", "1970-01-01", "2106-01-01", "9999-12-31", "2026-02-30", "0000-01-01"],
    "to": ["2026-12-31T00:00:00Z", "2026-01-01T00:00:00+14:00", "1969-12-31", "2026-13-01"],
    "steps": ["page_view", "product_view", "add_to_cart", "order_completed", "search", "x" * 80],
    "limit": [0, 1, 10, 100, 101, 10000, 10001, -1, 2**31 - 1],
    "window": [0, 1, 3600, 86400, 2592000, 2592001, -5],
    "metrics": ["revenue", "orders", "aov", "units_sold", "visitors", "conversion_rate", "nope"],
    "dimensions": ["date", "hour", "week", "month", "event", "product_id", "country", "device"],
    "orderBy": ["revenue:desc", "orders", "date:asc", "revenue:sideways", ""],
    "event": [
        "page_view",
        "product_view",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        "order_completed",
        "search",
        "custom_x",
    ],
    "userId": ["user_1", "u", ""],
    "productId": ["prod_1", "prod_2", ""],
    "orderId": ["order_1", "order_2", ""],
    "page": ["/", "/products/shirts?utm_source=x", ""],
    "timestamp": ["2026-01-15T10:35:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
    "id": ["evt_fuzz", "evt_" + "a" * 64, "", "not an id"],
}
# Fields nearly every request has (always drawn, though not always well-typed).
_USUAL_KEYS = {"event", "userId", "events", "metrics"}
_FILTER_KEYS = ["period", "currency", "timezone", "date", "hour", "product_id", "country", "page"]


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )


def _strings(name: str) -> st.SearchStrategy[str]:
    hints = [str(h) for h in _HINTS.get(name, [])]
    options: list[st.SearchStrategy[str]] = [st.text(max_size=40), st.sampled_from(INJECTIONS)]
    if hints:  # mostly the usual values, to get past the first check
        options = [st.sampled_from(hints)] * 4 + options
    return st.one_of(*options)


# Each side of every numeric limit (services/ingest/validation.py), and beyond any storage type.
BOUNDARY_NUMBERS = [0, 1, 2999, -1, 10**6, 10**6 + 1, 10**12, 10**12 + 1, 2**31, 2**32 + 1,
                    2**53 - 1, 2**53 + 1, 2**63, 10**15, 1e308]  # fmt: skip


def _properties() -> st.SearchStrategy[dict[str, Any]]:
    """Event properties: the commerce fields, mostly of the right type, and anything else."""
    amount = st.sampled_from(BOUNDARY_NUMBERS) | st.integers()
    line = st.fixed_dictionaries(
        {"productId": _strings("productId"), "price": amount, "quantity": amount},
        optional={"name": _strings("name"), "category": _strings("category")},
    )
    fields = {
        "productId": _strings("productId"),
        "orderId": _strings("orderId"),
        "total": amount,
        "currency": _strings("currency"),
        "products": st.lists(line, max_size=3),
        "page": _strings("page"),
        "query": _strings("query"),
        "price": amount,
        "quantity": amount,
    }
    known = st.fixed_dictionaries({}, optional={k: _mutated(v) for k, v in fields.items()})
    extra = st.dictionaries(st.text(max_size=12), _json_values(), max_size=3)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def _mutated(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `typed`; one time in ten a JSON value of any type."""
    return st.one_of(*[typed] * 9, _json_values())


def strategy(schema: dict[str, Any], name: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a schema of docs/openapi.json, mostly well-typed, sometimes not at all."""
    resolved = _resolve(schema)
    kind = resolved.get("type")
    typed: st.SearchStrategy[Any]
    if name == "properties":
        typed = _properties()
    elif name == "context":
        keys = st.sampled_from(["page", "userAgent", "ip", "campaign", "referrer", "locale"])
        typed = st.dictionaries(keys | st.text(max_size=12), _json_values(), max_size=6)
    elif kind == "object" and "properties" in resolved and depth < 4:
        fields = {k: strategy(v, k, depth + 1) for k, v in resolved["properties"].items()}
        typed = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in _USUAL_KEYS},
            optional={k: v for k, v in fields.items() if k not in _USUAL_KEYS},
        )
    elif kind == "object" and isinstance(resolved.get("additionalProperties"), dict):
        keys = st.text(max_size=12)
        if name == "filters":
            keys = st.sampled_from(_FILTER_KEYS) | keys
        typed = st.dictionaries(
            keys,
            strategy(resolved["additionalProperties"], name, depth + 1),
            max_size=5,
        )
    elif kind == "object":
        typed = st.dictionaries(st.text(max_size=12), _json_values(), max_size=5)
    elif kind == "array":
        typed = st.lists(
            strategy(resolved["items"], name, depth + 1),
            min_size=1 if name in _USUAL_KEYS else 0,
            max_size=5,
        )
    elif kind == "string" and resolved.get("enum"):
        typed = st.sampled_from(resolved["enum"]) | st.text(max_size=20)
    elif kind == "string" and resolved.get("format") == "date-time":
        moments = st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        )
        typed = moments.map(lambda d: d.isoformat().replace("+00:00", "Z")) | _strings(name)
    elif kind == "string":
        typed = _strings(name)
    elif kind == "integer":
        hints = [h for h in _HINTS.get(name, []) if isinstance(h, int)]
        typed = st.integers(min_value=-(2**31), max_value=2**31 - 1)
        if hints:
            typed = st.sampled_from(hints) | typed
    elif kind == "number":
        typed = st.floats(allow_nan=False, allow_infinity=False)
    elif kind == "boolean":
        typed = st.booleans()
    else:
        typed = _json_values()
    # Now and then a value of the wrong type altogether (not the body itself: it is an object,
    # or nothing gets past the first check).
    return typed if depth == 0 else _mutated(typed)


def _query_value(schema: dict[str, Any], name: str) -> st.SearchStrategy[list[str]]:
    """Query strings for one parameter (a list: repeated keys)."""
    resolved = _resolve(schema)
    if resolved.get("type") == "array":
        return st.lists(_query_value(resolved["items"], name).map(lambda v: v[0]), max_size=4)
    kind = resolved.get("type")
    if kind == "integer":
        hints = [str(h) for h in _HINTS.get(name, [])]
        values = st.integers(min_value=-(2**40), max_value=2**40).map(str) | st.text(max_size=8)
        if hints:
            values = st.sampled_from(hints) | values
    elif kind == "string" and resolved.get("enum"):
        values = st.sampled_from(resolved["enum"]) | st.text(max_size=20)
    else:
        values = _strings(name)
    return values.map(lambda v: [v])


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.method.upper()} {self.path}"


OPERATIONS = [
    Operation(method, path, spec)
    for path, item in OPENAPI["paths"].items()
    for method, spec in item.items()
]


@st.composite
def requests_for(draw: st.DrawFn, operation: Operation) -> tuple[str, bytes | None]:
    """A query string and a body (None without one) for the operation."""
    pairs: list[tuple[str, str]] = []
    for parameter in operation.spec.get("parameters", []):
        if parameter["in"] != "query" or not draw(st.booleans()):
            continue
        for value in draw(_query_value(parameter["schema"], parameter["name"])):
            pairs.append((parameter["name"], value))
    if draw(st.integers(0, 9)) == 9:  # an unknown parameter now and then
        pairs.append((draw(st.text(min_size=1, max_size=10)), draw(st.text(max_size=10))))
    query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    body: bytes | None = None
    if "requestBody" in operation.spec:
        schema = operation.spec["requestBody"]["content"]["application/json"]["schema"]
        value = draw(strategy(schema, "body"))
        body = json.dumps(value).encode()
    return query, body


# Bounded for CI (about a minute per backend on 2 busy cores), the same cases every run.
# For a deeper local hunt: CARTLYTICS_FUZZ_EXAMPLES=2000 CARTLYTICS_FUZZ_RANDOM=1.
FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("CARTLYTICS_FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=os.environ.get("CARTLYTICS_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_reply(reply: Reply, operation: Operation, echoed: Iterable[str] = ()) -> None:
    """No 5xx; a 4xx is the documented error body; a success matches its schema."""
    assert reply.status < 500, (operation.id, reply.status, reply.body[:500])
    if reply.status >= 400:
        assert_error(reply, reply.status, echoed)
        return
    assert_no_leak(reply, echoed)
    success = operation.spec["responses"][str(reply.status)]
    content = success.get("content", {})
    if "application/json" in content:
        body = json.loads(reply.body)
        assert conforms(body, content["application/json"]["schema"]), (operation.id, body)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o.id)
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_every_operation(target: Target, operation: Operation, data: st.DataObject) -> None:
    query, body = data.draw(requests_for(operation))
    url = f"{target.url}{operation.path}" + (f"?{query}" if query else "")
    raw = body if body is not None else None
    reply = call(operation.method.upper(), url, target.system.key, raw=raw)
    echoed = [urllib.parse.unquote(v) for part in query.split("&") for v in part.split("=")]
    if body is not None:
        echoed += _strings_in(json.loads(body))
    check_reply(reply, operation, echoed)


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v)]
    return []


def test_fuzzing_logged_no_internal_error(target: Target) -> None:
    """Runs after the fuzzing (file order): the service logged no INTERNAL error either."""
    assert not _internal_errors(target), _internal_errors(target)[:20]


# ============================================================================ 2. SQL injection

INJECTIONS = [
    "' OR 1=1 --",
    "'); DROP TABLE events; --",
    "\\'; DROP TABLE events; --",
    "x\\",
    "\\",
    "a\0b",
    "\u2019 OR \u20181\u2019=\u20181",  # unicode quotes
    "\uff07 OR 1=1 --",  # fullwidth apostrophe
    "{project}",
    "{start}' OR project_id != {project} --",
    "$window$currency",
    "${window}",
    "' UNION ALL SELECT 1 --",
    "1; SYSTEM SHUTDOWN",
    '" OR ""="',
    "`events`",
    "%27%20OR%201%3D1",
    "\n\r\t\x0b\x0c",
    "\u202e\u0000\ud7ff\ufffd",
    "🛒'--",
]


def _query_url(target: Target, path: str, **params: str) -> str:
    return f"{target.url}{path}?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


GET_PARAMETERS = [
    (operation.path, parameter["name"])
    for operation in OPERATIONS
    if operation.method == "get"
    for parameter in operation.spec.get("parameters", [])
    if parameter["in"] == "query"
    and "string"
    in (
        _resolve(parameter["schema"]).get("type"),
        _resolve(parameter["schema"]).get("items", {}).get("type"),
    )
]


# Parameters an operation needs before it looks at the others.
_REQUIRED = {"/analytics/export": {"type": "events"}}


@pytest.mark.parametrize(("path", "name"), GET_PARAMETERS, ids=lambda v: str(v))
def test_injection_through_query_parameters(target: Target, path: str, name: str) -> None:
    """Each string query parameter: a 400 naming it, or an answer that took it as a value."""
    for payload in INJECTIONS:
        params = {**_REQUIRED.get(path, {}), name: payload}
        reply = call("GET", _query_url(target, path, **params), target.system.key)
        assert reply.status < 500, (name, payload, reply.status, reply.body[:300])
        if reply.status == 200:
            assert_no_leak(reply, [payload])
            continue
        body = assert_error(reply, 400, [payload])
        assert names_field(body, name), (name, payload, body)


def test_injection_through_the_custom_query(target: Target) -> None:
    key = target.system.key
    url = f"{target.url}/analytics/query"
    for payload in INJECTIONS:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"metrics": [payload]}, "metrics[0]"),
            ({"metrics": ["orders"], "dimensions": [payload]}, "dimensions[0]"),
            ({"metrics": ["orders"], "filters": {payload: "x"}}, f"filters.{payload}"),
            ({"metrics": ["orders"], "filters": {"period": payload}}, "filters.period"),
            ({"metrics": ["orders"], "filters": {"currency": payload}}, "filters.currency"),
            ({"metrics": ["orders"], "filters": {"timezone": payload}}, "filters.timezone"),
            ({"metrics": ["orders"], "filters": {"date": payload}}, "filters.date"),
            ({"metrics": ["orders"], "filters": {"hour": payload}}, "filters.hour"),
            ({"metrics": ["orders"], "orderBy": payload}, "orderBy"),
        ]
        for request, field in cases:
            reply = call("POST", url, key, request)
            body = assert_error(reply, 400, [payload])
            shown = field if len(field) < 60 else field.split(".")[0]
            assert names_field(body, shown), (request, body)
        # Free-text dimension filters are values: an empty answer, not an error.
        for dimension in ("product_id", "page", "country", "region", "event", "utm_source"):
            request = {"metrics": ["events"], "filters": {dimension: payload, "period": "1d"}}
            reply = call("POST", url, key, request)
            assert reply.status == 200, (request, reply.body[:300])
            assert reply.json() == {"rows": [{"events": 0}]}, (request, reply.body[:300])


def test_injection_strings_are_stored_and_read_back_literally(target: Target) -> None:
    """Ids, names and properties that look like SQL are kept exactly, byte for byte."""
    key = target.system.key
    user = "user_inj_" + uuid.uuid4().hex[:8]
    stored: dict[str, dict[str, Any]] = {}
    for index, payload in enumerate(INJECTIONS):
        # A product view and an order whose ids, names and category are the payload.
        product = f"{payload}#{index}#{user}"
        order = f"{payload}@{index}@{user}"
        view: dict[str, Any] = {
            "event": "product_view",
            "userId": user,
            "sessionId": payload,
            "properties": {"productId": product, "name": payload, payload: payload},
            "context": {"page": payload, "userAgent": payload, "campaign": {"source": payload}},
        }
        reply = track(target, view)
        assert reply.status == 201, (payload, reply.body[:300])
        stored[reply.json()["id"]] = view
        purchase = {
            "event": "order_completed",
            "userId": user,
            "properties": {
                "orderId": order,
                "total": 1000 + index,
                "currency": "USD",
                "products": [{"productId": product, "name": payload, "category": payload,
                           "price": 1000 + index, "quantity": 1}],
            },
        }  # fmt: skip
        reply = track(target, purchase)
        assert reply.status == 201, (payload, reply.body[:300])
        stored[reply.json()["id"]] = purchase

    exported = {row["eventId"]: row for row in export_events(target, user)}
    assert set(exported) == set(stored)
    for event_id, sent in stored.items():
        row = exported[event_id]
        properties = row["properties"]
        if isinstance(properties, str):
            properties = json.loads(properties)
        assert properties == sent["properties"], row
        if sent["event"] == "product_view":
            assert row["productId"] == sent["properties"]["productId"]
            assert row["sessionId"] == sent["sessionId"]
            assert row["page"] == sent["context"]["page"]
        else:
            assert row["orderId"] == sent["properties"]["orderId"]

    # Each product, filtered by its exact id, is found once and only once.
    for index, payload in enumerate(INJECTIONS):
        product = f"{payload}#{index}#{user}"
        request = {
            "metrics": ["product_views", "revenue"],
            "filters": {"product_id": product, "period": "1d", "currency": "USD"},
        }
        reply = call("POST", f"{target.url}/analytics/query", key, request)
        assert reply.status == 200, reply.body[:300]
        assert reply.json()["rows"] == [{"product_views": 1, "revenue": 1000 + index}], payload

    # The top sellers carry the ids and names exactly.
    reply = call("GET", f"{target.url}/analytics/products?period=1d&limit=100", key)
    assert reply.status == 200
    sellers = {p["productId"]: p for p in reply.json()["topSellers"]}
    for index, payload in enumerate(INJECTIONS):
        seller = sellers[f"{payload}#{index}#{user}"]
        assert (seller["name"], seller["revenue"], seller["unitsSold"]) == (
            payload,
            1000 + index,
            1,
        )


def test_injection_strings_as_user_ids_are_kept_literally(target: Target) -> None:
    """userId reaches the visitor and customer columns: each one comes back exactly."""
    key, url = target.system.key, target.url
    tag = uuid.uuid4().hex[:8]
    users = {f"{payload}|{tag}|{index}": 500 + index for index, payload in enumerate(INJECTIONS)}
    for user, total in users.items():
        order = {"event": "order_completed", "userId": user, "properties": {
            "orderId": f"o|{user}", "total": total, "currency": "USD"}}  # fmt: skip
        assert track(target, order).status == 201
    reply = call("GET", f"{url}/analytics/export?type=customers&format=ndjson&period=1d", key)
    assert reply.status == 200, reply.body[:300]
    rows = [json.loads(line) for line in reply.body.decode().splitlines() if line]
    found = {row["customerId"]: row["revenue"] for row in rows if f"|{tag}|" in row["customerId"]}
    assert found == users
    # Figures over these visitors are computed, not derailed by their ids.
    query = {"metrics": ["revenue", "visitors", "conversion_rate"], "filters": {"period": "1d"}}
    reply = call("POST", f"{url}/analytics/query", key, query)
    assert reply.status == 200, reply.body[:300]
    reply = call("GET", f"{url}/analytics/customers?period=1d&limit=100", key)
    assert reply.status == 200, reply.body[:300]


def test_injection_in_event_names_and_ids_is_refused_naming_the_field(target: Target) -> None:
    for payload in INJECTIONS:
        for event, field in (
            ({"event": payload, "userId": "u"}, "event"),
            ({"event": "page_view", "userId": "u", "id": payload}, "id"),
            ({"event": "order_completed", "userId": "u", "properties": {
                "orderId": "o", "total": 1, "currency": payload}}, "properties.currency"),
        ):  # fmt: skip
            reply = track(target, event)
            body = assert_error(reply, 400, [payload])
            assert names_field(body, field), (event, body)


def test_injection_changed_no_table(target: Target) -> None:
    """After every injection test above: the tables are all there and still answer."""
    key = target.system.key
    for path in ("/analytics/sales", "/analytics/products", "/analytics/customers"):
        assert call("GET", f"{target.url}{path}?period=1d", key).status == 200
    user = "user_canary_" + uuid.uuid4().hex[:8]
    canary = {"event": "page_view", "userId": user, "properties": {"page": "/"}}
    assert track(target, canary).status == 201
    assert len(export_events(target, user)) == 1
    if target.clickhouse_url:
        from clickhouse_driver import Client

        database = target.clickhouse_url.rsplit("/", 1)[1]
        client = Client.from_url(target.clickhouse_url.replace(f"/{database}", "/default"))
        tables = {row[0] for row in client.execute(f"SHOW TABLES FROM {database}")}
        client.disconnect()
        assert {"events", "order_items"} <= tables, tables


def test_grpc_errors_carry_no_sql(target: Target) -> None:
    """The same payloads over gRPC: INVALID_ARGUMENT, and a message with nothing internal."""
    metadata = (("authorization", f"Bearer {target.system.key}"),)
    with grpc.insecure_channel(target.system.grpc_target) as channel:
        metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
        for payload in INJECTIONS:
            for rpc, request in (
                (metrics.GetSales, metrics_pb2.GetSalesRequest(period=payload)),
                (metrics.GetSales, metrics_pb2.GetSalesRequest(timezone=payload)),
                (metrics.RunQuery, metrics_pb2.RunQueryRequest(metrics=[payload])),
                (metrics.GetFunnel, metrics_pb2.GetFunnelRequest(steps=[payload, payload])),
            ):
                try:
                    rpc(request, metadata=metadata, timeout=30)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                    assert not leaks(error.details() or "", [payload]), error.details()


# ===================================================================== 3. oversized and nested


def test_event_and_batch_limits(target: Target) -> None:
    key, url = target.system.key, target.url
    big = {"event": "page_view", "userId": "u", "properties": {"blob": "x" * 33_000}}
    body = assert_error(track(target, big), (400, 413))
    assert "32768" in body["message"] or "bytes" in body["message"], body
    events = [{"event": "page_view", "userId": "u"}] * 1001
    body = assert_error(call("POST", f"{url}/analytics/event/batch", key, {"events": events}), 400)
    assert "1000" in body["message"], body
    # Under 1000 events but over 500 KB of JSON: refused whole by the gateway.
    padded = {"event": "page_view", "userId": "u", "properties": {"b": "y" * 600}}
    reply = call("POST", f"{url}/analytics/event/batch", key, {"events": [padded] * 900})
    assert_error(reply, 413)


def test_numbers_that_grow_as_protobuf_fit_the_grpc_limit(target: Target) -> None:
    """500 KB of JSON `1,` would be ~2.7 MB of protobuf Values. The ingest paths pass the raw
    body on (google.api.HttpBody: no growth), so the service gets it and refuses each event
    itself, by index, for its size; never the transport (429)."""
    events = [{"event": "page_view", "userId": "u", "properties": {"n": [1] * 15_000}}] * 16
    payload = json.dumps({"events": events}, separators=(",", ":")).encode()
    assert len(payload) < MAX_BODY
    reply = call("POST", f"{target.url}/analytics/event/batch", target.system.key, raw=payload)
    assert reply.status == 200, reply.body[:500]
    body = reply.json()
    too_large = {r["index"] for r in body["rejected"] if "bytes" in r["description"]}
    assert body["acceptedCount"] == 0 and too_large == set(range(16)), body["rejected"][:4]


def test_huge_body_is_refused_early(target: Target) -> None:
    """20 MB declared: 413 at once, before the body is sent, and the connection is closed."""
    head = _request_bytes("POST", "/analytics/event/batch", target.system.key)
    head = head.replace(b"Content-Length: 0", f"Content-Length: {20 * 2**20}".encode())
    with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
        sock.sendall(head + b"{" * 1000)
        status, _, body = _read_response(sock)
    assert status == 413, body
    assert json.loads(body)["code"] == 8


def test_huge_chunked_body_is_cut_off(target: Target) -> None:
    """20 MB in chunks, no length: 413 once past the limit, long before all of it is sent."""
    head = (
        b"POST /analytics/event/batch HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {target.system.key}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0
    with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
        sock.sendall(head)
        reply: tuple[int, dict[str, str], bytes] | None = None
        try:
            while sent < 20 * 2**20:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(chunk)
                sent += 65536
        except OSError:
            pass  # the server closed on us: what we want
        reply = _read_response(sock)
    assert reply[0] == 413, reply
    assert sent < 20 * 2**20, "the gateway read the whole 20 MB before refusing it"


@pytest.mark.parametrize("depth", [10_000, 1_000, 200, 101, 99, 50])
def test_deeply_nested_json(target: Target, depth: int) -> None:
    """Nesting is refused with a 400 (or accepted when shallow enough), never a 5xx."""
    nested = "[" * depth + "]" * depth
    key, url = target.system.key, target.url
    bodies = [
        ("/analytics/event", '{"event":"page_view","userId":"u","properties":{"a":%s}}'),
        ("/analytics/event", '{"event":"page_view","userId":"u","context":{"a":%s}}'),
        ("/analytics/event/batch", '{"events":[{"event":"page_view","userId":"u","properties":'
         '%s}]}'),
        ("/analytics/query", '{"metrics":["orders"],"filters":%s}'),
        ("/analytics/event", "%s"),
    ]  # fmt: skip
    for path, template in bodies:
        raw = (template % nested).encode()
        reply = call("POST", f"{url}{path}", key, raw=raw)
        assert reply.status < 500, (path, depth, reply.status, reply.body[:300])
        if reply.status >= 400:
            assert_error(reply, (400, 413))
    objects = '{"a":' * depth + "1" + "}" * depth
    raw = ('{"event":"page_view","userId":"u","properties":' + objects + "}").encode()
    reply = call("POST", f"{url}/analytics/event", key, raw=raw)
    assert reply.status < 500, (depth, reply.status, reply.body[:300])
    if reply.status >= 400:
        assert_error(reply, (400, 413))


def test_grpc_message_size_is_bounded(target: Target) -> None:
    """Over gRPC, a message past ANALYTICS_GRPC_MAX_MESSAGE_BYTES (4 MB) is refused cleanly."""
    metadata = (("authorization", f"Bearer {target.system.key}"),)
    event = ingest_pb2.Event(event="page_view", user_id="u")
    event.properties.update({"blob": "z" * 30_000})
    request = ingest_pb2.BatchTrackEventsRequest(events=[event] * 150)  # ~4.5 MB
    assert request.ByteSize() > 4 * 2**20
    with grpc.insecure_channel(target.system.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.BatchTrackEvents(request, metadata=metadata, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert not leaks(caught.value.details() or "")


# ====================================================================== 4. invalid UTF-8, headers


def test_invalid_utf8_in_body(target: Target) -> None:
    key, url = target.system.key, target.url
    for raw in (
        b'{"event":"page_view","userId":"\xff\xfe"}',
        b'{"event":"page_view","userId":"u","properties":{"\xc3\x28":1}}',
        b'{"event":"page_view","userId":"\xed\xa0\x80"}',  # an encoded surrogate
        b"\xef\xbb\xbf" + b'{"event":"page_view","userId":"u","properties":{"page":"/"}}',  # a BOM
        b'{"event":"page_view","userId":"\\ud800"}',  # a lone surrogate, escaped
    ):
        reply = call("POST", f"{url}/analytics/event", key, raw=raw)
        assert reply.status < 500, (raw, reply.status, reply.body[:300])
        if reply.status != 201:
            assert_error(reply, 400)
    reply = call("POST", f"{url}/analytics/query", key, raw=b'{"metrics":["\xff"]}')
    assert_error(reply, 400)


def test_invalid_utf8_in_path_and_query(target: Target) -> None:
    key, port = target.system.key, target.port
    for request_target in (
        "/analytics/sales?period=%ff",
        "/analytics/sales?timezone=%c3%28",
        "/analytics/sales?%ff=1",
        "/analytics/%ff",
        "/analytics/sales?period=%ed%a0%80",
    ):
        reply = call("GET", f"{target.url}{request_target}", key)
        assert_error(reply, (400, 404))
    for raw_target in (b"/analytics/sales?period=\xff", b"/analytics/\xff\xfe", b"/\x00"):
        data = _request_bytes("GET", "/X", key).replace(b"/X", raw_target, 1)
        assert_error(raw_reply(port, data), 400)


def test_invalid_utf8_and_control_bytes_in_headers(target: Target) -> None:
    key, port = target.system.key, target.port
    # A key that is not valid UTF-8 is not a key: 401, and nothing echoed.
    data = _request_bytes("GET", "/analytics/sales", "KEY").replace(b"KEY", b"\xff\xfe' OR 1=1")
    assert_error(raw_reply(port, data), 401)
    # Odd bytes in headers the gateway reads (user agent, request id, forwarded-for) are ignored.
    for header in (
        b"User-Agent: \xff\xfe\x80",
        b"X-Request-Id: \xff' OR 1=1",
        b"X-Forwarded-For: \xff, 1.2.3.4",
        b"Accept-Language: \xff\x00\x01".replace(b"\x00\x01", b"'--"),
    ):
        body = b'{"event":"page_view","userId":"u","properties":{"page":"/"}}'
        reply = raw_reply(port, _request_bytes("POST", "/analytics/event", key, body, [header]))
        assert reply.status == 201, (header, reply.status, reply.body[:300])
    # A NUL or bare CR in a header is a malformed request: 400 with the JSON body.
    for header in (b"X-Test: a\x00b", b"X-Test: a\rb"):
        reply = raw_reply(port, _request_bytes("GET", "/analytics/sales", key, b"", [header]))
        assert_error(reply, 400)


def test_request_target_header_and_parameter_limits(target: Target) -> None:
    key, port, url = target.system.key, target.port, target.url
    # Request target: at the limit it is served (here a 400 for the bogus value), past it 414.
    filler = "/analytics/sales?period="
    at_limit = filler + "x" * (MAX_URL - len(filler))
    assert_error(call("GET", f"{url}{at_limit}", key), 400)
    assert_error(call("GET", f"{url}{at_limit}x", key), 414)
    assert_error(raw_reply(port, _request_bytes("GET", at_limit + "x" * 50_000, key)), 414)
    # Query parameters: 64 (a repeated singular one: the last wins) are fine, 65 are too many.
    zones = "&".join(["timezone=UTC"] * MAX_QUERY_PARAMS)
    assert call("GET", f"{url}/analytics/sales?{zones}", key).status == 200
    body = assert_error(call("GET", f"{url}/analytics/sales?{zones}&period=1d", key), 400)
    assert "query parameters" in body["message"], body
    # One header too large, or too many of them: 431.
    big = b"X-Big: " + b"b" * (MAX_HEADER + 1)
    assert_error(raw_reply(port, _request_bytes("GET", "/analytics/sales", key, b"", [big])), 431)
    name = b"X-" + b"n" * (MAX_HEADER + 1) + b": 1"
    assert_error(raw_reply(port, _request_bytes("GET", "/analytics/sales", key, b"", [name])), 431)
    many = [b"X-H%d: 1" % i for i in range(MAX_HEADERS + 1)]
    assert_error(raw_reply(port, _request_bytes("GET", "/analytics/sales", key, b"", many)), 431)
    few = [b"X-H%d: 1" % i for i in range(MAX_HEADERS - 10)]
    reply = raw_reply(port, _request_bytes("GET", "/analytics/sales", key, b"", few))
    assert reply.status == 200, reply.body[:300]
    # Other malformed requests: 400 with the JSON body, never aiohttp's text.
    for data in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS to a plain port
        b"GET /analytics/sales HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /analytics/event HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /analytics/sales HTTP/9.9\r\n\r\n",
    ):
        reply = raw_reply(port, data)
        assert_error(reply, (400, 505))


def test_content_encodings_and_odd_methods(target: Target) -> None:
    """Found by hand: a body that is not the gzip it claims was a 500; `OPTIONS *` got
    aiohttp's plain-text 404. Compressed bodies are accepted, and bounded once inflated."""
    import gzip
    import zlib

    key, port = target.system.key, target.port
    event = b'{"event":"page_view","userId":"u","properties":{"page":"/"}}'
    for encoding, body in (
        ("gzip", b"not gzip at all"),
        ("deflate", b"not deflate"),
        ("br", b"not brotli"),
        ("gzip", gzip.compress(event)[:-12]),  # cut short
    ):
        data = _request_bytes("POST", "/analytics/event", key, body,
                              [f"Content-Encoding: {encoding}".encode()])  # fmt: skip
        assert_error(raw_reply(port, data), 400)
    for encoding, body in (("gzip", gzip.compress(event)), ("deflate", zlib.compress(event))):
        data = _request_bytes("POST", "/analytics/event", key, body,
                              [f"Content-Encoding: {encoding}".encode()])  # fmt: skip
        reply = raw_reply(port, data)
        assert reply.status == 201, (encoding, reply.body[:300])
    # 20 MB of JSON whitespace in 20 KB of gzip: refused once the inflated body passes the limit.
    bomb = gzip.compress(b'{"events":[' + b" " * (20 << 20) + b"]}", compresslevel=9)
    assert len(bomb) < 100_000
    data = _request_bytes("POST", "/analytics/event/batch", key, bomb, [b"Content-Encoding: gzip"])
    assert_error(raw_reply(port, data), 413)
    for raw in (
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"TRACE /analytics/sales HTTP/1.1\r\nHost: x\r\n\r\n",
        b"FOO /analytics/sales HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /analytics/../analytics/sales HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert_error(raw_reply(port, raw), (400, 404, 405))  # 405: a known path (with Allow)


# ============================================================== values at the edges

# Zones renamed or added lately (which an old server's own tz database may not know), and
# odd legal names.
ODD_ZONES = [
    "Europe/Kyiv", "America/Ciudad_Juarez", "Pacific/Kanton", "America/Nuuk", "Factory",
    "posixrules", "localtime", "Etc/GMT+12", "Etc/GMT-14", "Pacific/Kiritimati",
    "Asia/Kathmandu", "America/St_Johns", "Zulu", "ROC", "EST5EDT",
]  # fmt: skip
ZONED_READS = [
    "/analytics/sales?granularity=hour&period=2d",
    "/analytics/sales?granularity=week&period=3m",
    "/analytics/products?period=1d",
    "/analytics/customers?period=1d",
    "/analytics/funnel?period=1d",
    "/analytics/realtime?currency=USD",
    "/analytics/export?type=orders&period=1d",
    "/analytics/export?type=events&period=1d&format=xlsx",
]


def test_every_time_zone_python_knows_is_answered(target: Target) -> None:
    """A zone Python accepts is either answered or a 400 naming `timezone`, on both servers."""
    import zoneinfo

    key, url = target.system.key, target.url
    zones = sorted(zoneinfo.available_timezones())
    for zone in zones:  # every zone, on the cheapest zoned read
        reply = call("GET", f"{url}/analytics/sales?granularity=day&period=2d&timezone={zone}", key)
        assert reply.status == 200 or names_field(assert_error(reply, 400), "timezone"), zone
    for zone in ODD_ZONES:
        for path in ZONED_READS:
            reply = call("GET", f"{url}{path}&timezone={zone}", key)
            assert reply.status == 200 or names_field(assert_error(reply, 400), "timezone"), (
                zone,
                path,
            )
        query = {
            "metrics": ["revenue", "visitors", "orders"],
            "dimensions": ["hour", "date", "week", "month"],
            "filters": {"timezone": zone, "period": "2d"},
        }
        reply = call("POST", f"{url}/analytics/query", key, query)
        assert reply.status == 200 or names_field(assert_error(reply, 400), "filters.timezone")


@pytest.mark.parametrize(
    "filters",
    [
        {"hour": "0001-01-01T00:00:00+14:00"},
        {"hour": "9999-12-31T23:59:59-12:00"},
        {"hour": "2026-01-01T00:00:00.123456+00:00"},
        {"date": "0001-01-01"},
        {"date": "9999-12-31"},
        {"week": "1970-01-01"},
        {"month": "2106-02-07"},
    ],
    ids=str,
)
def test_query_time_filters_at_the_edges(target: Target, filters: dict[str, str]) -> None:
    """Time filters far outside what ClickHouse's DateTime holds: an empty answer or a 400."""
    query = {
        "metrics": ["revenue", "visitors", "orders"],
        "dimensions": ["hour", "date"],
        "filters": {"period": "2d", **filters},
    }
    reply = call("POST", f"{target.url}/analytics/query", target.system.key, query)
    if reply.status == 200:
        assert reply.json() == {"rows": []}, reply.body[:300]
    else:
        body = assert_error(reply, 400)
        assert names_field(body, "filters." + next(iter(filters))), body


@pytest.mark.parametrize(
    "bounds",
    [
        "from=0001-01-01",
        "to=9999-12-31",
        "from=1970-01-01&to=1970-01-01",
        "from=2106-01-01",
        "from=2026-01-01T00:00:00-23:59",
        "from=2026-01-02&to=2026-01-01",
        "period=24m&from=1969-12-31T23:59:59Z",
    ],
)
def test_export_bounds_at_the_edges(target: Target, bounds: str) -> None:
    reply = call("GET", f"{target.url}/analytics/export?type=orders&{bounds}", target.system.key)
    assert reply.status < 500, reply.body[:300]
    if reply.status != 200:
        body = assert_error(reply, 400)
        assert names_field(body, "from") or names_field(body, "to"), body


# ============================================================== findings kept as regressions


def test_sent_at_centuries_from_timestamp_is_a_400(target: Target) -> None:
    """Found by fuzzing: the clock-skew correction overflowed (OverflowError, a 500)."""
    for timestamp, sent_at in (
        ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
        ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"),
    ):
        event = {"event": "page_view", "userId": "u", "properties": {"page": "/"},
                 "timestamp": timestamp, "sentAt": sent_at}  # fmt: skip
        body = assert_error(track(target, event), 400)
        assert names_field(body, "timestamp"), body


def test_grpc_timestamps_out_of_range_are_invalid_arguments(target: Target) -> None:
    """Found by review of the same path: a gRPC client can send any seconds and nanos, which
    ToDatetime refused with a ValueError (a 500); now a violation naming the field."""
    metadata = (("authorization", f"Bearer {target.system.key}"),)
    bad = ingest_pb2.Event(event="page_view", user_id="u")
    bad.properties.update({"page": "/"})
    bad.timestamp.seconds = 2**62
    late = ingest_pb2.Event(event="page_view", user_id="u")
    late.properties.update({"page": "/"})
    late.sent_at.nanos = -5
    with grpc.insecure_channel(target.system.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.TrackEvent(ingest_pb2.TrackEventRequest(event=bad), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "timestamp" in (caught.value.details() or "")
        good = ingest_pb2.Event(event="page_view", user_id="u")
        good.properties.update({"page": "/"})
        batch = ingest_pb2.BatchTrackEventsRequest(events=[bad, good, late])
        reply = stub.BatchTrackEvents(batch, metadata=metadata, timeout=30)
    assert reply.accepted_count == 1 and [a.index for a in reply.accepted] == [1]
    assert {(r.index, r.field) for r in reply.rejected} == {(0, "timestamp"), (2, "sentAt")}


# ============================================================================ 5. slow clients


def _served_meanwhile(target: Target, seconds: float) -> list[float]:
    """Latencies of ordinary requests made one after another for `seconds`."""
    latencies = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()
        reply = call("GET", f"{target.url}/analytics/realtime", target.system.key, timeout=20)
        assert reply.status == 200, reply.body[:300]
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    return latencies


def test_slowloris_does_not_block_others_and_is_cut_off(target: Target) -> None:
    """50 connections trickling header bytes: others are served; each is closed by the
    header timeout (3 s here), not held for ever."""
    head = _request_bytes("GET", "/analytics/sales", target.system.key)[:-2]  # never complete
    sockets = [socket.create_connection(("127.0.0.1", target.port)) for _ in range(50)]
    closed_after: dict[int, float] = {}
    started = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        position = 0
        while not stop.is_set() and len(closed_after) < len(sockets):
            for index, sock in enumerate(sockets):
                if index in closed_after:
                    continue
                try:
                    sock.send(head[position % len(head) : position % len(head) + 1])
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable and not sock.recv(4096, socket.MSG_PEEK):
                        closed_after[index] = time.monotonic() - started
                except OSError:
                    closed_after[index] = time.monotonic() - started
            position += 1
            time.sleep(0.2)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        latencies = _served_meanwhile(target, HEADER_TIMEOUT + 1)
        thread.join(timeout=HEADER_TIMEOUT + 30)
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()
    assert len(latencies) >= 2 and max(latencies) < 15, latencies
    assert len(closed_after) == len(sockets), f"{len(closed_after)} of {len(sockets)} closed"
    assert max(closed_after.values()) < HEADER_TIMEOUT + 20, closed_after


def test_slow_body_is_408(target: Target) -> None:
    body = b'{"event":"page_view","userId":"u","properties":{"page":"/"}}'
    data = _request_bytes("POST", "/analytics/event", target.system.key, body)
    head, payload = data[: data.index(b"\r\n\r\n") + 4], data[data.index(b"\r\n\r\n") + 4 :]
    with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
        sock.sendall(head + payload[:5])
        started = time.monotonic()
        for byte in payload[5:]:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                break
            with contextlib.suppress(OSError):
                sock.send(bytes([byte]))
        status, _, reply = _read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408, (status, reply)
    assert json.loads(reply)["code"] == 4
    assert elapsed < BODY_TIMEOUT + 15, elapsed


def test_slow_export_reader_does_not_block_others(target: Target) -> None:
    """A client that reads a large export a few KB at a time holds only its own stream."""
    key = target.system.key
    user = "user_slow_" + uuid.uuid4().hex[:8]
    events = [
        {"event": "page_view", "userId": user, "properties": {"page": "/p", "pad": "q" * 400}}
    ] * 500
    for _ in range(8):  # 4000 events, ~2 MB of export
        reply = call("POST", f"{target.url}/analytics/event/batch", key, {"events": events})
        assert reply.status == 200 and reply.json()["acceptedCount"] == 500
    request = _request_bytes("GET", "/analytics/export?type=events&format=ndjson&period=1d", key)
    slow = [socket.create_connection(("127.0.0.1", target.port)) for _ in range(4)]
    for sock in slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
    stop = threading.Event()
    received = [0] * len(slow)

    def sip(index: int) -> None:
        sock = slow[index]
        while not stop.is_set():
            with contextlib.suppress(OSError):
                chunk = sock.recv(1024)
                if not chunk:
                    return
                received[index] += len(chunk)
            time.sleep(0.2)

    with ThreadPoolExecutor(len(slow)) as pool:
        futures = [pool.submit(sip, i) for i in range(len(slow))]
        try:
            latencies = _served_meanwhile(target, 4)
            other = call(
                "GET", f"{target.url}/analytics/export?type=orders&format=csv&period=1d", key
            )
            assert other.status == 200
        finally:
            stop.set()
            for sock in slow:
                sock.close()
            for future in futures:
                future.result()
    assert all(received), received
    assert len(latencies) >= 2 and max(latencies) < 15, latencies


def test_service_survived(target: Target) -> None:
    """Last: the system is still up and logged no internal error through the whole file."""
    assert target.system.process.poll() is None
    assert call("GET", f"{target.url}/healthz").status == 200
    assert not _internal_errors(target), _internal_errors(target)[:20]

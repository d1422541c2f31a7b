"""Issue 12, item 8: the smaller slips, each as found from outside, on both backends.

- digits of other scripts (``period=٣٣d``) were read as numbers by Python's ``\\d`` and int():
  200 on sales, and a 500 on export (a non-ASCII Content-Disposition header);
- server reflection answered v1alpha only, while current clients ask for v1 first;
- the data directory (secrets, stored events) was readable by every local user.

(Time zones: tests/test_timezones.py; a wrong method's 405: tests/test_gateway_transcoding.py.)
"""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from services.export.request import ExportPlan
from tests.rest import Reply, call
from tests.servers import System, start_system

# Digits of other scripts, which Python's \d, int() and float() read as 0-9.
FOREIGN_DIGITS = {
    "arabic-indic": "\u0663\u0663",  # ٣٣
    "fullwidth": "\uff13\uff13",  # FULLWIDTH DIGIT THREE, twice
    "devanagari": "\u0969\u0969",  # ३३
}


def _violations(reply: Reply) -> list[dict[str, str]]:
    body = reply.json()
    return [v for d in body.get("details", []) for v in d.get("fieldViolations", [])]


def _refused(reply: Reply, field: str) -> None:
    assert reply.status == 400, (field, reply.status, reply.body[:300])
    body = reply.json()
    fields = [v["field"] for v in _violations(reply)]
    assert field in fields or f'"{field}"' in body["message"] or field in body["message"], body


# ------------------------------------------------------------------ b. ASCII digits only


@pytest.mark.parametrize("digits", list(FOREIGN_DIGITS.values()), ids=list(FOREIGN_DIGITS))
def test_digits_of_other_scripts_are_refused_everywhere(system: System, digits: str) -> None:
    url, key = system.http_url, system.key
    for path in (
        "/analytics/sales",
        "/analytics/products",
        "/analytics/customers",
        "/analytics/funnel?steps=page_view,order_completed",
        "/analytics/export?type=orders",
        "/analytics/export?type=events&format=xlsx",
    ):
        sep = "&" if "?" in path else "?"
        _refused(
            call("GET", f"{url}{path}{sep}period={urllib.parse.quote(digits)}d", key), "period"
        )
    _refused(
        call("GET", f"{url}/analytics/products?limit={urllib.parse.quote(digits)}", key), "limit"
    )
    day = f"2024-01-{digits}"
    _refused(
        call("GET", f"{url}/analytics/export?type=orders&from={urllib.parse.quote(day)}", key),
        "from",
    )
    query: dict[str, Any] = {"metrics": ["orders"]}
    _refused(
        call("POST", f"{url}/analytics/query", key, {**query, "filters": {"period": digits + "d"}}),
        "filters.period",
    )
    _refused(
        call("POST", f"{url}/analytics/query", key, {**query, "filters": {"date": day}}),
        "filters.date",
    )
    # A JSON string for an integer field: protobuf's Python parser reads it with int().
    _refused(call("POST", f"{url}/analytics/query", key, {**query, "limit": digits}), "limit")
    # The same requests with ASCII digits are answered.
    assert call("GET", f"{url}/analytics/sales?period=33d", key).status == 200
    assert call("POST", f"{url}/analytics/query", key, {**query, "limit": "33"}).status == 200


def test_underscores_in_numbers_are_refused(system: System) -> None:
    """Python's int() reads "1_0" as 10; protobuf's C++ parser (Envoy) refuses it."""
    reply = call("POST", f"{system.http_url}/analytics/query", system.key,
                 {"metrics": ["orders"], "limit": "1_0"})  # fmt: skip
    _refused(reply, "limit")


@pytest.mark.parametrize("period", ["%D9%A3%D9%A3d", "7d%0A"], ids=["arabic-indic", "newline"])
def test_export_period_that_is_not_ascii_nd_is_a_400_not_a_500(system: System, period: str) -> None:
    """Both were 500s: the period went into the file name, and the Content-Disposition metadata
    (`7d\n`: a regex's `$` matches before a final newline)."""
    url = f"{system.http_url}/analytics/export?type=orders&period={period}"
    reply = call("GET", url, system.key)
    _refused(reply, "period")
    assert "content-disposition" not in {name.lower() for name in reply.headers}
    _refused(
        call("GET", f"{system.http_url}/analytics/sales?period={period}", system.key), "period"
    )


@pytest.mark.parametrize(
    "label", ["30d", "\u0663\u0663d", 'a b"c;\\d', "caf\u00e9\u2028\x00", "\U0001f600" * 3]
)
def test_content_disposition_is_ascii_for_any_file_name(label: str) -> None:
    """RFC 6266: a plain token as it is; anything else as an ASCII fallback in quotes and the
    exact name, percent-encoded UTF-8, in RFC 5987's `filename*`."""
    plan = ExportPlan("orders", "csv", ZoneInfo("UTC"), None, None, "", label)
    header = plan.content_disposition
    assert header.isascii() and header.isprintable(), header
    name = f"orders_{label}.csv"
    if label == "30d":
        assert header == "attachment; filename=orders_30d.csv"
        return
    disposition, fallback, extended = (part.strip() for part in header.split(";"))
    assert disposition == "attachment"
    assert fallback.startswith('filename="') and fallback.endswith('"')
    assert '"' not in fallback[len('filename="') : -1] and "\\" not in fallback
    assert extended.startswith("filename*=UTF-8''")
    assert urllib.parse.unquote(extended.removeprefix("filename*=UTF-8''")) == name


# ------------------------------------------------------------- d. server reflection v1

# grpc.reflection.v1 as its wire definition, written out here so that the client is generated by
# protoc on its own (not from the server's v1alpha code). The Python module path is not
# grpc/reflection/v1 so that it cannot shadow grpcio's `grpc` package.
REFLECTION_V1 = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest { string containing_type = 1; int32 extension_number = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse { string base_type_name = 1; repeated int32 extension_number = 2; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""


@pytest.fixture(scope="module")
def reflection_v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    """The v1 messages and stub, generated by protoc (grpcio-tools) from REFLECTION_V1."""
    out = tmp_path_factory.mktemp("reflection_v1")
    (out / "slips_reflection_v1").mkdir()
    proto = out / "slips_reflection_v1" / "reflection.proto"
    proto.write_text(REFLECTION_V1)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(proto)],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("slips_reflection_v1.reflection_pb2")
        stubs = importlib.import_module("slips_reflection_v1.reflection_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return messages, stubs


SERVICES = {
    "analytics.ingest.v1.IngestService",
    "analytics.metrics.v1.MetricsService",
    "analytics.export.v1.ExportService",
    "analytics.admin.v1.AdminService",
    "grpc.health.v1.Health",
}


def test_reflection_v1_lists_and_describes_the_services(
    system: System, reflection_v1: tuple[ModuleType, ModuleType]
) -> None:
    messages, stubs = reflection_v1
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = stubs.ServerReflectionStub(channel)
        path = stub.ServerReflectionInfo._method
        assert path == b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

        def ask(**request: str) -> Any:
            (reply,) = stub.ServerReflectionInfo(
                iter([messages.ServerReflectionRequest(**request)]), timeout=10
            )
            assert not reply.HasField("error_response"), reply.error_response
            return reply

        listed = {s.name for s in ask(list_services="").list_services_response.service}
        assert listed >= SERVICES, listed
        assert {"grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= listed  # fmt: skip
        # What grpcurl does next: fetch each service's file (with its dependencies) and build it.
        for service in sorted(listed):
            reply = ask(file_containing_symbol=service)
            pool = descriptor_pool.DescriptorPool()
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reply.file_descriptor_response.file_descriptor_proto
            ]
            pending = {f.name: f for f in files}
            while pending:  # dependencies first
                for name, file in list(pending.items()):
                    if all(dep not in pending for dep in file.dependency):
                        pool.Add(file)
                        del pending[name]
            assert pool.FindServiceByName(service).methods, service
        v1 = descriptor_pool.DescriptorPool()
        (raw,) = ask(file_containing_symbol="grpc.reflection.v1.ServerReflection")\
            .file_descriptor_response.file_descriptor_proto  # fmt: skip
        v1.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
        served = v1.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        ours = messages.ServerReflectionRequest.DESCRIPTOR
        assert [(f.name, f.number, f.type) for f in served.fields] == [
            (f.name, f.number, f.type) for f in ours.fields
        ]


# ------------------------------------------------------------- e. an owner-only data dir


def _loose(root: Path) -> list[str]:
    """Every entry under ``root`` (and itself) with a group or other permission bit."""
    found = []
    for entry in [root, *root.rglob("*")]:
        try:
            info = entry.lstat()
        except FileNotFoundError:  # gone since listed (the snapshot keeper's stage table)
            continue
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
            found.append(f"{entry.relative_to(root.parent)} {stat.filemode(info.st_mode)}")
    return found


def test_the_data_dir_is_owner_only(system: System) -> None:
    """After start, events stored, an export and a query: nothing in the data dir is open to the
    group or to others (the chdb store, valkey's files, the IP salt, the log the test wrote)."""
    url, key = system.http_url, system.key
    order = {"orderId": f"dd_{uuid.uuid4().hex[:8]}", "total": 1200, "currency": "USD"}
    event = {"event": "order_completed", "userId": "dd_user", "properties": order}
    assert call("POST", f"{url}/analytics/event", key, event).status == 201
    assert call("GET", f"{url}/analytics/export?type=orders&period=2d", key).status == 200
    assert call("GET", f"{url}/analytics/realtime", key).status == 200
    assert (system.data_dir / "ip_salt").exists()
    assert _loose(system.data_dir) == []


@pytest.mark.parametrize("backend", ["chdb", "clickhouse"])
def test_a_world_readable_data_dir_is_tightened_at_start(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A data dir left open by an earlier version (0755 folders, 0644 secrets) is made
    owner-only at start; the generated bootstrap key and everything the stores write too."""
    url = ""
    if backend == "clickhouse":
        server = request.getfixturevalue("clickhouse_server")
        url = server.url.replace("/analytics", "/dd_" + uuid.uuid4().hex[:8])
    data_dir = tmp_path / "data"
    (data_dir / "old" / "deeper").mkdir(parents=True)
    for folder in (data_dir, data_dir / "old", data_dir / "old" / "deeper"):
        folder.chmod(0o755)
    (data_dir / "ip_salt").write_text("a salt from an earlier version\n")
    (data_dir / "old" / "deeper" / "notes.txt").write_text("x")
    (data_dir / "ip_salt").chmod(0o644)
    (data_dir / "old" / "deeper" / "notes.txt").chmod(0o666)
    os.symlink("/etc/hostname", data_dir / "link")  # not followed: /etc/hostname keeps its mode
    before = os.stat("/etc/hostname").st_mode
    assert len(_loose(data_dir)) == 5
    system = start_system(
        data_dir, key="cak_test_" + uuid.uuid4().hex, clickhouse_url=url,
        extra_env={"ANALYTICS_BOOTSTRAP_KEY": ""},
    )  # fmt: skip
    try:
        assert call("GET", f"{system.http_url}/analytics/realtime", system.key).status in (200, 401)
        assert stat.S_IMODE((data_dir / "bootstrap_key").stat().st_mode) == 0o600
        assert (data_dir / "ip_salt").read_text() == "a salt from an earlier version\n"
        assert _loose(data_dir) == []
        assert os.stat("/etc/hostname").st_mode == before
        assert "data dir made owner-only" in system.log()
    finally:
        system.stop()
    assert _loose(data_dir) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"metrics": ["revenue"], "foo": 1}, 'unknown field "foo"'),
        ({"metrics": ["revenue"], "limit": "x"}, 'field "limit" must be an integer'),
        ({"metrics": 5}, 'field "metrics" must be a list of strings'),
        ({"metrics": ["revenue"], "filters": {"period": 7}}, 'field "filters" must be an object'),
    ],
)
def test_a_body_protobuf_refuses_is_explained_in_the_apis_words(
    system: System, body: dict[str, Any], expected: str
) -> None:
    """Schemathesis found `POST /analytics/query` answering protobuf's own text (the internal
    message type, Python's `invalid literal for int()`)."""
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
    assert reply.status == 400, reply.body
    message = reply.json()["message"]
    assert expected in message, message
    for internal in ("analytics.metrics", "RunQueryRequest", "int()", "bytes-like", "Traceback"):
        assert internal not in message, message

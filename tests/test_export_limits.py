"""Exports are capped per API key and per process, and a hang-up is routine (issue 12, item 7).

Before: any number of exports streamed at once (24 slow readers took the process from 0.6 to
1.0 GB, 192 to 2.85 GB, and ingestion beside them stalled for seconds), and each client that
hung up mid-export left two tracebacks at ERROR (the gateway's "Connection lost", gRPC's failed
write). Here a system runs with ANALYTICS_EXPORT_MAX_CONCURRENT=3 and
ANALYTICS_EXPORT_MAX_PER_KEY=2, and holds ~16 MB of events, so that an export whose client
stops reading stalls mid-way (far more than the socket and HTTP/2 windows hold).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc
from cartlytics.gen.analytics.export.v1 import export_pb2, export_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2
from tests.rest import Reply, call
from tests.servers import ClickHouseServer, System, start_system

T = TypeVar("T")

MAX_CONCURRENT = 3
MAX_PER_KEY = 2
RETRY_AFTER = "5"  # docs/export.md
EVENTS = 8000
PAD = 2000  # bytes of properties per event: ~16 MB of NDJSON in all
EXPORT = "/analytics/export?type=events&format=ndjson&period=7d"
DEADLINE = 60.0


@dataclass
class Capped:
    system: System
    other_key: str  # a second read key of the same project


def _create_read_key(system: System) -> str:
    request = admin_pb2.CreateKeyRequest(
        project_id="default", scopes=[options_pb2.SCOPE_READ], name="export-limits"
    )
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply = stub.CreateKey(request, metadata=_auth(system.key), timeout=30)
    secret: str = reply.secret
    # Usable at once, but a periodic key refresh that read the table just before the insert can
    # still replace the key ring without it for one interval (2 s): wait until it is in for good.
    for _ in range(2):
        _eventually(lambda: _authenticated(system, secret), "the new key accepted")
        time.sleep(2.5)
    _eventually(lambda: _authenticated(system, secret), "the new key accepted")
    return secret


def _authenticated(system: System, key: str) -> bool | None:
    reply = call("GET", f"{system.http_url}/analytics/realtime", key)
    return True if reply.status == 200 else None


def _auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def _capped(directory: Path, clickhouse_url: str) -> Iterator[Capped]:
    system = start_system(
        directory,
        key="cak_test_" + uuid.uuid4().hex,
        clickhouse_url=clickhouse_url,
        extra_env={
            "ANALYTICS_EXPORT_MAX_CONCURRENT": str(MAX_CONCURRENT),
            "ANALYTICS_EXPORT_MAX_PER_KEY": str(MAX_PER_KEY),
        },
    )
    try:
        batch = 200
        for start in range(0, EVENTS, batch):
            events = [
                {
                    "event": "page_view",
                    "userId": f"u{i}",
                    "properties": {"page": "/", "pad": "p" * PAD},
                }
                for i in range(start, start + batch)
            ]
            reply = call(
                "POST", f"{system.http_url}/analytics/event/batch", system.key, {"events": events}
            )
            assert reply.status == 200 and reply.json()["acceptedCount"] == batch, reply.body[:300]
        yield Capped(system, _create_read_key(system))
    finally:
        system.stop()


@pytest.fixture(scope="module")
def _capped_chdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capped]:
    yield from _capped(tmp_path_factory.mktemp("capped-chdb"), "")


@pytest.fixture(scope="module")
def _capped_server(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_server: ClickHouseServer
) -> Iterator[Capped]:
    url = clickhouse_server.url.replace("/analytics", "/capped_" + uuid.uuid4().hex[:8])
    yield from _capped(tmp_path_factory.mktemp("capped-server"), url)


@pytest.fixture
def capped(backend: str, request: pytest.FixtureRequest) -> Capped:
    name = "_capped_chdb" if backend == "chdb" else "_capped_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


class SlowReader:
    """An export client that reads the response head and a little, then stops reading."""

    def __init__(self, system: System, key: str) -> None:
        address = urlsplit(system.http_url)
        self.sock = socket.socket()
        # A small receive window, set before connecting: the export stalls instead of filling
        # this socket.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((address.hostname, address.port))
        self.sock.sendall(
            f"GET {EXPORT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, data
            data += chunk
        head, _, self.body = data.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])

    def finish(self) -> int:
        """Read the rest to the end; the bytes read in all."""
        size = len(self.body)
        while chunk := self.sock.recv(1 << 16):
            size += len(chunk)
        self.sock.close()
        return size

    def hang_up(self) -> None:
        # RST, as a client that crashes or is killed: the server learns of it at once.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _eventually(attempt: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = attempt()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {DEADLINE}s: {what}")


def _holder(system: System, key: str) -> SlowReader | None:
    """A reader that got a slot (200), or None when refused (429)."""
    reader = SlowReader(system, key)
    if reader.status == 200:
        return reader
    assert reader.status == 429, reader.body[:300]
    reader.finish()
    return None


def _check_refused(reply: Reply, subject: str) -> None:
    assert reply.status == 429, (reply.status, reply.body[:300])
    headers = {name.lower(): value for name, value in reply.headers.items()}
    assert headers.get("retry-after") == RETRY_AFTER, reply.headers
    body = reply.json()
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    details = {d["@type"].rpartition(".")[2]: d for d in body["details"]}
    assert details["ErrorInfo"]["reason"] == "EXPORT_CONCURRENCY_LIMIT"
    assert details["RetryInfo"]["retryDelay"] == f"{RETRY_AFTER}s"
    assert details["QuotaFailure"]["violations"][0]["subject"].startswith(subject)


def _export(system: System, key: str) -> Reply:
    return call("GET", system.http_url + EXPORT, key, timeout=DEADLINE)


def test_exports_past_the_caps_are_429_with_retry_after(capped: Capped) -> None:
    system, a, b = capped.system, capped.system.key, capped.other_key
    held: list[SlowReader] = []
    try:
        held += [SlowReader(system, a) for _ in range(MAX_PER_KEY)]
        assert [r.status for r in held] == [200] * MAX_PER_KEY, [r.body[:300] for r in held]
        _check_refused(_export(system, a), "api_key:")  # this key's own cap

        held.append(SlowReader(system, b))  # another key: a slot of its own
        assert held[-1].status == 200, held[-1].body[:300]
        _check_refused(_export(system, b), "exports")  # the process's cap (3)

        # Over gRPC: RESOURCE_EXHAUSTED with a RetryInfo and the retry-after metadata.
        with grpc.insecure_channel(system.grpc_target) as channel:
            stub = export_pb2_grpc.ExportServiceStub(channel)
            request = export_pb2.ExportDataRequest(type="events", format="ndjson", period="7d")
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.ExportData(request, metadata=_auth(b), timeout=DEADLINE))
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        status = rpc_status.from_call(error)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details)
        assert retry.retry_delay.seconds == int(RETRY_AFTER)
        assert dict(error.trailing_metadata() or ()).get("retry-after") == RETRY_AFTER

        # A client that hangs up gives its slot back.
        held.pop(0).hang_up()
        held.append(_eventually(lambda: _holder(system, a), "a slot after a hang-up"))

        # So does one that reads its export to the end.
        finished = held.pop(0)
        assert finished.finish() > EVENTS * PAD
        held.append(_eventually(lambda: _holder(system, b), "a slot after a finished export"))
        assert "Traceback" not in system.log()
    finally:
        for reader in held:
            reader.hang_up()


def _new_lines(system: System, offset: int) -> list[str]:
    return [line for line in system.log()[offset:].splitlines() if line.strip()]


def _settled(system: System, offset: int, wanted: int) -> list[str]:
    """The log lines after ``offset`` once ``wanted`` "rpc cancelled" lines are there, and
    nothing more was written for a second."""

    def look() -> list[str] | None:
        lines = _new_lines(system, offset)
        return lines if sum("rpc cancelled" in line for line in lines) >= wanted else None

    lines = _eventually(look, "the hang-up in the log")
    while True:
        time.sleep(1.0)
        again = _new_lines(system, offset)
        if again == lines:
            return lines
        lines = again


def test_a_client_hanging_up_is_one_info_line(capped: Capped) -> None:
    system, a, b = capped.system, capped.system.key, capped.other_key
    # Every slot, so that no export of the previous test is still ending (and logging): a slot
    # is given back just before the cancelled call's line is written.
    held = [_eventually(lambda: _holder(system, a), "a free slot") for _ in range(MAX_PER_KEY)]
    held.append(_eventually(lambda: _holder(system, b), "a free slot"))
    try:
        offset = len(system.log())
        held.pop(0).hang_up()
        [line] = _settled(system, offset, 1)
        assert "[info" in line and "rpc cancelled" in line and "ExportData" in line, line

        # The same for a gRPC client that cancels its stream after the first chunk.
        offset = len(system.log())
        with grpc.insecure_channel(system.grpc_target) as channel:
            stub = export_pb2_grpc.ExportServiceStub(channel)
            request = export_pb2.ExportDataRequest(type="events", format="ndjson", period="7d")
            stream = stub.ExportData(request, metadata=_auth(a), timeout=DEADLINE)
            assert next(stream).data
            stream.cancel()
        [line] = _settled(system, offset, 1)
        assert "[info" in line and "rpc cancelled" in line and "ExportData" in line, line
    finally:
        for reader in held:
            reader.hang_up()
    assert "Traceback" not in system.log()
    assert "[error" not in system.log()

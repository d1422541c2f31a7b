"""Every error is a bounded status (issue 12, item 5): many or huge violations stay a 400.

A status travels as gRPC trailers: its message percent-encoded in ``grpc-message``, the whole
google.rpc.Status base64-encoded in ``grpc-status-details-bin``. Past gRPC's 8 KiB metadata
limit the call was dropped, and the gateway answered what gRPC said instead, RESOURCE_EXHAUSTED,
as a 429 without Retry-After: 10-20 unknown metrics (each repeating the whole catalogue) were a
429, and a client that retries 429s retried a permanent error for ever.

Sizes here are computed in the test (base64, percent-encoding) from what arrives, not with the
code's own arithmetic. The expected catalogues are tests/oracle_query.py's, from docs/query.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cartlytics.common.errors import FieldViolation, invalid_argument
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from gateway import create_app
from tests import oracle_query
from tests.rest import Reply, call
from tests.servers import System

GRPC_METADATA_LIMIT = 8192  # gRPC's default (soft) limit on received metadata
BUDGET = 4096  # what docs/abuse.md promises for grpc-message + grpc-status-details-bin
LISTED = 20  # violations listed at most (docs/abuse.md)
COUNTS = (10, 20, 100, 1000)
FILTERS = tuple(dict.fromkeys(("period", "currency", "timezone", *oracle_query.DIMENSIONS)))


def _percent_encoded(message: str) -> int:
    """Bytes of a grpc-message value: printable ASCII but '%' as is, any other byte as %XX."""
    return sum(1 if 0x20 <= b <= 0x7E and b != ord("%") else 3 for b in message.encode())


def _trailer_bytes(status: status_pb2.Status) -> int:
    return _percent_encoded(status.message) + len(base64.b64encode(status.SerializeToString()))


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _details(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["@type"].rpartition(".")[2]: d for d in body.get("details", [])}


def _check_400(reply: Reply, expected: list[tuple[str, str]], catalogue: dict[str, str]) -> None:
    """A 400 listing the first violations of ``expected`` (field, description), each once, with
    the accepted names once in the ErrorInfo metadata and the count of the rest."""
    assert reply.status == 400, (reply.status, reply.body[:300])
    assert "retry-after" not in _lower(reply.headers)
    assert len(reply.body) < GRPC_METADATA_LIMIT, len(reply.body)
    body = reply.json()
    assert body["code"] == code_pb2.INVALID_ARGUMENT
    details = _details(body)
    info = details["ErrorInfo"]
    assert info["reason"] == "INVALID_ARGUMENT" and info["domain"] == "cartlytics"
    violations = details["BadRequest"]["fieldViolations"]
    shown = min(len(expected), LISTED)
    assert 1 <= len(violations) <= shown
    for got, (field, description) in zip(violations, expected, strict=False):
        assert (got["field"], got["description"]) == (field, description)
    metadata = info.get("metadata", {})
    for key, names in catalogue.items():
        assert metadata[key].split(",") == names.split(",")
        assert metadata["docs"] == "docs/query.md"
    # Each violation names only its own name; the catalogue is not repeated in it.
    assert not any("valid" in v["description"] for v in violations)
    if len(violations) < len(expected):
        assert metadata["violationCount"] == str(len(expected))
        assert metadata["reportedViolations"] == str(len(violations))
        prefix = re.match(r"[a-z]+[\[.]", expected[0][0])
        assert prefix is not None
        named = body["message"].count(prefix.group(0))
        assert body["message"].endswith(f"and {len(expected) - named} more"), body["message"]
    else:
        assert "violationCount" not in metadata


METRICS = ",".join(oracle_query.METRICS)
DIMENSIONS = ",".join(oracle_query.DIMENSIONS)


def _names(count: int, length: int) -> list[str]:
    return [f"x{i}_".ljust(length, "y") for i in range(count)]


def _shown(name: str) -> str:
    """How a violation quotes an unknown name (docs/query.md): its first 64 characters."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


# ------------------------------------------------------------------------------ the status


@pytest.mark.parametrize("count", (1, *COUNTS))
@pytest.mark.parametrize(
    ("field", "description"),
    [
        ("events[{i}].properties.x", "must be finite"),
        ("f" * 5000 + "[{i}]", "d" * 50_000),
        ("emoji[{i}]", "\U0001f600" * 5000),  # 4 bytes each, 12 percent-encoded
        ("%[{i}]", "%" * 5000),  # 3 bytes each, percent-encoded
        ("surrogate[{i}]", "lone \ud800 surrogate"),  # not UTF-8: replaced, not a crash
    ],
)
def test_a_status_is_bounded_whatever_it_is_given(count: int, field: str, description: str) -> None:
    violations = [FieldViolation(field.format(i=i), description) for i in range(count)]
    status = invalid_argument(violations).to_status()
    status = status_pb2.Status.FromString(status.SerializeToString())  # as it travels
    assert _trailer_bytes(status) <= BUDGET
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    listed = [d for d in status.details if d.Unpack(bad)]
    shown = len(bad.field_violations) if listed else 0
    assert shown <= min(count, LISTED)
    if shown < count:
        assert info.metadata["violationCount"] == str(count)
    if count <= LISTED and len(description) < 100:
        assert shown == count  # short violations all fit
    assert len(status.message.encode()) <= 512


def test_a_hundred_thousand_violations_fit() -> None:
    violations = [FieldViolation(f"events[{i}]", "is required") for i in range(100_000)]
    status = invalid_argument(violations).to_status()
    assert _trailer_bytes(status) <= BUDGET
    assert status.message.endswith(" more")


def test_metadata_and_messages_of_any_size_fit_too() -> None:
    violations = [FieldViolation(f"f{i}", "short") for i in range(LISTED)]
    error = invalid_argument(violations, metadata={"big": "v" * 100_000, "small": "s"})
    error.message = "\U0001f600" * 100_000
    status = error.to_status()
    assert _trailer_bytes(status) <= BUDGET
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert info.metadata["small"] == "s" and len(info.metadata["big"]) <= 512


# ------------------------------------------------------------------------------ REST


@pytest.mark.parametrize("count", COUNTS)
def test_unknown_metrics_are_one_bounded_400(system: System, count: int) -> None:
    names = [f"m{i}" for i in range(count)]
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, {"metrics": names})
    expected = [(f"metrics[{i}]", f"unknown metric {_shown(n)}") for i, n in enumerate(names)]
    _check_400(reply, expected, {"validMetrics": METRICS})


@pytest.mark.parametrize("count", COUNTS)
def test_unknown_dimensions_are_one_bounded_400(system: System, count: int) -> None:
    names = [f"d{i}" for i in range(count)]
    body = {"metrics": ["orders"], "dimensions": names}
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
    expected = [(f"dimensions[{i}]", f"unknown dimension {_shown(n)}") for i, n in enumerate(names)]
    _check_400(reply, expected, {"validDimensions": DIMENSIONS})


@pytest.mark.parametrize("count", COUNTS)
def test_unknown_filters_are_one_bounded_400(system: System, count: int) -> None:
    names = sorted(f"f{i}" for i in range(count))  # reported in key order
    body = {"metrics": ["orders"], "filters": dict.fromkeys(names, "x")}
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
    expected = [(f"filters.{n}", f"unknown filter {_shown(n)}") for n in names]
    _check_400(reply, expected, {"validFilters": ",".join(FILTERS)})


@pytest.mark.parametrize(
    ("count", "length"),
    [(1, 400_000), (10, 20_000), (1000, 300), (1000, 100)],
)
def test_huge_unknown_names_are_one_bounded_400(system: System, count: int, length: int) -> None:
    names = _names(count, length)
    metrics = call("POST", f"{system.http_url}/analytics/query", system.key, {"metrics": names})
    _check_400(
        metrics,
        [(f"metrics[{i}]", f"unknown metric {_shown(n)}") for i, n in enumerate(names)],
        {"validMetrics": METRICS},
    )
    both = {"metrics": names[: count // 2 + 1], "dimensions": names[count // 2 + 1 :]}
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, both)
    assert reply.status == 400, reply.body[:300]
    assert len(reply.body) < GRPC_METADATA_LIMIT
    if count > 1:
        metadata = _details(reply.json())["ErrorInfo"]["metadata"]
        assert metadata["validMetrics"] == METRICS and metadata["validDimensions"] == DIMENSIONS
    # A filter key of 400 KB: its field path is cut too.
    key = "k" * min(length, 400_000)
    body = {"metrics": ["orders"], "filters": {key: "x"}}
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, body)
    assert reply.status == 400, reply.body[:300]
    [violation] = _details(reply.json())["BadRequest"]["fieldViolations"]
    assert violation["field"].startswith("filters.kkk") and len(violation["field"]) <= 128


# ------------------------------------------------------------------------------ gRPC


@pytest.mark.parametrize(("count", "length"), [(20, 2), (1000, 2), (1000, 300), (1, 400_000)])
def test_unknown_names_over_grpc_are_bounded_invalid_arguments(
    system: System, count: int, length: int
) -> None:
    names = _names(count, length)
    request = metrics_pb2.RunQueryRequest(metrics=names, dimensions=names)
    metadata = (("authorization", f"Bearer {system.key}"),)
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RunQuery(request, metadata=metadata, timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)
    assert status is not None
    assert _trailer_bytes(status) <= BUDGET
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(bad) for d in status.details)
    assert any(d.Unpack(info) for d in status.details)
    assert 1 <= len(bad.field_violations) <= LISTED
    assert bad.field_violations[0].field == "metrics[0]"
    assert bad.field_violations[0].description == f"unknown metric {_shown(names[0])}"
    assert info.metadata["validMetrics"] == METRICS
    assert info.metadata["validDimensions"] == DIMENSIONS
    if 2 * count > LISTED:
        assert info.metadata["violationCount"] == str(2 * count)


# ------------------------------------------------------------------------------ the gateway


class _Exhausted(metrics_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    """RESOURCE_EXHAUSTED three ways: gRPC's own (a reply past the channel's limit), bare,
    and as our refusals send it (a RetryInfo)."""

    async def RunQuery(self, request: Any, context: Any) -> Any:
        row = struct_pb2.Struct()
        row.update({"blob": "z" * 10_000})
        return metrics_pb2.RunQueryResponse(rows=[row])

    async def GetRealtime(self, request: Any, context: Any) -> Any:
        if request.timezone == "bare":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of something")
        delay = duration_pb2.Duration(seconds=3)
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )


def test_resource_exhausted_without_a_delay_is_not_a_429() -> None:
    """Only a refusal that says when to retry is a 429 (docs/abuse.md); gRPC's own limits on
    the hop behind the gateway are a 500, which a client does not retry as a rate limit."""

    async def scenario() -> list[Reply]:
        server = grpc.aio.server()
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(_Exhausted(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 4096)]
        )
        runner = aiohttp.web.AppRunner(create_app(channel))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, bound = runner.addresses[0][:2]
        url = f"http://{host}:{bound}"
        replies = []
        try:
            async with aiohttp.ClientSession() as session:
                requests = [
                    ("POST", "/analytics/query", json.dumps({"metrics": ["x"]})),
                    ("GET", "/analytics/realtime?timezone=bare", None),
                    ("GET", "/analytics/realtime?timezone=UTC", None),
                ]
                for method, path, data in requests:
                    headers = {"Content-Type": "application/json"}
                    async with session.request(
                        method, url + path, data=data, headers=headers
                    ) as resp:
                        replies.append(Reply(resp.status, dict(resp.headers), await resp.read()))
        finally:
            await runner.cleanup()
            await channel.close()
            await server.stop(None)
        return replies

    too_large, bare, ours = asyncio.run(scenario())
    for reply in (too_large, bare):
        assert reply.status == 500, reply
        assert "retry-after" not in _lower(reply.headers)
        assert reply.json()["code"] == code_pb2.INTERNAL
    assert ours.status == 429, ours
    assert _lower(ours.headers)["retry-after"] == "3"
    assert _details(ours.json())["RetryInfo"]["retryDelay"] == "3s"


class _Restarting(metrics_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    """What a server shutting down does to the calls it had not started (grpc/grpc#41785)."""

    async def GetRealtime(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.CANCELLED, "server shutting down")


def test_a_call_the_service_cancelled_is_a_503_to_retry() -> None:
    """The gateway cancels a call only when its HTTP client left (then nobody reads the answer);
    a CANCELLED from the service means the call never ran: 503 with Retry-After, not 499."""

    async def scenario() -> Reply:
        server = grpc.aio.server()
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(_Restarting(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        runner = aiohttp.web.AppRunner(create_app(channel))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, bound = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{bound}/analytics/realtime") as resp,
            ):
                return Reply(resp.status, dict(resp.headers), await resp.read())
        finally:
            await runner.cleanup()
            await channel.close()
            await server.stop(None)

    reply = asyncio.run(scenario())
    assert reply.status == 503, reply
    assert _lower(reply.headers)["retry-after"] == "1"
    assert reply.json()["code"] == code_pb2.UNAVAILABLE

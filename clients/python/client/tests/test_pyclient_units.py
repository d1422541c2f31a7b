"""The SDK's pure parts, without a server: event preparation, error details, retry rules,
settings. (Everything that talks to cartlytics is tested live in the other modules.)"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from cartlytics_client import (
    MAX_EVENT_BYTES,
    CartlyticsError,
    Client,
    EventTooLarge,
    __version__,
)
from cartlytics_client._config import Settings
from cartlytics_client._events import Prepared, prepare
from cartlytics_client._retry import backoff_cap, retry_delay
from cartlytics_client.errors import error_from_status

NOW = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
LIBRARY = {"name": "cartlytics-python", "version": __version__}


def _prepare(event: str = "product_view", properties: Any = None, **kw: Any) -> Prepared:
    args: dict[str, Any] = {
        "id": None,
        "user_id": None,
        "anonymous_id": None,
        "session_id": None,
        "timestamp": None,
        "context": None,
    }
    args.update(kw)
    return prepare(event, properties, now=NOW, **args)


def test_ids_are_made_before_sending_and_unique() -> None:
    ids = {_prepare(properties={"productId": "p"}).message.id for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"evt_[0-9a-f]{32}", i) for i in ids)
    assert _prepare(id="evt_mine").message.id == "evt_mine"


def test_known_keys_are_lifted_out_of_the_properties() -> None:
    properties = {
        "productId": "prod_abc123",
        "userId": "user_xyz789",
        "anonymousId": "anon",
        "sessionId": "sess",
        "timestamp": "2024-01-15T10:00:00Z",
        "context": {"page": "/p"},
    }
    prepared = _prepare(properties=properties)
    message = prepared.message
    assert (message.user_id, message.anonymous_id, message.session_id) == (
        "user_xyz789",
        "anon",
        "sess",
    )
    assert message.timestamp.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 15, 10, tzinfo=UTC)
    assert prepared.source.properties == {"productId": "prod_abc123"}
    assert prepared.source.context == {"page": "/p", "library": LIBRARY}
    assert "userId" in properties  # the caller's mapping is untouched


def test_keyword_arguments_win_and_the_property_stays() -> None:
    prepared = _prepare(properties={"userId": "from_props", "productId": "p"}, user_id="kw")
    assert prepared.message.user_id == "kw"
    assert prepared.source.properties == {"userId": "from_props", "productId": "p"}


def test_timestamp_defaults_to_now_and_naive_times_are_utc() -> None:
    assert _prepare().source.timestamp == NOW
    naive = datetime(2024, 1, 1, 12, 0)
    assert _prepare(timestamp=naive).source.timestamp == naive.replace(tzinfo=UTC)
    paris = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    stamp = _prepare(timestamp=paris).message.timestamp.ToDatetime(tzinfo=UTC)
    assert stamp == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)


def test_library_context_unless_the_caller_set_one() -> None:
    assert _prepare().source.context == {"library": LIBRARY}
    mine = {"library": {"name": "wrapper", "version": "2"}}
    assert _prepare(context=mine).source.context == mine


def test_values_become_json() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    prepared = _prepare(properties={"n": 3, "f": 1.5, "t": (1, 2), "when": when, "none": None})
    assert prepared.source.properties == {
        "n": 3,
        "f": 1.5,
        "t": [1, 2],
        "when": "2024-01-02T03:04:05+00:00",
        "none": None,
    }
    with pytest.raises(TypeError, match=r"properties\.bad"):
        _prepare(properties={"bad": object()})


def test_size_is_measured_as_the_server_does() -> None:
    context = len(json.dumps({"library": LIBRARY}))
    exact = {"blob": "é" * ((MAX_EVENT_BYTES - context - len(json.dumps({"blob": ""}))) // 6)}
    size = len(json.dumps(exact)) + context  # non-ASCII counts as \\uXXXX, as json.dumps does
    assert size <= MAX_EVENT_BYTES
    _prepare("custom_event", exact)
    over = {"blob": "x" * (MAX_EVENT_BYTES - context - len(json.dumps({"blob": ""})) + 1)}
    with pytest.raises(EventTooLarge) as info:
        _prepare("custom_event", over)
    assert isinstance(info.value, CartlyticsError)
    assert info.value.field_violations == [("properties", f"event must be at most {32768} bytes")]


def _status_trailer(code: grpc.StatusCode, *details: Any) -> bytes:
    status = status_pb2.Status(code=code.value[0], message="from the status")
    for detail in details:
        status.details.add().Pack(detail)
    data: bytes = status.SerializeToString()
    return data


def test_error_details_are_read_from_the_trailer() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="event", description="is required"),
            error_details_pb2.BadRequest.FieldViolation(field="userId", description="or anon"),
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="cartlytics")
    trailer = _status_trailer(grpc.StatusCode.INVALID_ARGUMENT, bad, info)
    error = error_from_status(
        grpc.StatusCode.INVALID_ARGUMENT, "grpc-message", (("grpc-status-details-bin", trailer),)
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.http_status == 400
    assert error.message == "from the status"
    assert error.field_violations == [("event", "is required"), ("userId", "or anon")]
    assert error.reason == "INVALID_ARGUMENT"
    assert error.retry_delay is None


def test_retry_delay_from_retry_info_else_retry_after() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=750_000_000))
    trailer = _status_trailer(grpc.StatusCode.RESOURCE_EXHAUSTED, retry)
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    both = error_from_status(
        code, "m", (("grpc-status-details-bin", trailer), ("retry-after", "2"))
    )
    assert both.retry_delay == 0.75
    assert both.http_status == 429
    assert error_from_status(code, "m", (("retry-after", "2"),)).retry_delay == 2.0
    # A status of another code is not this error's (as grpc_status.rpc_status.from_call).
    other = error_from_status(
        grpc.StatusCode.UNAVAILABLE, "m", (("grpc-status-details-bin", trailer),)
    )
    assert other.retry_delay is None and other.message == "m"


def test_retry_rules() -> None:
    settings = Settings()

    def error(code: grpc.StatusCode, delay: float | None = None) -> CartlyticsError:
        return CartlyticsError(code, "m", retry_delay=delay)

    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        delay = retry_delay(3, error(code), settings)
        assert delay is not None and 0 <= delay <= 0.4
    throttled = retry_delay(1, error(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.9), settings)
    assert throttled is not None and 0.9 <= throttled <= 0.9 + 0.1
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ):
        assert retry_delay(1, error(code), settings) is None
    assert [backoff_cap(n, settings) for n in (1, 2, 3, 8, 100)] == [0.1, 0.2, 0.4, 10.0, 10.0]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Client(api_key="", target="127.0.0.1:1")
    bad_settings: list[dict[str, Any]] = [
        {"flush_at": 0},
        {"flush_at": 1001},
        {"max_retries": -1},
        {"timeout": 0},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            Client(api_key="cak_x", target="127.0.0.1:1", **bad)

"""CORS on the REST gateway: a storefront or dashboard on another origin calls it from a browser.

The browser itself is exercised by issue 13's browser test; here the headers a browser checks.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.servers import System, start_system

SHOP = "https://shop.example"


def _call(
    system: System, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(system.http_url + path, data=body, method=method)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _preflight(system: System, origin: str, path: str = "/analytics/event") -> tuple[int, Message]:
    status, headers, _ = _call(
        system,
        "OPTIONS",
        path,
        {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    return status, headers


def _start(tmp: Path, origins: str) -> System:
    key = "cak_test_" + uuid.uuid4().hex
    return start_system(tmp, key=key, extra_env={"ANALYTICS_CORS_ORIGINS": origins})


@pytest.fixture(scope="module")
def any_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = _start(tmp_path_factory.mktemp("cors-any"), "*")
    yield system
    system.stop()


@pytest.fixture(scope="module")
def one_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = _start(tmp_path_factory.mktemp("cors-one"), SHOP + ", https://admin.example/")
    yield system
    system.stop()


def test_a_preflight_from_any_origin_is_allowed_with_the_key_header(any_origin: System) -> None:
    status, headers = _preflight(any_origin, "https://anything.example")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in headers


def test_answers_and_errors_carry_the_origin_and_expose_retry_after(any_origin: System) -> None:
    event = json.dumps({"event": "page_view", "userId": "u1", "properties": {"page": "/"}}).encode()
    auth = {"Authorization": f"Bearer {any_origin.key}", "Origin": SHOP}
    status, headers, _ = _call(any_origin, "POST", "/analytics/event", auth, event)
    assert status == 201
    assert headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"retry-after", "x-request-id", "content-disposition"} <= exposed
    status, headers, _ = _call(any_origin, "POST", "/analytics/event", {"Origin": SHOP}, event)
    assert status == 401  # no key: the page can read why
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_a_streamed_export_carries_the_origin(any_origin: System) -> None:
    auth = {"Authorization": f"Bearer {any_origin.key}", "Origin": SHOP}
    status, headers, _ = _call(any_origin, "GET", "/analytics/export?type=events&period=7d", auth)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_a_request_without_origin_gets_no_cors_headers(any_origin: System) -> None:
    status, headers, _ = _call(any_origin, "GET", "/analytics/ping", {})
    assert status == 401
    assert "Access-Control-Allow-Origin" not in headers


def test_a_listed_origin_is_echoed_and_others_are_refused(one_origin: System) -> None:
    for origin in (SHOP, "https://admin.example"):
        status, headers = _preflight(one_origin, origin)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Vary"] == "Origin"
    status, headers = _preflight(one_origin, "https://evil.example")
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    auth = {"Authorization": f"Bearer {one_origin.key}", "Origin": "https://evil.example"}
    status, headers, _ = _call(one_origin, "GET", "/analytics/ping", auth)
    assert status == 200  # not a browser: CORS only tells browsers what a page may read
    assert "Access-Control-Allow-Origin" not in headers


def test_cors_off_keeps_options_a_405(tmp_path: Path) -> None:
    system = _start(tmp_path, "")
    try:
        status, headers = _preflight(system, SHOP)
        assert status == 405
        assert "Access-Control-Allow-Origin" not in headers
    finally:
        system.stop()

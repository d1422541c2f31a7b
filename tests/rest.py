"""A small REST client for the tests (urllib: nothing between the test and the wire)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str,
    url: str,
    key: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def midday_zone(now: datetime | None = None) -> str:
    """A fixed-offset zone (``Etc/GMT±N``) where it is now 12:xx: its "today"
    holds the last several hours and the next ones, so a test that sends events stamped a little
    in the past and reads "today" (``period=1d``, realtime) gets the same day whatever the hour
    it runs at. (IANA's ``Etc/GMT`` signs are inverted: ``Etc/GMT-3`` is UTC+3.)"""
    hour = (now or datetime.now(UTC)).hour
    offset = 12 - hour  # -11 ... +12, within the zones' -12 ... +14
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"

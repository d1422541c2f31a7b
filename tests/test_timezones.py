"""Time zones: every name a request may use runs on both backends; the others are 400s.

Python's ``ZoneInfo`` opens more than ClickHouse does: ``right/UTC`` (leap-second zones),
``posix/...``, ``posixrules``, ``localtime`` (whatever the host's zone is) and ``Factory``
(the "-00" placeholder). ``timezone=right/UTC`` reached ClickHouse and was a 500 with SQL in the
log; the others meant something different per host. The accepted names are the tz database's
(``known_timezones()``); the first test runs each through a real query on each backend.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from cartlytics.common.periods import known_timezones
from cartlytics.common.storage import Storage
from tests.rest import Reply, call
from tests.servers import System

# Two instants old enough that every tz database version agrees on them (a winter and a summer,
# so that both sides of daylight saving time are compared).
INSTANTS = [datetime(2019, 1, 15, 12, 0, tzinfo=UTC), datetime(2019, 7, 15, 12, 0, tzinfo=UTC)]
NAME = re.compile(r"[A-Za-z0-9_+/-]+")  # so a name can be quoted as a SQL literal as it is
REFUSED = ["right/UTC", "right/Europe/Paris", "posix/Europe/Paris", "posix/UTC", "posixrules",
           "localtime", "Factory", "Mars/Base", "europe/paris", "UTC/", "Etc/GMT+15"]  # fmt: skip


def _batches(names: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(names), size):
        yield names[start : start + size]


def test_every_accepted_zone_runs_on_the_backend(storage: Storage) -> None:
    """One SELECT per batch of zones: the backend knows every accepted zone, and its wall clock
    agrees with Python's at two instants (window bounds are computed in Python, buckets in SQL)."""
    zones = sorted(known_timezones())
    assert len(zones) > 500 and "Europe/Paris" in zones and "UTC" in zones
    assert all(NAME.fullmatch(zone) for zone in zones)
    for batch in _batches(zones, 60):
        columns = ", ".join(
            f"toString(toDateTime({int(moment.timestamp())}, '{zone}'))"
            for zone in batch
            for moment in INSTANTS
        )
        (row,) = storage.backend.execute(f"SELECT {columns}")
        expected = [
            moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
            for zone in batch
            for moment in INSTANTS
        ]
        assert [str(value) for value in row] == expected, batch


# Every request that takes a time zone, with the field its 400 names.
ZONED = [
    ("GET", "/analytics/sales?period=7d&timezone={zone}", "timezone"),
    ("GET", "/analytics/products?period=7d&timezone={zone}", "timezone"),
    ("GET", "/analytics/customers?period=7d&timezone={zone}", "timezone"),
    (
        "GET",
        "/analytics/funnel?period=7d&steps=page_view,order_completed&timezone={zone}",
        "timezone",
    ),
    ("GET", "/analytics/realtime?timezone={zone}", "timezone"),
    ("GET", "/analytics/export?type=orders&period=7d&timezone={zone}", "timezone"),
    ("GET", "/analytics/export?type=events&from=2024-01-01&timezone={zone}", "timezone"),
    ("POST", "/analytics/query", "filters.timezone"),
]


def _zoned(system: System, method: str, path: str, zone: str) -> Reply:
    if method == "POST":
        body = {"metrics": ["orders"], "dimensions": ["date"], "filters": {"timezone": zone}}
        return call("POST", f"{system.http_url}{path}", system.key, body)
    return call("GET", system.http_url + path.format(zone=urllib.parse.quote(zone)), system.key)


@pytest.mark.parametrize(("method", "path", "field"), ZONED, ids=lambda v: str(v)[:40])
def test_zones_clickhouse_refuses_are_a_400_everywhere(
    system: System, method: str, path: str, field: str
) -> None:
    for zone in REFUSED:
        reply = _zoned(system, method, path, zone)
        assert reply.status == 400, (zone, reply.status, reply.body[:300])
        error = reply.json()
        violations = [
            violation
            for detail in error.get("details", [])
            for violation in detail.get("fieldViolations", [])
        ]
        assert [v["field"] for v in violations] == [field], (zone, error)
        assert "IANA time zone name" in violations[0]["description"], error
        assert "right/*" in violations[0]["description"], error
    assert _zoned(system, method, path, "America/St_Johns").status == 200


def test_refused_zones_logged_no_internal_error(system: System) -> None:
    for zone in ("right/UTC", "posix/Asia/Tokyo"):
        _zoned(system, "GET", "/analytics/sales?period=2d&timezone={zone}", zone)
    log = system.log()
    for sign in ("Cannot load time zone", "INTERNAL", "Traceback", "DB::Exception"):
        assert sign not in log, sign

"""Periods, time zones and buckets, as docs/semantics.md defines them.

``Nd`` is today plus the N-1 previous calendar days up to now; ``Nm`` the current calendar month
plus the N-1 previous months up to now. The previous period is the same window moved back by its own
length, in wall-clock time of the requested zone, so both cover the same elapsed time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import invalid_field

DEFAULT_PERIOD = "30d"
# [0-9], not \d: Python's \d and int() also read other scripts' digits ("٣٣d" was 33 days).
_PERIOD = re.compile(r"^([0-9]{1,3})([dm])$")
GRANULARITIES = ("hour", "day", "week", "month")

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")
# In the tz database's list but not a place: "Factory" is the "-00" placeholder zone.
_NOT_PLACES = frozenset({"Factory"})
ZONE_RULE = (
    "must be an IANA time zone name such as Europe/Paris or UTC (names of the tz database;"
    " not right/*, posix/*, posixrules, localtime or Factory)"
)


@functools.cache
def known_timezones() -> frozenset[str]:
    """The zone names a request may use: the IANA tz database's names, as the pinned ``tzdata``
    package lists them, less placeholders.

    Not Python's ``available_timezones()``, which depends on the machine's files and whose
    ``ZoneInfo`` also opens ``right/UTC``, ``posix/...``, ``posixrules`` or ``localtime``: zones
    that ClickHouse refuses (a 500) or that mean something else on each host. Every name here
    runs on chdb and on clickhouse-server 18.16 (tests/test_timezones.py).
    """
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="ascii")
    return frozenset(listed.split()) - _NOT_PLACES


def parse_timezone(name: str, field: str = "timezone") -> ZoneInfo:
    if not name:
        return ZoneInfo("UTC")
    if not _ZONE_NAME.fullmatch(name) or name not in known_timezones():
        shown = f" {name!r}" if _ZONE_NAME.fullmatch(name) else ""
        raise invalid_field(field, f"unknown time zone{shown}: {ZONE_RULE}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # listed, but no data on this machine
        raise invalid_field(field, f"unknown time zone {name!r}: {ZONE_RULE}") from exc


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_month = date(year + (month // 12), month % 12 + 1, 1)
    last_day = (next_month - timedelta(days=1)).day
    return date(year, month, min(day.day, last_day))


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


@dataclass(frozen=True)
class Window:
    """A period resolved against a clock: [start, end) now and [prev_start, prev_end) before."""

    label: str
    unit: str  # "d" or "m"
    count: int
    zone: ZoneInfo
    start: datetime
    end: datetime
    prev_start: datetime
    prev_end: datetime

    @property
    def zone_name(self) -> str:
        return self.zone.key


def resolve_period(period: str, zone: ZoneInfo, now: datetime, field: str = "period") -> Window:
    label = period or DEFAULT_PERIOD
    match = _PERIOD.fullmatch(label)  # not match(): its $ also matches before a final "\n"
    if not match:
        raise invalid_field(field, "must be Nd (N from 1 to 366) or Nm (N from 1 to 24), e.g. 30d")
    count, unit = int(match.group(1)), match.group(2)
    if unit == "d" and not 1 <= count <= 366:
        raise invalid_field(field, "days must be from 1 to 366")
    if unit == "m" and not 1 <= count <= 24:
        raise invalid_field(field, "months must be from 1 to 24")
    # Storage compares whole seconds (ClickHouse 18.16 has no DateTime64): round "now" up so an
    # event acknowledged a moment ago is inside the window.
    if now.microsecond:
        now = now.replace(microsecond=0) + timedelta(seconds=1)
    local_now = now.astimezone(zone)
    today = local_now.date()
    if unit == "d":
        first_day = today - timedelta(days=count - 1)
        prev_first_day = first_day - timedelta(days=count)
        prev_now = local_now.replace(tzinfo=None) - timedelta(days=count)
    else:
        first_day = _add_months(today.replace(day=1), -(count - 1))
        prev_first_day = _add_months(first_day, -count)
        moved = _add_months(today, -count)
        prev_now = datetime.combine(moved, local_now.time())
    return Window(
        label=label,
        unit=unit,
        count=count,
        zone=zone,
        start=_local_midnight(first_day, zone).astimezone(UTC),
        end=now.astimezone(UTC),
        prev_start=_local_midnight(prev_first_day, zone).astimezone(UTC),
        prev_end=prev_now.replace(tzinfo=zone).astimezone(UTC),
    )


def parse_granularity(value: str, field: str = "granularity") -> str:
    granularity = value or "day"
    if granularity not in GRANULARITIES:
        raise invalid_field(field, f"must be one of {', '.join(GRANULARITIES)}")
    return granularity


def bucket_starts(window: Window, granularity: str) -> list[tuple[str, str]]:
    """Every bucket of the window, oldest first, as (storage key, API label).

    The storage key is what ``bucket_sql`` computes in ClickHouse for an event in that bucket; the
    label is the bucket's start as the API prints it.
    """
    zone = window.zone
    first_local = window.start.astimezone(zone)
    last_local = window.end.astimezone(zone)
    keys: list[tuple[str, str]] = []
    if granularity == "hour":
        cursor = window.start
        while cursor < window.end:
            local = cursor.astimezone(zone)
            keys.append((str(int(cursor.timestamp())), local.isoformat()))
            cursor += timedelta(hours=1)
        return keys
    day = first_local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    while day <= last_local.date():
        keys.append((day.isoformat(), day.isoformat()))
        if granularity == "day":
            day += timedelta(days=1)
        elif granularity == "week":
            day += timedelta(days=7)
        else:
            day = _add_months(day, 1)
    return keys


def bucket_sql(granularity: str, column: str) -> str:
    """The ClickHouse expression (a String) of an event's bucket; the zone is the {tz} parameter."""
    expressions = {
        "hour": f"toString(toUnixTimestamp(toStartOfHour({column}, {{tz}})))",
        "day": f"toString(toDate({column}, {{tz}}))",
        "week": f"toString(toMonday({column}, {{tz}}))",
        "month": f"toString(toStartOfMonth({column}, {{tz}}))",
    }
    return expressions[granularity]

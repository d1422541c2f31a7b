"""What an export request asks for, checked: type, format, time range, currency and zone.

Every parameter is checked before anything is read, so a bad one is a 400 naming it (the
stream has not started). The time range is ``period`` (as in the metrics requests) unless
``from`` or ``to`` is given: ``from`` is inclusive, ``to`` exclusive, each a date
(``YYYY-MM-DD``, midnight in ``timezone``) or an RFC 3339 time with its offset. A missing
``from`` has no lower bound, a missing ``to`` no upper bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from cartlytics.common.errors import invalid_field
from cartlytics.common.money import parse_currency
from cartlytics.common.periods import parse_timezone, resolve_period

TYPES = ("orders", "order_items", "events", "products", "customers")
FORMATS = ("csv", "json", "ndjson", "xlsx")
DEFAULT_FORMAT = "csv"

# [0-9], not \d: \d also matches other scripts' digits.
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?)"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2106, 1, 1, tzinfo=UTC)  # ClickHouse DateTime's range ends in 2106
_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class ExportQuery:
    """The request's parameters as sent (strings; empty when absent)."""

    type: str = ""
    period: str = ""
    format: str = ""
    currency: str = ""
    timezone: str = ""
    start: str = ""  # `from`
    end: str = ""  # `to`


@dataclass(frozen=True)
class ExportPlan:
    """A checked export request: what to read, between which instants, and how to write it."""

    type: str
    format: str
    zone: ZoneInfo
    start: datetime | None  # UTC, inclusive; None: no lower bound
    end: datetime | None  # UTC, exclusive; None: no upper bound
    currency: str  # ISO 4217 code, or "" for every currency
    label: str  # the period ("30d") or the range, for the file name

    @property
    def filename(self) -> str:
        return f"{self.type}_{self.label}.{self.format}"

    @property
    def content_disposition(self) -> str:
        """RFC 6266: the name as a bare token when it is one; else an ASCII fallback in quotes
        and the exact name as RFC 5987 ``filename*``. A header value must be ASCII whatever the
        request held (gRPC metadata refuses anything else: a non-ASCII name was a 500)."""
        from urllib.parse import quote

        name = self.filename
        if re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            return f"attachment; filename={name}"
        fallback = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
        return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _choice(value: str, choices: tuple[str, ...], field: str, default: str = "") -> str:
    chosen = value.strip().lower() or default
    if chosen not in choices:
        if not value:
            raise invalid_field(field, f"is required: one of {', '.join(choices)}")
        raise invalid_field(field, f"must be one of {', '.join(choices)}")
    return chosen


def parse_bound(value: str, zone: ZoneInfo, field: str) -> datetime:
    """A date (midnight in ``zone``) or an RFC 3339 time, as an aware UTC datetime."""
    text = value.strip()
    try:
        if _DATE.match(text):
            moment = datetime.combine(date.fromisoformat(text), time(0), tzinfo=zone)
        else:
            match = _RFC3339.match(text)
            if not match:
                raise ValueError(text)
            day, clock, offset = match.groups()
            clock = clock[:15]  # Python reads at most microseconds
            offset = "+00:00" if offset in ("Z", "z") else offset
            moment = datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError as exc:
        raise invalid_field(
            field, "must be a date (YYYY-MM-DD) or an RFC 3339 time such as 2024-01-15T10:00:00Z"
        ) from exc
    utc = moment.astimezone(UTC)
    if not _EARLIEST <= utc < _LATEST:
        raise invalid_field(field, "must be between 1970 and 2105")
    return utc


def _label_part(value: str) -> str:
    return _UNSAFE_IN_FILENAME.sub("", value.strip())


def plan_export(query: ExportQuery, now: datetime) -> ExportPlan:
    """Check every parameter (400 naming the first bad one) and resolve the time range."""
    kind = _choice(query.type, TYPES, "type")
    fmt = _choice(query.format, FORMATS, "format", DEFAULT_FORMAT)
    zone = parse_timezone(query.timezone)
    currency = parse_currency(query.currency, "")
    if query.start.strip() or query.end.strip():
        start = parse_bound(query.start, zone, "from") if query.start.strip() else None
        end = parse_bound(query.end, zone, "to") if query.end.strip() else None
        if start is not None and end is not None and end <= start:
            raise invalid_field("to", "must be after from")
        if start is not None and end is not None:
            label = f"{_label_part(query.start)}_{_label_part(query.end)}"
        elif start is not None:
            label = f"from_{_label_part(query.start)}"
        else:
            label = f"until_{_label_part(query.end)}"
        return ExportPlan(kind, fmt, zone, start, end, currency, label)
    window = resolve_period(query.period, zone, now)
    return ExportPlan(kind, fmt, zone, window.start, window.end, currency, window.label)

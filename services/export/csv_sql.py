"""CSV rows written by ClickHouse: each export row as one ready line of RFC 4180 text.

The CSV export is the one that must be fast (issue 5: 200k rows/s, flat memory), and the work
per row in Python (reading a row into objects, converting each cell, writing it) caps it near
100k rows/s on this machine. So the query itself formats each row as the line the Python
encoder would write (``formats.CsvEncoder``, kept for the products export and as the reference
in the tests), and the bytes go out as ClickHouse made them (``Storage.stream_text``):

- text: neutralised (a leading ``'`` before ``= + - @``, a tab or a carriage return), then quoted
  only when it holds a comma, a double quote or a line break, quotes doubled;
- numbers: as decimal integers;
- times (epoch milliseconds): RFC 3339 in the export's zone with milliseconds and the zone's
  offset at that moment (``2024-01-15T10:00:00.000+05:30``), DST included;
- ``\\r\\n`` after every row (the query ends each line with ``\\r``; the stream adds ``\\n``).

Every expression here runs on ClickHouse 18.16 and 26: ``formatDateTime`` with ``%F``/``%T``
(the same on both; ``%M`` changed meaning), no ``leftPad`` and no ``timeZoneOffset`` (the offset
is the local minus the UTC day, hour and minute of the instant).
"""

from __future__ import annotations

from collections.abc import Sequence

from cartlytics.common.storage import Sql

from .formats import Column, Kind

_FORMULA_FIRST = "('=', '+', '-', '@', '\\t', '\\r')"

ZONE_SLOT = "export_zone"
"""The parameter holding the export's time zone (a value, rendered as a literal): the lines'
queries read it as ``{export_zone}``; the sources add it to their parameters."""


def text_field(value: Sql) -> Sql:
    """SQL: a String as one CSV field, neutralised and quoted when needed."""
    expr = value.text
    shown = f"if(substring({expr}, 1, 1) IN {_FORMULA_FIRST}, concat('''', {expr}), {expr})"
    quoted = f"concat('\"', replaceAll({shown}, '\"', '\"\"'), '\"')"
    # Four position() scans cost half of one match() with a character class (measured on 18.16).
    special = " OR ".join(f"position({expr}, {c}) > 0" for c in ("','", "'\"'", "'\\r'", "'\\n'"))
    return Sql(f"if({special}, {quoted}, {shown})")


def number_field(expr: Sql) -> Sql:
    return Sql("toString({expr})").fill(expr=expr)


def _two_digits(expr: str) -> str:
    return f"substring(toString(100 + {expr}), 2, 2)"


def time_field(value: Sql, zone: str) -> Sql:
    """SQL: epoch milliseconds (an Int64 expression) as RFC 3339 in the zone of the
    ``{export_zone}`` parameter; ``zone``, the same zone's name, only tells UTC (whose offset is
    always +00:00) apart."""
    millis = value.text
    moment = f"toDateTime(toUInt32(intDiv({millis}, 1000)))"
    tz = "{" + ZONE_SLOT + "}"
    wall = f"formatDateTime({moment}, '%FT%T', {tz})"
    fraction = f"substring(toString(1000 + {millis} % 1000), 2, 3)"
    if zone == "UTC":
        offset = "'+00:00'"
    else:
        minutes = (
            f"((toRelativeDayNum({moment}, {tz}) - toRelativeDayNum({moment}, 'UTC')) * 1440"
            f" + (toHour({moment}, {tz}) - toHour({moment}, 'UTC')) * 60"
            f" + toMinute({moment}, {tz}) - toMinute({moment}, 'UTC'))"
        )
        offset = (
            f"concat(if({minutes} < 0, '-', '+'), {_two_digits(f'intDiv(abs({minutes}), 60)')},"
            f" ':', {_two_digits(f'abs({minutes}) % 60')})"
        )
    return Sql(f"concat({wall}, '.', {fraction}, {offset})")


def csv_lines_sql(inner: Sql, columns: Sequence[Column], values: Sequence[Sql], zone: str) -> Sql:
    """SQL: one String per row of ``inner``, the CSV line of ``columns`` (ending in ``\\r``).

    ``values`` are SQL expressions over ``inner``'s columns, one per export column (times as
    epoch milliseconds); the rows keep ``inner``'s order. Times are shown in ``zone``, which
    the query reads from its ``{export_zone}`` parameter.
    """
    fields = []
    for column, value in zip(columns, values, strict=True):
        if column.kind in (Kind.TEXT, Kind.JSON):
            fields.append(text_field(value))
        elif column.kind is Kind.TIME:
            fields.append(time_field(value, zone))
        else:
            fields.append(number_field(value))
    line = Sql.join(", ',', ", fields)
    return Sql("SELECT concat({line}, '\\r') AS line FROM ({inner})").fill(line=line, inner=inner)


def csv_header(columns: Sequence[Column]) -> bytes:
    """The header row (column names are plain words: nothing to quote or neutralise)."""
    return (",".join(c.name for c in columns) + "\r\n").encode()

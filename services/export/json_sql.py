"""NDJSON rows written by ClickHouse: each export row as one JSON object on one line.

The JSON and NDJSON exports built a Python object per row and encoded it (~90-140k rows/s);
the query now writes each row as the object ``formats.NdjsonEncoder`` would (kept for the
products export and as the reference the tests compare with, byte for byte), and the bytes go
out as ClickHouse made them, as the CSV export does (``csv_sql.py``):

- text: a JSON string as Python's ``json`` writes it without ``ensure_ascii``: ``"`` and ``\\``
  escaped, ``\\n \\r \\t \\b \\f`` as such, the other control characters as ``\\u00XX``, the rest
  (UTF-8) as is. Only a value holding one of those characters pays for the escaping;
- numbers: decimal integers; times: RFC 3339 strings in the export's zone (``csv_sql.time_field``);
- stored JSON (``properties``, ``context``): embedded as stored, ``null`` when empty.

Every expression runs on ClickHouse 18.16 and 26 (``replaceAll``, ``match``, ``concat``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cartlytics.common.storage import Sql, literal

from .csv_sql import time_field
from .formats import Column, Kind

# Short escapes JSON (and Python's encoder) use; every other control character is \u00XX.
_SHORT = {0x0A: "n", 0x0D: "r", 0x09: "t", 0x08: "b", 0x0C: "f"}
# A value needs escaping when it holds a control character, a quote or a backslash.
_NEEDS_ESCAPING = "'[\\\\x00-\\\\x1f\"\\\\\\\\]'"


def _escaped(expr: str) -> str:
    sql = f"replaceAll(replaceAll({expr}, '\\\\', '\\\\\\\\'), '\"', '\\\\\"')"
    for code in range(0x20):
        replacement = f"\\\\{_SHORT[code]}" if code in _SHORT else f"\\\\u{code:04x}"
        sql = f"replaceAll({sql}, '\\x{code:02x}', '{replacement}')"
    return sql


def text_value(value: Sql) -> Sql:
    """SQL: a String as a JSON string (quoted, escaped as Python's json does)."""
    expr = value.text
    # replaceAll passes are cheap where nothing matches (34 of them over 3 columns of a million
    # rows: 0.25 s embedded, measured), and `if` spares plain values even that on ClickHouse 26.
    return Sql(
        f"if(match({expr}, {_NEEDS_ESCAPING}), concat('\"', {_escaped(expr)}, '\"'),"
        f" concat('\"', {expr}, '\"'))"
    )


def json_lines_sql(inner: Sql, columns: Sequence[Column], values: Sequence[Sql], zone: str) -> Sql:
    """SQL: one String per row of ``inner``, its JSON object (no line feed: the stream adds it).

    ``values`` are SQL expressions over ``inner``'s columns, one per export column (times as
    epoch milliseconds); the rows keep ``inner``'s order. Times are shown in ``zone``, which
    the query reads from its ``{export_zone}`` parameter (csv_sql.ZONE_SLOT).
    """
    parts: list[Sql] = []
    for i, (column, value) in enumerate(zip(columns, values, strict=True)):
        key = ("{" if i == 0 else ",") + json.encoder.encode_basestring(column.name) + ":"
        if column.kind is Kind.TEXT:
            field = text_value(value)
        elif column.kind is Kind.JSON:
            field = Sql("if({v} = '', 'null', {v})").fill(v=value)
        elif column.kind is Kind.TIME:
            field = Sql("concat('\"', {time}, '\"')").fill(time=time_field(value, zone))
        else:
            field = Sql("toString({v})").fill(v=value)
        # The key: a column name of this code, as a literal (no slot can hide in it: names are
        # plain words).
        parts += [Sql(literal(key)), field]
    return Sql("SELECT concat({parts}, '}') AS line FROM ({inner})").fill(
        parts=Sql.join(", ", parts), inner=inner
    )

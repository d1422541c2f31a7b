"""File formats of an export: rows in, bytes out, with memory that does not grow with the rows.

Every export is a header (the column names) and rows of typed values (``Kind``):

- CSV (RFC 4180): UTF-8, ``\\r\\n`` line ends, a header row, fields quoted when they hold a comma,
  a quote or a line break (quotes doubled).
- JSON: one document, an array of objects, written as it goes (``[``, rows joined by ``,``, ``]``).
- NDJSON: one object per line.
- XLSX: XlsxWriter in constant-memory mode (each row goes to a temporary file as it is written),
  typed cells (numbers as numbers, times as Excel dates), a bold header row; the finished file is
  then read back in chunks and deleted.

Amounts are integers in minor units in every format (``total: 6578`` is 65.78 USD): exact, and
the currency's number of decimals is not ours to guess. Times are RFC 3339 with the requested
zone's offset (``2024-01-15T10:00:00.000+05:30``); in XLSX they are Excel dates showing the wall
clock of that zone (Excel dates carry no zone, and XlsxWriter takes naive datetimes only).

Spreadsheet formula injection (OWASP "CSV injection"): a text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is prefixed with a single quote in CSV and XLSX, so no
spreadsheet runs it as a formula. Number cells are never touched (a negative amount stays a
number). JSON and NDJSON are for programs and carry the text as it is.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

CHUNK_BYTES = 64 * 1024
"""Size of the pieces an export goes out in (one HttpBody message each)."""

XLSX_MAX_ROWS = 1_048_576
"""Rows of one Excel worksheet, the header included; longer exports continue on a new sheet."""

XLSX_MAX_CELL = 32_767
"""Characters Excel keeps in one cell. A longer text is cut, visibly (``xlsx_cell``)."""


def xlsx_cell(text: str) -> str:
    """``text`` as an XLSX cell holds it: whole, or (over Excel's limit) its start and a marker
    saying how long it was, instead of the silent cut Excel (and XlsxWriter) would make."""
    if len(text) <= XLSX_MAX_CELL:
        return text
    marker = f" [cut: {len(text):,} characters; the CSV and JSON exports have it whole]"
    return text[: XLSX_MAX_CELL - len(marker)] + marker


class Kind(Enum):
    TEXT = "text"  # str
    INT = "int"  # int (amounts in minor units, counts)
    TIME = "time"  # int: milliseconds since the Unix epoch (UTC)
    JSON = "json"  # str holding a JSON document (stored properties/context), embedded as is


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind


Row = Sequence[Any]

_FORMULA_START = frozenset("=+-@\t\r")


def neutralise(text: str) -> str:
    """The text a spreadsheet shows as text: a leading ``'`` before a would-be formula."""
    return "'" + text if text and text[0] in _FORMULA_START else text


# --------------------------------------------------------------------------------------- time

_EPOCH = datetime(1970, 1, 1)
_QUARTER_MS = 15 * 60 * 1000


@cache
def _second_and_millis() -> tuple[str, ...]:
    """``SS.mmm`` for every millisecond of a minute (a lookup beats formatting, ~3 MB once)."""
    return tuple(f"{ms // 1000:02d}.{ms % 1000:03d}" for ms in range(60_000))


@cache
def _hours_and_minutes() -> tuple[str, ...]:
    """``HH:MM:`` for every minute of a day."""
    return tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440))


def _offset_text(offset_ms: int) -> str:
    sign = "+" if offset_ms >= 0 else "-"
    minutes = abs(offset_ms) // 60_000
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


class LocalTime:
    """Epoch milliseconds -> wall-clock time of one zone, fast on time-ordered input.

    Per row it costs a few integer divisions and table lookups: the zone's offset is kept for
    the current quarter hour of UTC time (checked at both ends of the quarter, so a transition
    inside it is computed per row), the ``YYYY-MM-DDT`` prefix for the current local day, and
    the rest of the text comes from tables (``HH:MM:`` per minute of a day, ``SS.mmm`` per
    millisecond of a minute).
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._utc = zone.key == "UTC"
        self._quarter = -1
        self._offset_ms = 0
        self._offset_text = "+00:00"
        self._exact = True  # whether the quarter has a single offset
        self._day: int | None = None  # the local day of `_prefix` (days since the epoch)
        self._prefix = ""
        self._hours = _hours_and_minutes()
        self._tail = _second_and_millis()

    def _offset_of(self, ms: int) -> int:
        moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.zone)
        offset = moment.utcoffset()
        return int(offset.total_seconds() * 1000) if offset is not None else 0

    def offset_ms(self, ms: int) -> int:
        """The zone's UTC offset at ``ms``, in milliseconds."""
        if self._utc:
            return 0
        quarter = ms // _QUARTER_MS
        if quarter != self._quarter:
            start = quarter * _QUARTER_MS
            first, last = self._offset_of(start), self._offset_of(start + _QUARTER_MS - 1)
            self._quarter, self._exact = quarter, first == last
            self._offset_ms, self._offset_text = first, _offset_text(first)
        if self._exact:
            return self._offset_ms
        offset = self._offset_of(ms)
        self._offset_text = _offset_text(offset)
        return offset

    def rfc3339(self, ms: int) -> str:
        """``2024-01-15T10:00:00.000+05:30``: RFC 3339 in the zone, with milliseconds."""
        local = ms if self._utc else ms + self.offset_ms(ms)
        day, rest = divmod(local, 86_400_000)
        if day != self._day:
            self._day = day
            self._prefix = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        minute, rest = divmod(rest, 60_000)
        return self._prefix + self._hours[minute] + self._tail[rest] + self._offset_text

    def naive(self, ms: int) -> datetime:
        """The wall-clock time in the zone, without tzinfo (what an Excel date can hold)."""
        return _EPOCH + timedelta(milliseconds=ms + self.offset_ms(ms))


# ------------------------------------------------------------------------------------ encoders


class Encoder:
    """Rows to bytes for one format. ``encode`` per block; ``finish`` yields the tail."""

    content_type = "application/octet-stream"
    extension = "bin"

    def __init__(self, columns: Sequence[Column], clock: LocalTime) -> None:
        self.columns = list(columns)
        self.clock = clock

    def encode(self, rows: Sequence[Row]) -> bytes:
        raise NotImplementedError

    def finish(self) -> Iterator[bytes]:
        """The bytes after the last row (for XLSX: the whole file, in chunks)."""
        return iter(())

    def close(self) -> None:
        """Release what the encoder holds (temporary files); safe after a failure."""


class CsvEncoder(Encoder):
    content_type = "text/csv; charset=utf-8"
    extension = "csv"

    def __init__(self, columns: Sequence[Column], clock: LocalTime) -> None:
        super().__init__(columns, clock)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self._writer.writerow([neutralise(c.name) for c in self.columns])
        converters: dict[Kind, Callable[[Any], Any]] = {
            Kind.TEXT: neutralise,
            Kind.JSON: neutralise,
            Kind.TIME: clock.rfc3339,
        }
        # Only the columns that need work; ints go to the csv module as they are.
        self._convert = [
            (i, converters[c.kind]) for i, c in enumerate(self.columns) if c.kind in converters
        ]

    def encode(self, rows: Sequence[Row]) -> bytes:
        if not rows:
            return b""
        # Column by column: map() and writerows() loop in C, the converters are the only Python
        # calls per cell (~2x faster than converting row by row).
        columns: list[Any] = list(zip(*rows, strict=True))
        for i, function in self._convert:
            columns[i] = map(function, columns[i])
        self._writer.writerows(zip(*columns, strict=True))
        return self._take()

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8", errors="replace")

    def finish(self) -> Iterator[bytes]:
        yield self._take()  # the header of an export without rows


_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _json_text(value: Any) -> str:
    return _json_string(value) if isinstance(value, str) else "null"


def _json_int(value: Any) -> str:
    return str(int(value)) if value is not None else "null"


def _json_raw(value: Any) -> str:
    # Stored properties/context are JSON that ingest wrote (json.dumps); embedded as they are,
    # so an export does not pay a parse and a dump per row.
    return value if isinstance(value, str) and value else "null"


class NdjsonEncoder(Encoder):
    content_type = "application/x-ndjson"
    extension = "ndjson"
    _between = "\n"
    _start = ""

    def __init__(self, columns: Sequence[Column], clock: LocalTime) -> None:
        super().__init__(columns, clock)
        time_text: Callable[[Any], str] = lambda ms: '"' + clock.rfc3339(ms) + '"'  # noqa: E731
        converters: dict[Kind, Callable[[Any], str]] = {
            Kind.TEXT: _json_text,
            Kind.INT: _json_int,
            Kind.TIME: time_text,
            Kind.JSON: _json_raw,
        }
        self._keys = [
            ("{" if i == 0 else ",") + _json_string(c.name) + ":"
            for i, c in enumerate(self.columns)
        ]
        self._convert = [converters[c.kind] for c in self.columns]
        self._rows = 0

    def _object(self, row: Row) -> str:
        pairs = [key + f(v) for key, f, v in zip(self._keys, self._convert, row, strict=True)]
        return "".join(pairs) + "}"

    def encode(self, rows: Sequence[Row]) -> bytes:
        if not rows:
            return b""
        parts = [self._object(row) for row in rows]
        lead = self._start if self._rows == 0 else self._between
        self._rows += len(rows)
        return (lead + self._between.join(parts)).encode("utf-8", errors="replace")

    def finish(self) -> Iterator[bytes]:
        yield b"\n" if self._rows else b""  # every line ends with a line feed


class JsonEncoder(NdjsonEncoder):
    content_type = "application/json"
    extension = "json"
    _between = ",\n"
    _start = "[\n"

    def finish(self) -> Iterator[bytes]:
        yield b"\n]\n" if self._rows else b"[]\n"


MAX_EXACT_CELL = 2**53 - 1


class XlsxEncoder(Encoder):
    content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    extension = "xlsx"

    def __init__(self, columns: Sequence[Column], clock: LocalTime, sheet: str = "export") -> None:
        import xlsxwriter

        super().__init__(columns, clock)
        self._dir = tempfile.mkdtemp(prefix="cartlytics-export-")
        self._path = os.path.join(self._dir, "export.xlsx")
        # constant_memory: rows are flushed to a temporary file as soon as the next row starts,
        # so memory does not grow with the rows; in_memory False: the zip is assembled from
        # temporary files too.
        self._book = xlsxwriter.Workbook(
            self._path,
            {"constant_memory": True, "in_memory": False, "tmpdir": self._dir},
        )
        self._bold = self._book.add_format({"bold": True})
        self._date = self._book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"})
        self._sheet_name = sheet[:25]
        self._sheets = 0
        self._sheet: Any = None
        self._row = 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._sheets += 1
        name = self._sheet_name if self._sheets == 1 else f"{self._sheet_name} {self._sheets}"
        self._sheet = self._book.add_worksheet(name)
        for i, column in enumerate(self.columns):
            width = {Kind.TIME: 24, Kind.INT: 12, Kind.JSON: 40}.get(column.kind, 18)
            self._sheet.set_column(i, i, width)
            self._sheet.write_string(0, i, neutralise(column.name), self._bold)
        self._row = 1

    def encode(self, rows: Sequence[Row]) -> bytes:
        kinds = [c.kind for c in self.columns]
        naive, date = self.clock.naive, self._date
        for row in rows:
            if self._row >= XLSX_MAX_ROWS:
                self._new_sheet()
            sheet, r = self._sheet, self._row
            for i, (kind, value) in enumerate(zip(kinds, row, strict=True)):
                if value is None or value == "":
                    continue  # a blank cell
                if kind is Kind.INT:
                    number = int(value)
                    if -MAX_EXACT_CELL <= number <= MAX_EXACT_CELL:
                        sheet.write_number(r, i, number)
                    else:  # an Excel number is a double: beyond 2^53 it would be rounded
                        sheet.write_string(r, i, str(number))
                elif kind is Kind.TIME:
                    sheet.write_datetime(r, i, naive(value), date)
                else:  # TEXT, JSON (XlsxWriter writes a carriage return as OOXML's _x000D_)
                    sheet.write_string(r, i, xlsx_cell(neutralise(value)))
            self._row += 1
        return b""

    def finish(self) -> Iterator[bytes]:
        self._book.close()
        with open(self._path, "rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                yield chunk

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


ENCODERS: dict[str, type[Encoder]] = {
    "csv": CsvEncoder,
    "json": JsonEncoder,
    "ndjson": NdjsonEncoder,
    "xlsx": XlsxEncoder,
}


class Chunker:
    """Bytes in, pieces of ``CHUNK_BYTES`` out (the last one shorter)."""

    def __init__(self, size: int = CHUNK_BYTES) -> None:
        self._size = size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while len(self._buffer) >= self._size:
            yield bytes(self._buffer[: self._size])
            del self._buffer[: self._size]  # amortised O(1) at the front of a bytearray

    def flush(self) -> Iterator[bytes]:
        if self._buffer:
            yield bytes(self._buffer)
            self._buffer.clear()

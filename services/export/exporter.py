"""An export, start to end: a source's rows through a format's encoder, out in ~64 KB chunks.

Plain domain code (no gRPC): ``Exporter.export`` is an async iterator of bytes that a servicer,
a test or a script can consume. Memory stays flat: CSV, NDJSON and JSON come from ClickHouse
as ready lines (csv_sql.py, json_sql.py) that are only framed here; for XLSX (and products) a
block of rows is read, turned into output rows and encoded (off the event loop, in a worker
thread) before the next one is asked for. The bytes leave in chunks as they come. Nothing is
sent before the first block has been read, so a failing query is still a proper error status
rather than a truncated file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime

from cartlytics.common.storage import Storage

from .csv_sql import csv_header, csv_lines_sql
from .formats import ENCODERS, Chunker, Column, LocalTime
from .json_sql import json_lines_sql
from .request import ExportPlan, ExportQuery, plan_export
from .sources import SOURCES, Batch, LineWriter, Scope


class Exporter:
    def __init__(
        self, storage: Storage, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._storage = storage
        self._clock = clock

    def plan(self, query: ExportQuery) -> ExportPlan:
        """Check the request (400 naming the first bad parameter) against the clock."""
        return plan_export(query, self._clock())

    async def export(self, project_id: str, plan: ExportPlan) -> AsyncGenerator[bytes, None]:
        """The export's bytes, in chunks of about 64 KB; at least one chunk (maybe empty)."""
        source = SOURCES[plan.type](self._storage, Scope.of(self._storage, project_id, plan))
        text_lines = getattr(source, "text_lines", None)
        writer = LINE_WRITERS.get(plan.format)
        if text_lines is not None and writer is not None:
            # The fast path: ClickHouse writes the lines (csv_sql.py, json_sql.py), they pass
            # through as bytes, framed here (a CSV header; a JSON array's brackets and commas).
            framing = Framing(plan.format, source.columns)
            chunker = Chunker()
            async with aclosing(text_lines(plan.zone.key, writer)) as blocks:
                for opening in framing.start():
                    for chunk in chunker.feed(opening):
                        yield chunk
                async for block in blocks:
                    for chunk in chunker.feed(framing.block(block)):
                        yield chunk
            for chunk in chunker.feed(framing.end()):
                yield chunk
            last = list(chunker.flush())
            for chunk in last or [b""]:  # at least one chunk, so that the content type goes out
                yield chunk
            return
        encoder_class = ENCODERS[plan.format]
        encoder = await asyncio.to_thread(encoder_class, source.columns, LocalTime(plan.zone))
        chunker = Chunker()
        sent = False
        try:

            def run(batch: Batch) -> bytes:
                return encoder.encode(batch())

            async with aclosing(source.batches()) as batches:
                async for batch in batches:
                    data = await asyncio.to_thread(run, batch)
                    for chunk in chunker.feed(data):
                        sent = True
                        yield chunk
            tail = encoder.finish()
            while (piece := await asyncio.to_thread(_next, tail)) is not None:
                for chunk in chunker.feed(piece):
                    sent = True
                    yield chunk
            for chunk in chunker.flush():
                sent = True
                yield chunk
            if not sent:
                yield b""  # so that the response still has its content type
        finally:
            await asyncio.to_thread(encoder.close)


def _next(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


LINE_WRITERS: dict[str, LineWriter] = {
    "csv": csv_lines_sql,
    "ndjson": json_lines_sql,
    "json": json_lines_sql,
}


class Framing:
    """What goes around and between the lines ClickHouse wrote, so that the bytes are those
    the Python encoders (formats.py) would write for the same rows.

    Each block is whole lines, each followed by ``\\n``: CSV and NDJSON take them as they are
    (after CSV's header); a JSON array puts ``[`` before the first, ``,`` after each but the last
    and ``]`` at the end (a JSON object written by json_sql.py holds no raw line feed).
    """

    def __init__(self, fmt: str, columns: Sequence[Column]) -> None:
        self._format = fmt
        self._columns = columns
        self._rows = False

    def start(self) -> list[bytes]:
        return [csv_header(self._columns)] if self._format == "csv" else []

    def block(self, lines: bytes) -> bytes:
        if not lines or self._format != "json":
            return lines
        body = lines[:-1].replace(b"\n", b",\n")
        lead = b",\n" if self._rows else b"[\n"
        self._rows = True
        return lead + body

    def end(self) -> bytes:
        if self._format != "json":
            return b""
        return b"\n]\n" if self._rows else b"[]\n"

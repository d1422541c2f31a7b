"""An export, start to end: a source's rows through a format's encoder, out in ~64 KB chunks.

Plain domain code (no gRPC): ``Exporter.export`` is an async iterator of bytes that a servicer,
a test or a script can consume. Memory stays flat: a block of rows is read, turned into output
rows and encoded (off the event loop, in a worker thread) before the next one is asked for, and
the bytes leave in chunks as they come. Nothing is sent before the first block has been read, so
a failing query is still a proper error status rather than a truncated file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime

from cartlytics.common.storage import Storage

from .csv_sql import csv_header
from .formats import ENCODERS, Chunker, LocalTime
from .request import ExportPlan, ExportQuery, plan_export
from .sources import SOURCES, Batch, Scope


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
        csv_lines = getattr(source, "csv_lines", None) if plan.format == "csv" else None
        if csv_lines is not None:
            # The fast path: ClickHouse writes the lines (csv_sql.py), they pass through as bytes.
            chunker = Chunker()
            for chunk in chunker.feed(csv_header(source.columns)):
                yield chunk
            async with aclosing(csv_lines(plan.zone.key)) as blocks:
                async for block in blocks:
                    for chunk in chunker.feed(block):
                        yield chunk
            for chunk in chunker.flush():
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

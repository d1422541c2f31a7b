"""Group commit: concurrent requests share one INSERT per table, and each is acknowledged only
once the INSERT that carried its rows has returned.

A single flusher task takes everything pending, writes it, resolves the waiting requests, and
starts again; while it writes, new rows accumulate. So under load batches grow on their own, and an
idle system writes a lone event at once (no linger timer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import Storage


@dataclass
class _Pending:
    rows: Mapping[str, Sequence[Sequence[Any]]]
    done: asyncio.Future[None]


@dataclass
class TableSpec:
    name: str
    columns: tuple[str, ...]


@dataclass
class GroupCommitter:
    storage: Storage
    tables: tuple[TableSpec, ...]  # written in this order within one flush
    max_rows: int = 100_000
    _queue: list[_Pending] = field(default_factory=list)
    _wakeup: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    async def write(self, rows: Mapping[str, Sequence[Sequence[Any]]]) -> None:
        """Return once ``rows`` (table name -> rows) are stored; raise what the INSERT raised."""
        if not any(rows.values()):
            return
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future())
        self._queue.append(pending)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._flush_forever())
        assert self._wakeup is not None
        self._wakeup.set()
        await pending.done

    async def _flush_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._flush_once()

    async def _flush_once(self) -> None:
        batch: list[_Pending] = []
        count = 0
        while self._queue and (not batch or count < self.max_rows):
            pending = self._queue.pop(0)
            batch.append(pending)
            count += sum(len(r) for r in pending.rows.values())
        try:
            for table in self.tables:
                merged = [row for p in batch for row in p.rows.get(table.name, ())]
                if merged:
                    await self.storage.insert(table.name, table.columns, merged)
        except BaseException as exc:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

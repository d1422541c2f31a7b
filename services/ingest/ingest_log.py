"""The ingest log: acknowledged events on the ingest host's disk before they reach ClickHouse.

Each request's rows are appended as one record to a segmented, append-only log; the request is
acknowledged once the record is written as the fsync policy says (``FSYNC_POLICIES``), and the
log writer (``log_writer.py``) drains records into ClickHouse in large blocks and checkpoints
what is stored. At start, the records after the checkpoint are replayed.

On disk (``ANALYTICS_INGEST_LOG_DIR``): ``<first lsn, 20 digits>.log`` segments of records, each
``<length u32><crc32 u32><lsn u64>`` then the payload, little-endian; ``checkpoint`` holds the
highest log sequence number (lsn) stored in ClickHouse. A record cut by a crash (the tail of the
last segment: short, or its crc wrong) was never acknowledged: it is cut off at open. A bad record
anywhere else is corruption, and opening refuses (``LogCorrupt``) rather than skip acknowledged
events.

Appends are group-committed: records that arrive while the previous group is being written go
out together in one ``write`` and (policy ``always``) one ``fsync``, on a thread of the log's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

log = structlog.get_logger(__name__)

HEADER = struct.Struct("<IIQ")  # payload length, crc32 of the payload, lsn
MAX_RECORD_BYTES = 1 << 30  # a length past this in a header is a torn or corrupt record
SEGMENT_SUFFIX = ".log"
CHECKPOINT = "checkpoint"

FSYNC_POLICIES = {
    "always": "each group of appends is fsynced before its requests are acknowledged: an"
    " acknowledged event survives the process, the OS and a power cut",
    "interval": "appends are written (the OS has them) before the acknowledgement and fsynced"
    " every ANALYTICS_INGEST_LOG_FSYNC_INTERVAL seconds: survives the process being killed;"
    " an OS crash or power cut may lose that interval",
    "off": "appends are written before the acknowledgement, fsync is left to the OS: survives"
    " the process being killed; an OS crash or power cut may lose what the OS had not flushed",
}


class LogFull(Exception):
    """The records not yet stored in ClickHouse fill the log's budget: refuse, do not grow."""


class LogCorrupt(Exception):
    """A record before the log's tail does not read back: acknowledged data is damaged."""


@dataclass(frozen=True)
class Record:
    lsn: int
    payload: bytes


@dataclass
class _Append:
    payload: bytes
    weight: int
    done: asyncio.Future[int]
    decoded: Any = None


OnWritten = Callable[[int, bytes, int, Any], None]
"""Called with (lsn, payload, weight, decoded) for each record once it is written, in lsn order,
before its append returns (the log writer queues it there)."""


def _segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def _read_records(path: Path) -> tuple[list[Record], int]:
    """The records of a segment and the byte offset after the last good one."""
    data = path.read_bytes()
    records: list[Record] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc, lsn = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        if length > MAX_RECORD_BYTES or start + length > len(data):
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        records.append(Record(lsn, payload))
        offset = start + length
    return records, offset


class IngestLog:
    """A segmented log in ``directory``: ``open`` it (it returns the records to replay), then
    ``append`` records and ``checkpoint`` what the writer stored."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: str = "always",
        max_bytes: int = 256 << 20,
        segment_bytes: int = 64 << 20,
        fsync_interval: float = 0.2,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.directory = directory
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self._file: BinaryIO | None = None
        self._segment_size = 0
        self._next_lsn = 1
        self._checkpoint = 0
        # Records after the checkpoint: (lsn, bytes on disk), oldest first; their sum is what
        # counts against max_bytes.
        self._unstored: deque[tuple[int, int]] = deque()
        self._unstored_bytes = 0
        self._queued_bytes = 0
        self._queue: list[_Append] = []
        self._writing: list[_Append] = []  # the group being written
        self._syncer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-log")
        self.on_written: OnWritten | None = None

    # -- opening and replay

    def open(self) -> list[Record]:
        """Read the checkpoint and every segment, cut a torn tail, and return the records after
        the checkpoint (to be written to ClickHouse before anything newer)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._checkpoint = _read_checkpoint(self.directory)
        segments = self._segments()
        replay: list[Record] = []
        last_lsn = self._checkpoint
        for index, path in enumerate(segments):
            records, good = _read_records(path)
            if good < path.stat().st_size:
                if index != len(segments) - 1:
                    raise LogCorrupt(f"{path}: a record at byte {good} does not read back")
                log.warning("ingest log: cutting a torn record", segment=path.name, at=good)
                with path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            for record in records:
                last_lsn = max(last_lsn, record.lsn)
                if record.lsn > self._checkpoint:
                    replay.append(record)
                    size = HEADER.size + len(record.payload)
                    self._unstored.append((record.lsn, size))
                    self._unstored_bytes += size
        self._next_lsn = last_lsn + 1
        self._start_segment()
        self._drop_stored_segments()
        return replay

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*" + SEGMENT_SUFFIX))

    def _start_segment(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.directory / _segment_name(self._next_lsn)
        self._file = path.open("ab")
        self._segment_size = self._file.tell()
        _fsync_directory(self.directory)

    # -- appending

    @property
    def unstored_bytes(self) -> int:
        """Bytes of records appended (or being appended) and not yet checkpointed."""
        return self._unstored_bytes + self._queued_bytes

    @property
    def last_lsn(self) -> int:
        """The highest lsn handed out so far (0: none)."""
        return self._next_lsn - 1

    async def append(self, payload: bytes, weight: int = 1, decoded: Any = None) -> int:
        """Append one record; return its lsn once it is written as the fsync policy says.
        Raise ``LogFull`` at once when the unstored records would pass ``max_bytes``.
        ``weight`` (its rows) and ``decoded`` (what the payload encodes, when the caller has it
        at hand; None otherwise) are handed to ``on_written`` with it."""
        size = HEADER.size + len(payload)
        if self.unstored_bytes + size > self.max_bytes and self.unstored_bytes > 0:
            raise LogFull(
                f"{self.unstored_bytes} bytes of acknowledged events wait for ClickHouse"
                f" (ANALYTICS_INGEST_LOG_MAX_BYTES={self.max_bytes})"
            )
        loop = asyncio.get_running_loop()
        pending = _Append(payload, weight, loop.create_future(), decoded)
        self._queue.append(pending)
        self._queued_bytes += size
        if self.fsync == "interval" and (self._syncer is None or self._syncer.done()):
            self._syncer = loop.create_task(self._sync_forever())
        self._start_group(loop)
        return await pending.done

    def _start_group(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the queued appends to the log's thread as one group, unless a group is being
        written (the appends queued meanwhile go as the next group, once it is).

        No task and no awaited executor future in between: the thread itself schedules
        ``_group_written``, which answers the group's appends and starts the next group in
        the same turn of the loop (each hop through the loop costs a turn of it: with single
        events at 8 connections on 2 busy cores an append waited 3.1 ms on average with a
        flushing task, 2.7 ms without; docs/ingest-log.md)."""
        if self._writing or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._writing = batch
        chunks = []
        for pending in batch:
            payload = pending.payload
            chunks.append(HEADER.pack(len(payload), zlib.crc32(payload), self._next_lsn))
            chunks.append(payload)
            self._next_lsn += 1
        first_lsn = self._next_lsn - len(batch)
        self._thread.submit(self._write_group, loop, batch, first_lsn, b"".join(chunks))

    def _write_group(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Append], first_lsn: int, data: bytes
    ) -> None:
        """On the log's thread: write (and sync) a group, then have the loop answer it."""
        error: BaseException | None = None
        try:
            self._write(data)
        except BaseException as exc:  # answered on the loop: the appends fail, nothing is lost
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(self._group_written, loop, batch, first_lsn, error)

    def _group_written(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Append],
        first_lsn: int,
        error: BaseException | None,
    ) -> None:
        try:
            if error is not None:
                # Nothing of this group is acknowledged (``_write`` cut its bytes back off the
                # segment); its lsns are handed out again.
                for pending in batch:
                    self._queued_bytes -= HEADER.size + len(pending.payload)
                    if not pending.done.done():
                        pending.done.set_exception(error)
                self._next_lsn = first_lsn
                return
            for lsn, pending in enumerate(batch, start=first_lsn):
                size = HEADER.size + len(pending.payload)
                self._queued_bytes -= size
                self._unstored.append((lsn, size))
                self._unstored_bytes += size
                if self.on_written is not None:
                    self.on_written(lsn, pending.payload, pending.weight, pending.decoded)
                if not pending.done.done():
                    pending.done.set_result(lsn)
        finally:
            # Whatever happened above, the appends queued meanwhile go next (a group left
            # "being written" would hold every later append).
            if self._writing is batch:
                self._writing = []
                self._start_group(loop)

    def _write(self, data: bytes) -> None:
        """Append ``data`` to the segment (a new one when it is full) and sync it as the policy
        says; on any failure, cut the segment back to where ``data`` started, so that the next
        group does not follow a torn record (which reads as corruption at the next open)."""
        if self._segment_size >= self.segment_bytes:
            self._start_segment()
        assert self._file is not None
        start = self._segment_size
        try:
            self._file.write(data)
            self._file.flush()
            if self.fsync == "always":
                os.fsync(self._file.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                self._file.truncate(start)
                self._file.seek(start)
            raise
        self._segment_size = start + len(data)

    async def _sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.fsync_interval)
            await loop.run_in_executor(self._thread, self._sync)

    def _sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    # -- what the writer stored

    def checkpoint(self, lsn: int) -> None:
        """Record that every record up to ``lsn`` is stored in ClickHouse; drop whole segments
        below it. Written without fsync: a stale checkpoint only makes the next start replay
        records that the writer then finds stored (log_writer.py)."""
        if lsn <= self._checkpoint:
            return
        self._checkpoint = lsn
        while self._unstored and self._unstored[0][0] <= lsn:
            self._unstored_bytes -= self._unstored.popleft()[1]
        temporary = self.directory / (CHECKPOINT + ".tmp")
        temporary.write_text(f"{lsn}\n")
        os.replace(temporary, self.directory / CHECKPOINT)
        self._drop_stored_segments()

    def _drop_stored_segments(self) -> None:
        segments = self._segments()
        for path, following in itertools.pairwise(segments):
            # Every record of ``path`` is below the next segment's first lsn.
            if int(following.name.removesuffix(SEGMENT_SUFFIX)) - 1 <= self._checkpoint:
                path.unlink(missing_ok=True)

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Finish the appends under way (for ``grace_seconds`` at most), stop, and close the
        segment. Appends still waiting then are refused (their requests were not answered)."""
        waiting = [p.done for p in (*self._writing, *self._queue)]
        if waiting:
            await asyncio.wait(waiting, timeout=grace_seconds)
        for pending in (*self._writing, *self._queue):
            if not pending.done.done():
                pending.done.set_exception(LogFull("the ingest log is closing"))
        self._writing, self._queue = [], []
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.get_running_loop().run_in_executor(self._thread, _close_synced, file)
        self._thread.shutdown(wait=True)


def _read_checkpoint(directory: Path) -> int:
    """The highest lsn stored in ClickHouse, as the folder's checkpoint says (0: none)."""
    path = directory / CHECKPOINT
    return int(path.read_text().strip() or 0) if path.exists() else 0


def _close_synced(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


def _fsync_directory(directory: Path) -> None:
    """Make a new segment's directory entry durable (a new file is not, until its folder is)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unstored_records(directory: Path) -> list[Record]:
    """The records of a log folder after its checkpoint, read without changing anything (a
    torn tail is skipped, not cut): what the next start would replay."""
    checkpoint = _read_checkpoint(directory)
    records: list[Record] = []
    for path in sorted(directory.glob("*" + SEGMENT_SUFFIX)):
        records.extend(r for r in _read_records(path)[0] if r.lsn > checkpoint)
    return records

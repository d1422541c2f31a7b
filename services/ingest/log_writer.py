"""The log writer: drains the ingest log into ClickHouse in large blocks, exactly once.

One task takes the records appended since its last INSERT (up to ``max_rows`` rows), writes
their rows table by table in one INSERT each (``ingestor.TABLES`` order), lists the orderIds that
are now duplicated (``order_dups``), hands the block to ``on_stored`` (the realtime counters, one
script per project and block), then checkpoints the log. A block is written once its oldest
record has waited ``linger_seconds`` (``ANALYTICS_INGEST_LOG_LINGER_SECONDS``, 0.3 s), unless it
is full or a read in this process waits for it: each INSERT costs ClickHouse about the same up to
thousands of rows (the six views), so fewer, larger blocks leave the cores to ingest itself.

Exactly once: a block whose INSERTs may have been partly done (replayed at start after an unclean
stop, or after an INSERT that failed) is written *checked*: per table, the event ids of the block
already there are looked up and their rows left out. The rows of one event in one table go in one
INSERT (one part: the same partition), so an event is in a table wholly or not at all. Every
other block is written plainly.

While ClickHouse refuses, the writer retries the block (backoff up to ``MAX_BACKOFF_SECONDS``)
and the log keeps acknowledging until it is full (``ingest_log.LogFull``: 503). A block refused
``ISOLATE_AFTER_FAILURES`` times running while ClickHouse answers (``SELECT 1``: an outage is
no reason) is written one record at a time. A record refused on its own while one of the few
after it is taken (so INSERTs work, and it is this record ClickHouse refuses) is retried, and
once it has been so for ``quarantine_after_seconds`` and ``QUARANTINE_AFTER_FAILURES`` tries it
is set aside in the log's ``quarantine`` folder (its bytes and the error;
``cartlytics_ingest_log_quarantined_records_total``) so that the records behind it are stored.
Without this, one record ClickHouse can never take (a bug, a schema changed under the log) would
hold back every later one: the log would fill and ingest answer 503 for good.

``caught_up`` lets the process's readers see every event acknowledged before they started
(``Storage.read_barrier``): a query waits until the writer has stored what was appended when it
arrived, at most ``read_wait_seconds`` (``ANALYTICS_INGEST_LOG_READ_WAIT_SECONDS``, 10 s: a
second was shorter than a cluster here took to store a burst of 5,000 events, and the reads
after it came back short).
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import pickle
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from cartlytics.common.commerce.orders import NEWLY_DUPLICATED_IDS
from cartlytics.common.realtime import RealtimeTally
from cartlytics.common.storage import Sql, Storage
from cartlytics.common.storage.group_commit import TableSpec

from .ingest_log import IngestLog, Record

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 2.0
ISOLATE_AFTER_FAILURES = 3
QUARANTINE_AFTER_FAILURES = 3
QUARANTINE_AFTER_SECONDS = 30.0
VERDICT_RECORDS = 4  # records tried after a refused one, for one that ClickHouse takes
QUARANTINE = "quarantine"
REQUEUE = "requeue"  # records put here (from QUARANTINE, once fixed) are stored at the next start
CHECK_IDS_PER_QUERY = 2_000  # ~80 KB of SQL, well within ClickHouse's max_query_size (256 KiB)
READ_WAIT_SECONDS = 10.0
MAX_DECODED_ROWS = 20_000

BLOCK_ROWS = Histogram(
    "cartlytics_ingest_log_block_rows",
    "Rows of `events` per block the ingest log writer INSERTs.",
    buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000),
)
WRITE_FAILURES = Counter(
    "cartlytics_ingest_log_write_failures_total", "Blocks the ingest log writer had to retry."
)
QUARANTINED = Counter(
    "cartlytics_ingest_log_quarantined_records",
    "Log records ClickHouse refused on their own while it answered, set aside in the log's"
    " quarantine folder (their events acknowledged, not stored: see docs/ingest-log.md).",
)
UNSTORED_BYTES = Gauge(
    "cartlytics_ingest_log_unstored_bytes",
    "Bytes of acknowledged events in the ingest log not yet stored in ClickHouse.",
)


def _slices(ids: set[str]) -> Iterator[tuple[str, ...]]:
    """``ids`` sorted, in tuples of CHECK_IDS_PER_QUERY: one IN of a whole block's ids would
    pass ClickHouse's max_query_size."""
    ordered = sorted(ids)
    for start in range(0, len(ordered), CHECK_IDS_PER_QUERY):
        yield tuple(ordered[start : start + CHECK_IDS_PER_QUERY])


@dataclass(frozen=True)
class LogRecord:
    """One request's rows, as the ingestor built them: per table name, its rows; and the
    orderIds among them (their duplicates are listed after the INSERT)."""

    project_id: str
    rows: dict[str, list[tuple[Any, ...]]]
    order_ids: tuple[str, ...]
    tally: RealtimeTally | None = None
    """The realtime counters' sum of the rows' events, when it was made with them (None: the
    writer makes it from the rows)."""

    def encode(self) -> bytes:
        # pickle: the log is written and read only by this code, on the ingest host (rows hold
        # datetimes and Decimals, which JSON would need converting).
        out = io.BytesIO()
        _RecordPickler(out, protocol=5).dump(
            (self.project_id, self.rows, self.order_ids, self.tally)
        )
        return out.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> LogRecord:
        # Our own log, never a client's bytes; a record written before tallies has three parts.
        project_id, rows, order_ids, *rest = pickle.loads(payload)
        return cls(project_id, rows, order_ids, rest[0] if rest else None)


def utc_datetime(
    year: int, month: int, day: int, hour: int, minute: int, second: int, microsecond: int
) -> datetime:
    """A UTC time as a log record holds it (``_RecordPickler``). Records name this function
    by its module and name: both are part of the log's format (records on disk name them)."""
    return datetime(year, month, day, hour, minute, second, microsecond, UTC)


def _reduce_datetime(value: datetime) -> str | tuple[Any, ...]:
    if value.tzinfo is UTC:
        return utc_datetime, (
            value.year, value.month, value.day, value.hour, value.minute, value.second,
            value.microsecond,
        )  # fmt: skip
    return value.__reduce_ex__(5)


class _RecordPickler(pickle.Pickler):
    """pickle, but a UTC time is its fields and ``utc_datetime``: pickle's own form of an aware
    datetime goes through ``timezone.utc``'s reduction, then ``timedelta``'s, half of a single
    event's record (5.4 -> 3.3 µs to encode, 3.2 -> 2.4 to decode, bench/prepare.py's record);
    read back, the time is the ``UTC`` singleton, not a new ``timezone`` a record. Records
    written before read as they were."""

    # A class attribute: pickle's documented way to reduce a type otherwise in one pickler.
    dispatch_table = {**copyreg.dispatch_table, datetime: _reduce_datetime}  # noqa: RUF012


class _BlockFailed(Exception):
    """A block (or its ``rest``: the records not stored) failed with ``error``."""

    def __init__(self, error: BaseException, rest: list[tuple[int, bytes, int]]) -> None:
        super().__init__(str(error))
        self.error = error
        self.rest = rest


class LogWriter:
    def __init__(
        self,
        storage: Storage,
        ingest_log: IngestLog,
        tables: Sequence[TableSpec],
        max_rows: int = 100_000,
        linger_seconds: float = 0.3,
        read_wait_seconds: float = READ_WAIT_SECONDS,
        quarantine_after_seconds: float = QUARANTINE_AFTER_SECONDS,
    ) -> None:
        self._storage = storage
        self._log = ingest_log
        self._tables = tuple(tables)
        self._max_rows = max_rows
        self._linger = linger_seconds
        self._read_wait = read_wait_seconds
        self._pending: deque[tuple[int, bytes, int]] = deque()  # (lsn, payload, rows)
        self._pending_rows = 0
        # lsn -> the record as appended, for records of this process's own requests (a single
        # event's record costs ~2.4 µs to decode); at most MAX_DECODED_ROWS rows of them, so a
        # backlog (ClickHouse away) holds bytes, not Python objects several times their size.
        self._decoded: dict[int, LogRecord] = {}
        self._decoded_rows = 0
        self._readers = 0  # callers of caught_up waiting: the block goes without lingering
        self._hurry = asyncio.Event()
        self._oldest_at = 0.0  # when the oldest record waiting was appended (monotonic)
        self._checked_up_to = 0  # blocks with lsns up to this are written checked
        self._stored_lsn = 0
        self._quarantine_after = quarantine_after_seconds
        # lsn -> (tries refused alone while the next record was taken, when the first was)
        self._strikes: dict[int, tuple[int, float]] = {}
        self._wakeup = asyncio.Event()
        self._stored = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        # Called with each block's records once they are stored, before readers are let through
        # (the ingestor counts them in the realtime counters). Set before ``start``.
        self.on_stored: Callable[[list[LogRecord]], Awaitable[None]] | None = None
        # Applied to each block's records before they are written (the ingestor drops the
        # events of shoppers erased since they were acknowledged). Set before ``start``.
        self.keep: Callable[[list[LogRecord]], Awaitable[list[LogRecord]]] | None = None

    @property
    def stored_lsn(self) -> int:
        return self._stored_lsn

    def start(self, replay: Sequence[Record]) -> None:
        """Start draining: first the records ``IngestLog.open`` returned (written checked),
        then each record the log writes (``IngestLog.on_written``)."""
        for record in replay:
            rows = len(LogRecord.decode(record.payload).rows.get("events", ()))
            self._pending.append((record.lsn, record.payload, rows))
            self._pending_rows += rows
        if replay:
            self._checked_up_to = replay[-1].lsn
            log.info("ingest log: replaying", records=len(replay), up_to=replay[-1].lsn)
        self._stored_lsn = replay[0].lsn - 1 if replay else self._log.last_lsn
        self._log.on_written = self._queue
        self._task = asyncio.get_running_loop().create_task(self._drain_forever())
        self._wakeup.set()

    def _queue(self, lsn: int, payload: bytes, rows: int, decoded: Any = None) -> None:
        if not self._pending:
            self._oldest_at = time.monotonic()
        if isinstance(decoded, LogRecord) and self._decoded_rows + rows <= MAX_DECODED_ROWS:
            # Appended by this process with its rows at hand: the block need not decode it.
            self._decoded[lsn] = decoded
            self._decoded_rows += rows
        self._pending.append((lsn, payload, rows))
        self._pending_rows += rows
        self._wakeup.set()
        if self._pending_rows >= self._max_rows:
            self._hurry.set()

    async def caught_up(self, limit_seconds: float | None = None) -> None:
        """Wait until every record appended before this call is stored (at most
        ``limit_seconds``, by default the writer's read wait: then the reader goes on, and
        ClickHouse's own state is what it reads)."""
        target = self._log.last_lsn
        if self._stored_lsn >= target:
            return
        if limit_seconds is None:
            limit_seconds = self._read_wait
        if limit_seconds <= 0:
            return
        self._readers += 1
        self._hurry.set()  # a reader waits: no lingering for a bigger block
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit_seconds), self._stored:
                    await self._stored.wait_for(lambda: self._stored_lsn >= target)
        finally:
            self._readers -= 1

    async def _drain_forever(self) -> None:
        backoff = 0.05
        failures = 0  # of the block at the head, running
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                # Before every block, not only after an idle spell: under steady load records
                # arrive while the previous block is written, and writing again at once made
                # blocks as small as one INSERT's duration (each costs ClickHouse about the same
                # up to thousands of rows: the six views).
                await self._linger_for_more()
                block = self._take_block()
                try:
                    if failures >= ISOLATE_AFTER_FAILURES:
                        await self._write_one_by_one(block)
                    else:
                        await self._write(block)
                except _BlockFailed as failed:
                    # Refused while ClickHouse answers: maybe a record it can never take (set
                    # aside after a few tries, record by record). An outage is no such reason.
                    # (During an outage, whole blocks again: a backlog stored record by record
                    # once ClickHouse is back would take minutes.)
                    failures = failures + 1 if await self._storage_answers() else 0
                    WRITE_FAILURES.inc()
                    log.warning(
                        "ingest log: block not stored, retrying",
                        error=str(failed.error)[:300],
                        failures=failures,
                    )
                    # Put back what is not stored, to be written checked: some of its INSERTs
                    # may have landed.
                    rest = failed.rest
                    self._checked_up_to = max(self._checked_up_to, rest[-1][0])
                    self._pending.extendleft(reversed(rest))
                    self._pending_rows += sum(rows for _, _, rows in rest)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                failures = 0
                backoff = 0.05
                UNSTORED_BYTES.set(self._log.unstored_bytes)

    async def _write_one_by_one(self, block: list[tuple[int, bytes, int]]) -> None:
        """Write ``block`` a record at a time (checked). A record refused while the one after it
        is taken is ClickHouse refusing that record: after ``QUARANTINE_AFTER_FAILURES`` such
        tries over ``quarantine_after_seconds`` it is set aside. Raises _BlockFailed with the
        records not stored yet."""
        for at, entry in enumerate(block):
            try:
                await self._write([entry], checked=True)
                continue
            except _BlockFailed as failed:
                error = failed.error
            if not await self._one_taken(block[at + 1 : at + 1 + VERDICT_RECORDS]):
                # Nothing behind it, or every INSERT fails: no verdict on this record.
                raise _BlockFailed(error, block[at:])
            lsn = entry[0]
            tries, since = self._strikes.get(lsn, (0, time.monotonic()))
            self._strikes[lsn] = (tries + 1, since)
            due = tries + 1 >= QUARANTINE_AFTER_FAILURES
            if not due or time.monotonic() - since < self._quarantine_after:
                raise _BlockFailed(error, block[at:])
            await asyncio.to_thread(self._quarantine, entry, error)
            del self._strikes[lsn]
            await self._advance(lsn)

    async def _one_taken(self, following: list[tuple[int, bytes, int]]) -> bool:
        """Whether ClickHouse takes one of ``following`` (the records after one it refused),
        each tried alone: stored, not checkpointed (rewritten checked, so skipped, later)."""
        for entry in following:
            try:
                await self._write([entry], checked=True, advance=False)
            except _BlockFailed:
                continue
            return True
        return False

    async def requeue(self) -> int:
        """Append the records an operator put in the log's ``requeue`` folder (set-aside records
        whose cause is fixed: ``mv quarantine/*.record requeue/``), in lsn order, and delete each
        once appended; they are then stored like any record, checked (some of their rows may be
        stored). Run at start, after ``start``. Returns how many."""
        folder = self._log.directory / REQUEUE
        files = sorted(folder.glob("*.record")) if folder.is_dir() else []
        # Nothing else appends before the process serves: these get the next lsns.
        self._checked_up_to = max(self._checked_up_to, self._log.last_lsn + len(files))
        for path in files:
            payload = await asyncio.to_thread(path.read_bytes)
            record = LogRecord.decode(payload)  # refuse what is no record before appending it
            lsn = await self._log.append(payload, len(record.rows.get("events", ())))
            await asyncio.to_thread(path.unlink)
            log.info("ingest log: requeued a set-aside record", file=path.name, lsn=lsn)
        return len(files)

    async def _storage_answers(self) -> bool:
        try:
            await self._storage.query(Sql("SELECT 1"), ingest=True)
        except Exception:
            return False
        return True

    def _quarantine(self, entry: tuple[int, bytes, int], error: BaseException) -> None:
        lsn, payload, rows = entry
        folder = self._log.directory / QUARANTINE
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / f"{lsn:020d}.record").write_bytes(payload)
        (folder / f"{lsn:020d}.error").write_text(f"{type(error).__name__}: {error}\n")
        QUARANTINED.inc()
        log.error(
            "ingest log: a record ClickHouse refuses was set aside",
            lsn=lsn,
            events=rows,
            folder=str(folder),
            error=str(error)[:300],
        )

    async def _linger_for_more(self) -> None:
        """Let a block grow until ``linger_seconds`` after its oldest record was appended
        (each INSERT costs ClickHouse about the same up to thousands of rows: the six views),
        unless it is full or a reader waits for it."""
        if self._linger <= 0 or self._readers or self._pending_rows >= self._max_rows:
            return
        left = self._oldest_at + self._linger - time.monotonic()
        if left <= 0:
            return
        self._hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await self._hurry.wait()

    def _take_block(self) -> list[tuple[int, bytes, int]]:
        block = [self._pending.popleft()]
        rows = block[0][2]
        while self._pending and rows + self._pending[0][2] <= self._max_rows:
            entry = self._pending.popleft()
            block.append(entry)
            rows += entry[2]
        self._pending_rows -= rows
        if self._pending:  # what is left of a full block goes next, without lingering again
            self._oldest_at = 0.0
        return block

    async def _write(
        self, block: list[tuple[int, bytes, int]], checked: bool = False, advance: bool = True
    ) -> None:
        try:
            await self._write_block(block, checked, advance)
        except Exception as exc:
            raise _BlockFailed(exc, block) from exc

    def _take_decoded(self, lsn: int, rows: int) -> LogRecord | None:
        record = self._decoded.pop(lsn, None)
        if record is not None:
            self._decoded_rows -= rows
        return record

    async def _write_block(
        self, block: list[tuple[int, bytes, int]], checked: bool, advance: bool
    ) -> None:
        held = [self._take_decoded(lsn, rows) for lsn, _, rows in block]
        if any(record is None for record in held):
            missing = [e[1] for e, record in zip(block, held, strict=True) if record is None]
            decoded = iter(await asyncio.to_thread(lambda: [LogRecord.decode(p) for p in missing]))
            records = [next(decoded) if record is None else record for record in held]
        else:
            records = [record for record in held if record is not None]
        if self.keep is not None:
            records = await self.keep(records)
        checked = checked or block[0][0] <= self._checked_up_to
        tables: dict[str, list[tuple[Any, ...]]] = {t.name: [] for t in self._tables}
        for record in records:
            for name, rows in record.rows.items():
                tables[name].extend(rows)
        if checked:
            tables = await self._not_yet_stored(tables)
        for table in self._tables:
            if tables[table.name]:
                await self._storage.insert(table.name, table.columns, tables[table.name])
        BLOCK_ROWS.observe(len(tables.get("events", ())))
        await self._list_duplicates(records)
        if self.on_stored is not None:
            await self.on_stored(records)
        if advance:
            await self._advance(block[-1][0])

    async def _advance(self, last: int) -> None:
        """Every record up to ``last`` is stored (or set aside): checkpoint, let readers by."""
        await asyncio.to_thread(self._log.checkpoint, last)
        async with self._stored:
            self._stored_lsn = last
            self._stored.notify_all()

    async def _not_yet_stored(
        self, tables: dict[str, list[tuple[Any, ...]]]
    ) -> dict[str, list[tuple[Any, ...]]]:
        """``tables`` without the rows of events already in their table (per project)."""
        kept: dict[str, list[tuple[Any, ...]]] = {}
        for table in self._tables:
            rows = tables[table.name]
            if not rows:
                kept[table.name] = []
                continue
            project_at = table.columns.index("project_id")
            event_at = table.columns.index("event_id")
            present: set[tuple[str, str]] = set()
            by_project: dict[str, set[str]] = {}
            for row in rows:
                by_project.setdefault(row[project_at], set()).add(row[event_at])
            for project, ids in by_project.items():
                for chunk in _slices(ids):
                    found = await self._storage.query(
                        Sql(f"SELECT DISTINCT event_id FROM {table.name}")
                        + Sql(" WHERE project_id = {project} AND event_id IN {ids}"),
                        {"project": project, "ids": chunk},
                        ingest=True,
                    )
                    present.update((project, str(r[0])) for r in found)
            kept[table.name] = [r for r in rows if (r[project_at], r[event_at]) not in present]
            if len(kept[table.name]) != len(rows):
                log.info(
                    "ingest log: rows already stored left out",
                    table=table.name,
                    rows=len(rows) - len(kept[table.name]),
                )
        return kept

    async def _list_duplicates(self, records: list[LogRecord]) -> None:
        """List in ``order_dups`` the orderIds of the block that now have more than one stored
        event row (after the INSERT, so two writers storing one orderId at once both see both).
        Sales corrects their rollup rows at query time."""
        by_project: dict[str, set[str]] = {}
        for record in records:
            if record.order_ids:
                by_project.setdefault(record.project_id, set()).update(record.order_ids)
        for project, order_ids in by_project.items():
            rows = []
            for chunk in _slices(order_ids):
                rows += await self._storage.query(
                    NEWLY_DUPLICATED_IDS, {"project": project, "ids": chunk}, ingest=True
                )
            if rows:
                await self._storage.insert(
                    "order_dups", ("project_id", "order_id"), [(project, r[0]) for r in rows]
                )

    async def close(self, grace_seconds: float) -> None:
        """Store what waits (for at most ``grace_seconds``: the rest is replayed at the next
        start), then stop."""
        deadline = time.monotonic() + grace_seconds
        while self._pending or self._stored_lsn < self._log.last_lsn:
            if time.monotonic() > deadline or self._task is None or self._task.done():
                log.warning(
                    "ingest log: stopping with records not yet stored (replayed at next start)",
                    unstored_bytes=self._log.unstored_bytes,
                )
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

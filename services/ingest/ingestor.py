"""Ingest domain logic: validate, dedupe retries, store durably, then count.

An event is acknowledged once it is durable: with the ingest log on (``ANALYTICS_INGEST_LOG``),
once the record carrying it is in the log (``ingest_log.py``; the log writer stores it in
ClickHouse in large blocks, ``log_writer.py``, and then counts each block in the realtime
counters); otherwise once the INSERT carrying it has returned (group commit), then counted. A
client id seen inside the dedup window gets its first acknowledgement again and is not stored
twice. Redis (dedup window, realtime counters) is optional: without it ingestion carries on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from cartlytics.common.commerce.orders import NEWLY_DUPLICATED_IDS
from cartlytics.common.erasure import SUPPRESSED_EVENTS, Suppression
from cartlytics.common.errors import unavailable
from cartlytics.common.realtime import RealtimeCounters, RealtimeTally
from cartlytics.common.realtime_rebuild import RealtimeRecovery
from cartlytics.common.redis_guard import Failure, RedisGuard
from cartlytics.common.storage import Storage
from cartlytics.common.storage.group_commit import GroupCommitter
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2

from .idempotency import Ack, IdempotencyWindow
from .ingest_log import IngestLog, LogFull
from .log_writer import LogRecord, LogWriter
from .outcome import IngestResult, Rejected
from .preparation import EventKey, IngestLimits, Prepared, Settings, new_event_id
from .rows import EVENTS, EVENTS_AT, TABLES, realtime_of_row, rows_without
from .validation import IncomingEvent
from .workers import DEFAULT_SETUP, Preparer, WorkerSetup

log = structlog.get_logger(__name__)


class Ingestor:
    """Stores events through its own group committer (``close`` stops it), and reads and writes
    ``storage`` directly for the duplicate orders, once their rows are committed.

    A request goes in two halves: ``Preparer`` parses, validates and enriches it and builds its
    rows (on the loop, or in a worker process for large ones: ``workers``), then ``commit``
    drops erased shoppers' events and retries answered from the dedup window, and stores the
    rest durably."""

    def __init__(
        self,
        storage: Storage,
        window: IdempotencyWindow,
        realtime: RealtimeCounters | None,
        redis_guard: RedisGuard,
        ip_salt: bytes,
        limits: IngestLimits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = new_event_id,
        recovery: RealtimeRecovery | None = None,
        suppression: Suppression | None = None,
        ingest_log: IngestLog | None = None,
        log_writer: LogWriter | None = None,
        max_batch_events: int = 500,
        max_body_bytes: int = 512 * 1024,
        workers: int = 0,
        worker_setup: WorkerSetup = DEFAULT_SETUP,
    ) -> None:
        if (ingest_log is None) != (log_writer is None):
            raise ValueError("the ingest log and its writer come together")
        self._storage = storage
        self._log = ingest_log
        self._log_writer = log_writer
        self._suppression = suppression
        self._committer = GroupCommitter(storage, TABLES)
        self._window = window
        self._realtime = realtime
        self._guard = redis_guard
        self._recovery = recovery
        settings = Settings(
            ip_salt, limits or IngestLimits(), max_batch_events, max_body_bytes,
            tally=realtime is not None,
        )  # fmt: skip
        self.preparer = Preparer(settings, clock, new_id, workers, worker_setup)

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Stop; with the ingest log, first store what it holds (for ``grace_seconds`` at most:
        the rest is replayed at the next start)."""
        await self.preparer.close()
        if self._log is not None and self._log_writer is not None:
            log.info("ingest log: closing", unstored_bytes=self._log.unstored_bytes)
            deadline = time.monotonic() + grace_seconds
            await self._log.close(grace_seconds)
            await self._log_writer.close(max(0.0, deadline - time.monotonic()))
            log.info("ingest log: closed", unstored_bytes=self._log.unstored_bytes)
        await self._committer.close()

    async def ingest(
        self, project_id: str, events: Sequence[IncomingEvent], client_ip: str = ""
    ) -> IngestResult:
        """Decoded events, prepared on the loop and committed."""
        return await self.commit(self.preparer.events(project_id, events, client_ip))

    async def ingest_json(
        self, project_id: str, body: bytes, content_type: str, single: bool, client_ip: str = ""
    ) -> IngestResult:
        """A REST body (``POST /analytics/event``: ``single``, else ``.../event/batch``)."""
        prepared = await self.preparer.json(project_id, body, content_type, single, client_ip)
        return await self.commit(prepared)

    async def ingest_protos(
        self, project_id: str, request: ingest_pb2.BatchTrackEventsRequest, client_ip: str = ""
    ) -> IngestResult:
        """A gRPC batch, its limits already checked."""
        return await self.commit(await self.preparer.protos(project_id, request, client_ip))

    async def commit(self, prepared: Prepared) -> IngestResult:
        """Store a prepared request's valid events, but for erased shoppers' (acknowledged,
        never stored) and client ids the dedup window has answered or another request is
        storing; the result by request position."""
        project_id = prepared.project_id
        result = IngestResult(rejected=list(prepared.refused))
        keys = prepared.keys

        # An erased shopper's new events, during the suppression period: acknowledged, never
        # stored (docs/privacy.md).
        if self._suppression is not None and keys:
            suppressed = self._suppression.suppressed
            kept: list[EventKey] = []
            for key in keys:
                if suppressed(project_id, key.user_id, key.anonymous_id):
                    result.accepted.append((key.position, key))
                else:
                    kept.append(key)
            SUPPRESSED_EVENTS.inc(len(keys) - len(kept))
            keys = kept

        if not any(key.client_id for key in keys):
            # The usual request: every id the server's (each new, so none in the dedup window).
            await self._store(prepared, keys)
            suppressed_first = bool(result.accepted)
            # Each key is its own acknowledgement (an Ack apiece cost ~1.5 µs an event in situ).
            result.accepted.extend([(k.position, k) for k in keys])
            if suppressed_first:
                result.accepted.sort(key=lambda a: a[0])
            result.rejected.sort(key=lambda r: r.index)
            return result

        # Within one request the first occurrence of an id is the one stored.
        first_of: dict[str, int] = {}
        for key in keys:
            first_of.setdefault(key.id, key.position)
        client_ids = [k.id for k in keys if k.client_id and first_of[k.id] == k.position]
        claims = await self._window.claim(project_id, client_ids)

        to_store: list[EventKey] = []
        acks: dict[str, Ack] = {}
        refused: set[int] = set()
        for key in keys:
            if first_of[key.id] != key.position:
                continue
            claim = claims.get(key.id) if claims else None
            if claim is not None and claim.ack is not None:
                acks[key.id] = claim.ack
            elif claim is not None and claim.in_flight:
                result.rejected.append(self._being_stored(prepared, key.position))
                refused.add(key.position)
            else:
                to_store.append(key)
        claimed = [k.id for k in to_store if k.client_id]
        try:
            await self._store(prepared, to_store)
        except BaseException:
            await self._window.release(project_id, claimed)
            raise
        acks.update((k.id, Ack(k.id, k.event, k.timestamp)) for k in to_store)
        if claimed:
            await self._window.confirm(project_id, [acks[i] for i in claimed])

        for key in keys:
            if key.position in refused:
                continue
            ack = acks.get(key.id)
            if ack is not None:
                result.accepted.append((key.position, ack))
            else:  # a repeat, in this request, of an id another request is storing
                result.rejected.append(self._being_stored(prepared, key.position))
        result.rejected.sort(key=lambda r: r.index)
        result.accepted.sort(key=lambda a: a[0])
        return result

    @staticmethod
    def _being_stored(prepared: Prepared, position: int) -> Rejected:
        id_field = "messageId" if position in prepared.message_id_at else "id"
        return Rejected.being_stored(position, id_field)

    async def _count(self, project_id: str, tally: RealtimeTally) -> None:
        """Add stored events to the realtime counters (one script per call; safe to repeat)."""
        if self._realtime is None:
            return
        counters = self._realtime

        def behind(failure: Failure) -> None:
            # Stored but not counted: the project's counters are rebuilt from ClickHouse.
            if self._recovery is not None:
                self._recovery.record_failed(project_id, failure)

        await self._guard.run(lambda _: counters.record_tally(project_id, tally), None, behind)

    async def count_stored(self, records: Sequence[LogRecord]) -> None:
        """The log writer's hook: count a block it has just stored, per project, in one script
        each. Counting after the INSERT (not at the acknowledgement) means an event that is
        counted is in ClickHouse, and one a crash left in the log is counted when the replay
        stores it; counting is idempotent (RealtimeCounters.record), so a replayed or
        retried block counts nothing twice. The tallies made with the records' rows (by the
        workers) are merged; the rows of the records without one (prepared on the loop, or
        filtered since) are tallied here, all of a project's at once."""
        if self._realtime is None:
            return
        by_project: dict[str, tuple[list[RealtimeTally], list[tuple[Any, ...]]]] = {}
        for record in records:
            rows = record.rows.get(EVENTS.name)
            if not rows:
                continue
            tallies, untallied = by_project.setdefault(record.project_id, ([], []))
            if record.tally is not None:
                tallies.append(record.tally)
            else:
                untallied.extend(rows)
        for project_id, (tallies, untallied) in by_project.items():
            if untallied:
                total = RealtimeTally.of(realtime_of_row(row) for row in untallied)
            elif len(tallies) == 1:
                total = tallies.pop()
            else:
                total = RealtimeTally()  # not a record's own: merged into
            for tally in tallies:
                total.add(tally)
            await self._count(project_id, total)

    async def without_suppressed(self, records: list[LogRecord]) -> list[LogRecord]:
        """The log writer's filter: ``records`` without the events (and their rows in every
        table) of shoppers erased since they were acknowledged (docs/privacy.md). The list is
        read again before each block (``erasures`` is small: a few ms, against the tens an
        INSERT with its views costs), so an erasure made by another process holds for every
        block whose INSERT starts after it was recorded, whatever the list's refresh interval;
        a failed read fails the block, which is retried."""
        suppression = self._suppression
        if suppression is None or not suppression.enabled:
            return records
        await suppression.refresh(self._storage)
        if not (suppression.users or suppression.anonymous):
            return records
        kept: list[LogRecord] = []
        event_id_at, user_id_at = EVENTS_AT["event_id"], EVENTS_AT["user_id"]
        anonymous_id_at = EVENTS_AT["anonymous_id"]
        for record in records:
            project_id = record.project_id
            if not (suppression.users.get(project_id) or suppression.anonymous.get(project_id)):
                kept.append(record)
                continue
            erased = {
                row[event_id_at]
                for row in record.rows.get(EVENTS.name, ())
                if suppression.suppressed(project_id, row[user_id_at], row[anonymous_id_at])
            }
            if not erased:
                kept.append(record)
                continue
            SUPPRESSED_EVENTS.inc(len(erased))
            rows = rows_without(record.rows, erased)
            kept.append(LogRecord(project_id, rows, record.order_ids))
        return kept

    async def _store(self, prepared: Prepared, keys: Sequence[EventKey]) -> None:
        if not keys:
            return
        project_id = prepared.project_id
        if self._log is not None:
            # The usual case: every valid event stored, its record as prepared (a worker's
            # bytes, or rows prepared here, which the log writer then takes as they are).
            if len(keys) == len(prepared.keys):
                payload, record = prepared.payload(), prepared.record_at_hand()
            else:
                record = prepared.stored_part(keys)
                payload = record.encode()
            try:
                await self._log.append(payload, len(keys), record)
            except LogFull as exc:
                raise unavailable(str(exc), reason="INGEST_LOG_FULL") from exc
            return  # the log writer stores the rows, lists duplicated orderIds, counts them
        record = prepared.stored_part(keys)
        await self._committer.write(record.rows)
        if record.order_ids:
            await self._mark_duplicate_orders(project_id, record.order_ids)
        if record.rows.get(EVENTS.name):
            await self._count(project_id, _tally_of(record))

    async def _mark_duplicate_orders(self, project_id: str, order_ids: tuple[str, ...]) -> None:
        """List orderIds that now have more than one stored event row in ``order_dups``.

        Runs after the rows are committed, so of two processes storing events of one orderId at
        once, the later check sees both: no duplicate goes unlisted. Sales corrects their rollup
        rows at query time.
        """
        rows = await self._storage.query(
            NEWLY_DUPLICATED_IDS, {"project": project_id, "ids": order_ids}, ingest=True
        )
        if rows:
            await self._storage.insert(
                "order_dups", ("project_id", "order_id"), [(project_id, r[0]) for r in rows]
            )


def _tally_of(record: LogRecord) -> RealtimeTally:
    """The record's realtime tally: the one made with its rows, else made from them."""
    if record.tally is not None:
        return record.tally
    return RealtimeTally.of(realtime_of_row(row) for row in record.rows.get(EVENTS.name, ()))

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from cartlytics.common.commerce.orders import NEWLY_DUPLICATED_IDS
from cartlytics.common.erasure import SUPPRESSED_EVENTS, Suppression
from cartlytics.common.errors import FieldViolation, unavailable
from cartlytics.common.random_ids import RandomIds
from cartlytics.common.realtime import RealtimeCounters, RealtimeEvent
from cartlytics.common.realtime_rebuild import RealtimeRecovery
from cartlytics.common.redis_guard import Failure, RedisGuard
from cartlytics.common.storage import Storage
from cartlytics.common.storage.group_commit import GroupCommitter, TableSpec

from .enrichment import Enrichment, enrich
from .idempotency import Ack, IdempotencyWindow
from .ingest_log import IngestLog, LogFull
from .log_writer import LogRecord, LogWriter
from .validation import MAX_EVENT_BYTES, IncomingEvent, ValidEvent, compact_json, validate

EVENTS = TableSpec(
    "events",
    (
        "project_id", "event_id", "event", "ts", "received_at", "user_id", "anonymous_id",
        "session_id", "visitor_id", "order_id", "total", "currency", "product_id", "page",
        "properties", "context", "device", "browser", "os", "ip_hash", "country", "region",
        "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "referrer_host",
    ),
)  # fmt: skip
ORDER_ITEMS = TableSpec(
    "order_items",
    (
        "project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency",
        "product_id", "name", "category", "price", "quantity",
    ),
)  # fmt: skip
# Each order event with its lines as arrays (products figures read these).
ORDER_LINES = TableSpec(
    "order_lines",
    (
        "project_id", "order_id", "event_id", "ts", "currency", "visitor_id", "product_ids",
        "prices", "quantities", "declared_items",
    ),
)  # fmt: skip
# Every non-empty product name an event carries (the latest one is the product's name).
PRODUCT_NAMES = TableSpec(
    "product_names", ("project_id", "product_id", "name", "ts", "event_id", "line")
)
# Line items first: a line without its order event is never counted (product figures join on the
# order), while an order event without its lines would undercount products. order_lines and
# product_names after the events: a row there always has its event stored (products read
# order_lines without a join and check that no event row lacks its order_lines row).
TABLES = (ORDER_ITEMS, EVENTS, ORDER_LINES, PRODUCT_NAMES)
log = structlog.get_logger(__name__)

IN_FLIGHT = "an event with this id is being stored by another request; retry"


new_event_id = RandomIds(24, prefix="evt_")
"""``evt_`` and 24 random hex digits (96 bits from the OS's CSPRNG), drawn in bulk."""


@dataclass(frozen=True)
class Rejected:
    """An event of the request not stored: why (``violations``), and whether only because
    another request is storing an event of the same id (``in_flight``: the caller may retry)."""

    index: int
    violations: list[FieldViolation]
    in_flight: bool = False

    @classmethod
    def being_stored(cls, index: int) -> Rejected:
        return cls(index, [FieldViolation("id", IN_FLIGHT)], in_flight=True)


@dataclass
class IngestResult:
    accepted: list[tuple[int, Ack]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class IngestLimits:
    max_event_bytes: int = MAX_EVENT_BYTES
    ip_mode: str = "hash"


def _event_row(project_id: str, e: ValidEvent, extra: Enrichment) -> tuple[Any, ...]:
    return (
        project_id, e.id, e.event, e.timestamp, e.received_at, e.user_id, e.anonymous_id,
        e.session_id, e.visitor_id, e.order_id, e.total, e.currency, e.product_id, e.page,
        e.properties_json or compact_json(e.properties), compact_json(extra.context),
        extra.device, extra.browser, extra.os,
        extra.ip_hash, extra.country, extra.region, extra.utm_source, extra.utm_medium,
        extra.utm_campaign, extra.utm_term, extra.utm_content, extra.referrer_host,
    )  # fmt: skip


def _item_rows(project_id: str, e: ValidEvent) -> list[tuple[Any, ...]]:
    return [
        (
            project_id,
            e.order_id,
            e.id,
            line,
            e.timestamp,
            e.visitor_id,
            e.currency,
            item.product_id,
            item.name,
            item.category,
            item.price,
            item.quantity,
        )
        for line, item in enumerate(e.line_items)
    ]


def _order_lines_row(project_id: str, e: ValidEvent) -> tuple[Any, ...] | None:
    """The order_lines row of an order event (the events that the ``orders`` table holds)."""
    if e.event != "order_completed" or not e.order_id:
        return None
    items = e.line_items
    return (
        project_id,
        e.order_id,
        e.id,
        e.timestamp,
        e.currency,
        e.visitor_id,
        [item.product_id for item in items],
        [item.price for item in items],
        [item.quantity for item in items],
        declared_items(e.properties),
    )


def declared_items(properties: Mapping[str, Any]) -> int:
    """The order's own ``properties.items`` (validated: a whole number >= 0, maybe written as
    3.0), else -1."""
    value = properties.get("items")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -1
    return int(value)


def _name_rows(project_id: str, e: ValidEvent) -> list[tuple[Any, ...]]:
    """A product_view's top-level ``properties.name`` and each named line item (non-empty)."""
    rows = [
        (project_id, item.product_id, item.name, e.timestamp, e.id, line)
        for line, item in enumerate(e.line_items)
        if item.name
    ]
    name = e.properties.get("name") if e.event == "product_view" else None
    if isinstance(name, str) and name:
        rows.append((project_id, e.product_id, name, e.timestamp, e.id, 0))
    return rows


def _realtime(e: ValidEvent) -> RealtimeEvent:
    return RealtimeEvent(
        event_id=e.id,
        event=e.event,
        ts=e.timestamp,
        visitor_id=e.visitor_id,
        page=e.page if e.event == "page_view" else "",
        order_id=e.order_id,
        total=e.total,
        currency=e.currency,
        user_id=e.user_id,
        anonymous_id=e.anonymous_id,
    )


_AT = {name: index for index, name in enumerate(EVENTS.columns)}
# Each table and where its rows hold the event id.
_EVENT_ID_AT = tuple((spec, spec.columns.index("event_id")) for spec in TABLES)


def realtime_of_row(row: Sequence[Any]) -> RealtimeEvent:
    """The realtime part of an ``events`` row (``_event_row``), as ``_realtime`` of its event."""
    event = row[_AT["event"]]
    return RealtimeEvent(
        event_id=row[_AT["event_id"]],
        event=event,
        ts=row[_AT["ts"]],
        visitor_id=row[_AT["visitor_id"]],
        page=row[_AT["page"]] if event == "page_view" else "",
        order_id=row[_AT["order_id"]],
        total=row[_AT["total"]],
        currency=row[_AT["currency"]],
        user_id=row[_AT["user_id"]],
        anonymous_id=row[_AT["anonymous_id"]],
    )


class Ingestor:
    """Stores events through its own group committer (``close`` stops it), and reads and writes
    ``storage`` directly for the duplicate orders, once their rows are committed."""

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
        self._ip_salt = ip_salt
        self._limits = limits or IngestLimits()
        self._clock = clock
        self._new_id = new_id
        self._recovery = recovery

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Stop; with the ingest log, first store what it holds (for ``grace_seconds`` at most:
        the rest is replayed at the next start)."""
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
        result = IngestResult()
        received_at = self._clock()
        valid: list[tuple[int, ValidEvent]] = []
        for index, incoming in enumerate(events):
            outcome = validate(incoming, received_at, self._new_id, self._limits.max_event_bytes)
            if isinstance(outcome, ValidEvent):
                valid.append((index, outcome))
            else:
                result.rejected.append(Rejected(index, outcome))

        # An erased shopper's new events, during the suppression period: acknowledged, never
        # stored (docs/privacy.md).
        dropped: dict[str, Ack] = {}
        if self._suppression is not None and valid:
            kept = []
            for index, event in valid:
                if self._suppression.suppressed(project_id, event.user_id, event.anonymous_id):
                    dropped[event.id] = Ack(event.id, event.event, event.timestamp)
                    result.accepted.append((index, dropped[event.id]))
                else:
                    kept.append((index, event))
            SUPPRESSED_EVENTS.inc(len(valid) - len(kept))
            valid = kept

        # Within one request the first occurrence of an id is the one stored.
        first_of: dict[str, int] = {}
        for index, event in valid:
            first_of.setdefault(event.id, index)
        client_ids = [e.id for i, e in valid if e.client_id and first_of[e.id] == i]
        claims = await self._window.claim(project_id, client_ids)

        to_store: list[ValidEvent] = []
        acks: dict[str, Ack] = {}
        for index, event in valid:
            claim = claims.get(event.id)
            if first_of[event.id] != index:
                continue
            if claim is not None and claim.ack is not None:
                acks[event.id] = claim.ack
            elif claim is not None and claim.in_flight:
                result.rejected.append(Rejected.being_stored(index))
            else:
                to_store.append(event)
        claimed = [e.id for e in to_store if e.client_id]
        try:
            await self._store(project_id, to_store, client_ip)
        except BaseException:
            await self._window.release(project_id, claimed)
            raise
        stored = [Ack(e.id, e.event, e.timestamp) for e in to_store]
        acks.update((a.id, a) for a in stored)
        await self._window.confirm(project_id, [acks[i] for i in claimed])
        # With the ingest log, the writer counts each block once it is stored (count_stored).
        if self._log is None and to_store:
            await self._count(project_id, [_realtime(e) for e in to_store])

        refused = {r.index for r in result.rejected}
        for index, event in valid:
            if index in refused:
                continue
            if event.id in acks:
                result.accepted.append((index, acks[event.id]))
            else:  # a repeat, in this request, of an id another request is storing
                result.rejected.append(Rejected.being_stored(index))
        result.rejected.sort(key=lambda r: r.index)
        result.accepted.sort(key=lambda a: a[0])
        return result

    async def _count(self, project_id: str, batch: Sequence[RealtimeEvent]) -> None:
        """Add stored events to the realtime counters (one script per call; safe to repeat)."""
        if self._realtime is None or not batch:
            return
        counters = self._realtime

        def behind(failure: Failure) -> None:
            # Stored but not counted: the project's counters are rebuilt from ClickHouse.
            if self._recovery is not None:
                self._recovery.record_failed(project_id, failure)

        await self._guard.run(lambda _: counters.record(project_id, batch), None, behind)

    async def count_stored(self, records: Sequence[LogRecord]) -> None:
        """The log writer's hook: count a block it has just stored, per project, in one script
        each. Counting after the INSERT (not at the acknowledgement) means an event that is
        counted is in ClickHouse, and one a crash left in the log is counted when the replay
        stores it; counting is idempotent (RealtimeCounters.record), so a replayed or
        retried block counts nothing twice."""
        by_project: dict[str, list[RealtimeEvent]] = {}
        for record in records:
            rows = record.rows.get(EVENTS.name, ())
            if rows:
                batch = by_project.setdefault(record.project_id, [])
                batch.extend(realtime_of_row(row) for row in rows)
        for project_id, batch in by_project.items():
            await self._count(project_id, batch)

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
        for record in records:
            project_id = record.project_id
            if not (suppression.users.get(project_id) or suppression.anonymous.get(project_id)):
                kept.append(record)
                continue
            erased = {
                row[_AT["event_id"]]
                for row in record.rows.get(EVENTS.name, ())
                if suppression.suppressed(project_id, row[_AT["user_id"]], row[_AT["anonymous_id"]])
            }
            if not erased:
                kept.append(record)
                continue
            SUPPRESSED_EVENTS.inc(len(erased))
            rows = {
                spec.name: [row for row in record.rows.get(spec.name, ()) if row[at] not in erased]
                for spec, at in _EVENT_ID_AT
            }
            kept.append(LogRecord(project_id, rows, record.order_ids))
        return kept

    async def _store(self, project_id: str, events: Sequence[ValidEvent], client_ip: str) -> None:
        if not events:
            return
        rows: dict[str, list[Any]] = {spec.name: [] for spec in TABLES}
        for event in events:
            extra = enrich(
                event.properties,
                event.context,
                ip_salt=self._ip_salt,
                ip_mode=self._limits.ip_mode,
                client_ip=client_ip,
            )
            rows[EVENTS.name].append(_event_row(project_id, event, extra))
            rows[ORDER_ITEMS.name].extend(_item_rows(project_id, event))
            lines = _order_lines_row(project_id, event)
            if lines is not None:
                rows[ORDER_LINES.name].append(lines)
            rows[PRODUCT_NAMES.name].extend(_name_rows(project_id, event))
        orders = tuple(sorted({e.order_id for e in events if e.order_id}))
        if self._log is not None:
            record = LogRecord(project_id, rows, orders)
            try:
                await self._log.append(record.encode(), len(events))
            except LogFull as exc:
                raise unavailable(str(exc), reason="INGEST_LOG_FULL") from exc
            return  # the log writer stores the rows and lists the duplicated orderIds
        await self._committer.write(rows)
        if orders:
            await self._mark_duplicate_orders(project_id, orders)

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

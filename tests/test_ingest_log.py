"""The ingest log (services/ingest/ingest_log.py) on real files, and its writer
(log_writer.py) into a real ClickHouse (both backends): acknowledged records read back after a
restart from the checkpoint on, a torn tail is cut, damage before it refuses to open, a full log
refuses until the writer checkpoints, and a replay after a partly done write stores each event
exactly once. The system-level faults (kill -9 under load, ClickHouse stopped) are in
tests/test_durability.py and tests/test_faults.py."""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from redis import asyncio as aioredis

from cartlytics.common.erasure import (
    RECORD_COLUMNS,
    SUPPRESSED_EVENTS,
    Suppression,
    subject_hash,
)
from cartlytics.common.realtime import RealtimeCounters
from cartlytics.common.redis_guard import RedisGuard
from cartlytics.common.storage import Sql, Storage
from services.ingest.idempotency import IdempotencyWindow
from services.ingest.ingest_log import HEADER, IngestLog, LogCorrupt, LogFull, unstored_records
from services.ingest.ingestor import Ingestor
from services.ingest.log_writer import LogRecord, LogWriter
from services.ingest.preparation import Settings, prepare
from services.ingest.rows import EVENTS, ORDER_ITEMS, ORDER_LINES, TABLES
from services.ingest.validation import IncomingEvent
from tests.servers import RedisServer


def _append_all(ingest_log: IngestLog, payloads: list[bytes]) -> list[int]:
    async def run() -> list[int]:
        lsns = [await ingest_log.append(p) for p in payloads]
        await ingest_log.close()
        return lsns

    return asyncio.run(run())


def test_records_read_back_after_a_restart_from_the_checkpoint(tmp_path: Path) -> None:
    first = IngestLog(tmp_path)
    assert first.open() == []
    payloads = [f"record {n}".encode() * (n + 1) for n in range(5)]
    assert _append_all(first, payloads) == [1, 2, 3, 4, 5]

    second = IngestLog(tmp_path)
    replay = second.open()
    assert [(r.lsn, r.payload) for r in replay] == list(zip([1, 2, 3, 4, 5], payloads, strict=True))
    second.checkpoint(2)
    assert _append_all(second, [b"six"]) == [6]

    third = IngestLog(tmp_path)
    assert [(r.lsn, r.payload) for r in third.open()] == [
        (3, payloads[2]), (4, payloads[3]), (5, payloads[4]), (6, b"six"),
    ]  # fmt: skip
    assert [r.lsn for r in unstored_records(tmp_path)] == [3, 4, 5, 6]


@pytest.mark.parametrize("cut", [3, HEADER.size + 2], ids=["in-header", "in-payload"])
def test_a_torn_tail_is_cut_and_never_replayed(tmp_path: Path, cut: int) -> None:
    first = IngestLog(tmp_path)
    first.open()
    _append_all(first, [b"a" * 10, b"b" * 10, b"c" * 10])
    (segment,) = sorted(tmp_path.glob("*.log"))
    good_size = segment.stat().st_size
    # A crash in the middle of a write: part of a fourth record (never acknowledged).
    torn = HEADER.pack(10, 0, 4) + b"d" * 10
    with segment.open("ab") as f:
        f.write(torn[:cut])

    second = IngestLog(tmp_path)
    assert [r.payload for r in second.open()] == [b"a" * 10, b"b" * 10, b"c" * 10]
    assert segment.stat().st_size == good_size
    assert _append_all(second, [b"e" * 10]) == [4]
    assert [r.payload[:1] for r in IngestLog(tmp_path).open()] == [b"a", b"b", b"c", b"e"]


def test_a_damaged_record_before_the_tail_refuses_to_open(tmp_path: Path) -> None:
    first = IngestLog(tmp_path, segment_bytes=64)
    first.open()
    _append_all(first, [bytes([n]) * 40 for n in range(6)])
    segments = sorted(tmp_path.glob("*.log"))
    assert len(segments) >= 3
    data = bytearray(segments[0].read_bytes())
    data[HEADER.size + 5] ^= 0xFF  # one bit of an acknowledged record's payload
    segments[0].write_bytes(bytes(data))
    with pytest.raises(LogCorrupt):
        IngestLog(tmp_path, segment_bytes=64).open()


def test_a_group_whose_sync_fails_is_refused_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that refuses an fsync (EIO: cannot be caused here, so os.fsync is made to fail
    once): the appends of that group fail, its bytes are cut off the segment, and its lsns go
    to the next appends; after a restart only acknowledged records are replayed, each lsn
    once (a failed group left in the file was replayed, its events stored though refused)."""
    import os

    real_fsync = os.fsync
    failures = iter([OSError(5, "Input/output error")])

    def flaky_fsync(fd: int) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real_fsync(fd)

    ingest_log = IngestLog(tmp_path)
    ingest_log.open()

    async def run() -> list[int]:
        lsns = [await ingest_log.append(b"acknowledged before")]
        monkeypatch.setattr(os, "fsync", flaky_fsync)
        with pytest.raises(OSError, match="Input/output error"):
            await ingest_log.append(b"refused")
        assert ingest_log.unstored_bytes == HEADER.size + len(b"acknowledged before")
        lsns.append(await ingest_log.append(b"acknowledged after"))
        await ingest_log.close()
        return lsns

    assert asyncio.run(run()) == [1, 2]
    monkeypatch.setattr(os, "fsync", real_fsync)
    replay = IngestLog(tmp_path).open()
    assert [(r.lsn, r.payload) for r in replay] == [
        (1, b"acknowledged before"), (2, b"acknowledged after"),
    ]  # fmt: skip


def test_a_full_log_refuses_until_the_writer_checkpoints(tmp_path: Path) -> None:
    record = b"x" * 100
    size = HEADER.size + len(record)
    ingest_log = IngestLog(tmp_path, max_bytes=3 * size)
    ingest_log.open()

    async def run() -> None:
        for _ in range(3):
            await ingest_log.append(record)
        with pytest.raises(LogFull):
            await ingest_log.append(record)
        assert ingest_log.unstored_bytes == 3 * size
        ingest_log.checkpoint(2)  # the writer stored two of them
        assert await ingest_log.append(record) == 4
        await ingest_log.close()

    asyncio.run(run())


def test_stored_segments_are_deleted(tmp_path: Path) -> None:
    ingest_log = IngestLog(tmp_path, segment_bytes=100)
    ingest_log.open()
    lsns = _append_all(ingest_log, [b"y" * 60 for _ in range(10)])
    assert len(list(tmp_path.glob("*.log"))) > 3
    reopened = IngestLog(tmp_path, segment_bytes=100)
    assert len(reopened.open()) == 10
    reopened.checkpoint(lsns[-1])
    assert len(list(tmp_path.glob("*.log"))) == 1  # the one being appended to
    assert IngestLog(tmp_path).open() == []


# The writer ------------------------------------------------------------------------------------


def _orders(at: datetime) -> list[IncomingEvent]:
    """Orders with line items; orderId o3 twice (a duplicate the writer must list)."""
    events = []
    for n in range(40):
        order_id = "o3" if n == 39 else f"o{n}"
        lines: list[dict[str, Any]] = [
            {"productId": f"p{n % 4}", "price": 100 + n, "quantity": 1 + n % 3},
            {"productId": "p9", "name": "Nine", "price": 50, "quantity": 2},
        ][: 1 + n % 2]
        total = sum(line["price"] * line["quantity"] for line in lines)
        events.append(
            IncomingEvent(
                "order_completed",
                f"evt_log_{n}",
                user_id=f"u{n % 7}",
                timestamp=at + timedelta(seconds=n),
                properties={
                    "orderId": order_id,
                    "total": total,
                    "currency": "CHF",
                    "products": lines,
                },
            )
        )
    return events


def _rows_per_event(storage: Storage, table: str, project_id: str) -> Counter[str]:
    rows = storage.query_sync(
        Sql(f"SELECT event_id, count() FROM {table}")
        + Sql(" WHERE project_id = {project} GROUP BY event_id"),
        {"project": project_id},
    )
    return Counter({str(event_id): int(count) for event_id, count in rows})


def _acknowledge_only(
    storage: Storage,
    project_id: str,
    directory: Path,
    events: list[IncomingEvent],
    batch: int,
    redis_url: str = "",
) -> None:
    """Ingest ``events`` in batches with the log in ``directory`` and a writer that never starts
    (the process dies before it stores anything): every event acknowledged, none stored. With
    ``redis_url``, the ingestor has realtime counters there."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url) if redis_url else None
        guard = RedisGuard(client)
        ingest_log = IngestLog(directory)
        ingest_log.open()
        ingestor = Ingestor(
            storage, IdempotencyWindow(guard), RealtimeCounters(client) if client else None,
            guard, ip_salt=b"s",
            ingest_log=ingest_log, log_writer=LogWriter(storage, ingest_log, TABLES),
        )  # fmt: skip
        for start in range(0, len(events), batch):
            sent = events[start : start + batch]
            result = await ingestor.ingest(project_id, sent)
            assert not result.rejected and len(result.accepted) == len(sent)
        await ingest_log.close()
        if client is not None:
            await client.aclose()

    asyncio.run(run())


def _replay(storage: Storage, directory: Path) -> int:
    """Start as the next process would: replay the log in ``directory``; the lsn stored."""

    async def run() -> int:
        ingest_log = IngestLog(directory)
        writer = LogWriter(storage, ingest_log, TABLES)
        writer.start(ingest_log.open())
        await writer.caught_up(limit_seconds=120)
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        return writer.stored_lsn

    return asyncio.run(run())


def test_a_replay_after_a_partly_done_write_stores_each_event_once(
    storage: Storage, project_id: str, tmp_path: Path
) -> None:
    """Records acknowledged from the log, then a crash in the middle of their block: `events`
    and `order_items` hold some of them, `order_lines` none. The next start's replay stores the
    rest and nothing twice, and lists the duplicated orderId."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    events = _orders(at)
    _acknowledge_only(storage, project_id, tmp_path, events, batch=10)
    records = [LogRecord.decode(r.payload) for r in unstored_records(tmp_path)]
    assert len(records) == 4
    # The cut write: the first 25 events' `events` rows and the first 12 events' line items.
    event_rows = [row for r in records for row in r.rows[EVENTS.name]]
    item_rows = [row for r in records for row in r.rows[ORDER_ITEMS.name]]
    storage.insert_sync(EVENTS.name, EVENTS.columns, event_rows[:25])
    early = {f"evt_log_{n}" for n in range(12)}
    event_at = ORDER_ITEMS.columns.index("event_id")
    storage.insert_sync(
        ORDER_ITEMS.name, ORDER_ITEMS.columns, [r for r in item_rows if r[event_at] in early]
    )

    assert _replay(storage, tmp_path) == 4
    ids = [e.id for e in events]
    lines = {e.id: len(e.properties["products"]) for e in events}
    assert _rows_per_event(storage, EVENTS.name, project_id) == Counter({i: 1 for i in ids})
    assert _rows_per_event(storage, ORDER_ITEMS.name, project_id) == Counter(lines)
    assert _rows_per_event(storage, ORDER_LINES.name, project_id) == Counter({i: 1 for i in ids})
    dups = storage.query_sync(
        Sql("SELECT DISTINCT order_id FROM order_dups WHERE project_id = {project}"),
        {"project": project_id},
    )
    assert [row[0] for row in dups] == ["o3"]
    # Sales reads the rollups the materialized views filled from `events`: each order once.
    orders = storage.query_sync(
        Sql("SELECT count(), sum(total) FROM orders WHERE project_id = {project}"),
        {"project": project_id},
    )
    expected_total = sum(int(e.properties["total"]) for e in events)
    assert [tuple(int(v) for v in orders[0])] == [(len(events), expected_total)]
    # Stored: nothing left to replay.
    assert IngestLog(tmp_path).open() == []


def test_a_replay_of_a_large_block_is_checked_in_slices(
    storage: Storage, project_id: str, tmp_path: Path
) -> None:
    """A block past one query's worth of ids (the writer checks them in slices: all of them in
    one IN passed ClickHouse's max_query_size, and the block was retried for ever)."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    views = [
        IncomingEvent("page_view", f"evt_replayed_in_slices_{n}", anonymous_id=f"a{n % 50}",
                      timestamp=at, properties={"page": f"/p{n % 9}"})
        for n in range(20_000)
    ]  # fmt: skip
    _acknowledge_only(storage, project_id, tmp_path, views, batch=500)
    event_rows = [
        row
        for r in unstored_records(tmp_path)
        for row in LogRecord.decode(r.payload).rows[EVENTS.name]
    ]
    storage.insert_sync(EVENTS.name, EVENTS.columns, event_rows[:10_100])

    assert _replay(storage, tmp_path) == 40
    assert _rows_per_event(storage, EVENTS.name, project_id) == Counter({v.id: 1 for v in views})


def test_realtime_counts_a_block_once_it_is_stored_and_a_replay_once(
    storage: Storage, project_id: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    """With the log, the realtime counters follow the writer: an event acknowledged but not yet
    stored (the process died first) is not counted; the next start's replay stores and counts
    it; counting a stored block again (a retried block) changes nothing."""
    now = datetime.now(UTC).replace(microsecond=0)
    events = _orders(now - timedelta(minutes=2))
    _acknowledge_only(storage, project_id, tmp_path, events, batch=10, redis_url=redis_server.url)
    # The oracle: each orderId once, its earliest event (o3's second event, later, loses);
    # "today" is UTC's; every shopper was active within the 5 minutes.
    first: dict[str, IncomingEvent] = {}
    for event in sorted(events, key=lambda e: (e.timestamp or now, e.id)):
        first.setdefault(str(event.properties["orderId"]), event)
    today = [e for e in first.values() if e.timestamp and e.timestamp.date() == now.date()]
    expected = (
        len({e.user_id for e in events}),
        len(today),
        sum(int(e.properties["total"]) for e in today),
    )

    async def figures(client: aioredis.Redis) -> tuple[int, int, int]:
        snapshot = await RealtimeCounters(client).snapshot(project_id, ZoneInfo("UTC"), "CHF")
        return snapshot.active_visitors, snapshot.orders_today, snapshot.revenue_today

    async def run() -> list[tuple[int, int, int]]:
        client = aioredis.Redis.from_url(redis_server.url)
        guard = RedisGuard(client)
        seen = [await figures(client)]  # acknowledged, not stored: not counted
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(storage, ingest_log, TABLES)
        ingestor = Ingestor(
            storage, IdempotencyWindow(guard), RealtimeCounters(client), guard, ip_salt=b"s",
            ingest_log=ingest_log, log_writer=writer,
        )  # fmt: skip
        writer.on_stored = ingestor.count_stored
        replay = ingest_log.open()
        writer.start(replay)
        await writer.caught_up(limit_seconds=120)
        seen.append(await figures(client))
        await ingestor.count_stored([LogRecord.decode(r.payload) for r in replay])
        seen.append(await figures(client))
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        await client.aclose()
        return seen

    assert asyncio.run(run()) == [(0, 0, 0), expected, expected]


def test_a_block_of_tallied_and_untallied_records_counts_each_event_once(
    storage: Storage, project_id: str, redis_server: RedisServer
) -> None:
    """A block mixes records whose realtime tally a worker made with their rows and records
    prepared on the loop (no tally: the writer makes one from the rows), of two projects: each
    project's counters come out as if its events were counted one by one, and no record's own
    tally is changed by the merge (a retried block merges them again)."""
    now = datetime.now(UTC).replace(microsecond=0)
    other = project_id + "_other"
    events = _orders(now - timedelta(minutes=2))
    received = now
    worker, loop = Settings(b"s", tally=True), Settings(b"s", tally=False)
    records = [
        prepare(project_id, events[:15], worker, received, lambda: "unused").record(),
        prepare(project_id, events[15:30], loop, received, lambda: "unused").record(),
        prepare(other, events[30:], worker, received, lambda: "unused").record(),
        prepare(project_id, events[30:], worker, received, lambda: "unused").record(),
    ]
    assert [r.tally is not None for r in records] == [True, False, True, True]
    tallies_before = [pickle.dumps(r.tally) for r in records]

    def oracle(sent: list[IncomingEvent]) -> tuple[int, int, int]:
        first: dict[str, IncomingEvent] = {}
        for event in sorted(sent, key=lambda e: (e.timestamp or now, e.id)):
            first.setdefault(str(event.properties["orderId"]), event)
        today = [e for e in first.values() if e.timestamp and e.timestamp.date() == now.date()]
        return (
            len({e.user_id for e in sent}),
            len(today),
            sum(int(e.properties["total"]) for e in today),
        )

    async def run() -> list[tuple[int, int, int]]:
        client = aioredis.Redis.from_url(redis_server.url)
        guard = RedisGuard(client)
        counters = RealtimeCounters(client)
        ingestor = Ingestor(storage, IdempotencyWindow(guard), counters, guard, ip_salt=b"s")
        await ingestor.count_stored(records)
        await ingestor.count_stored(records)  # retried: nothing counted twice
        seen = []
        for project in (project_id, other):
            snapshot = await counters.snapshot(project, ZoneInfo("UTC"), "CHF")
            seen.append((snapshot.active_visitors, snapshot.orders_today, snapshot.revenue_today))
        await ingestor.close()
        await client.aclose()
        return seen

    assert asyncio.run(run()) == [oracle(events), oracle(events[30:])]
    assert [pickle.dumps(r.tally) for r in records] == tallies_before


def test_under_steady_load_a_block_waits_until_its_oldest_record_has_lingered(
    storage: Storage, project_id: str, tmp_path: Path
) -> None:
    """Records appended while the writer stores a block are the next block, written once the
    oldest of them has waited ``linger_seconds`` (the writer wrote them at once after each
    block: under steady load, blocks as small as one INSERT's duration, each paying the
    views' fixed cost), so a record appended meanwhile joins them."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    event_at = EVENTS.columns.index("event_id")

    def view(name: str) -> IncomingEvent:
        return IncomingEvent("page_view", f"evt_linger_{name}", anonymous_id="a", timestamp=at,
                             properties={"page": "/"})  # fmt: skip

    async def run() -> list[list[str]]:
        guard = RedisGuard(None)
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(storage, ingest_log, TABLES, linger_seconds=1.5)
        ingestor = Ingestor(
            storage, IdempotencyWindow(guard), None, guard, ip_salt=b"s",
            ingest_log=ingest_log, log_writer=writer,
        )  # fmt: skip
        blocks: list[list[str]] = []
        late: list[asyncio.Task[Any]] = []
        all_stored = asyncio.Event()

        async def stored(records: list[LogRecord]) -> None:
            blocks.append([str(row[event_at]) for r in records for row in r.rows[EVENTS.name]])
            if sum(map(len, blocks)) >= 5:
                all_stored.set()
            if len(blocks) == 1:  # the writer is between its INSERTs and its checkpoint
                for name in "BCD":
                    await ingestor.ingest(project_id, [view(name)])

                async def later() -> None:
                    await asyncio.sleep(0.2)
                    await ingestor.ingest(project_id, [view("E")])

                late.append(asyncio.create_task(later()))

        writer.on_stored = stored
        writer.start(ingest_log.open())
        await ingestor.ingest(project_id, [view("A")])
        await asyncio.wait_for(all_stored.wait(), timeout=60)
        await asyncio.gather(*late)
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        return blocks

    blocks = asyncio.run(run())
    assert blocks == [["evt_linger_A"], [f"evt_linger_{n}" for n in "BCDE"]]


def test_events_of_a_shopper_erased_since_they_were_acknowledged_are_never_stored(
    storage: Storage, project_id: str, tmp_path: Path
) -> None:
    """Another process erased u3 while u3's events waited in this process's log (acknowledged,
    not yet stored); once this process's suppression list has the erasure, its writer stores the
    rest and none of u3's rows, and every figure is the oracle's over the events without u3:
    o3's order (u3's event, then u4's duplicate) becomes u4's, counted once."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    events = _orders(at)
    _acknowledge_only(storage, project_id, tmp_path, events, batch=10)
    # The erasure's record, as the other process wrote it; this process's list has not been read
    # since (the writer reads it again before each block).
    salt = b"s" * 16
    now = datetime.now(UTC).replace(microsecond=0)
    subject = subject_hash(salt, project_id, "user", "u3")
    storage.insert_sync(
        "erasures",
        RECORD_COLUMNS,
        [(project_id, "era_elsewhere", subject, [], "key_x", now, "done", 0, now, 2)],
    )
    suppression = Suppression(salt, days=30)
    before = SUPPRESSED_EVENTS._value.get()

    async def run() -> None:
        guard = RedisGuard(None)
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(storage, ingest_log, TABLES)
        ingestor = Ingestor(
            storage, IdempotencyWindow(guard), None, guard, ip_salt=b"s",
            suppression=suppression, ingest_log=ingest_log, log_writer=writer,
        )  # fmt: skip
        writer.keep = ingestor.without_suppressed
        writer.start(ingest_log.open())
        await writer.caught_up(limit_seconds=120)
        await writer.close(grace_seconds=5)
        await ingest_log.close()

    asyncio.run(run())
    kept = [e for e in events if e.user_id != "u3"]
    assert len(kept) < len(events)
    assert SUPPRESSED_EVENTS._value.get() - before == len(events) - len(kept)
    lines = {e.id: len(e.properties["products"]) for e in kept}
    assert _rows_per_event(storage, EVENTS.name, project_id) == Counter({e.id: 1 for e in kept})
    assert _rows_per_event(storage, ORDER_ITEMS.name, project_id) == Counter(lines)
    assert _rows_per_event(storage, ORDER_LINES.name, project_id) == Counter(
        {e.id: 1 for e in kept}
    )
    first: dict[str, IncomingEvent] = {}
    for event in sorted(kept, key=lambda e: (e.timestamp or at, e.id)):
        first.setdefault(str(event.properties["orderId"]), event)
    orders = storage.query_sync(
        Sql("SELECT count(), sum(total) FROM orders WHERE project_id = {project}"),
        {"project": project_id},
    )
    expected = (len(first), sum(int(e.properties["total"]) for e in first.values()))
    assert tuple(int(v) for v in orders[0]) == expected
    dups = storage.query_sync(
        Sql("SELECT count() FROM order_dups WHERE project_id = {project}"), {"project": project_id}
    )
    assert int(dups[0][0]) == 0  # o3 has one stored event now


def test_a_refresh_that_read_before_an_erasure_keeps_what_the_erasure_added(
    storage: Storage, project_id: str
) -> None:
    """The process that erases adds the shopper to its list at once (after writing the record);
    a refresh whose query ran before that record was written must not forget the addition."""
    suppression = Suppression(b"s" * 16, days=30)
    subject = subject_hash(suppression.salt, project_id, "user", "u_erased_meanwhile")

    async def run() -> bool:
        refresh = asyncio.create_task(suppression.refresh(storage))
        await asyncio.sleep(0)  # its query is on its way: it cannot see what follows
        suppression.add(project_id, [subject], [])
        await refresh
        return suppression.suppressed(project_id, "u_erased_meanwhile", "")

    assert asyncio.run(run())


def test_a_record_clickhouse_refuses_alone_is_set_aside_and_the_rest_stored(
    storage: Storage, project_id: str, tmp_path: Path
) -> None:
    """A record ClickHouse can never take (here a time that is not one: a bug, or a schema
    changed under the log) must not hold back the records behind it for good: once its block has
    failed a few times, the records are written one by one, and the one that keeps failing alone
    while ClickHouse answers is set aside in the quarantine folder, bytes and error."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def record(name: str) -> LogRecord:
        event = IncomingEvent("page_view", name, user_id="u", timestamp=at,
                              properties={"page": "/" + name})  # fmt: skip
        return prepare(project_id, [event], Settings(b"s"), at, lambda: "x").record()

    poison = record("bad")
    ts_at = EVENTS.columns.index("ts")
    row = poison.rows[EVENTS.name][0]
    poison.rows[EVENTS.name][0] = (*row[:ts_at], "not a time", *row[ts_at + 1 :])
    payloads = [record("first").encode(), poison.encode(), record("after").encode()]

    async def run() -> list[int]:
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(
            storage, ingest_log, TABLES, linger_seconds=0, quarantine_after_seconds=0
        )
        writer.start(ingest_log.open())
        lsns = [await ingest_log.append(payload, 1) for payload in payloads]
        await writer.caught_up(limit_seconds=60)
        assert writer.stored_lsn == lsns[-1]
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        return lsns

    before = REGISTRY.get_sample_value("cartlytics_ingest_log_quarantined_records_total") or 0
    lsns = asyncio.run(run())
    assert set(_rows_per_event(storage, EVENTS.name, project_id)) == {"first", "after"}
    assert all(n == 1 for n in _rows_per_event(storage, EVENTS.name, project_id).values())
    folder = tmp_path / "quarantine"
    assert (folder / f"{lsns[1]:020d}.record").read_bytes() == payloads[1]
    assert (folder / f"{lsns[1]:020d}.error").read_text().strip()
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{lsns[1]:020d}.error", f"{lsns[1]:020d}.record"
    ]  # fmt: skip
    after = REGISTRY.get_sample_value("cartlytics_ingest_log_quarantined_records_total")
    assert after == before + 1
    # Nothing of it is replayed at the next start: the checkpoint is past it.
    assert IngestLog(tmp_path).open() == []

    # Once the cause is fixed (here: the record mended), moved to requeue/, it is stored at the
    # next start, once, and the file is gone.
    mended = LogRecord.decode(payloads[1])
    bad_row = mended.rows[EVENTS.name][0]
    mended.rows[EVENTS.name][0] = (*bad_row[:ts_at], at, *bad_row[ts_at + 1 :])
    (tmp_path / "requeue").mkdir()
    (tmp_path / "requeue" / f"{lsns[1]:020d}.record").write_bytes(mended.encode())

    async def restart() -> int:
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(storage, ingest_log, TABLES, linger_seconds=0)
        writer.start(ingest_log.open())
        requeued = await writer.requeue()
        await writer.caught_up(limit_seconds=60)
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        return requeued

    assert asyncio.run(restart()) == 1
    assert not list((tmp_path / "requeue").iterdir())
    assert _rows_per_event(storage, EVENTS.name, project_id) == {"first": 1, "bad": 1, "after": 1}


def test_a_record_reads_back_as_written_and_records_written_before_still_read() -> None:
    """Records pickle UTC times as their fields (log_writer._RecordPickler): they read back
    equal, as the one UTC object; other times as pickle writes them; records written by plain
    pickle (before) read as they were."""
    utc = datetime(2026, 12, 7, 23, 59, 59, 999_999, tzinfo=UTC)
    zurich = datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Zurich"))
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    rows: dict[str, list[tuple[Any, ...]]] = {
        EVENTS.name: [("p", "evt_1", utc, utc.replace(microsecond=0), zurich, naive)],
    }
    record = LogRecord("p", rows, ("o1",))
    decoded = LogRecord.decode(record.encode())
    assert decoded == record
    moments = decoded.rows[EVENTS.name][0][2:]
    assert moments[0].tzinfo is UTC and moments[1].tzinfo is UTC
    assert moments[2].tzinfo == ZoneInfo("Europe/Zurich") and moments[3].tzinfo is None
    before = pickle.dumps((record.project_id, record.rows, record.order_ids, None), protocol=5)
    assert LogRecord.decode(before) == record


def test_records_at_hand_and_beyond_the_bound_are_each_stored_once(
    storage: Storage, project_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests prepared in this process hand the writer their records as well as the bytes
    (it need not decode them), at most MAX_DECODED_ROWS rows' worth while a backlog waits;
    the rest it decodes. Either way every event is stored once, and nothing is left held."""
    import services.ingest.log_writer as log_writer

    monkeypatch.setattr(log_writer, "MAX_DECODED_ROWS", 4)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    page = {"page": "/"}
    sent = [
        IncomingEvent("page_view", f"evt_hand_{n}", anonymous_id="a", timestamp=at, properties=page)
        for n in range(10)
    ]

    async def run() -> tuple[int, int]:
        guard = RedisGuard(None)
        ingest_log = IngestLog(tmp_path)
        writer = LogWriter(storage, ingest_log, TABLES, linger_seconds=30)  # a backlog
        ingestor = Ingestor(
            storage, IdempotencyWindow(guard), None, guard, ip_salt=b"s",
            ingest_log=ingest_log, log_writer=writer,
        )  # fmt: skip
        writer.start(ingest_log.open())
        for first, last in ((0, 1), (1, 3), (3, 6), (6, 10)):  # requests of 1, 2, 3, 4 events
            await ingestor.ingest(project_id, sent[first:last])
        held = writer._decoded_rows
        await writer.caught_up(limit_seconds=60)
        await writer.close(grace_seconds=5)
        await ingest_log.close()
        await ingestor.close()
        return held, writer._decoded_rows

    held, left = asyncio.run(run())
    assert 0 < held <= 4 and left == 0
    assert _rows_per_event(storage, EVENTS.name, project_id) == Counter({e.id: 1 for e in sent})

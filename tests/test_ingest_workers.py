"""Requests prepared in worker processes (services/ingest/workers.py, decision 72).

What a worker prepares must be what the event loop prepares: the same acknowledgements and
refusals by position, and the same rows appended to the ingest log. A worker that dies costs
the request it held a 503, never the process or the next request.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cartlytics.common.errors import ApiError, FieldViolation
from cartlytics.common.redis_guard import RedisGuard
from cartlytics.common.storage import Storage
from services.ingest.idempotency import IdempotencyWindow
from services.ingest.ingest_log import IngestLog
from services.ingest.ingestor import Ingestor
from services.ingest.log_writer import LogRecord, LogWriter
from services.ingest.outcome import IngestResult, Rejected
from services.ingest.preparation import EventKey, Prepared, Settings, prepare
from services.ingest.rows import EVENTS, EVENTS_AT, ORDER_ITEMS, TABLES
from services.ingest.validation import IncomingEvent
from services.ingest.workers import MIN_WORKER_BYTES

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
JSON = "application/json"


def _events() -> list[Any]:
    """A batch with a bit of everything: orders with lines, named views, refusals of each kind,
    Segment's messageId, a repeated id, user agents and addresses to enrich."""
    at = (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    events: list[Any] = []
    for n in range(120):
        context = {
            "userAgent": f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/{100 + n % 5}.0",
            "ip": f"203.0.113.{n % 250}",
            "page": {"url": f"https://shop.example/p/{n}?utm_source=news&utm_medium=mail"},
        }
        if n % 4 == 0:
            line = {"productId": f"p{n}", "name": f"P {n}", "price": 1250, "quantity": 2}
            events.append({"event": "order_completed", "id": f"ord-{n}", "userId": f"u{n % 9}",
                           "timestamp": at, "context": context,
                           "properties": {"orderId": f"o{n}", "total": 2500, "currency": "EUR",
                                          "products": [line]}})  # fmt: skip
        elif n % 4 == 1:
            events.append({"event": "product_view", "anonymousId": f"a{n}", "context": context,
                           "properties": {"productId": f"p{n}", "name": f"Name {n}",
                                          "price": 999.0}})  # fmt: skip
        elif n % 4 == 2:
            events.append({"event": "page_view", "messageId": f"msg-{n}", "userId": f"u{n % 9}",
                           "properties": {"page": f"/p/{n}"}, "context": context})  # fmt: skip
        else:
            events.append({"event": "search", "userId": f"u{n}", "properties": {"query": "q"}})
    events[7] = {"event": "order_completed", "userId": "u1", "properties": {"total": -1}}
    events[8] = 42
    events[9] = {"event": "page_view", "messageId": "bad id!", "userId": "u1",
                 "properties": {"page": "/"}}  # fmt: skip
    events[10] = {"event": "x", "userId": "u1", "properties": {"n": 2**60}}
    events[11] = dict(events[0])  # the same client id again: acknowledged once, stored once
    return events


def _ingestor(storage: Storage, directory: Path, workers: int) -> tuple[Ingestor, IngestLog]:
    guard = RedisGuard(None)
    ingest_log = IngestLog(directory)
    ingest_log.open()
    ingestor = Ingestor(
        storage, IdempotencyWindow(guard), None, guard, ip_salt=b"salt",
        clock=lambda: NOW, ingest_log=ingest_log,
        log_writer=LogWriter(storage, ingest_log, TABLES), workers=workers,
    )  # fmt: skip
    return ingestor, ingest_log


def _prepared_in_workers() -> float:
    return (
        REGISTRY.get_sample_value("cartlytics_ingest_prepared_events_total", {"where": "worker"})
        or 0.0
    )


def _logged(
    storage: Storage, directory: Path, workers: int, body: bytes
) -> tuple[IngestResult, list[LogRecord]]:
    """Ingest ``body`` (never stored: the writer is not started) and read back the log."""

    async def run() -> IngestResult:
        ingestor, ingest_log = _ingestor(storage, directory, workers)
        try:
            return await ingestor.ingest_json("p", body, JSON, single=False)
        finally:
            await ingestor.preparer.close()
            await ingest_log.close()

    result = asyncio.run(run())
    return result, [LogRecord.decode(r.payload) for r in IngestLog(directory).open()]


def _comparable(records: list[LogRecord]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per table, the server-made event ids replaced by their order of appearance."""
    at = EVENTS_AT["event_id"]
    names: dict[str, str] = {}
    for record in records:
        for row in record.rows[EVENTS.name]:
            if row[at].startswith("evt_"):
                names.setdefault(row[at], f"server-{len(names)}")
    out: dict[str, list[tuple[Any, ...]]] = {}
    for spec in TABLES:
        at_id = spec.columns.index("event_id")
        out[spec.name] = [
            tuple(names.get(v, v) if i == at_id else v for i, v in enumerate(row))
            for record in records
            for row in record.rows[spec.name]
        ]
    return out


def test_a_batch_prepared_in_a_worker_is_what_the_loop_prepares(
    storage: Storage, tmp_path: Path
) -> None:
    body = json.dumps({"events": _events()}).encode()
    assert len(body) >= MIN_WORKER_BYTES  # large enough for a worker
    before = _prepared_in_workers()
    on_loop, loop_records = _logged(storage, tmp_path / "loop", 0, body)
    assert _prepared_in_workers() == before
    in_worker, worker_records = _logged(storage, tmp_path / "worker", 1, body)
    assert _prepared_in_workers() == before + 120  # every event went through the worker

    def shown(result: IngestResult) -> tuple[Any, ...]:
        accepted = [(i, a.event, a.timestamp, a.id.startswith("evt_")) for i, a in result.accepted]
        rejected = [(r.index, [(v.field, v.description) for v in r.violations])
                    for r in result.rejected]  # fmt: skip
        return accepted, rejected

    assert shown(in_worker) == shown(on_loop)
    rejected = dict(shown(in_worker)[1])
    assert set(rejected) == {7, 8, 9, 10}
    assert rejected[9][0][0] == "messageId"  # the refusal names where the id came from
    assert len(in_worker.accepted) == 116  # 120 less 4 refused; the repeat acknowledged too
    assert _comparable(worker_records) == _comparable(loop_records)
    stored = _comparable(worker_records)
    assert len(stored[EVENTS.name]) == 115  # the repeated id stored once
    assert len(stored[ORDER_ITEMS.name]) == 29  # orders 0, 4, ... 116 but the refused 7th slot


def test_a_body_a_worker_cannot_read_is_refused_naming_it(storage: Storage, tmp_path: Path) -> None:
    body = b'{"events": [' + b'{"event": "page_view"},' * 2000 + b"]"  # cut short: not JSON

    async def run() -> None:
        ingestor, ingest_log = _ingestor(storage, tmp_path, 1)
        try:
            with pytest.raises(ApiError) as caught:
                await ingestor.ingest_json("p", body, JSON, single=False)
        finally:
            await ingestor.preparer.close()
            await ingest_log.close()
        assert caught.value.reason == "INVALID_ARGUMENT"
        assert [v.field for v in caught.value.violations] == ["body"]
        assert "must be valid JSON" in caught.value.violations[0].description

    asyncio.run(run())


def _children() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        text = Path(f"/proc/self/task/{task}/children").read_text()
        pids.update(int(pid) for pid in text.split())
    return pids


def test_a_worker_killed_costs_its_request_a_503_and_the_next_is_prepared(
    storage: Storage, tmp_path: Path
) -> None:
    body = json.dumps({"events": _events()}).encode()

    async def run() -> None:
        ingestor, ingest_log = _ingestor(storage, tmp_path, 1)
        try:
            before = _children()
            first = await ingestor.ingest_json("p", body, JSON, single=False)
            assert len(first.accepted) == 116
            workers = _children() - before
            assert len(workers) == 1
            os.kill(workers.pop(), signal.SIGKILL)
            await asyncio.sleep(0.5)
            with pytest.raises(ApiError) as caught:
                await ingestor.ingest_json("p", body, JSON, single=False)
            assert caught.value.reason == "INGEST_WORKER_LOST"
            assert caught.value.retry_after_seconds  # 503 with a retry delay
            again = await ingestor.ingest_json("p", body, JSON, single=False)
            assert len(again.accepted) == 116
        finally:
            await ingestor.preparer.close()
            await ingest_log.close()

    asyncio.run(run())


def test_only_the_events_kept_are_stored_by_position_when_an_id_repeats() -> None:
    """A request's repeated id shares its event id in every row, so the rows kept when some of
    its events are dropped (an erased shopper's, say) are picked by position."""
    line = {"productId": "p", "price": 5, "quantity": 1}

    def order(user: str) -> IncomingEvent:
        return IncomingEvent("order_completed", "same-id", user_id=user, timestamp=NOW,
                             properties={"orderId": f"o-{user}", "total": 5, "currency": "EUR",
                                         "products": [line]})  # fmt: skip

    other = IncomingEvent("page_view", "other", user_id="u3", properties={"page": "/"})
    prepared = prepare("p", [order("u1"), order("u2"), other], Settings(b"s"), NOW, lambda: "x")
    kept = prepared.stored_part(prepared.keys[1:])
    user_at = EVENTS_AT["user_id"]
    assert [row[user_at] for row in kept.rows[EVENTS.name]] == ["u2", "u3"]
    assert [row[ORDER_ITEMS.columns.index("order_id")] for row in kept.rows[ORDER_ITEMS.name]] == [
        "o-u2"
    ]
    assert kept.order_ids == ("o-u2",)


_KILLED_AT_START = """
import asyncio, os, signal, sys
from datetime import UTC, datetime
from services.ingest.preparation import Settings
from services.ingest.workers import Preparer

async def main() -> None:
    preparer = Preparer(Settings(b"s"), lambda: datetime.now(UTC), workers=2)
    preparer.start()
    children = open(f"/proc/self/task/{os.getpid()}/children").read().split()
    print(" ".join(children), flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has died: only its exit status is left


@pytest.mark.parametrize("after", [0.0, 0.5, 3.0])
def test_workers_die_with_their_parent_even_killed_while_they_start(after: float) -> None:
    """A worker is tied to its parent (PR_SET_PDEATHSIG), and one whose parent died while it was
    still starting (before it could tie itself) exits too: none is left waiting forever."""
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_START, str(after)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr
    workers = [int(pid) for pid in run.stdout.split()]
    assert workers  # the pool and multiprocessing's resource tracker
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, [p for p in workers if _alive(p)]
        time.sleep(0.1)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_prepared_request_crosses_to_the_loop_whole(count: int) -> None:
    """What a worker hands back (pickled: its keys as columns) is what it prepared."""
    now = datetime.now(UTC)
    moments = [now + timedelta(seconds=n) for n in range(count)]
    keys = [
        EventKey(2 * n, f"e{n}", "page_view", at, n % 2 == 0, f"u{n}", "", (n, 1, 0, n))
        for n, at in enumerate(moments)
    ]
    refused = [Rejected(1, [FieldViolation("event", "is required")])]
    rows: dict[str, list[tuple[Any, ...]]] = {spec.name: [] for spec in TABLES}
    prepared = Prepared("p", keys, refused, rows, ("o1",), frozenset({2}))
    back = pickle.loads(pickle.dumps(prepared))
    assert back.keys == keys and all(type(k) is EventKey for k in back.keys)
    assert [k.position for k in back.keys] == [k.position for k in keys]
    assert (back.refused, back.order_ids, back.message_id_at) == (refused, ("o1",), {2})
    assert back.payload() == prepared.payload()

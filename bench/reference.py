"""The ceilings for ingest: ClickHouse's own INSERT of the rows ingest would write.

The benchmark's events (bench/ingest.py's mix) are validated and enriched once, outside the
clock, into the rows of the four tables ingest writes; then those rows are INSERTed block after
block, table by table in ingest's order, by one writer. Two references:

- **the fastest columnar INSERT** (``columnar``): blocks of 10,000 events' rows, each table's
  block built before the clock in the form the engine takes fastest: chdb an Arrow table read
  in place through the ``Python()`` table function (the storage's own ``insert_arrow``); a
  ClickHouse server clickhouse-driver's ``columnar=True`` insert of column lists. Once into
  the service's tables (the materialized views attached: what ingest pays) and once into
  scratch tables created ``AS`` them, which no view reads (what the rows alone cost). The
  storage is left to go idle (its merges) before each.
- **the row path** (``results``): blocks of as many events as one group-commit flush carries in
  each mode, through the storage code the flusher uses (chdb: JSONEachRow under 200 rows, Arrow
  above, converted in the clock; the server: clickhouse-driver's row insert).

What remains between these and the measured ingest rate is the service's own work: HTTP/gRPC,
decoding, validation, enrichment, Redis, the duplicate-order check. CPU per event is reported
beside each: this process (chdb runs in it) and, with ``--storage-pid``, the ClickHouse server.

Runs as a child process (chdb allows one data folder per process) and writes JSON:

    .venv/bin/python bench/reference.py --data-dir DIR --json OUT [--clickhouse-url URL]
        [--blocks 8,64,4000,32000] [--seconds 10] [--columnar-block 10000] [--storage-pid PID]
        [--no-row-path]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import Meter, per_unit_us  # noqa: E402
from bench.idle import settle  # noqa: E402
from bench.ingest import make_event  # noqa: E402
from cartlytics.common.storage import Storage, open_storage  # noqa: E402
from services.ingest.enrichment import enrich  # noqa: E402
from services.ingest.preparation import new_event_id  # noqa: E402
from services.ingest.rows import (  # noqa: E402
    TABLES,
    event_row,
    item_rows,
    name_rows,
    order_lines_row,
)
from services.ingest.validation import IncomingEvent, ValidEvent, validate  # noqa: E402

PROJECT = "default"
COLUMNAR_BLOCK = 10_000
PLAIN_SUFFIX = "_bench_plain"  # scratch tables no view reads
Rows = dict[str, list[tuple[Any, ...]]]


def event_rows(count: int, project_id: str = PROJECT) -> list[Rows]:
    """Per event, the rows ingest would write for it (table name -> rows)."""
    received = datetime.now(UTC)
    out: list[Rows] = []
    for n in range(count):
        raw = make_event(n)
        incoming = IncomingEvent(
            event=raw["event"],
            user_id=raw.get("userId", ""),
            properties=raw.get("properties", {}),
            context=raw.get("context", {}),
        )
        valid = validate(incoming, received, new_event_id)
        if not isinstance(valid, ValidEvent):
            raise ValueError(f"benchmark event {n} is invalid: {valid}")
        extra = enrich(valid.properties, valid.context, ip_salt=b"bench", client_ip="127.0.0.1")
        rows: Rows = {spec.name: [] for spec in TABLES}
        rows["events"].append(event_row(project_id, valid, extra))
        rows["order_items"].extend(item_rows(project_id, valid))
        lines = order_lines_row(project_id, valid)
        if lines is not None:
            rows["order_lines"].append(lines)
        rows["product_names"].extend(name_rows(project_id, valid))
        out.append(rows)
    return out


def merge(per_event: list[Rows]) -> Rows:
    merged: Rows = {spec.name: [] for spec in TABLES}
    for rows in per_event:
        for name, table_rows in rows.items():
            merged[name].extend(table_rows)
    return merged


def insert_rate(
    storage: Storage, per_event: list[Rows], events: int, seconds: float, meter: Meter
) -> dict[str, Any]:
    """INSERT blocks of ``events`` events' rows, one after the other, for about ``seconds``.

    Small blocks cycle through consecutive slices of the events, so that over the run they
    carry the benchmark's mix (views, carts, orders) as the requests do."""
    slices = max(1, min(20, len(per_event) // events))
    blocks = [merge(per_event[k * events : (k + 1) * events]) for k in range(slices)]
    inserts = 0
    before = meter.read()
    started = time.perf_counter()
    while inserts < 2 or time.perf_counter() - started < seconds:
        block = blocks[inserts % slices]
        for spec in TABLES:
            if block[spec.name]:
                storage.insert_sync(spec.name, spec.columns, block[spec.name])
        inserts += 1
    elapsed = time.perf_counter() - started
    cpu = meter.since(before)
    rows = sum(len(r) for b in blocks for r in b.values())
    return {
        "path": "row",
        "block_events": events,
        "block_rows": round(rows / slices),
        "inserts": inserts,
        "seconds": round(elapsed, 2),
        "ms_per_insert": round(elapsed / inserts * 1000, 2),
        "events_per_second": round(inserts * events / elapsed),
        **per_unit_us(cpu, inserts * events),
    }


# ---------------------------------------------------------------------------------------------
# The fastest columnar INSERT


class ColumnarWriter:
    """One table block's columnar INSERT, built before the clock: chdb an Arrow table read in
    place (``Storage.insert_arrow``), a server column lists through ``columnar=True``."""

    def __init__(self, storage: Storage, clickhouse_url: str) -> None:
        self._storage = storage
        self._client: Any = None
        if clickhouse_url:
            from clickhouse_driver import Client

            self._client = Client.from_url(clickhouse_url)

    def build(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Any:
        values = [[row[i] for row in rows] for i in range(len(columns))]
        if self._client is not None:
            return values
        import pyarrow as pa

        return pa.table(dict(zip(columns, values, strict=True)))

    def insert(self, table: str, columns: tuple[str, ...], data: Any) -> None:
        if self._client is None:
            self._storage.insert_arrow(table, columns, data)
        else:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
            self._client.execute(sql, data, columnar=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()


def columnar_rate(
    storage: Storage,
    writer: ColumnarWriter,
    per_event: list[Rows],
    events: int,
    seconds: float,
    meter: Meter,
    views: bool,
) -> dict[str, Any]:
    """Blocks of ``events`` events' rows, each table in turn, for about ``seconds``: into the
    service's tables (``views``) or into scratch copies no view reads."""
    slices = max(1, min(3, len(per_event) // events))
    blocks = []
    for k in range(slices):
        rows = merge(per_event[k * events : (k + 1) * events])
        blocks.append([
            (spec.name if views else spec.name + PLAIN_SUFFIX, spec.columns,
             writer.build(spec.columns, rows[spec.name]), len(rows[spec.name]))
            for spec in TABLES if rows[spec.name]
        ])  # fmt: skip
    inserts = 0
    before = meter.read()
    started = time.perf_counter()
    while inserts < 2 or time.perf_counter() - started < seconds:
        for table, columns, data, _ in blocks[inserts % slices]:
            writer.insert(table, columns, data)
        inserts += 1
    elapsed = time.perf_counter() - started
    cpu = meter.since(before)
    rows_per_block = sum(n for block in blocks for *_, n in block) / slices
    return {
        "path": "columnar",
        "views": views,
        "block_events": events,
        "block_rows": round(rows_per_block),
        "inserts": inserts,
        "seconds": round(elapsed, 2),
        "ms_per_insert": round(elapsed / inserts * 1000, 2),
        "events_per_second": round(inserts * events / elapsed),
        "rows_per_second": round(inserts * rows_per_block / elapsed),
        **per_unit_us(cpu, inserts * events),
    }


def make_plain_tables(storage: Storage) -> None:
    for spec in TABLES:
        storage.backend.execute(f"DROP TABLE IF EXISTS {spec.name}{PLAIN_SUFFIX}")
        storage.backend.execute(f"CREATE TABLE {spec.name}{PLAIN_SUFFIX} AS {spec.name}")


def drop_plain_tables(storage: Storage) -> None:
    for spec in TABLES:
        storage.backend.execute(f"DROP TABLE IF EXISTS {spec.name}{PLAIN_SUFFIX}")


def idle(storage_pid: int | None) -> None:
    """Wait for the storage's merges of what the previous measure wrote (at most 60 s)."""
    waited = settle(storage_pid or os.getpid(), limit=60)
    print(f"  storage idle after {waited} s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--clickhouse-url", default="", help="empty: embedded chdb")
    parser.add_argument("--blocks", default="8,64,4000,32000", help="events per row INSERT")
    parser.add_argument("--columnar-block", type=int, default=COLUMNAR_BLOCK)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--storage-pid", type=int, help="the ClickHouse server's (its CPU)")
    parser.add_argument("--no-row-path", action="store_true", help="the columnar INSERT only")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = parser.parse_args()
    sizes = [] if args.no_row_path else sorted({int(b) for b in args.blocks.split(",")})
    prepared = max(400, args.columnar_block * 2, *sizes)
    print(f"  preparing the rows of {prepared:,} events ...", file=sys.stderr, flush=True)
    per_event = event_rows(prepared)
    storage = open_storage(args.clickhouse_url, args.data_dir)
    storage.migrate()
    # The client is this process; on chdb the engine is too (reported as the client's CPU).
    meter = Meter(storage_pid=args.storage_pid)
    writer = ColumnarWriter(storage, args.clickhouse_url)
    results, columnar = [], []
    try:
        for size in sizes:
            result = insert_rate(storage, per_event, size, args.seconds, meter)
            results.append(result)
            print(
                f"  row-path INSERT of {size:,} events' rows ({result['block_rows']:,} rows): "
                f"{result['ms_per_insert']} ms each, {result['events_per_second']:,} events/s",
                file=sys.stderr,
                flush=True,
            )
        make_plain_tables(storage)
        for views in (True, False):
            idle(args.storage_pid)
            result = columnar_rate(
                storage, writer, per_event, args.columnar_block, args.seconds, meter, views
            )
            columnar.append(result)
            print(
                f"  columnar INSERT of {args.columnar_block:,} events' rows "
                f"({result['block_rows']:,} rows), {'with' if views else 'without'} the views: "
                f"{result['ms_per_insert']} ms each, {result['events_per_second']:,} events/s, "
                f"{result['rows_per_second']:,} rows/s",
                file=sys.stderr,
                flush=True,
            )
        drop_plain_tables(storage)
    finally:
        writer.close()
        storage.close()
    report = {"backend": storage.backend_name, "results": results, "columnar": columnar}
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The ceiling for ingest: ClickHouse's own INSERT of the rows ingest would write, same driver.

The benchmark's events (bench/ingest.py's mix) are validated and enriched once, outside the
clock, into the rows of the four tables ingest writes; then those rows are INSERTed block after
block, table by table in ingest's order, through the same storage code as the group-commit
flusher (chdb: JSONEachRow under 200 rows, Arrow through ``Python()`` above; the server:
clickhouse-driver), by one writer as there is one flusher. What remains between this and the
measured ingest rate is the service's own work: HTTP/gRPC, decoding, validation, enrichment,
Redis, the duplicate-order check.

Runs as a child process (chdb allows one data folder per process) and writes JSON:

    .venv/bin/python bench/reference.py --data-dir DIR --json OUT [--clickhouse-url URL]
        [--blocks 8,64,4000,32000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import make_event  # noqa: E402
from cartlytics.common.storage import Storage, open_storage  # noqa: E402
from services.ingest.enrichment import enrich  # noqa: E402
from services.ingest.ingestor import (  # noqa: E402
    TABLES,
    _event_row,
    _item_rows,
    _name_rows,
    _order_lines_row,
    new_event_id,
)
from services.ingest.validation import IncomingEvent, ValidEvent, validate  # noqa: E402

PROJECT = "default"
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
        rows["events"].append(_event_row(project_id, valid, extra))
        rows["order_items"].extend(_item_rows(project_id, valid))
        lines = _order_lines_row(project_id, valid)
        if lines is not None:
            rows["order_lines"].append(lines)
        rows["product_names"].extend(_name_rows(project_id, valid))
        out.append(rows)
    return out


def merge(per_event: list[Rows]) -> Rows:
    merged: Rows = {spec.name: [] for spec in TABLES}
    for rows in per_event:
        for name, table_rows in rows.items():
            merged[name].extend(table_rows)
    return merged


def insert_rate(
    storage: Storage, per_event: list[Rows], events: int, seconds: float
) -> dict[str, Any]:
    """INSERT blocks of ``events`` events' rows, one after the other, for about ``seconds``.

    Small blocks cycle through consecutive slices of the events, so that over the run they
    carry the benchmark's mix (views, carts, orders) as the requests do."""
    slices = max(1, min(20, len(per_event) // events))
    blocks = [merge(per_event[k * events : (k + 1) * events]) for k in range(slices)]
    inserts = 0
    started = time.perf_counter()
    while inserts < 2 or time.perf_counter() - started < seconds:
        block = blocks[inserts % slices]
        for spec in TABLES:
            if block[spec.name]:
                storage.insert_sync(spec.name, spec.columns, block[spec.name])
        inserts += 1
    elapsed = time.perf_counter() - started
    rows = sum(len(r) for b in blocks for r in b.values())
    return {
        "block_events": events,
        "block_rows": round(rows / slices),
        "inserts": inserts,
        "seconds": round(elapsed, 2),
        "ms_per_insert": round(elapsed / inserts * 1000, 2),
        "events_per_second": round(inserts * events / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--clickhouse-url", default="", help="empty: embedded chdb")
    parser.add_argument("--blocks", default="8,64,4000,32000", help="events per INSERT")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = parser.parse_args()
    sizes = sorted({int(b) for b in args.blocks.split(",")})
    print(f"  preparing the rows of {max(sizes):,} events ...", file=sys.stderr, flush=True)
    per_event = event_rows(max(400, *sizes))
    storage = open_storage(args.clickhouse_url, args.data_dir)
    storage.migrate()
    results = []
    try:
        for size in sizes:
            result = insert_rate(storage, per_event, size, args.seconds)
            results.append(result)
            print(
                f"  INSERT of {size:,} events' rows ({result['block_rows']:,} rows): "
                f"{result['ms_per_insert']} ms each, {result['events_per_second']:,} events/s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        storage.close()
    report = {"backend": storage.backend_name, "results": results}
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""CPU per event of preparing requests and of the log writer's Python, isolated on one core.

End-to-end runs (bench/ingest.py) on a shared 2-core machine move by +-5 % from run to run, more
than most single changes to the ingest path gain. This times the pure-Python parts alone, in
this process, on the bench's own request bodies (bench/ingest.py's realistic mix), each step
``--rounds`` times in turn and reported as the median (µs an event):

- single events as the event loop prepares them (no realtime tally: ``workers.Preparer``), and
  as they were, with a tally per request; each with its log record encoded;
- REST and gRPC batches of 500 as a worker prepares them (with the tally), pickled back as the
  process pool returns them;
- the log writer's side: records decoded, and the realtime tally made from a block's rows
  (what the writer does for records without one) against merging per-record tallies.

The figures are what the code costs with warm caches on an otherwise idle core; in the service,
beside aiohttp, gRPC, valkey and ClickHouse, the same work measured ~2-3x (docs/ingest-log.md).

    .venv/bin/python bench/prepare.py [--rounds 5] [--singles 2000] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.ingest import grpc_batch_messages, rest_batch_bodies, single_bodies  # noqa: E402
from cartlytics.common.gc_tuning import tune_gc  # noqa: E402
from cartlytics.common.realtime import RealtimeTally  # noqa: E402
from services.ingest.log_writer import LogRecord  # noqa: E402
from services.ingest.preparation import (  # noqa: E402
    Settings,
    new_event_id,
    prepare_json,
    prepare_protos,
)
from services.ingest.rows import EVENTS, realtime_of_row  # noqa: E402

SALT = b"bench-prepare-salt-0123456789abc"
JSON = "application/json"
GC_GEN0_THRESHOLD = 20_000  # ANALYTICS_GC_GEN0_THRESHOLD's default


def _timed(step: Callable[[], object], events: int) -> float:
    """µs an event of one run of ``step`` over ``events`` events."""
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    tune_gc(GC_GEN0_THRESHOLD)  # as the service's processes run

    print("building request bodies ...", file=sys.stderr)
    singles = single_bodies(args.singles)
    rest = rest_batch_bodies(args.batches, 500)
    grpc = grpc_batch_messages(args.batches, 500)
    now = datetime.now(UTC)
    loop, tallied = Settings(SALT, tally=False), Settings(SALT, tally=True)

    def singles_with(settings: Settings) -> list[bytes]:
        return [
            prepare_json("p", body, JSON, True, settings, now, new_event_id).payload()
            for body in singles
        ]  # each single's log record, encoded on the loop

    def rest_in_worker() -> list[bytes]:
        return [
            pickle.dumps(prepare_json("p", b, JSON, False, tallied, now, new_event_id))
            for b in rest
        ]

    def grpc_in_worker() -> list[bytes]:
        return [pickle.dumps(prepare_protos("p", m, tallied, now, new_event_id)) for m in grpc]

    singles_with(tallied)  # warm up: the user-agent parser, the caches
    single_records = singles_with(loop)
    tallied_records = singles_with(tallied)
    batch_records = [pickle.loads(p).payload() for p in rest_in_worker()]
    decoded_singles = [LogRecord.decode(r) for r in single_records]
    decoded_tallied = [LogRecord.decode(r) for r in tallied_records]

    def tally_from_rows() -> RealtimeTally:
        rows = [row for record in decoded_singles for row in record.rows[EVENTS.name]]
        return RealtimeTally.of(realtime_of_row(row) for row in rows)

    def merge_tallies() -> RealtimeTally:
        total = RealtimeTally()
        for record in decoded_tallied:
            assert record.tally is not None
            total.add(record.tally)
        return total

    n_single, n_batch = len(singles), 500 * args.batches
    steps: dict[str, tuple[Callable[[], object], int]] = {
        "single event, on the loop (no tally), record encoded": (
            lambda: singles_with(loop), n_single),
        "single event with its own tally (before), record encoded": (
            lambda: singles_with(tallied), n_single),
        "REST batch of 500 in a worker (tally), pickled back": (rest_in_worker, n_batch),
        "gRPC batch of 500 in a worker (tally), pickled back": (grpc_in_worker, n_batch),
        "writer: single events' records decoded": (
            lambda: [LogRecord.decode(r) for r in single_records], n_single),
        "writer: batch records decoded": (
            lambda: [LogRecord.decode(r) for r in batch_records], n_batch),
        "writer: tally made from single events' rows": (tally_from_rows, n_single),
        "writer: single events' own tallies merged": (merge_tallies, n_single),
    }  # fmt: skip
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
        for name, (step, events) in steps.items():
            timings[name].append(_timed(step, events))

    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds")
    print("\n| step | µs an event (median) | min | max |\n|---|---|---|---|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()

"""Latency of every metrics endpoint over a large embedded store (default 10 million events).

1. A child process writes N synthetic events into a fresh data folder (chdb, one project).
2. `cartlytics run` starts on that folder; each endpoint is called through the REST gateway,
   sequentially, after one warm-up call; p50 and p99 are reported with the targets.

    .venv/bin/python bench/metrics.py [--events 10000000] [--requests 30] [--data-dir DIR]
        [--json out.json] [--clickhouse-url clickhouse://default@127.0.0.1:9000/analytics]

With --data-dir pointing at an existing folder (and --skip-load), the data is reused. With
--clickhouse-url the events go to (or, with --skip-load, are already in) that ClickHouse server,
and the service runs against it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.idle import settle  # noqa: E402
from tests.servers import start_system  # noqa: E402

ENDPOINTS: list[tuple[str, str, str, Any, float]] = [
    # (label, method, path, body, p50 target in ms)
    ("sales 30d/day", "GET", "/analytics/sales?period=30d&granularity=day", None, 50),
    ("sales 12m/month", "GET", "/analytics/sales?period=12m&granularity=month", None, 50),
    ("products 30d", "GET", "/analytics/products?period=30d&limit=10", None, 50),
    ("customers 30d", "GET", "/analytics/customers?period=30d", None, 50),
    ("realtime", "GET", "/analytics/realtime", None, 50),
    ("funnel 7d", "GET", "/analytics/funnel?period=7d", None, 300),
    ("funnel 30d", "GET", "/analytics/funnel?period=30d", None, 300),
    (
        "query (spec example)",
        "POST",
        "/analytics/query",
        {
            "metrics": ["revenue", "orders", "aov"],
            "dimensions": ["product_category"],
            "filters": {"period": "30d", "currency": "USD"},
            "orderBy": "revenue:desc",
            "limit": 20,
        },
        300,
    ),
    (
        "query visitors by day",
        "POST",
        "/analytics/query",
        {
            "metrics": ["visitors", "page_views"],
            "dimensions": ["date"],
            "filters": {"period": "30d"},
        },
        300,
    ),
]

LOADER = """
import sys
from pathlib import Path
from cartlytics.common.storage import open_storage
sys.path.insert(0, {root!r})
from bench.demo_data import load
storage = open_storage({url!r}, Path({data!r}))
storage.migrate()
load(storage, "default", {events})
storage.close()
"""


def call(base: str, key: str, method: str, path: str, body: Any) -> tuple[int, float]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data:
        request.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, (time.perf_counter() - started) * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--clickhouse-url",
        default="",
        help="a running ClickHouse server to load into and query (default: embedded chdb)",
    )
    args = parser.parse_args()
    temp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="cartlytics-bench-")
    data_dir = args.data_dir or Path(temp.name) / "data"  # type: ignore[union-attr]
    data_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_load:
        where = args.clickhouse_url or data_dir
        print(f"loading {args.events:,} events into {where} ...", file=sys.stderr)
        started = time.perf_counter()
        script = LOADER.format(
            root=str(ROOT), data=str(data_dir), events=args.events, url=args.clickhouse_url
        )
        subprocess.run([sys.executable, "-c", script], check=True)
        print(f"loaded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    key = "cak_bench_" + uuid.uuid4().hex
    system = start_system(
        data_dir,
        key,
        clickhouse_url=args.clickhouse_url,
        extra_env={"ANALYTICS_LOG_LEVEL": "warning"},
        timeout=600,
    )
    results = []
    try:
        waited = settle(system.process.pid)
        print(f"start-up work done after {waited} s", file=sys.stderr)
        for label, method, path, body, target in ENDPOINTS:
            status, _ = call(system.http_url, key, method, path, body)  # warm-up
            timings = []
            for _ in range(args.requests):
                status, ms = call(system.http_url, key, method, path, body)
                timings.append(ms)
            p50, p99 = statistics.median(timings), percentile(timings, 99)
            results.append(
                {
                    "endpoint": label,
                    "status": status,
                    "p50_ms": round(p50, 1),
                    "p99_ms": round(p99, 1),
                    "target_p50_ms": target,
                    "meets_target": status == 200 and p50 < target,
                }
            )
            print(
                f"  {label}: status {status}, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"(target p50 < {target} ms)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        system.stop()
        if temp is not None:
            temp.cleanup()
    report = {
        "events": args.events,
        "backend": "clickhouse-server" if args.clickhouse_url else "chdb",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
    }
    print("| endpoint | status | p50 ms | p99 ms | target p50 |")
    print("|---|---|---|---|---|")
    for r in results:
        timing = f"{r['p50_ms']} | {r['p99_ms']} | < {r['target_p50_ms']}"
        print(f"| {r['endpoint']} | {r['status']} | {timing} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

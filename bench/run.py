"""Every benchmark of the project, in one command, with its references, into one report.

On the embedded default (chdb) and, when a ``clickhouse-server`` binary is on PATH, on a
ClickHouse server started for the run in a temporary folder (as tests/servers.py does), and,
when Debian's ``zookeeper`` is installed too, on a cluster of 2 shards x 2 replicas started the
same way (bench/cluster.py: tests/cluster.py's; or an existing one: ``--cluster-url``,
``--cluster-name``), ``CLICKHOUSE_CLUSTER`` set. The cluster runs the ingest, queries and
freshness sections (no references: its reference is the single server, measured in the same
run; the report puts each figure beside the server's, with their ratio):

- ingest events/s: REST single events, REST batches, gRPC batches, at each client connection
  count, every request built before the clock, with the server's and the client's CPU per
  event; beside, measured in the same run, the fastest columnar INSERT of the same rows (10k-event
  blocks, with and without the materialized views), the row-path INSERT the group commit uses
  (bench/reference.py), and the no-op Ping through the same server and gateway (REST and gRPC);
- user-agent parsing of 1,000 distinct user agents (bench/user_agents.py: no cliff);
- p50/p99 of every query endpoint (bench/metrics.py's list) at each store size, beside Ping;
- freshness: from an order's acknowledgement to its visibility in sales and in realtime;
- export rows/s and server memory (bench/export.py --json; on the server backend with its
  --clickhouse-server), beside ClickHouse's own CSV of the same orders (embedded default only);
- a sustained open-loop load of single events at half the highest measured REST single rate:
  server memory over time and ack latency per interval.

Then issue 16's targets, each measured figure beside its target with pass or fail, on each
backend. Writes ``<out>.json`` and ``<out>.md`` (default bench/results/latest; --quick:
bench/results/quick) and prints progress on stderr. The full run took 26 minutes on 2 cores
(2026-11-26, before the cluster; most of it loading 10M events and 5 minutes of sustained load
per backend); the cluster adds about 11-12 (9.5 measured at 10M events alone: README). --quick
(small sizes) took about 5 before the cluster, whose quick part took 2.5.

    .venv/bin/python bench/run.py [--quick] [--backends auto|chdb|clickhouse-server|
        clickhouse-cluster-2x2|chdb,...] [--cluster-url URL --cluster-name NAME]
        [--sustain-seconds 300] [--sections ingest,sustained,queries,freshness,export,user_agents]
        [--out bench/results/latest]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cluster as clusters  # noqa: E402
from bench import ingest, probes  # noqa: E402
from bench.cpu import Meter  # noqa: E402
from bench.idle import settle  # noqa: E402
from bench.metrics import ENDPOINTS  # noqa: E402
from bench.report import issue16_targets, machine_info, ratio, write_reports  # noqa: E402
from tests.servers import ClickHouseServer, System, start_system  # noqa: E402

SECTIONS = ("ingest", "sustained", "queries", "freshness", "export", "user_agents")
# What a cluster runs: the sustained load (5 minutes) and the export (bench/export.py starts a
# server of its own) are the single server's.
CLUSTER_SECTIONS = {"ingest", "queries", "freshness"}
# Settings of the service under test that change what ingest measures; reported with the figures
# (the system inherits this process's environment: ANALYTICS_INGEST_LOG=yes make bench).
REPORTED_SETTINGS = (
    "ANALYTICS_INGEST_LOG",
    "ANALYTICS_INGEST_LOG_FSYNC",
    "ANALYTICS_INGEST_WORKERS",
)
PYTHON = sys.executable
COLUMNAR_BLOCK = 10_000  # events per block of the columnar INSERT reference (issue 16's)
STARTED = time.perf_counter()


def log(message: str) -> None:
    minutes, seconds = divmod(int(time.perf_counter() - STARTED), 60)
    print(f"[{minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    quick: bool
    ingest_seconds: float
    connections: list[int]
    batch: int
    pool_rate: float
    pool_rate_single: float
    sizes: list[int]
    requests: int
    freshness_probes: int
    export_orders: int
    export_formats: str
    sustain_seconds: float
    bucket_seconds: float
    settle_seconds: float
    sections: set[str] = field(default_factory=lambda: set(SECTIONS))


@dataclass
class Backend:
    name: str  # "chdb", "clickhouse-server" or a cluster's (bench/cluster.py)
    server: ClickHouseServer | None = None
    cluster: clusters.BenchCluster | None = None

    def url(self, database: str) -> str:
        if self.cluster is not None:
            return self.cluster.url(database)
        if self.server is None:
            return ""
        return f"clickhouse://default@127.0.0.1:{self.server.port}/{database}"

    @property
    def cluster_name(self) -> str:
        """``CLICKHOUSE_CLUSTER`` for the services and the loader (empty: not a cluster)."""
        return self.cluster.name if self.cluster is not None else ""

    def storage_pids(self) -> int | tuple[int, ...] | None:
        """The storage's processes on this machine, for their CPU (None: in-process or remote)."""
        if self.cluster is not None:
            return self.cluster.pids() or None
        if self.server is not None and self.server.process is not None:
            return self.server.process.pid
        return None


# Rate limits stay on, so every call pays its Redis check as in production, but far above
# anything measured here: the benchmark measures capacity, not the configured limit.
UNLIMITED = "1000000"
SYSTEM_ENV = {
    "ANALYTICS_LOG_LEVEL": "warning",
    "ANALYTICS_RATE_LIMIT_INGEST": UNLIMITED,
    "ANALYTICS_RATE_LIMIT_INGEST_BURST": UNLIMITED,
    "ANALYTICS_RATE_LIMIT_READ": UNLIMITED,
    "ANALYTICS_RATE_LIMIT_READ_BURST": UNLIMITED,
}


@contextmanager
def running(data_dir: Path, clickhouse_url: str, cluster: str = "") -> Iterator[System]:
    key = "cak_bench_" + uuid.uuid4().hex
    # Set even when empty: a CLICKHOUSE_CLUSTER in the bench's own environment must not turn
    # the single server's system into a cluster's.
    env = {**SYSTEM_ENV, "CLICKHOUSE_CLUSTER": cluster}
    system = start_system(data_dir, key, clickhouse_url=clickhouse_url, extra_env=env, timeout=600)
    try:
        yield system
    finally:
        started = time.perf_counter()
        code = system.stop()
        log(f"  system stopped (exit {code}) in {time.perf_counter() - started:.1f} s")


def child(args: list[str]) -> None:
    """Run a child Python (chdb allows one data folder per process); its output goes to stderr."""
    subprocess.run([PYTHON, *args], check=True, stdout=sys.stderr, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# Ingest and sustained load


def insert_reference(backend: Backend, plan: Plan, work: Path) -> dict[str, Any]:
    """bench/reference.py's figures: ``rows`` (row path, by events per block) and ``columnar``
    (10k-event blocks, with and without the views)."""
    blocks = sorted({c * n for c in plan.connections for n in (1, plan.batch)})
    out = work / "reference.json"
    log(
        f"{backend.name}: ClickHouse's own INSERT of the same rows: columnar, blocks of "
        f"{COLUMNAR_BLOCK:,} events, with and without the views; row path, "
        f"blocks of {blocks} events"
    )
    storage_pid = backend.server.process.pid if backend.server and backend.server.process else None
    child(
        [
            str(ROOT / "bench" / "reference.py"),
            "--data-dir", str(work / "reference"),
            "--clickhouse-url", backend.url("bench_reference"),
            "--blocks", ",".join(map(str, blocks)),
            "--columnar-block", str(COLUMNAR_BLOCK),
            "--seconds", str(plan.ingest_seconds),
            "--json", str(out),
            *(["--storage-pid", str(storage_pid)] if storage_pid else []),
        ]
    )  # fmt: skip
    raw = json.loads(out.read_text())
    return {
        "rows": {int(r["block_events"]): r for r in raw["results"]},
        "columnar": raw.get("columnar", []),
    }


def ingest_and_sustain(backend: Backend, plan: Plan, work: Path) -> dict[str, Any]:
    """The ingest section, and the sustained section on the same system right after it.

    A cluster has no INSERT references (bench/reference.py's scratch tables are a single
    server's): its reference is the single server's run."""
    reference = (
        {"rows": {}, "columnar": []}
        if backend.cluster is not None
        else insert_reference(backend, plan, work)
    )
    row_path = reference["rows"]
    columnar = {bool(r["views"]): r for r in reference["columnar"]}
    with_views, without_views = columnar.get(True, {}), columnar.get(False, {})
    out: dict[str, Any] = {
        "insert_reference": list(row_path.values()),
        "columnar_reference": reference["columnar"],
        "rows": [],
    }
    log(f"{backend.name}: starting the system for ingest")
    with running(work / "ingest", backend.url("bench_ingest"), backend.cluster_name) as system:
        log(f"  the service's start-up work done after {settle(system.process.pid)} s")
        meter = Meter(system.process.pid, backend.storage_pids())
        ping = probes.latency(
            system.http_url, system.key, "GET", probes.PING_PATH, None, plan.requests
        )
        out["ping_latency"] = ping
        for connections in plan.connections:
            pings = asyncio.run(
                probes.ping_throughput(
                    system.http_url,
                    system.grpc_target,
                    system.key,
                    plan.ingest_seconds,
                    connections,
                    meter,
                )
            )
            out.setdefault("ping", []).extend(pings)
            log(f"{backend.name}: ingest with {connections} client connections")
            options = argparse.Namespace(
                seconds=plan.ingest_seconds,
                connections=connections,
                batch=plan.batch,
                pool_rate=plan.pool_rate,
                pool_rate_single=plan.pool_rate_single,
            )
            modes = asyncio.run(
                ingest.bench(system.http_url, system.grpc_target, system.key, options, meter)
            )
            for mode in modes:
                grpc_mode = str(mode["mode"]).startswith("gRPC")
                ping_rps = pings[1 if grpc_mode else 0]["requests_per_second"]
                per_request = 1 if "single" in str(mode["mode"]) else plan.batch
                block = row_path.get(connections * per_request, {})
                out["rows"].append(
                    {
                        **mode,
                        "insert_block_events": block.get("block_events"),
                        "insert_events_per_second": block.get("events_per_second"),
                        "insert_ratio": ratio(
                            mode["events_per_second"], block.get("events_per_second")
                        ),
                        "columnar_events_per_second": with_views.get("events_per_second"),
                        "columnar_ratio": ratio(
                            mode["events_per_second"], with_views.get("events_per_second")
                        ),
                        "columnar_plain_events_per_second": without_views.get("events_per_second"),
                        "ping_requests_per_second": ping_rps,
                        "ping_ratio": ratio(mode["requests_per_second"], ping_rps),
                    }
                )
                log(
                    f"  {mode['mode']}, {connections} connections: "
                    f"{mode['events_per_second']:,} events/s, server CPU "
                    f"{mode['service_cpu_us']} µs/event"
                    + (
                        f" + ClickHouse {mode['storage_cpu_us']}"
                        if mode.get("storage_cpu_us") is not None
                        else ""
                    )
                    + f", client {mode['client_cpu_us']} ("
                    + (
                        f"columnar INSERT {with_views.get('events_per_second', 0):,}/s, "
                        f"row-path INSERT {block['events_per_second']:,}/s, "
                        if block
                        else ""
                    )
                    + f"Ping {ping_rps:,} requests/s)"
                )
        if "sustained" in plan.sections and backend.cluster is None:
            try:
                out["sustained"] = sustain(backend, plan, system, out)
            except Exception as exc:  # keep the ingest figures measured above
                out["sustained"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def sustain(
    backend: Backend, plan: Plan, system: System, measured: dict[str, Any]
) -> dict[str, Any]:
    singles = [r for r in measured["rows"] if "single" in str(r["mode"])]
    best = max(singles, key=lambda r: r["events_per_second"])
    rate = best["events_per_second"] / 2
    # The closed-loop runs just before leave the storage merging; let it settle, as a system
    # would between a burst and steady traffic.
    log(f"{backend.name}: {plan.settle_seconds:.0f} s idle before the sustained load")
    time.sleep(plan.settle_seconds)
    log(
        f"{backend.name}: sustained load, {rate:,.0f} single events/s (half of "
        f"{best['events_per_second']:,}) for {plan.sustain_seconds:.0f} s"
    )
    result = asyncio.run(
        probes.sustained(
            system.http_url,
            system.key,
            system.process.pid,
            rate,
            plan.sustain_seconds,
            plan.bucket_seconds,
            int(best["connections"]),
            backend.server.process.pid if backend.server and backend.server.process else None,
        )
    )
    ping_p50 = measured["ping_latency"]["p50_ms"]
    result["ping_p50_ms"] = ping_p50
    for bucket in result["buckets"]:
        bucket["ping_ratio"] = ratio(bucket["p50_ms"], ping_p50)
    log(
        f"  sustained: {result['achieved_rate']:,}/s achieved, RSS {result['rss_mb']}, "
        f"worst p99 {result['p99_ms_worst']} ms"
    )
    return result


# ---------------------------------------------------------------------------------------------
# Queries and freshness

LOADER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from cartlytics.common.storage import open_storage
from bench.demo_data import load
storage = open_storage({url!r}, Path({data!r}), {cluster!r})
storage.migrate()
load(storage, "default", {events}, first={first})
storage.close()
"""


def queries_and_freshness(backend: Backend, plan: Plan, work: Path) -> dict[str, Any]:
    data_dir, url = work / "metrics", backend.url("bench_metrics")
    out: dict[str, Any] = {"requests": plan.requests, "rows": [], "ping": []}
    loaded = 0
    for size in sorted(plan.sizes):
        log(f"{backend.name}: loading demo events {loaded:,} -> {size:,}")
        started = time.perf_counter()
        script = LOADER.format(
            root=str(ROOT),
            url=url,
            data=str(data_dir),
            cluster=backend.cluster_name,
            events=size - loaded,
            first=loaded,
        )
        child(["-c", script])
        seconds = time.perf_counter() - started
        out.setdefault("load_seconds", []).append(
            {"events": size - loaded, "seconds": round(seconds)}
        )
        log(f"  loaded in {seconds:.0f} s")
        loaded = size
        with running(data_dir, url, backend.cluster_name) as system:
            if "queries" in plan.sections:
                out["rows"].extend(measure_queries(backend, plan, system, size, out))
            if "freshness" in plan.sections and "freshness" not in out:
                out["freshness"] = measure_freshness(backend, plan, system, size)
    return out


def measure_queries(
    backend: Backend, plan: Plan, system: System, size: int, out: dict[str, Any]
) -> list[dict[str, Any]]:
    waited = settle(system.process.pid)
    # The storage's merges of the load (on a cluster, its replicas' fetches too) done first:
    # else the first endpoints are timed beside them, and a cluster's longer than a server's.
    merged = Meter(storage_pid=backend.storage_pids()).settle(limit=120)
    log(f"{backend.name}: query latency at {size:,} events ({plan.requests} calls each; the")
    log(f"  service's start-up work done after {waited} s, the storage idle after {merged} s)")
    ping = probes.latency(system.http_url, system.key, "GET", probes.PING_PATH, None, plan.requests)
    out["ping"].append({"events": size, **ping})
    rows = []
    for label, method, path, body, target in ENDPOINTS:
        timing = probes.latency(system.http_url, system.key, method, path, body, plan.requests)
        rows.append(
            {
                "events": size,
                "endpoint": label,
                "request": f"{method} {path}" + (f" {json.dumps(body)}" if body else ""),
                **timing,
                "target_p50_ms": target,
                "ping_p50_ms": ping["p50_ms"],
                "ping_ratio": ratio(timing["p50_ms"], ping["p50_ms"]),
            }
        )
        log(
            f"  {label}: status {timing['status']}, p50 {timing['p50_ms']} ms, "
            f"p99 {timing['p99_ms']} ms (Ping p50 {ping['p50_ms']} ms)"
        )
    return rows


def measure_freshness(backend: Backend, plan: Plan, system: System, size: int) -> dict[str, Any]:
    log(f"{backend.name}: freshness, {plan.freshness_probes} probe orders at {size:,} events")
    ping = probes.latency(system.http_url, system.key, "GET", probes.PING_PATH, None, plan.requests)
    reads = {
        "sales": probes.latency(
            system.http_url, system.key, "GET", probes.SALES_PATH, None, plan.requests
        ),
        "realtime": probes.latency(
            system.http_url, system.key, "GET", probes.REALTIME_PATH, None, plan.requests
        ),
    }
    result = asyncio.run(probes.freshness(system.http_url, system.key, plan.freshness_probes))
    result["events"] = size
    for row in result["rows"]:
        view = str(row["view"]).split()[0]
        row["read_p50_ms"] = reads[view]["p50_ms"]
        row["ping_p50_ms"] = ping["p50_ms"]
        row["ping_ratio"] = ratio(row["p50_ms"], ping["p50_ms"])
        log(f"  visible in {view}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
    return result


# ---------------------------------------------------------------------------------------------
# Export

CSV_REFERENCE = """
import json, sys, time
from chdb import session
s = session.Session({path!r})
s.query("USE analytics")
started = time.perf_counter()
result = s.query(
    "SELECT order_id, event_id, ts, total, currency, visitor_id FROM orders "
    "WHERE project_id = 'default' FORMAT CSV", "CSV"
)
raw = result.bytes()
seconds = time.perf_counter() - started
rows = raw.count(b"\\n")
json.dump({{"rows": rows, "megabytes": round(len(raw) / 1e6, 1), "seconds": round(seconds, 3),
           "rows_per_s": round(rows / seconds)}}, open({out!r}, "w"))
"""


def csv_reference(data_dir: Path, out: Path) -> dict[str, Any]:
    """ClickHouse's own CSV of the exported orders (chdb on the same data folder)."""
    try:
        child(["-c", CSV_REFERENCE.format(path=str(data_dir / "clickhouse"), out=str(out))])
        result: dict[str, Any] = json.loads(out.read_text())
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        # The export figures stand without their reference; say why it is missing.
        return {"error": f"{type(exc).__name__}: {exc}"}
    return result


def export(backend: Backend, plan: Plan, work: Path) -> dict[str, Any]:
    data_dir, out = work / "export", work / "export.json"
    log(f"{backend.name}: export of {plan.export_orders:,} orders ({plan.export_formats})")
    # On the server backend bench/export.py starts (and stops) a clickhouse-server of its own.
    server = ["--clickhouse-server"] if backend.server is not None else []
    child(
        [
            str(ROOT / "bench" / "export.py"),
            "--orders", str(plan.export_orders),
            "--formats", plan.export_formats,
            "--data-dir", str(data_dir),
            "--json", str(out),
            *server,
        ]
    )  # fmt: skip
    raw = json.loads(out.read_text())
    if server:
        # Its server is gone by now, and the native protocol has no CSV output to time.
        reference: dict[str, Any] = {"error": "measured on the embedded default only"}
    else:
        log(f"{backend.name}: reference: ClickHouse's own CSV of the same orders")
        reference = csv_reference(data_dir, work / "export-reference.json")
    rows = []
    for r in raw.get("results", []):
        rss_before, rss_peak = r.get("rss_before_mb"), r.get("rss_peak_mb")
        rows.append(
            {
                **r,
                "reference_ratio": ratio(r.get("rows_per_s"), reference.get("rows_per_s")),
                "rss_ratio": ratio(rss_peak, rss_before),
            }
        )
    log(
        "  "
        + "; ".join(f"{r.get('format')}: {r.get('rows_per_s')} rows/s" for r in rows)
        + (
            f" (ClickHouse CSV {reference['rows_per_s']:,} rows/s)"
            if "rows_per_s" in reference
            else f" (no ClickHouse CSV reference: {reference.get('error')})"
        )
    )
    return {"orders": plan.export_orders, "reference": reference, "rows": rows, "raw": raw}


# ---------------------------------------------------------------------------------------------
# User agents


def user_agents(work: Path) -> dict[str, Any]:
    """bench/user_agents.py: 1,000 distinct user agents, each parsed once (no cliff)."""
    log("user-agent parsing of 1,000 distinct user agents (bench/user_agents.py)")
    out = work / "user_agents.json"
    child([str(ROOT / "bench" / "user_agents.py"), "--count", "1000", "--json", str(out)])
    result: dict[str, Any] = json.loads(out.read_text())
    # Counted here; the user agents themselves are in bench/user_agents.py's own report.
    for key in ("browser_os_differ", "device_differ"):
        result[key + "_count"] = len(result.pop(key, []))
    result.pop("machine", None)
    service, cliff = result["service"], result["no_cliff"]
    log(
        f"  no cliff: {'holds' if cliff['holds'] else 'does NOT hold'} (p50 "
        f"{service['p50_us']} µs, p99 {service['p99_us']} µs; {cliff['rule']})"
    )
    return result


# ---------------------------------------------------------------------------------------------
# Orchestration


def attempt(
    result: dict[str, Any], backend: str, section: str, run: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run one section; a failure is recorded in the report and the run carries on."""
    try:
        return run()
    except Exception as exc:  # a broken section must not lose the others' figures
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, subprocess.CalledProcessError):
            message = f"{' '.join(map(str, exc.cmd))[:200]} exited with {exc.returncode}"
        log(f"{backend}: {section} failed: {message}")
        result["errors"].append(f"{backend} {section}: {message}")
        return {"error": message}


def run_backend(backend: Backend, plan: Plan, work: Path, result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if backend.server is not None or backend.cluster is not None:
        from clickhouse_driver import Client

        client = Client.from_url(
            clusters.with_database(backend.cluster.node_url, "system")
            if backend.cluster is not None
            else backend.url("system")
        )
        version = str(client.execute("SELECT version()")[0][0])
        client.disconnect()
        out["version"] = f"ClickHouse {version}"
        if backend.cluster is not None:
            out["version"] = backend.cluster.describe(version)
            out["cluster"] = {
                "name": backend.cluster.name,
                "shards": backend.cluster.shards,
                "replicas": backend.cluster.replicas,
                "started_here": backend.cluster.started is not None,
            }
    else:
        out["version"] = f"chdb {result['machine']['chdb']} (ClickHouse in-process)"
    sections = plan.sections
    if backend.cluster is not None:
        for key in sorted(sections - CLUSTER_SECTIONS - {"user_agents"}):
            out[key] = {"skipped": "measured on the single server only"}
        sections = sections & CLUSTER_SECTIONS
    if "ingest" in sections:
        ingested = attempt(
            result, backend.name, "ingest", lambda: ingest_and_sustain(backend, plan, work)
        )
        assert ingested is not None
        sustained = ingested.pop("sustained", None)
        out["ingest"] = ingested
        if sustained is None and "sustained" in sections:
            sustained = {"error": "not measured: the ingest section failed"}
        if sustained is not None:
            out["sustained"] = sustained
            if "error" in sustained:
                result["errors"].append(f"{backend.name} sustained: {sustained['error']}")
    elif "sustained" in sections:
        out["sustained"] = {"skipped": "needs the ingest section (its rate is half the maximum)"}
    if sections & {"queries", "freshness"}:
        measured = attempt(
            result, backend.name, "queries", lambda: queries_and_freshness(backend, plan, work)
        )
        assert measured is not None
        if "error" in measured:
            for key in sections & {"queries", "freshness"}:
                out[key] = measured
        else:
            freshness = measured.pop("freshness", None)
            if "queries" in sections:
                out["queries"] = measured
            if freshness is not None:
                out["freshness"] = freshness
    if "export" in sections:
        out["export"] = attempt(result, backend.name, "export", lambda: export(backend, plan, work))
    return out


def remove(name: str, work: Path) -> None:
    # Free the disk before the next backend; a server's many small parts take a while.
    log(f"{name}: removing its data ({work})")
    shutil.rmtree(work, ignore_errors=True)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    return Plan(
        quick=quick,
        ingest_seconds=pick(args.ingest_seconds, 10.0, 3.0),
        connections=[int(c) for c in str(pick(args.connections, "8,64", "8,64")).split(",")],
        batch=args.batch,
        pool_rate=args.pool_rate,
        pool_rate_single=args.pool_rate_single,
        sizes=[int(s) for s in str(pick(args.sizes, "1000000,10000000", "100000")).split(",")],
        requests=pick(args.requests, 30, 10),
        freshness_probes=pick(args.freshness_probes, 100, 10),
        export_orders=pick(args.export_orders, 1_000_000, 100_000),
        export_formats=args.export_formats,
        sustain_seconds=pick(args.sustain_seconds, 300.0, 30.0),
        bucket_seconds=pick(args.bucket_seconds, 60.0, 10.0),
        settle_seconds=pick(args.settle_seconds, 10.0, 5.0),
        sections={s.strip() for s in args.sections.split(",") if s.strip()},
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument(
        "--backends",
        default="auto",
        help=f"auto (chdb, clickhouse-server and {clusters.NAME}: each server backend when its "
        "binaries are installed), or a comma-separated list",
    )
    parser.add_argument(
        "--cluster-url",
        help="an existing cluster's node (clickhouse://user:pass@host:9000/db?alt_hosts=...): "
        f"the cluster backend runs on it instead of starting {clusters.NAME} here",
    )
    parser.add_argument(
        "--cluster-name", help="with --cluster-url: the cluster's name in its remote_servers"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, help="report path without suffix")
    parser.add_argument("--ingest-seconds", type=float, help="per mode (10; quick 3)")
    parser.add_argument("--connections", help="client connections, comma-separated (8,64)")
    parser.add_argument("--batch", type=int, default=500, help="events per batch request")
    parser.add_argument(
        "--pool-rate",
        type=float,
        default=ingest.POOL_RATE,
        help="events/s a batch mode's pre-built requests cover (150000); a mode that uses them "
        "up ends early",
    )
    parser.add_argument(
        "--pool-rate-single",
        type=float,
        default=ingest.POOL_RATE_SINGLE,
        help="the same for single events (20000)",
    )
    parser.add_argument("--sizes", help="store sizes in events (1000000,10000000; quick 100000)")
    parser.add_argument("--requests", type=int, help="calls per endpoint (30; quick 10)")
    parser.add_argument("--freshness-probes", type=int, help="probe orders (100; quick 10)")
    parser.add_argument("--export-orders", type=int, help="orders exported (1000000; quick 100000)")
    parser.add_argument("--export-formats", default="csv,ndjson,json,xlsx")
    parser.add_argument("--sustain-seconds", type=float, help="sustained load (300; quick 30)")
    parser.add_argument("--bucket-seconds", type=float, help="report interval (60; quick 10)")
    parser.add_argument(
        "--settle-seconds", type=float, help="idle pause before the sustained load (10; quick 5)"
    )
    args = parser.parse_args(argv)
    if bool(args.cluster_url) != bool(args.cluster_name):
        parser.error("--cluster-url and --cluster-name go together")
    unknown = {s.strip() for s in args.sections.split(",")} - set(SECTIONS) - {""}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def run_cluster(args: argparse.Namespace, plan: Plan, work: Path, result: dict[str, Any]) -> None:
    """The cluster backend: an existing cluster (--cluster-url), or the 2 x 2 started here for
    the run and stopped after it."""
    if args.cluster_url:
        name = clusters.EXISTING
        log(f"{name}: the existing cluster {args.cluster_name!r}")
        try:
            cluster = clusters.existing(args.cluster_url, args.cluster_name)
        except Exception as exc:  # report what was measured on the others all the same
            log(f"{name}: unreachable: {exc}")
            result["errors"].append(f"{name} unreachable: {exc}")
            result["backends"][name] = {"skipped": f"the cluster is unreachable: {exc}"}
            return
        try:
            result["backends"][name] = run_backend(
                Backend(name, cluster=cluster), plan, work, result
            )
        finally:
            log(f"{name}: dropping this run's databases ({', '.join(sorted(cluster.databases))})")
            try:
                cluster.stop()
            except Exception as exc:  # the figures stand; say what is left behind
                log(f"{name}: could not drop them: {exc}")
                result["errors"].append(f"{name}: this run's databases not dropped: {exc}")
            remove(name, work)
        return
    name = clusters.NAME
    if missing := clusters.missing():
        note = f"no {', '.join(missing)} (apt-get install clickhouse-server zookeeper)"
        log(f"{name}: skipped: {note}")
        result["backends"][name] = {"skipped": note}
        return
    log(f"{name}: starting ZooKeeper and {clusters.SHARDS} x {clusters.REPLICAS} servers")
    started = time.perf_counter()
    try:
        cluster = clusters.start(work / "cluster")
    except Exception as exc:  # report what was measured on the others all the same
        log(f"{name}: did not start: {exc}")
        result["errors"].append(f"{name} did not start: {exc}")
        result["backends"][name] = {"skipped": f"the cluster did not start: {exc}"}
        return
    log(f"  started in {time.perf_counter() - started:.0f} s")
    try:
        result["backends"][name] = run_backend(Backend(name, cluster=cluster), plan, work, result)
    finally:
        log(f"{name}: stopping")
        cluster.stop()
        remove(name, work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    stem = args.out or ROOT / "bench" / "results" / ("quick" if plan.quick else "latest")
    names = (
        ["chdb", "clickhouse-server", clusters.NAME]
        if args.backends == "auto"
        else args.backends.split(",")
    )
    known = {"chdb", "clickhouse-server", clusters.NAME, clusters.EXISTING}
    if unknown := [n for n in names if n not in known]:
        raise SystemExit(f"--backends: unknown {unknown} (choose from {', '.join(sorted(known))})")
    result: dict[str, Any] = {
        "schema": 1,
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": plan.quick,
        "machine": machine_info(),
        "plan": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(plan).items()},
        "backends": {},
        "errors": [],
    }
    result["settings"] = {name: os.environ.get(name, "(default)") for name in REPORTED_SETTINGS}
    log(f"benchmarks: {', '.join(sorted(plan.sections))} on {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="cartlytics-bench-") as tmp:
        if "user_agents" in plan.sections:
            result["user_agents"] = attempt(
                result, "all", "user_agents", lambda: user_agents(Path(tmp))
            )
        for name in names:
            work = Path(tmp) / name
            work.mkdir(parents=True)
            if name == "chdb":
                result["backends"][name] = run_backend(Backend(name), plan, work, result)
                remove(name, work)
                continue
            if name in (clusters.NAME, clusters.EXISTING):
                run_cluster(args, plan, work, result)
                continue
            if shutil.which("clickhouse-server") is None:
                note = "no clickhouse-server binary on PATH (apt-get install clickhouse-server)"
                log(f"clickhouse-server: skipped: {note}")
                result["backends"][name] = {"skipped": note}
                continue
            server = ClickHouseServer(work / "server")
            log("clickhouse-server: starting")
            try:
                server.start()
            except Exception as exc:  # report what was measured on chdb all the same
                server.stop()
                log(f"clickhouse-server: did not start: {exc}")
                result["errors"].append(f"clickhouse-server did not start: {exc}")
                result["backends"][name] = {"skipped": f"the server did not start: {exc}"}
                continue
            try:
                result["backends"][name] = run_backend(Backend(name, server), plan, work, result)
            finally:
                log("clickhouse-server: stopping")
                server.stop()
                remove(name, work)
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = issue16_targets(result)
    json_path, md_path = write_reports(result, stem)
    log(f"report: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    log(f"report: {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

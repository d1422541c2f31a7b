"""The benchmark report: the machine it ran on, and one JSON and one Markdown file from a result.

The result is a plain dict (what bench/run.py measured); the Markdown has one table per section,
each figure beside its reference and their ratio, so the README can quote it as it is.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cpu import PARTS

ROOT = Path(__file__).resolve().parent.parent
BACKEND_LABELS = {
    "chdb": "embedded chdb",
    "clickhouse-server": "clickhouse-server",
    "clickhouse-cluster-2x2": "cluster 2x2 (started here)",
    "clickhouse-cluster": "cluster (existing)",
}
SINGLE_SERVER = "clickhouse-server"  # what a cluster is put beside
CLUSTER_PREFIX = "clickhouse-cluster"  # bench/cluster.py's backend names


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()


def machine_info() -> dict[str, Any]:
    """Where and when: CPU, cores, RAM, platform, versions, date and the git commit."""
    try:
        chdb_version = metadata.version("chdb")
    except metadata.PackageNotFoundError:
        chdb_version = ""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "chdb": chdb_version,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes to tracked files: the figures are not exactly those of the commit.
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        # 1, 5 and 15 minutes: others' work on a shared machine shows here.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------------
# Issue 16's targets

FRESHNESS_P99_MS = 1000.0


def _target(
    backend: str,
    what: str,
    measured: float | None,
    goal: float,
    unit: str,
    at_least: bool = True,
    detail: str = "",
) -> dict[str, Any]:
    met = None if measured is None else (measured >= goal if at_least else measured <= goal)
    return {
        "backend": backend,
        "target": what,
        "measured": measured,
        "goal": goal,
        "unit": unit,
        "at_least": at_least,
        "met": met,
        "detail": detail,
    }


def _best(rows: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    measured = [r for r in rows if isinstance(r.get(key), int | float)]
    return max(measured, key=lambda r: r[key]) if measured else None


def _at_best(best: Mapping[str, Any] | None, counts: int) -> str:
    if best is None:
        return ""
    return f"at {_num(best['connections'])} connections" + (
        f" (the best of {counts})" if counts > 1 else ""
    )


def issue16_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each figure of issue 16's "Done when" beside its target, per backend measured: batches
    at their best connection count, single events at each; freshness at the first store size.
    ``met`` is None where the figure was not measured."""
    out: list[dict[str, Any]] = []
    for name, backend in _backends(result):
        if backend.get("skipped") or _is_cluster(name):
            continue  # a cluster's figures are put beside the single server's (_cluster)
        ingest = backend.get("ingest") or {}
        rows = ingest.get("rows", []) if not ingest.get("error") else []
        grpc = [r for r in rows if str(r.get("mode", "")).startswith("gRPC batch")]
        rest = [r for r in rows if str(r.get("mode", "")).startswith("REST batch")]
        best = _best(grpc, "events_per_second")
        at = _at_best(best, len(grpc))
        out.append(
            _target(
                name,
                "gRPC batches of 500: events/s",
                best["events_per_second"] if best else None,
                100_000,
                "events/s",
                detail=at,
            )
        )
        best_ratio = _best(grpc, "columnar_ratio")
        out.append(
            _target(
                name,
                "gRPC batches of 500 / columnar INSERT of the same rows (views attached)",
                best_ratio["columnar_ratio"] if best_ratio else None,
                0.25,
                "x",
                detail=(
                    f"{_num(best_ratio['events_per_second'])} / "
                    f"{_num(best_ratio['columnar_events_per_second'])} events/s at "
                    f"{_num(best_ratio['connections'])} connections"
                    if best_ratio
                    else ""
                ),
            )
        )
        best = _best(rest, "events_per_second")
        out.append(
            _target(
                name,
                "REST batches of 500: events/s",
                best["events_per_second"] if best else None,
                50_000,
                "events/s",
                detail=_at_best(best, len(rest)),
            )
        )
        singles = [r for r in rows if str(r.get("mode", "")) == "REST single"]
        planned = (result.get("plan") or {}).get("connections") or ["each number of"]
        for r in singles or [{"connections": c} for c in planned]:
            out.append(
                _target(
                    name,
                    f"REST single events / REST Ping, {_num(r['connections'])} connections",
                    r.get("ping_ratio"),
                    0.5,
                    "x",
                    detail=(
                        f"{_num(r.get('requests_per_second'))} / "
                        f"{_num(r.get('ping_requests_per_second'))} requests/s"
                        if "requests_per_second" in r
                        else ""
                    ),
                )
            )
        freshness = backend.get("freshness") or {}
        for r in freshness.get("rows", []) or [{"view": "sales and realtime"}]:
            view = str(r.get("view", "")).split(" (")[0]  # "sales (`GET ...`)"
            out.append(
                _target(
                    name,
                    f"freshness p99, {view}",
                    r.get("p99_ms"),
                    FRESHNESS_P99_MS,
                    "ms",
                    at_least=False,
                    detail=(
                        f"{_num(r.get('probes'))} probe orders at {_num(freshness.get('events'))} "
                        "events"
                        + (f", {r['not_visible']} never visible" if r.get("not_visible") else "")
                        if "probes" in r
                        else ""
                    ),
                )
            )
            if r.get("not_visible"):
                out[-1]["met"] = False  # an order never seen is not fresh, whatever the p99
    agents = result.get("user_agents")
    if isinstance(agents, Mapping) and not agents.get("error"):
        cliff = agents.get("no_cliff") or {}
        service = agents.get("service") or {}
        out.append(
            _target(
                "any",
                f"{_num(agents.get('user_agents'))} distinct user agents, each parsed once: "
                "no cliff (p99)",
                service.get("p99_us"),
                float(cliff.get("ceiling_us", 100.0)),
                "µs",
                at_least=False,
                detail=f"p50 {_num(service.get('p50_us'), 1)} µs; rule: {cliff.get('rule', '-')}",
            )
        )
        if "holds" in cliff:
            out[-1]["met"] = bool(cliff["holds"])  # the rule has a second part: p99 / p50
    return out


# ---------------------------------------------------------------------------------------------
# Formatting


def _num(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if digits == 0:
            return f"{round(value):,}"
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value >= 10:
        return f"{value:,.0f}x"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def ratio(figure: float | None, reference: float | None) -> float | None:
    """figure / reference, or None when either is missing or the reference is zero."""
    if figure is None or not reference:
        return None
    return float(f"{figure / reference:.4g}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = list(rows)
    if not rows:
        return ["_Not measured in this run._"]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    for row in rows:
        assert len(row) == len(header), (header, row)
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def _backends(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return list(result.get("backends", {}).items())


def _is_cluster(name: str) -> bool:
    return name.startswith(CLUSTER_PREFIX)


def _label(name: str) -> str:
    return BACKEND_LABELS.get(name, name)


def _section(result: Mapping[str, Any], key: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for name, backend in _backends(result):
        section = backend.get(key)
        if isinstance(section, Mapping) and not section.get("skipped") and not section.get("error"):
            yield name, section


def _notes(result: Mapping[str, Any], key: str) -> list[str]:
    notes = []
    for name, backend in _backends(result):
        if backend.get("skipped"):
            continue
        section = backend.get(key)
        if isinstance(section, Mapping):
            if section.get("skipped"):
                notes.append(f"- {_label(name)}: skipped: {section['skipped']}")
            if section.get("error"):
                notes.append(f"- {_label(name)}: failed: {section['error']}")
    return notes


# ---------------------------------------------------------------------------------------------
# Sections


def _machine(result: Mapping[str, Any]) -> list[str]:
    m = result.get("machine", {})
    commit = str(m.get("git_commit", ""))[:12] + (
        " (with local changes)" if m.get("git_dirty") else ""
    )
    lines = [
        f"- **Machine**: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('ram_gb', '?')} GB RAM, {m.get('platform', '?')}, Python {m.get('python', '?')}",
        f"- **Date**: {m.get('date', '?')}; **commit** {commit or '?'}",
        f"- **Command**: `{result.get('command', 'bench/run.py')}`"
        + (" (quick mode: small sizes, not the figures to quote)" if result.get("quick") else ""),
    ]
    load, load_end = m.get("load_average"), m.get("load_average_end")
    if load:
        lines.append(
            f"- **Load average** (1/5/15 min): {' / '.join(map(str, load))} at the start"
            + (f", {' / '.join(map(str, load_end))} at the end" if load_end else "")
            + " (the machine may be shared: others' work counts in these figures)"
        )
    settings = result.get("settings") or {}
    if settings:
        lines.append(
            "- **Service settings**: " + ", ".join(f"`{k}={v}`" for k, v in settings.items())
        )
    for name, backend in _backends(result):
        if backend.get("skipped"):
            lines.append(f"- **{_label(name)}**: skipped: {backend['skipped']}")
        else:
            lines.append(f"- **{_label(name)}**: {backend.get('version', '')}".rstrip())
    lines.append(
        "- Client and server share the machine's cores; every figure and its reference were "
        "measured in this run. Rate limits are on but set far above any rate measured (each "
        "call still pays its check)."
    )
    return lines


def _cpu(row: Mapping[str, Any]) -> str:
    """Server CPU µs per unit: the service's tree, plus a ClickHouse server's when measured;
    the tree's split (bench/cpu.py) when the run measured it."""
    service, storage = row.get("service_cpu_us"), row.get("storage_cpu_us")
    text = _num(service, 1)
    split = [
        f"{name} {_num(row[key + '_cpu_us'], 1)}"
        for key, name in PARTS.items()
        if row.get(key + "_cpu_us") is not None
    ]
    if split:
        text += f" ({', '.join(split)})"
    if storage is not None:
        text += f" + {_num(storage, 1)} ClickHouse"
    return text


def _ingest(result: Mapping[str, Any]) -> list[str]:
    rows = []
    used_up = []
    for name, section in _section(result, "ingest"):
        for r in section.get("rows", []):
            rows.append(
                [
                    _label(name),
                    str(r.get("mode", "")),
                    _num(r.get("connections")),
                    _num(r.get("events_per_second")),
                    _num(r.get("requests_per_second")),
                    _cpu(r),
                    _num(r.get("client_cpu_us"), 1),
                    _ratio(r.get("columnar_ratio")),
                    f"{_ratio(r.get('insert_ratio'))} ({_num(r.get('insert_block_events'))})",
                    _ratio(r.get("ping_ratio")),
                    _num(r.get("errors")),
                ]
            )
            if r.get("pool_used_up"):
                used_up.append(
                    f"- {_label(name)}, {r.get('mode')}, {_num(r.get('connections'))} "
                    f"connections: its {_num(r.get('pool_requests'))} pre-built requests were "
                    f"all sent after {_num(r.get('seconds'), 1)} s; its rate is over that time "
                    "(raise --pool-rate for longer)."
                )
    header = [
        "backend",
        "mode",
        "client connections",
        "events/s",
        "requests/s",
        "server CPU µs/event",
        "client CPU µs/event",
        "/ columnar INSERT (views)",
        "/ row-path INSERT (events a block)",
        "/ no-op Ping (requests)",
        "errors",
    ]
    lines = [
        "## Ingest",
        "",
        "Closed loop: each client connection sends its next request when the previous one is "
        "answered (gRPC: concurrent calls on one channel). Every request is built before the "
        "clock starts (REST: JSON bodies as bytes; gRPC: serialized messages sent with identity "
        "serializers), each sent once (every orderId new); each mode starts once the server is "
        "idle (the previous mode's merges, at most 30 s). Server CPU: the `cartlytics run` "
        "process and its children (valkey-server), and on the server backend clickhouse-server, "
        "from /proc before and after each mode, per event acknowledged; client CPU: the bench "
        "process. References (next table), measured in the same run: the fastest columnar "
        "INSERT of the same rows, with the materialized views attached; the row-path INSERT the "
        "group commit uses, in blocks of as many events as one flush can carry in that mode "
        "(connections x events per request); the no-op `Ping` through the same server, "
        "interceptors and gateway, with as many connections (REST for REST, gRPC for gRPC). "
        "A cluster has no INSERT references: its reference is the single server (Cluster "
        "beside one server, below), and its ClickHouse CPU is its servers' and ZooKeeper's.",
        "",
        *table(header, rows),
    ]
    if used_up:
        lines += ["", *used_up]
    return lines + _notes_block(result, "ingest")


def _references(result: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, section in _section(result, "ingest"):
        for r in section.get("columnar_reference", []):
            rows.append(
                [
                    _label(name),
                    "columnar INSERT, "
                    + (
                        "materialized views attached"
                        if r.get("views")
                        else "no view (scratch tables `AS` the service's)"
                    ),
                    f"{_num(r.get('block_events'))} events ({_num(r.get('block_rows'))} rows)",
                    _num(r.get("events_per_second")),
                    _num(r.get("rows_per_second")),
                    _num(r.get("client_cpu_us"), 1),
                    _num(r.get("storage_cpu_us"), 1),
                ]
            )
        for r in section.get("insert_reference", []):
            rows.append(
                [
                    _label(name),
                    "row-path INSERT (the group commit's storage code)",
                    f"{_num(r.get('block_events'))} events ({_num(r.get('block_rows'))} rows)",
                    _num(r.get("events_per_second")),
                    "-",
                    _num(r.get("client_cpu_us"), 1),
                    _num(r.get("storage_cpu_us"), 1),
                ]
            )
        for r in section.get("ping", []):
            rows.append(
                [
                    _label(name),
                    f"{r.get('mode')}, {_num(r.get('connections'))} connections",
                    "one request",
                    f"{_num(r.get('requests_per_second'))} requests/s",
                    "-",
                    f"{_num(r.get('client_cpu_us'), 1)} (client) / {_cpu(r)} (server)",
                    "-",
                ]
            )
    header = [
        "backend",
        "reference",
        "block",
        "events/s",
        "rows/s",
        "writer process CPU µs/event (chdb: engine included)",
        "clickhouse-server CPU µs/event",
    ]
    lines = [
        "## Ingest references",
        "",
        "ClickHouse's own INSERT of the rows the benchmark's events become (validated and "
        "enriched before the clock, into the four tables ingest writes, in ingest's order), by "
        "one writer. Columnar: each table's block built before the clock as the engine takes it "
        "fastest (chdb: an Arrow table read in place through `Python()`; a server: "
        "clickhouse-driver's `columnar=True`), once into the service's tables and once into "
        "tables no view reads; the storage left idle before each. Row path: the storage code "
        "the group commit calls, conversions in the clock. Ping: per request; server CPU as "
        "for ingest.",
        "",
        *table(header, rows),
    ]
    return lines


def _targets(result: Mapping[str, Any]) -> list[str]:
    def text(value: Any, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "x":
            return _ratio(value)
        if unit in ("ms", "µs"):
            return f"{_num(value, 0 if float(value).is_integer() else 1)} {unit}"
        return f"{_num(value)} {unit}"

    rows = []
    for t in result.get("targets") or issue16_targets(result):
        verdict = {True: "pass", False: "**FAIL**", None: "not measured"}[t.get("met")]
        rows.append(
            [
                _label(str(t.get("backend"))),
                str(t.get("target")),
                _measured_text(t.get("measured"), t.get("goal"), str(t.get("unit")), text),
                ("≥ " if t.get("at_least") else "≤ ") + text(t.get("goal"), str(t.get("unit"))),
                verdict,
                str(t.get("detail") or ""),
            ]
        )
    return [
        "## Issue 16's targets",
        "",
        'Each figure of issue 16\'s "Done when" as measured in this run (the sections below '
        "have the details): batches at their best client connection count, single events at "
        "each; the single-event ratio is of requests/s to the REST Ping's at as many "
        "connections; freshness at the smallest store size; the user-agent figure once per run "
        "(it does not depend on the backend). A cluster's figures are not held to these targets "
        "here: they sit beside the single server's (Cluster beside one server, below).",
        "",
        *table(["backend", "target", "measured", "goal", "verdict", "how"], rows),
    ]


def _measured_text(measured: Any, goal: Any, unit: str, text: Callable[[Any, str], str]) -> str:
    """``measured`` as ``text`` prints it, with more digits when it would print as its goal
    without being it (0.246x is not 0.25x: the verdict would read as wrong)."""
    shown = text(measured, unit)
    if (
        unit == "x"
        and isinstance(measured, int | float)
        and isinstance(goal, int | float)
        and measured != goal
        and shown == text(goal, unit)
    ):
        return f"{measured:.4g}x"
    return shown


def _user_agents(result: Mapping[str, Any]) -> list[str]:
    agents = result.get("user_agents")
    lines = ["## User-agent parsing", ""]
    if not isinstance(agents, Mapping):
        return [*lines, "_Not measured in this run._"]
    if agents.get("error"):
        return [*lines, f"Failed: {agents['error']}"]
    rows = []
    for label, key in (("service", "service"), ("pure-Python ua-parser (before)", "pure_python")):
        r = agents.get(key) or {}
        rows.append(
            [
                f"{label} ({r.get('resolver', '?')})",
                _num(r.get("p50_us"), 1),
                _num(r.get("p99_us"), 1),
                _num(r.get("max_us"), 1),
            ]
        )
    cliff = agents.get("no_cliff") or {}
    return [
        *lines,
        f"`bench/user_agents.py`: {_num(agents.get('user_agents'))} distinct generated user "
        "agents, each described once, the service's cache emptied first (every call a miss). "
        f"No cliff: **{'holds' if cliff.get('holds') else 'does NOT hold'}** "
        f"({cliff.get('rule', '-')}).",
        "",
        *table(["parser", "p50 µs", "p99 µs", "max µs"], rows),
    ]


def _notes_block(result: Mapping[str, Any], key: str) -> list[str]:
    notes = _notes(result, key)
    return ["", *notes] if notes else []


def _queries(result: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, section in _section(result, "queries"):
        for r in section.get("rows", []):
            rows.append(
                [
                    _label(name),
                    _num(r.get("events")),
                    str(r.get("endpoint", "")),
                    _num(r.get("status")),
                    _num(r.get("p50_ms"), 1),
                    _num(r.get("p99_ms"), 1),
                    f"< {_num(r.get('target_p50_ms'))}",
                    _num(r.get("ping_p50_ms"), 1),
                    _ratio(r.get("ping_ratio")),
                ]
            )
    header = [
        "backend",
        "events",
        "endpoint",
        "status",
        "p50 ms",
        "p99 ms",
        "target p50 ms",
        "no-op Ping p50 ms",
        "p50 / Ping",
    ]
    requests = next((s.get("requests") for _, s in _section(result, "queries")), None)
    lines = [
        "## Query latency",
        "",
        f"Each endpoint through the REST gateway, one call at a time after a warm-up "
        f"({_num(requests)} calls each), over synthetic shop data (a year of events). Reference: "
        "the no-op `Ping` through the same gateway, measured the same way on the same store.",
        "",
        *table(header, rows),
    ]
    return lines + _notes_block(result, "queries")


def _freshness(result: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, section in _section(result, "freshness"):
        for r in section.get("rows", []):
            rows.append(
                [
                    _label(name),
                    str(r.get("view", "")),
                    _num(r.get("p50_ms"), 1),
                    _num(r.get("p99_ms"), 1),
                    f"{_num(r.get('probes'))} ({_num(r.get('not_visible'))})",
                    _num(r.get("read_p50_ms"), 1),
                    _num(r.get("ping_p50_ms"), 1),
                    _ratio(r.get("ping_ratio")),
                ]
            )
    header = [
        "backend",
        "visible in",
        "p50 ms",
        "p99 ms",
        "probes (never visible)",
        "one read p50 ms",
        "no-op Ping p50 ms",
        "p50 / Ping",
    ]
    lines = [
        "## Freshness",
        "",
        "One order at a time through `POST /analytics/event`; from its acknowledgement, the "
        "endpoint is read again and again until the order shows (sales over the last day; "
        "realtime's orders today). A figure includes the read that saw it, so it is at least "
        "one read; the Ping column is the per-request floor.",
        "",
        *table(header, rows),
    ]
    return lines + _notes_block(result, "freshness")


def _export(result: Mapping[str, Any]) -> list[str]:
    rows = []
    missing = []
    notes = []
    for name, section in _section(result, "export"):
        reference = section.get("reference", {})
        raw = section.get("raw", {})
        if reference.get("error"):
            missing.append(f"- {_label(name)}: no CSV reference: {reference['error']}")
        size = raw.get("size_check") or {}
        if size:
            notes.append(
                f"- {_label(name)}: the last 90 days first ({_num(size.get('rows'))} rows as CSV):"
                f" peak {_num(size.get('rss_peak_mb'))} MB."
            )
        if raw.get("engine_floor_mb") is not None:
            notes.append(
                f"- {_label(name)}: a bare process that only loads chdb and runs `SELECT 1`: "
                f"{_num(raw['engine_floor_mb'])} MB resident (the floor of any process embedding "
                "the engine)."
            )
        for check in raw.get("checks", []):
            verdict = "met" if check.get("met") else "**missed**"
            notes.append(f"- {_label(name)}: {verdict}: {check.get('what')}")
        for r in section.get("rows", []):
            rows.append(
                [
                    _label(name),
                    str(r.get("format", "")),
                    _num(r.get("rows")),
                    _num(r.get("rows_per_s")),
                    _num(reference.get("rows_per_s")),
                    _ratio(r.get("reference_ratio")),
                    _num(raw.get("rss_baseline_mb")),
                    _num(r.get("rss_peak_mb")),
                    _num(r.get("rss_added_mb")),
                ]
            )
    header = [
        "backend",
        "format",
        "rows",
        "rows/s",
        "ClickHouse's own CSV of the orders, rows/s",
        "/ ClickHouse",
        "service RSS before the first export MB",
        "peak MB",
        "added MB",
    ]
    orders = next((s.get("orders") for _, s in _section(result, "export")), None)
    lines = [
        "## Export",
        "",
        f"`bench/export.py --orders {orders}` (orders through the REST gateway, read to the "
        "end by the client; formats in turn in one service process). References: ClickHouse "
        "writing the same order rows as CSV itself (chdb on the same data folder, no service in "
        "between; embedded default only); the service process's resident memory before the "
        "first export, and a bare process that only loads chdb. Issue 5's memory target is read "
        "as decision 40 says: the service's peak on a ClickHouse server, what the exports add "
        "on the embedded default.",
        "",
        *table(header, rows),
    ]
    if notes:
        lines += ["", *notes]
    return lines + _notes_block(result, "export") + (["", *missing] if missing else [])


def _sustained(result: Mapping[str, Any]) -> list[str]:
    summary = []
    minutes = []
    for name, section in _section(result, "sustained"):
        rss = section.get("rss_mb", {})
        storage = section.get("storage_rss_mb") or {}
        summary.append(
            [
                _label(name),
                _num(section.get("target_rate")),
                _num(section.get("achieved_rate")),
                _num(section.get("seconds")),
                _num(section.get("acked")),
                _num(section.get("errors")),
                f"{_num(rss.get('start'))} / {_num(rss.get('end'))} / {_num(rss.get('peak'))}",
                _num(section.get("rss_flat")),
                f"{_num(storage.get('start'))} / {_num(storage.get('end'))} / "
                f"{_num(storage.get('peak'))}"
                if storage
                else "-",
                _num(section.get("p99_ms_worst"), 1),
                _num(section.get("ping_p50_ms"), 1),
                _num(section.get("p99_bounded")),
            ]
        )
        for b in section.get("buckets", []):
            minutes.append(
                [
                    _label(name),
                    f"{_num(b.get('start_s'))}-{_num(b.get('end_s'))} s",
                    _num(b.get("sent")),
                    _num(b.get("acked")),
                    _num(b.get("errors")),
                    _num(b.get("p50_ms"), 1),
                    _num(b.get("p99_ms"), 1),
                    _ratio(b.get("ping_ratio")),
                    _num(b.get("rss_mb")),
                ]
            )
    lines = [
        "## Sustained load",
        "",
        "Open loop: single events through `POST /analytics/event` at half the highest REST "
        "single-event rate measured above (on the same system, after a short idle pause), at "
        "fixed intervals whatever the answers; latency runs "
        "from each event's scheduled send time to its acknowledgement, so queueing counts. "
        "Memory is the service process's resident set (and clickhouse-server's), sampled "
        "every second. Flat: the service's grew by "
        "at most max(16 MB, 5 %) after the first interval. Bounded: no interval's p99 exceeds "
        "twice the worst p99 of the first half.",
        "",
        *table(
            [
                "backend",
                "target events/s",
                "achieved",
                "seconds",
                "acknowledged",
                "errors",
                "RSS start / end / peak MB",
                "flat",
                "clickhouse-server RSS start / end / peak MB",
                "worst p99 ms",
                "no-op Ping p50 ms",
                "p99 bounded",
            ],
            summary,
        ),
        "",
        *table(
            [
                "backend",
                "interval",
                "sent",
                "acknowledged",
                "errors",
                "ack p50 ms",
                "ack p99 ms",
                "p50 / Ping",
                "RSS MB at end",
            ],
            minutes,
        ),
    ]
    return lines + _notes_block(result, "sustained")


def _side(section: Any, key: str) -> list[Mapping[str, Any]]:
    """A measured section's rows (none when it failed, was skipped or is absent)."""
    if not isinstance(section, Mapping) or section.get("error") or section.get("skipped"):
        return []
    return list(section.get(key, []))


def _cluster(result: Mapping[str, Any]) -> list[str]:
    """Each cluster's ingest rates and query latencies beside the single server's of the same
    run, with their ratio (cluster / one server)."""
    lines = ["## Cluster beside one server", ""]
    pairs = [(n, b) for n, b in _backends(result) if _is_cluster(n)]
    if not pairs:
        return [*lines, f"_No cluster in this run (`--backends ...,{CLUSTER_PREFIX}-2x2`)._"]
    single = result.get("backends", {}).get(SINGLE_SERVER) or {}
    ingest_rows, query_rows, notes = [], [], []
    for name, backend in pairs:
        if backend.get("skipped"):
            notes.append(f"- {_label(name)}: skipped: {backend['skipped']}")
            continue
        shape = backend.get("cluster") or {}
        label = _label(name)
        server_ingest = {
            (r.get("mode"), r.get("connections")): r for r in _side(single.get("ingest"), "rows")
        }
        for r in _side(backend.get("ingest"), "rows"):
            other = server_ingest.get((r.get("mode"), r.get("connections")), {})
            ingest_rows.append(
                [
                    label,
                    str(r.get("mode", "")),
                    _num(r.get("connections")),
                    _num(r.get("events_per_second")),
                    _num(other.get("events_per_second")),
                    _ratio(ratio(r.get("events_per_second"), other.get("events_per_second"))),
                    _cpu(r),
                    _cpu(other) if other else "-",
                    f"{_num(r.get('errors'))} / {_num(other.get('errors'))}",
                ]
            )
        server_queries = {
            (r.get("events"), r.get("endpoint")): r for r in _side(single.get("queries"), "rows")
        }
        for r in _side(backend.get("queries"), "rows"):
            other = server_queries.get((r.get("events"), r.get("endpoint")), {})
            query_rows.append(
                [
                    label,
                    _num(r.get("events")),
                    str(r.get("endpoint", "")),
                    f"{_num(r.get('status'))} / {_num(other.get('status'))}",
                    _num(r.get("p50_ms"), 1),
                    _num(other.get("p50_ms"), 1),
                    _ratio(ratio(r.get("p50_ms"), other.get("p50_ms"))),
                    _num(r.get("p99_ms"), 1),
                    _num(other.get("p99_ms"), 1),
                    _ratio(ratio(r.get("p99_ms"), other.get("p99_ms"))),
                ]
            )
        loads = {
            int(x["events"]): x["seconds"] for x in _side(single.get("queries"), "load_seconds")
        }
        for x in _side(backend.get("queries"), "load_seconds"):
            theirs = loads.get(int(x["events"]))
            notes.append(
                f"- {label}: loading {_num(x['events'])} events took {_num(x['seconds'])} s "
                f"(one server: {_num(theirs)} s, {_ratio(ratio(x['seconds'], theirs))})."
            )
        if shape:
            notes.append(
                f"- {label}: `{shape.get('name')}`, {_num(shape.get('shards'))} shards x "
                f"{_num(shape.get('replicas'))} replicas"
                + (
                    ", every server and ZooKeeper on this machine"
                    if shape.get("started_here")
                    else ""
                )
                + "."
            )
    if single.get("skipped"):
        notes.append(f"- {_label(SINGLE_SERVER)}: skipped: {single['skipped']} (no ratio)")
    lines += [
        "The same sections on the cluster (the services at its first node with "
        "`CLICKHOUSE_CLUSTER`; reads and writes through its Distributed tables, each shard on "
        "two replicas) and on one clickhouse-server, in the same run, with the same requests "
        "and the same loader. Ratio: the cluster's figure / the one server's. Events/s below "
        "1x: the cluster ingests slower; a latency above 1x: it answers slower. A cluster "
        "started here runs its four servers and ZooKeeper on the cores one server had to "
        "itself: it has no more capacity than one server here, and the ratio is the cost of "
        "the Distributed tables and of replication (the ClickHouse CPU per event shows it), not "
        "the scale-out a cluster on its own hosts gives. A ratio near 1x means the service's "
        "own work bounds that figure, not ClickHouse; above it, the noise of a shared machine.",
        "",
        *table(
            [
                "cluster",
                "mode",
                "client connections",
                "cluster events/s",
                "one server events/s",
                "cluster / one server",
                "cluster server CPU µs/event",
                "one server's",
                "errors (cluster / one server)",
            ],
            ingest_rows,
        ),
        "",
        *table(
            [
                "cluster",
                "events",
                "endpoint",
                "status (cluster / one server)",
                "cluster p50 ms",
                "one server p50 ms",
                "p50 cluster / one server",
                "cluster p99 ms",
                "one server p99 ms",
                "p99 cluster / one server",
            ],
            query_rows,
        ),
    ]
    return lines + (["", *notes] if notes else [])


def render_markdown(result: Mapping[str, Any]) -> str:
    lines = ["# cartlytics benchmark report", "", *_machine(result)]
    for section in (
        _targets,
        _ingest,
        _references,
        _user_agents,
        _queries,
        _freshness,
        _cluster,
        _export,
        _sustained,
    ):
        lines += ["", *section(result)]
    errors = result.get("errors") or []
    if errors:
        lines += ["", "## Errors", "", *(f"- {e}" for e in errors)]
    return "\n".join(lines) + "\n"


def write_reports(result: Mapping[str, Any], stem: Path) -> tuple[Path, Path]:
    """Write ``stem``.json and ``stem``.md; return their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    md_path.write_text(render_markdown(result))
    return json_path, md_path

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
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BACKEND_LABELS = {"chdb": "embedded chdb", "clickhouse-server": "clickhouse-server"}


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
    }


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


def _ingest(result: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, section in _section(result, "ingest"):
        for r in section.get("rows", []):
            rows.append(
                [
                    _label(name),
                    str(r.get("mode", "")),
                    _num(r.get("connections")),
                    _num(r.get("events_per_second")),
                    f"{_num(r.get('insert_events_per_second'))} "
                    f"({_num(r.get('insert_block_events'))}-event blocks)",
                    _ratio(r.get("insert_ratio")),
                    _num(r.get("requests_per_second")),
                    _num(r.get("ping_requests_per_second")),
                    _ratio(r.get("ping_ratio")),
                    _num(r.get("errors")),
                ]
            )
    header = [
        "backend",
        "mode",
        "client connections",
        "events/s",
        "ClickHouse INSERT of the same rows, events/s",
        "/ INSERT",
        "requests/s",
        "no-op Ping, requests/s",
        "/ Ping",
        "errors",
    ]
    lines = [
        "## Ingest",
        "",
        "Closed loop: each client connection sends its next request when the previous one is "
        "answered (gRPC: concurrent calls on one channel). References: ClickHouse's own INSERT "
        "of the rows these events become, through the same driver, one writer, in blocks of "
        "the most events one group-commit flush can carry in that mode (connections x events "
        "per request); and the no-op `Ping` RPC through the same server, interceptors and "
        "gateway, with as many connections.",
        "",
        *table(header, rows),
    ]
    return lines + _notes_block(result, "ingest")


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


def render_markdown(result: Mapping[str, Any]) -> str:
    lines = ["# cartlytics benchmark report", "", *_machine(result)]
    for section in (_ingest, _queries, _freshness, _export, _sustained):
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

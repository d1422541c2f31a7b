"""The benchmark report writer (bench/report.py) on a small synthetic result: no benchmark runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.report import machine_info, ratio, render_markdown, write_reports


def synthetic() -> dict[str, Any]:
    return {
        "schema": 1,
        "command": "bench/run.py --quick",
        "quick": True,
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "ram_gb": 4.0,
            "platform": "Linux",
            "python": "3.11",
            "chdb": "4.4.0",
            "date": "2026-11-26 12:00 UTC",
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
        },
        "backends": {
            "chdb": {
                "version": "chdb 4.4.0",
                "ingest": {
                    "rows": [
                        {
                            "mode": "REST single",
                            "connections": 8,
                            "events_per_second": 60,
                            "requests_per_second": 60,
                            "errors": 0,
                            "insert_block_events": 8,
                            "insert_events_per_second": 120,
                            "insert_ratio": 0.5,
                            "ping_requests_per_second": 1500,
                            "ping_ratio": 0.04,
                        }
                    ]
                },
                "queries": {
                    "requests": 10,
                    "rows": [
                        {
                            "events": 100000,
                            "endpoint": "query visitors|page_views",
                            "status": 200,
                            "p50_ms": 24.0,
                            "p99_ms": 80.5,
                            "target_p50_ms": 50,
                            "ping_p50_ms": 1.5,
                            "ping_ratio": 16.0,
                        }
                    ],
                },
                "freshness": {
                    "rows": [
                        {
                            "view": "sales (`GET /analytics/sales?period=1d&currency=CHF`)",
                            "probes": 10,
                            "not_visible": 0,
                            "p50_ms": 25.0,
                            "p99_ms": 40.0,
                            "read_p50_ms": 20.0,
                            "ping_p50_ms": 1.5,
                            "ping_ratio": 16.67,
                        }
                    ]
                },
                "export": {"error": "bench/export.py exited with 1"},
                "sustained": {
                    "target_rate": 30,
                    "achieved_rate": 29.9,
                    "seconds": 30,
                    "acked": 897,
                    "errors": 0,
                    "rss_mb": {"start": 400, "end": 405, "peak": 410},
                    "rss_flat": True,
                    "p99_ms_worst": 300.0,
                    "p99_bounded": True,
                    "ping_p50_ms": 1.5,
                    "buckets": [
                        {
                            "start_s": 0,
                            "end_s": 30,
                            "sent": 900,
                            "acked": 897,
                            "errors": 0,
                            "p50_ms": 150.0,
                            "p99_ms": 300.0,
                            "ping_ratio": 100.0,
                            "rss_mb": 405,
                        }
                    ],
                },
            },
            "clickhouse-server": {"skipped": "no clickhouse-server binary on PATH"},
        },
        "errors": ["chdb export: bench/export.py exited with 1"],
    }


def tables(markdown: str) -> list[list[list[str]]]:
    """Each Markdown table as rows of cells (split on pipes that are not escaped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            current.append([c.strip() for c in cells])
        elif current:
            found.append(current)
            current = []
    return found


def test_the_report_is_valid_json_and_markdown(tmp_path: Path) -> None:
    result = synthetic()
    json_path, md_path = write_reports(result, tmp_path / "results" / "latest")
    assert json_path.name == "latest.json" and md_path.name == "latest.md"
    assert json.loads(json_path.read_text()) == result
    markdown = md_path.read_text()
    assert markdown == render_markdown(result)

    found = tables(markdown)
    assert len(found) == 5  # ingest, queries, freshness, sustained summary and intervals
    for rows in found:
        header, rule, *body = rows
        assert all(set(cell) == {"-"} for cell in rule) and len(rule) == len(header)
        assert body, header
        assert all(len(row) == len(header) for row in body), header

    ingest = next(t for t in found if "events/s" in t[0])
    row = dict(zip(ingest[0], ingest[2], strict=True))
    assert row["events/s"] == "60"
    assert row["ClickHouse INSERT of the same rows, events/s"] == "120 (8-event blocks)"
    assert row["/ INSERT"] == "0.50x"
    assert row["/ Ping"] == "0.04x"
    # A pipe inside a cell is escaped, not a new column (the column counts above hold).
    assert "query visitors\\|page_views" in markdown
    assert "clickhouse-server**: skipped: no clickhouse-server binary on PATH" in markdown
    assert "- embedded chdb: failed: bench/export.py exited with 1" in markdown
    assert "commit** 0123456789ab" in markdown


def test_ratio_is_figure_over_reference() -> None:
    assert ratio(60, 120) == 0.5
    assert ratio(1, 3) == 0.3333
    assert ratio(None, 10) is None
    assert ratio(5, 0) is None


def test_machine_info_names_the_machine() -> None:
    info = machine_info()
    assert info["cores"] and info["cpu_model"] and info["platform"] and info["date"]
    assert isinstance(info["git_dirty"], bool)

"""Waiting for a started service to finish its start-up work before measuring it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, busy: float = 0.1, limit: float = 180.0) -> float:
    """Wait until the process's start-up work (the realtime rebuild from ClickHouse, the people
    snapshot, merges of a freshly loaded store) is done: until it used under ``busy`` of a core
    over one second, at most ``limit`` seconds. Measuring before that times the start-up work,
    not the queries. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        after = cpu_seconds(pid)
        if before is None or after is None or after - before < busy:
            break
    return round(time.monotonic() - started, 1)

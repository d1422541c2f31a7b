"""Waiting for a started service to finish its start-up work before measuring it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def stat_of(path: Path) -> tuple[str, float] | None:
    """The name and CPU time (user + system) so far of a /proc process or task folder (None:
    gone)."""
    try:
        text = (path / "stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return head[head.index("(") + 1 :], (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used so far."""
    stat = stat_of(Path(f"/proc/{pid}"))
    return None if stat is None else stat[1]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def settle(pid: int, busy: float = 0.1, limit: float = 180.0, quiet: int = 3) -> float:
    """Wait until the process's start-up work (the realtime rebuild from ClickHouse, the people
    snapshot, merges of a freshly loaded store) is done: until it used under ``busy`` of a core
    in each of ``quiet`` seconds in a row, at most ``limit`` seconds. Measuring before that times
    the start-up work, not the queries; one quiet second was not enough (ClickHouse merges in
    bursts: a 10M run's queries on the 18.16 server met a 23 ms Ping). Returns the seconds
    waited."""
    started = time.monotonic()
    calm = 0
    while time.monotonic() - started < limit and calm < quiet:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        after = cpu_seconds(pid)
        if before is None or after is None:
            break
        calm = calm + 1 if after - before < busy else 0
    return round(time.monotonic() - started, 1)

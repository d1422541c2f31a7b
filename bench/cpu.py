"""CPU time spent by the server under test and by the benchmark's own client, per measure.

The server is a process tree (``cartlytics run`` and its children: the embedded valkey-server)
plus, on the server backend, the clickhouse-server process (on a cluster started for the run,
its servers and ZooKeeper, summed): each read from /proc/<pid>/stat before and after a measure.
The client is this process (every thread: grpc's, aiohttp's).

The service's tree is also split by where its CPU goes (``PARTS``): its threads that run Python
(they share one GIL), its native threads (the embedded ClickHouse's pools and merges, gRPC's
C-core), its ingest worker processes and valkey. CPython does not name the threads it starts, so
they keep the main thread's name, while ClickHouse and gRPC name theirs; a thread that exited
during the measure is counted as native.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.idle import cpu_seconds, settle, stat_of


def children(pid: int) -> list[int]:
    """The live descendants of ``pid`` (by the parent field of /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


PARTS = {
    "service_python": "Python",
    "service_native": "native",
    "workers": "workers",
    "valkey": "valkey",
}
"""The parts the service tree's CPU is split into, and their names in reports."""


def python_threads_seconds(pid: int) -> float | None:
    """CPU seconds of the threads of ``pid`` named as its main thread (Python's, unnamed)."""
    main = stat_of(Path(f"/proc/{pid}"))
    if main is None:
        return None
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        stat = stat_of(task)
        if stat is not None and stat[0] == main[0]:
            total += stat[1]
    return total


def parts_seconds(pid: int, seconds: dict[int, float]) -> dict[tuple[int, str], float]:
    """The service tree's CPU seconds so far (``seconds``, by pid) by (pid, part of ``PARTS``):
    by pid as well, so that a process gone by the next reading is left out of both (as in the
    tree's total)."""
    parts: dict[tuple[int, str], float] = {}
    for each, used in seconds.items():
        if each == pid:
            python = python_threads_seconds(pid) or 0.0
            parts[(pid, "service_python")] = python
            parts[(pid, "service_native")] = used - python
        elif "valkey" in (stat_of(Path(f"/proc/{each}")) or ("",))[0]:
            parts[(each, "valkey")] = used
        else:
            parts[(each, "workers")] = used
    return parts


def tree_seconds(pid: int) -> dict[int, float]:
    """CPU seconds used so far by ``pid`` and each live descendant."""
    out = {}
    for p in [pid, *children(pid)]:
        seconds = cpu_seconds(p)
        if seconds is not None:
            out[p] = seconds
    return out


@dataclass
class Reading:
    service: dict[int, float]
    storage: float | None
    client: float
    wall: float
    parts: dict[tuple[int, str], float] | None = None


@dataclass
class Meter:
    """CPU of the service's process tree, of the separate storage processes (a clickhouse-server;
    a cluster's servers and ZooKeeper) when there are some, and of this client process."""

    service_pid: int | None = None
    storage_pid: int | tuple[int, ...] | None = None

    def _storage_pids(self) -> tuple[int, ...]:
        if self.storage_pid is None:
            return ()
        return (self.storage_pid,) if isinstance(self.storage_pid, int) else self.storage_pid

    def read(self) -> Reading:
        service = tree_seconds(self.service_pid) if self.service_pid else {}
        storage = None
        if pids := self._storage_pids():
            seconds = [cpu_seconds(pid) for pid in pids]
            # One gone meanwhile: the sum is no longer comparable, so not measured.
            storage = None if None in seconds else sum(s for s in seconds if s is not None)
        parts = parts_seconds(self.service_pid, service) if self.service_pid else None
        return Reading(service, storage, time.process_time(), time.perf_counter(), parts)

    def settle(self, limit: float = 30.0) -> float:
        """Wait until the server (and the storage server) is idle: the merges of what the last
        measure wrote are then not counted in the next one. Returns the seconds waited."""
        waited = 0.0
        for pid in (self.service_pid, *self._storage_pids()):
            if pid:
                waited += settle(pid, limit=limit)
        return round(waited, 1)

    def since(self, before: Reading) -> dict[str, float | None]:
        """CPU seconds used since ``before``: service (a child started meanwhile counts from
        zero; one that exited meanwhile is lost), storage (None without one) and client."""
        after = self.read()
        service = sum(s - before.service.get(p, 0.0) for p, s in after.service.items())
        storage = None
        if after.storage is not None and before.storage is not None:
            storage = after.storage - before.storage
        used: dict[str, float | None] = {
            "service_cpu_s": round(service, 3) if self.service_pid else None,
            "storage_cpu_s": round(storage, 3) if storage is not None else None,
            "client_cpu_s": round(after.client - before.client, 3),
        }
        if after.parts is not None and before.parts is not None:
            # A worker started meanwhile counts from zero, as in the total.
            split = dict.fromkeys(PARTS, 0.0)
            for key, seconds in after.parts.items():
                split[key[1]] += seconds - before.parts.get(key, 0.0)
            for part, seconds in split.items():
                # Clock ticks: a part read a tick apart from the total can come out at -0.01.
                used[f"{part}_cpu_s"] = max(0.0, round(seconds, 3))
        return used


def per_unit_us(cpu: dict[str, float | None], units: int) -> dict[str, float | None]:
    """Each CPU figure in µs per unit (event or request); None where not measured."""
    out: dict[str, float | None] = {}
    for name, seconds in cpu.items():
        key = name.removesuffix("_cpu_s") + "_cpu_us"
        out[key] = round(seconds * 1e6 / units, 2) if seconds is not None and units else None
    return out

"""Which people snapshot a query reads: one build's tables and the ``people`` and
``customer_first`` blocks it holds, given to the query together as values
(``{snapshot_people}``, ``{snapshot_links}``, ``{snapshot_first}``, ``{snapshot_block}``,
``{snapshot_first_block}``), so that nothing can pair one build's tables with another's blocks.

Builds are never changed once recorded (``people_snapshot.py``): any recorded build read with its
own block is exact (``commerce.visitors``), however old. So each ``Storage`` looks the current one
up at most every ``LOOKUP_SECONDS`` and reuses it meanwhile. A build can disappear under a stale
lookup (an erasure drops every build at once; the keeper drops superseded ones after
``people_snapshot.DROP_AFTER_SECONDS``): the query then fails on its missing table, and
``Storage`` looks again and runs it once more (``missing``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .sql import Sql

LOOKUP_SECONDS = 1.0
"""How long a looked-up build is reused (a newer one only makes queries hash fewer rows)."""

SLOTS = frozenset({
    "snapshot_people",
    "snapshot_links",
    "snapshot_first",
    "snapshot_block",
    "snapshot_first_block",
})  # fmt: skip

# The fixed, empty tables of migrations 11 and 12: what a query joins when there is no build
# (block 0: every ``people`` and ``customer_first`` row is then read as a change).
BASE_TABLES = ("people_snapshot", "people_snapshot_links", "people_snapshot_first")

LOOKUP = (
    "SELECT max(version), argMax(max_block, version), argMax(first_block, version)"
    " FROM people_snapshots"
    " WHERE version > 0"  # an empty table gives one row of zeros either way
)


def build_tables(version: int) -> tuple[str, ...]:
    """The tables of the build recorded as ``version``, in the order of ``BASE_TABLES``."""
    return tuple(f"{base}_v{version}" for base in BASE_TABLES)


def snapshot_values(version: int, block: int, first_block: int = 0) -> dict[str, Any]:
    """The query values of a build (version 0 or block 0: none, the empty fixed tables)."""
    built = version != 0 and block != 0
    people, links, first = build_tables(version) if built else BASE_TABLES
    return {
        "snapshot_people": Sql(people),
        "snapshot_links": Sql(links),
        "snapshot_first": Sql(first),
        "snapshot_block": block if built else 0,
        "snapshot_first_block": first_block if built else 0,
    }


EVERY_PART = -1
"""The blocks of cluster mode, which builds no snapshot: every part of ``people`` (and of
``customer_first``) is read as changes, including a replicated table's first, whose block
numbers start at 0 (a single server's start at 1, so block 0 covers them all there)."""


def missing(error: Exception) -> bool:
    """Whether ``error`` is a query's snapshot table gone (ClickHouse's UNKNOWN_TABLE, 60)."""
    text = str(error)
    return "Code: 60" in text and "people_snapshot" in text


class CurrentSnapshot:
    """A store's current build, looked up through ``execute`` and reused for a second; in cluster
    mode (``cluster``) none: the fixed empty tables, and every part of ``people`` and
    ``customer_first`` as changes."""

    def __init__(
        self, execute: Callable[[str], Sequence[Sequence[Any]]], cluster: bool = False
    ) -> None:
        self._execute = execute
        self._cluster = cluster
        self._lock = threading.Lock()
        self._values: dict[str, Any] | None = None
        self._looked_up = 0.0

    def values(self) -> dict[str, Any]:
        if self._cluster:
            return {
                **snapshot_values(0, 0),
                "snapshot_block": EVERY_PART,
                "snapshot_first_block": EVERY_PART,
            }
        with self._lock:
            now = time.monotonic()
            if self._values is None or now - self._looked_up >= LOOKUP_SECONDS:
                version, block, first_block = self._execute(LOOKUP)[0]
                self._values = snapshot_values(
                    int(version or 0), int(block or 0), int(first_block or 0)
                )
                self._looked_up = now
            return self._values

    def forget(self) -> None:
        """Look up again at the next query (its build was dropped, or a new one recorded)."""
        with self._lock:
            self._values = None


class WithSnapshot(Mapping[str, Any]):
    """A query's parameters, with the snapshot's values looked up only if the query has their
    slots (``render`` asks for the slots it meets), and once: every slot of one query names the
    same build, even if the lookup changes while the query is rendered (a new build recorded,
    ``forget`` called), which paired one build's tables with another's block."""

    def __init__(self, params: Mapping[str, Any] | None, snapshot: CurrentSnapshot) -> None:
        self._params = params or {}
        self._snapshot = snapshot
        self._values: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> Any:
        if name in self._params:
            return self._params[name]
        if name in SLOTS:
            if self._values is None:
                self._values = self._snapshot.values()
            return self._values[name]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._params or name in SLOTS

    def __iter__(self) -> Iterator[str]:
        yield from self._params
        yield from (name for name in SLOTS if name not in self._params)

    def __len__(self) -> int:
        return len(set(self._params) | SLOTS)

"""The people snapshot: every linked device's first link, kept built as a hash table.

Every visitor figure reads its visitors as people (``commerce.visitors.as_people``): a build of
the snapshot (two ``Join`` engine tables, which ClickHouse keeps as ready hash tables, in memory,
persisted beside the data: the person's hash of each device, and its id, first link and user) for
what ``people`` held up to one of its insert blocks, and ``people``'s later insert blocks
(``visitors.CHANGES``, hashed per query) for the rest. Readers are exact whatever the build's
age; the older it is, the more they hash per query.

A build is immutable: ``rebuild`` notes the highest insert blocks of ``people`` and
``customer_first``, fills ``people_snapshot_v<version>`` and
``people_snapshot_links_v<version>`` from ``people`` (every block up to the noted one at least),
then ``people_snapshot_first_v<version>`` (per person of the build, hashed: the earliest
``customer_first`` time of its devices, every block up to the noted one at least; what the
customers figures read for "ordered before the period", later blocks as changes:
services/metrics/customers.py), and records (version, block, first block) in
``people_snapshots``; a query names one recorded build's tables and blocks, looked up together
(``current_snapshot.py``). So no query can pair one build's tables with another's block
(migration 10's fixed tables swapped in place allowed that, and a loaded run once showed it).
Versions are ``time.time_ns()`` taken when a build starts, and the highest recorded one is
current: a build that an invalidation or a newer build overtook while it was filled is never
current, whichever process made it.

- ``invalidate``, run by every purge (erasure, retention: they remove ``people`` and
  ``customer_first`` rows), records a version with block 0 (no build: every row is a change, the
  fixed tables are empty) and drops every build: no erased link or order time stays in any
  table. A query that looked up a dropped build fails on its missing table and ``Storage`` runs
  it again with the build current then.
- ``keep`` (the privacy module's keeper, one per store or several) rebuilds when the newer rows
  (of ``people`` and ``customer_first`` together) pass ``ANALYTICS_PEOPLE_SNAPSHOT_CHANGES`` or
  are older than ``REBUILD_AGE_SECONDS``, and drops builds superseded for
  ``DROP_AFTER_SECONDS`` (queries reuse a lookup for a second).

ClickHouse 18.16 crashes on ``TRUNCATE`` of a Join table: tables are only created and dropped.

Keys: ``cityHash64(project, anonymousId)`` (a numeric key hashes several times faster than two
strings; measured in decision 63), each row holding its project and id, which readers compare:
a rebuild that finds two devices with one hash records no build (readers then hash every row per
query, exact) and logs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge

from ..commerce.visitors import user_of
from . import Storage
from .current_snapshot import BASE_TABLES, build_tables
from .duplicates import relist_duplicates
from .migrations import type_slots
from .sql import Sql

log = structlog.get_logger(__name__)

REBUILD_CHANGED_ROWS = 20_000
"""``people`` and ``customer_first`` rows newer than the snapshot past which the keeper rebuilds
it, by default (``ANALYTICS_PEOPLE_SNAPSHOT_CHANGES``; a query hashes them: ~20k rows cost a few
ms)."""
REBUILD_AGE_SECONDS = 600
"""A snapshot with newer rows is rebuilt at least this often."""
DROP_AFTER_SECONDS = 10.0
"""A superseded build is dropped this long after the newer one was recorded: queries reuse a
lookup for ``current_snapshot.LOOKUP_SECONDS`` (one that still names it is run again anyway)."""

SNAPSHOT_REBUILDS = Counter(
    "cartlytics_people_snapshot_rebuilds_total", "People snapshot rebuilds", ["outcome"]
)
SNAPSHOT_DEVICES = Gauge("cartlytics_people_snapshot_devices", "Devices in the people snapshot")

# A build: every device's first link read from ``people`` once, into a stage table, and the two
# tables (current_snapshot.build_tables, copies of the structure of the fixed, empty ones) filled
# from it: the person's hash of each device (what counting figures join) and its id, first link
# and user (what id figures and the changes join). Filled from ``people`` each, the two could hold
# different rows (an insert landing between the fills), and a hashed read decides by one whether
# to take the other.
_STAGE = Sql("""
    CREATE TABLE {stage} (project_id String, anonymous_id String, link_key String, user String)
    ENGINE = Memory""")
_FILL_STAGE = Sql(f"""
    INSERT INTO {{stage}}
    SELECT project_id, anonymous_id, minMerge(first_link) AS link_key,
           {user_of("link_key")} AS user
    FROM people GROUP BY project_id, anonymous_id""")
_FILLS = (
    Sql("""
    INSERT INTO {table}
    SELECT cityHash64(project_id, anonymous_id), cityHash64(project_id, user) FROM {stage}"""),
    Sql("""
    INSERT INTO {table}
    SELECT cityHash64(project_id, anonymous_id), anonymous_id, link_key, user FROM {stage}"""),
)
# Per person of the build (its people table's, so the same people as the other two tables): the
# earliest order time of its devices, and whether it is some device's user (then it holds
# devices other than its own id). Every device with an order is a key (an unlinked one as its own
# person), so a person the table lacks has no order up to the build's block.
_FILL_FIRST = Sql("""
    INSERT INTO {table}
    SELECT if(snapshot_person != 0, snapshot_person, visitor_hash) AS person,
           min(first) AS first_ts, 1 AS known,
           person IN (SELECT cityHash64(project_id, user) FROM {stage}) AS others
    FROM (
        SELECT cityHash64(project_id, visitor_id) AS visitor_hash,
               joinGet('{people}', 'snapshot_person', visitor_hash) AS snapshot_person,
               finalizeAggregation(first_ts) AS first
        FROM customer_first
    )
    GROUP BY person""")
_DEVICES = Sql("""
    SELECT count(), uniqExact(cityHash64(project_id, anonymous_id)) FROM {stage}""")
_MAX_BLOCK = Sql("""
    SELECT max(max_block_number) FROM system.parts
    WHERE database = currentDatabase() AND table = {table} AND active""")
_NEWER_ROWS = Sql("""
    SELECT sum(rows) FROM system.parts
    WHERE database = currentDatabase() AND active
      AND (table = 'people' AND max_block_number > {block}
           OR table = 'customer_first' AND max_block_number > {first_block})""")
_STATE = Sql("""
    SELECT max(version), argMax(max_block, version), toUInt64(argMax(built_at, version)),
           argMax(first_block, version)
    FROM people_snapshots""")
_RECORD = Sql("""
    INSERT INTO people_snapshots (version, max_block, devices, built_at, first_block)
    SELECT {version}, {block}, {devices}, toDateTime({built_at}, 'UTC'), {first_block}""")
_DROP = "DROP TABLE IF EXISTS {table}{drop_sync}"
_BUILDS = Sql("""
    SELECT name FROM system.tables
    WHERE database = currentDatabase()
      AND match(name, '^people_snapshot(_links|_first|_stage)?_v[0-9]+$')""")

# One rebuild or invalidation at a time in this process (the keeper's thread, a purge's).
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SnapshotState:
    version: int  # the current build's (0: none yet): time.time_ns() when it started
    block: int  # the highest insert block of ``people`` it holds (0: no build)
    built_at: int  # epoch seconds
    first_block: int = 0  # the highest insert block of ``customer_first`` it holds


@dataclass(frozen=True)
class Rebuilt:
    devices: int
    block: int
    seconds: float


class PeopleSnapshot:
    """The snapshot of one store (blocking calls: run them in a thread)."""

    def __init__(self, storage: Storage, changed_rows: int = REBUILD_CHANGED_ROWS) -> None:
        self._storage = storage
        self._changed_rows = changed_rows
        self._slots = type_slots(storage.backend.types)

    def _run(self, sql: Sql, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
        rows = self._storage.query_sync(sql, {**self._slots, **(params or {})})
        return [tuple(row) for row in rows]

    def _drop(self, table: str) -> None:
        self._run(Sql(_DROP.replace("{table}", table)))

    def state(self) -> SnapshotState:
        version, block, built_at, first_block = self._run(_STATE)[0]
        return SnapshotState(
            int(str(version)), int(str(block)), int(str(built_at)), int(str(first_block))
        )

    def newer_rows(self, block: int, first_block: int = 0) -> int:
        """Rows of ``people`` in parts holding blocks after ``block`` and of ``customer_first``
        after ``first_block`` (what readers read as changes)."""
        (rows,) = self._run(_NEWER_ROWS, {"block": block, "first_block": first_block})[0]
        return int(str(rows or 0))

    def _max_block(self, table: str) -> int:
        (max_block,) = self._run(_MAX_BLOCK, {"table": table})[0]
        return int(str(max_block or 0))

    def due(self, now: float | None = None) -> bool:
        """Whether the keeper should rebuild now (never in cluster mode: see ``rebuild``)."""
        if self._storage.cluster:
            return False
        state = self.state()
        newer = self.newer_rows(state.block, state.first_block)
        if newer == 0:
            return False
        age = (now if now is not None else time.time()) - state.built_at
        return newer >= self._changed_rows or age >= REBUILD_AGE_SECONDS or state.block == 0

    def rebuild(self) -> Rebuilt | None:
        """Build a snapshot of ``people`` as it is and record it; None when two devices share a
        hash or another build or an invalidation was recorded meanwhile (readers stay exact
        either way). None in cluster mode: a build is made of one node's ``Join`` tables and
        block numbers of one ``people`` table, neither of which a cluster has (readers there hash
        every row of ``people`` per query, exact; docs/cluster.md)."""
        if self._storage.cluster:
            return None
        started = time.monotonic()
        with _LOCK:
            version = time.time_ns()
            # Noted before reading: rows of later blocks are the readers' changes.
            block = self._max_block("people")
            first_block = self._max_block("customer_first")
            stage = Sql(f"people_snapshot_stage_v{version}")
            tables = build_tables(version)
            try:
                self._run(_STAGE.fill(stage=stage))
                self._run(_FILL_STAGE.fill(stage=stage))
                devices, hashes = (int(str(v)) for v in self._run(_DEVICES.fill(stage=stage))[0])
                if devices != hashes:
                    log.error("people snapshot not built: devices share a hash", devices=devices)
                    SNAPSHOT_REBUILDS.labels("collision").inc()
                    self._drop(stage.text)
                    return None
                fills = (
                    *(fill.fill(stage=stage) for fill in _FILLS),
                    # After the people table's fill: it reads it.
                    _FILL_FIRST.fill(stage=stage, people=Sql(tables[0])),
                )
                for base, table, fill in zip(BASE_TABLES, tables, fills, strict=True):
                    self._run(Sql(f"CREATE TABLE {table} AS {base}"))
                    self._run(fill.fill(table=Sql(table)))
                self._drop(stage.text)
                self._record(version, block, devices, first_block)
            except BaseException:
                self._drop_quietly((stage.text, *tables))
                raise
            if self.state().version != version:  # overtaken: never current
                self._drop_quietly(tables)
                SNAPSHOT_REBUILDS.labels("superseded").inc()
                return None
        self._storage.snapshot.forget()  # this process's queries read it from now
        SNAPSHOT_REBUILDS.labels("built").inc()
        SNAPSHOT_DEVICES.set(devices)
        return Rebuilt(devices, block, round(time.monotonic() - started, 3))

    def invalidate(self) -> None:
        """No build: every ``people`` row is read as a change, and every build is dropped (a
        purge removed rows they may hold)."""
        with _LOCK:
            self._record(time.time_ns(), 0, 0, 0)
            for table in self._builds():
                self._drop(table)
        self._storage.snapshot.forget()
        SNAPSHOT_DEVICES.set(0)

    def drop_superseded(self, now_ns: int | None = None) -> list[str]:
        """Drop the builds older than the current one once it is ``DROP_AFTER_SECONDS`` old
        (a newer build being filled, or a failed one's leftovers, wait for the next build)."""
        current = self.state().version
        now_ns = time.time_ns() if now_ns is None else now_ns
        if now_ns - current < DROP_AFTER_SECONDS * 1e9:
            return []
        dropped = [table for table in self._builds() if _version_of(table) < current]
        for table in dropped:
            self._drop(table)
        return dropped

    def _builds(self) -> list[str]:
        return [str(name) for (name,) in self._run(_BUILDS)]

    def _drop_quietly(self, tables: tuple[str, ...]) -> None:
        for table in tables:
            try:
                self._drop(table)
            except Exception as exc:  # the store is down: drop_superseded gets it later
                log.warning("people snapshot build not dropped", table=table, error=str(exc))

    def _record(self, version: int, block: int, devices: int, first_block: int) -> None:
        self._run(
            _RECORD,
            {
                "version": version,
                "block": block,
                "devices": devices,
                "built_at": int(time.time()),
                "first_block": first_block,
            },
        )


def _version_of(table: str) -> int:
    return int(table.rsplit("_v", 1)[1])


async def keep(storage: Storage, interval: float, changed_rows: int) -> None:
    """The keeper: every ``interval`` seconds, rebuild when due (an outage only delays it). In
    cluster mode, which builds none, it lists the duplicated orderIds ingest could not see
    instead (``duplicates.py``)."""
    snapshot = PeopleSnapshot(storage, changed_rows)
    while True:
        try:
            if storage.cluster:
                await asyncio.to_thread(relist_duplicates, storage)
            elif await asyncio.to_thread(snapshot.due):
                rebuilt = await asyncio.to_thread(snapshot.rebuild)
                if rebuilt:
                    log.info(
                        "people snapshot rebuilt",
                        devices=rebuilt.devices,
                        seconds=rebuilt.seconds,
                    )
            await asyncio.to_thread(snapshot.drop_superseded)
        except Exception as exc:  # storage down: try again at the next tick
            log.warning("people snapshot not rebuilt", error=type(exc).__name__)
        await asyncio.sleep(interval)

"""The people snapshot: every linked device's first link, kept built as a hash table.

Every visitor figure reads its visitors as people (``commerce.visitors.as_people``): the
snapshot (``people_snapshot`` and ``people_snapshot_links``, ``Join`` engine tables that
ClickHouse keeps as ready hash tables, in memory, persisted beside the data: the person's hash
of each device, and its id, first link and user) for what ``people`` held when it was built, and
``people``'s newer insert blocks (``visitors.CHANGES``, hashed per query) for the rest. Readers are
exact whatever the snapshot's age; the older it is, the more they hash per query. So:

- ``rebuild`` makes a new one: it notes the highest insert block of ``people``, builds
  ``<table>_next`` tables from ``people`` (every block up to that one at least), swaps them in
  (``EXCHANGE TABLES``, or two renames on 18.16) and only then records the block in
  ``people_snapshot_state`` (a reader that sees the new table with the old block reads more
  changes than it needs, never fewer);
- ``invalidate``, run by every purge of ``people`` (erasure, retention), records block 0 (every
  row is a change again) and swaps in empty tables: no erased link stays in them;
- ``keep`` (the privacy module's keeper, one per store) rebuilds when the newer rows pass
  ``ANALYTICS_PEOPLE_SNAPSHOT_CHANGES`` or are older than ``REBUILD_AGE_SECONDS``.

A rebuild and an invalidation exclude each other in a process (a lock); across processes (the
CLI's ``users erase`` beside a server) a rebuild that sees an invalidation recorded after it began
drops its table instead of swapping it in. ClickHouse 18.16 crashes on ``TRUNCATE`` of a Join
table: tables are only created, renamed and dropped.

Keys: ``cityHash64(project, anonymousId)`` (a numeric key hashes several times faster than two
strings; measured in decision 63), each row holding its project and id, which readers compare:
a rebuild that finds two devices with one hash keeps no snapshot (readers then hash every row per
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
from .migrations import type_slots
from .sql import Sql

log = structlog.get_logger(__name__)

REBUILD_CHANGED_ROWS = 20_000
"""``people`` rows newer than the snapshot past which the keeper rebuilds it, by default
(``ANALYTICS_PEOPLE_SNAPSHOT_CHANGES``; a query hashes them: ~20k rows cost a few ms)."""
REBUILD_AGE_SECONDS = 600
"""A snapshot with newer rows is rebuilt at least this often."""
SWAP_GRACE_SECONDS = 5.0
"""Between the swap and recording its block: a query that resolved the table before the swap
and reads the block after it would otherwise miss rows. A wait, not a guarantee: under two CPU
hogs one customers test on 18.16 once counted an anonymous device as its own customer, which
such a query would do (1 s then; unconfirmed as the cause)."""

SNAPSHOT_REBUILDS = Counter(
    "cartlytics_people_snapshot_rebuilds_total", "People snapshot rebuilds", ["outcome"]
)
SNAPSHOT_DEVICES = Gauge("cartlytics_people_snapshot_devices", "Devices in the people snapshot")

# The tables, made by migration 10 (m0010_create_people_snapshot), each rebuilt as
# ``<table>_next`` (a copy of its structure) and swapped in: the person's hash of each device (what
# counting figures join) and its id, first link and user (what id figures and the changes join).
TABLES = ("people_snapshot", "people_snapshot_links")
_FIRST_LINKS = f"""
    SELECT project_id, anonymous_id, minMerge(first_link) AS link_key,
           {user_of("link_key")} AS user
    FROM people GROUP BY project_id, anonymous_id"""
_FILLS = {
    "people_snapshot": Sql(f"""
    INSERT INTO people_snapshot_next
    SELECT cityHash64(project_id, anonymous_id), cityHash64(project_id, user)
    FROM ({_FIRST_LINKS})"""),
    "people_snapshot_links": Sql(f"""
    INSERT INTO people_snapshot_links_next
    SELECT cityHash64(project_id, anonymous_id), anonymous_id, link_key, user
    FROM ({_FIRST_LINKS})"""),
}
_MAX_BLOCK = Sql("""
    SELECT max(max_block_number) FROM system.parts
    WHERE database = currentDatabase() AND table = 'people' AND active""")
_NEWER_ROWS = Sql("""
    SELECT sum(rows) FROM system.parts
    WHERE database = currentDatabase() AND table = 'people' AND active
      AND max_block_number > {block}""")
_STATE = Sql("""
    SELECT max(version), argMax(max_block, version),
           toUInt64(argMax(built_at, version))
    FROM people_snapshot_state""")
_DEVICES = Sql("""
    SELECT count(), uniqExact(visitor_hash)
    FROM (SELECT cityHash64(project_id, anonymous_id) AS visitor_hash FROM people
          GROUP BY project_id, anonymous_id)""")
_RECORD = Sql("""
    INSERT INTO people_snapshot_state (version, max_block, devices, built_at)
    SELECT {version}, {block}, {devices}, toDateTime({built_at}, 'UTC')""")
# The swap: at once where the database is Atomic (chdb, servers from 20.x); ClickHouse 18.16
# has no EXCHANGE, and a query between its two renames finds no table (the server backend runs
# it again: backends.ServerBackend.execute). The two tables are swapped one after the other: a
# reader between the swaps, with the old block recorded, reads more changes than it needs.
_EXCHANGE = "EXCHANGE TABLES {t} AND {t}_next"
_RENAMES = "RENAME TABLE {t} TO {t}_old, {t}_next TO {t}"
_DROP = "DROP TABLE IF EXISTS {table}{drop_sync}"

# One rebuild or invalidation at a time in this process (the keeper's thread, a purge's).
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SnapshotState:
    version: int  # time.time_ns() of the record (0: none yet)
    block: int  # the highest insert block of ``people`` it holds (0: none)
    built_at: int  # epoch seconds


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
        self._atomic = bool(storage.backend.types.get("Atomic"))

    def _run(self, sql: Sql, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
        rows = self._storage.query_sync(sql, {**self._slots, **(params or {})})
        return [tuple(row) for row in rows]

    def _drop(self, table: str) -> None:
        self._run(Sql(_DROP.replace("{table}", table)))

    def state(self) -> SnapshotState:
        version, block, built_at = self._run(_STATE)[0]
        return SnapshotState(int(str(version)), int(str(block)), int(str(built_at)))

    def newer_rows(self, block: int) -> int:
        """Rows of ``people`` in parts holding blocks after ``block`` (what readers hash)."""
        (rows,) = self._run(_NEWER_ROWS, {"block": block})[0]
        return int(str(rows or 0))

    def due(self, now: float | None = None) -> bool:
        """Whether the keeper should rebuild now."""
        state = self.state()
        newer = self.newer_rows(state.block)
        if newer == 0:
            return False
        age = (now if now is not None else time.time()) - state.built_at
        return newer >= self._changed_rows or age >= REBUILD_AGE_SECONDS or state.block == 0

    def rebuild(self) -> Rebuilt | None:
        """Build a snapshot of ``people`` as it is and swap it in; None when an invalidation
        came first or two devices share a hash (readers stay exact either way)."""
        started = time.monotonic()
        with _LOCK:
            before = self.state().version
            (max_block,) = self._run(_MAX_BLOCK)[0]
            block = int(str(max_block or 0))
            devices, hashes = (int(str(v)) for v in self._run(_DEVICES)[0])
            if devices != hashes:
                log.error("people snapshot not built: two devices share a hash", devices=devices)
                SNAPSHOT_REBUILDS.labels("collision").inc()
                return None
            self._make_next()
            for table in TABLES:
                self._run(_FILLS[table])
            if self.state().version != before:  # another process invalidated it meanwhile
                for table in TABLES:
                    self._drop(table + "_next")
                SNAPSHOT_REBUILDS.labels("superseded").inc()
                return None
            self._swap()
            time.sleep(SWAP_GRACE_SECONDS)
            self._record(block, devices)
            self._drop_replaced()
        SNAPSHOT_REBUILDS.labels("built").inc()
        SNAPSHOT_DEVICES.set(devices)
        return Rebuilt(devices, block, round(time.monotonic() - started, 3))

    def invalidate(self) -> None:
        """No snapshot: every ``people`` row is read as a change, and the snapshot table is
        swapped for an empty one (a purge removed rows it may hold)."""
        with _LOCK:
            self._record(0, 0)
            self._make_next()
            self._swap()
            self._drop_replaced()
        SNAPSHOT_DEVICES.set(0)

    def _make_next(self) -> None:
        """Empty ``<table>_next`` copies (after any a cut rebuild left)."""
        for table in TABLES:
            self._drop(table + "_next")
            self._drop(table + "_old")
            self._run(Sql(f"CREATE TABLE {table}_next AS {table}"))

    def _swap(self) -> None:
        for table in TABLES:
            self._run(Sql((_EXCHANGE if self._atomic else _RENAMES).replace("{t}", table)))

    def _drop_replaced(self) -> None:
        """The tables the swap replaced: ``_next`` after an exchange, ``_old`` after renames."""
        for table in TABLES:
            self._drop(table + ("_next" if self._atomic else "_old"))

    def _record(self, block: int, devices: int) -> None:
        self._run(
            _RECORD,
            {
                "version": time.time_ns(),
                "block": block,
                "devices": devices,
                "built_at": int(time.time()),
            },
        )


async def keep(storage: Storage, interval: float, changed_rows: int) -> None:
    """The keeper: every ``interval`` seconds, rebuild when due (an outage only delays it)."""
    snapshot = PeopleSnapshot(storage, changed_rows)
    while True:
        try:
            if await asyncio.to_thread(snapshot.due):
                rebuilt = await asyncio.to_thread(snapshot.rebuild)
                if rebuilt:
                    log.info(
                        "people snapshot rebuilt",
                        devices=rebuilt.devices,
                        seconds=rebuilt.seconds,
                    )
        except Exception as exc:  # storage down: try again at the next tick
            log.warning("people snapshot not rebuilt", error=type(exc).__name__)
        await asyncio.sleep(interval)

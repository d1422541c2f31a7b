"""10: ``people_snapshot`` and ``people_snapshot_links``, every linked device's first link as
ready hash tables (``Join`` engine tables), and ``people_snapshot_state``, the insert block of
``people`` they hold (``cartlytics.common.storage.people_snapshot``; decision 63).

They start empty (block 0: readers hash every ``people`` row per query, as before this
migration); the privacy module's keeper builds the snapshot at its first tick. Backward drops
them (and a rebuild's leftovers).
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    10,
    "create_people_snapshot",
    (
        # Two tables of the same devices: the person's hash alone (what counting figures join),
        # and the id, first link and user (what figures showing ids and the changes join).
        # ClickHouse 18.16 copies every column of a joined table into the result.
        Sql("""
        CREATE TABLE IF NOT EXISTS people_snapshot (
            visitor_hash UInt64,
            snapshot_person UInt64
        ) ENGINE = Join(ANY, LEFT, visitor_hash)
        """),
        Sql("""
        CREATE TABLE IF NOT EXISTS people_snapshot_links (
            visitor_hash UInt64,
            snapshot_id String,
            snapshot_key String,
            snapshot_user String
        ) ENGINE = Join(ANY, LEFT, visitor_hash)
        """),
        Sql("""
        CREATE TABLE IF NOT EXISTS people_snapshot_state (
            version UInt64,
            max_block UInt64,
            devices UInt64,
            built_at DateTime('UTC')
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY tuple()
        """),
    ),
    backward=(
        Sql("DROP TABLE IF EXISTS people_snapshot_state{drop_sync}"),
        *(
            Sql(f"DROP TABLE IF EXISTS {table}{suffix}{{drop_sync}}")
            for table in ("people_snapshot", "people_snapshot_links")
            for suffix in ("_next", "_old", "")
        ),
    ),
)

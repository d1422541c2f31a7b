"""10: ``people_snapshot``, every linked device's first link as a ready hash table (a ``Join``
engine table), and ``people_snapshot_state``, the insert block of ``people`` it holds
(``cartlytics.common.storage.people_snapshot``; decision 63).

Both start empty (block 0: readers hash every ``people`` row per query, as before this
migration); the privacy module's keeper builds the snapshot at its first tick. Backward drops
both (and a rebuild's leftovers).
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    10,
    "create_people_snapshot",
    (
        Sql("""
        CREATE TABLE IF NOT EXISTS people_snapshot (
            visitor_hash UInt64,
            snapshot_project String,
            snapshot_id String,
            snapshot_key String,
            snapshot_user String,
            snapshot_person UInt64
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
        Sql("DROP TABLE IF EXISTS people_snapshot_next{drop_sync}"),
        Sql("DROP TABLE IF EXISTS people_snapshot_old{drop_sync}"),
        Sql("DROP TABLE IF EXISTS people_snapshot{drop_sync}"),
    ),
)

"""11: the people snapshot becomes one set of tables per build, named by its version, and
``people_snapshots`` the record of which one is current with the ``people`` block it holds
(``cartlytics.common.storage.people_snapshot``; decision 63).

Migration 10 swapped each build into the fixed ``people_snapshot`` tables and recorded its block
in ``people_snapshot_state`` afterwards: a query could pair one build's table with another's
block, and under load one did (a guest order counted apart from its customer on 18.16). Now a
build is written to ``people_snapshot_v<version>`` and ``people_snapshot_links_v<version>``,
never changed, and a query names one version's tables and block, read together from
``people_snapshots``. The fixed tables stay, empty: what a query reads when there is no build.

Forward drops migration 10's state and any build it left, and makes the fixed tables empty again
(``TRUNCATE`` of a Join table crashes 18.16: dropped and created). Backward restores migration 10's
state, empty (its readers then hash every row per query); builds of this version that remain
(``people_snapshot%_v<digits>``) are unused by it and can be dropped by hand.
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

_STATE = """
        CREATE TABLE IF NOT EXISTS {name} (
            version UInt64,
            max_block UInt64,
            devices UInt64,
            built_at DateTime('UTC')
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY tuple()
        """
_PEOPLE = """
        CREATE TABLE people_snapshot (
            visitor_hash UInt64,
            snapshot_person UInt64
        ) ENGINE = Join(ANY, LEFT, visitor_hash)
        """
_LINKS = """
        CREATE TABLE people_snapshot_links (
            visitor_hash UInt64,
            snapshot_id String,
            snapshot_key String,
            snapshot_user String
        ) ENGINE = Join(ANY, LEFT, visitor_hash)
        """

MIGRATION = Migration(
    11,
    "version_people_snapshots",
    (
        Sql("DROP TABLE IF EXISTS people_snapshot_state{drop_sync}"),
        *(
            Sql(f"DROP TABLE IF EXISTS {table}{suffix}{{drop_sync}}")
            for table in ("people_snapshot", "people_snapshot_links")
            for suffix in ("_next", "_old", "")
        ),
        Sql(_PEOPLE),
        Sql(_LINKS),
        Sql(_STATE.replace("{name}", "people_snapshots")),
    ),
    backward=(
        Sql("DROP TABLE IF EXISTS people_snapshots{drop_sync}"),
        Sql(_STATE.replace("{name}", "people_snapshot_state")),
    ),
)

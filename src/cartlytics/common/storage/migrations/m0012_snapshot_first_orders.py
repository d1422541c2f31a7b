"""12: each people snapshot build gets a third table, ``people_snapshot_first_v<version>``: per
person (hashed, as counting figures read people), the time of its earliest ``customer_first`` row
over all its devices and whether it is some device's user, and ``people_snapshots.first_block``,
the insert block of ``customer_first`` it holds (``cartlytics.common.storage.people_snapshot``;
decision 63, "Later (2026-12-07, 2)"). The customers figures read "had an order before the
period" from it instead of hashing every earlier customer per query.

``people_snapshot_first`` is the fixed, empty table a query reads when there is no build. The
builds made before this migration have no such table: a record with block 0 makes none of them
current (the keeper builds anew at its next tick and drops them). Backward drops the column and
the table; builds made since keep their third table until dropped by hand.
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    12,
    "snapshot_first_orders",
    (
        Sql("ALTER TABLE people_snapshots ADD COLUMN first_block UInt64 DEFAULT 0"),
        # ``known``: a person the table holds (joinGet gives 0 for one it does not); ``others``:
        # a person that is some device's user (it holds devices other than its own id).
        Sql("""
        CREATE TABLE IF NOT EXISTS people_snapshot_first (
            person UInt64,
            first_ts {datetime},
            known UInt8,
            others UInt8
        ) ENGINE = Join(ANY, LEFT, person)
        """),
        # Newer than every build so far, older than any later one (versions are time_ns).
        Sql("""
        INSERT INTO people_snapshots (version, max_block, devices, built_at, first_block)
        SELECT max(version) + 1, 0, 0, now(), 0 FROM people_snapshots
        """),
    ),
    backward=(
        Sql("DROP TABLE IF EXISTS people_snapshot_first{drop_sync}"),
        Sql("ALTER TABLE people_snapshots DROP COLUMN first_block"),
    ),
)

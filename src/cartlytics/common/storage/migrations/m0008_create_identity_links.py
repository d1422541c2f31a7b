"""8: ``identity_links``, the anonymousIds seen with a userId (identity stitching, issue 15).

Backfilled from the events stored before it. Backward drops the view and the table (derived from
stored events: the forward makes them again).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import IDENTITY_LINKS

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    8,
    "create_identity_links",
    (
        # One row per (anonymousId, userId) pair once merged: the first event carrying both, by
        # (time, event id). Sorted by anonymousId: the person of a visitor id is one lookup.
        Sql("""
        CREATE TABLE IF NOT EXISTS identity_links (
            project_id String,
            anonymous_id String,
            user_id String,
            first_link AggregateFunction(min, Tuple({datetime}, String))
        ) ENGINE = AggregatingMergeTree
        ORDER BY (project_id, anonymous_id, user_id)
        """),
        IDENTITY_LINKS.create(),
        IDENTITY_LINKS.backfill(),
    ),
    backward=(IDENTITY_LINKS.drop(), Sql("DROP TABLE IF EXISTS identity_links")),
)

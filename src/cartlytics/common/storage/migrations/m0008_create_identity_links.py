"""8: ``identity_links`` and ``people``, the anonymousIds seen with a userId (identity stitching,
issue 15): every link, and each anonymousId's first.

Backfilled from the events stored before it. Backward drops the views and the tables (derived
from stored events: the forward makes them again).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import IDENTITY_LINKS, PEOPLE_FIRST

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
        # Per anonymousId, the user of its first link: what queries join (commerce.visitors).
        Sql("""
        CREATE TABLE IF NOT EXISTS people (
            project_id String,
            anonymous_id String,
            first_link AggregateFunction(min, String)
        ) ENGINE = AggregatingMergeTree
        ORDER BY (project_id, anonymous_id)
        """),
        PEOPLE_FIRST.create(),
        PEOPLE_FIRST.backfill(),
    ),
    backward=(
        PEOPLE_FIRST.drop(),
        Sql("DROP TABLE IF EXISTS people"),
        IDENTITY_LINKS.drop(),
        Sql("DROP TABLE IF EXISTS identity_links"),
    ),
)

"""2: what ingest derives from an event's context (services/ingest/enrichment.py), as columns.

Backward drops the columns and what they held (the IP hash cannot be derived again: the IP is not
kept).
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

COLUMNS = (
    ("device", "{dict}"),
    ("browser", "{dict}"),
    ("os", "{dict}"),
    ("ip_hash", "String"),
    ("country", "{dict}"),
    ("region", "String"),
    ("utm_source", "String"),
    ("utm_medium", "String"),
    ("utm_campaign", "String"),
    ("utm_term", "String"),
    ("utm_content", "String"),
    ("referrer_host", "String"),
)

MIGRATION = Migration(
    2,
    "add_enrichment_columns",
    # One statement each way, so a failure cannot leave half the columns (18.16 has no ADD COLUMN
    # IF NOT EXISTS).
    (
        Sql("ALTER TABLE events\n    ")
        + Sql.join(",\n    ", (Sql(f"ADD COLUMN {name} {type_}") for name, type_ in COLUMNS)),
    ),
    backward=(
        Sql("ALTER TABLE events\n    ")
        + Sql.join(",\n    ", (Sql(f"DROP COLUMN {name}") for name, _ in COLUMNS)),
    ),
)

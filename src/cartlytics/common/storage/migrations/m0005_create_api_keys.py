"""5: API keys (src/cartlytics/common/keys.py, docs/keys.md).

Backward drops the table, and so every key: a store taken below 5 has none, as before it.
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    5,
    "create_api_keys",
    (
        # The key's text is never stored, only its SHA-256. Rows are never updated: a revocation
        # is the same key inserted again with revoked = 1 and version 2, which the engine keeps on
        # merge; readers take max(revoked) per key_id, so they need no FINAL and no merge.
        Sql("""
        CREATE TABLE IF NOT EXISTS api_keys (
            project_id String,
            key_id String,
            key_hash String,
            scopes String,
            name String,
            created_at DateTime('UTC'),
            revoked UInt8,
            revoked_at DateTime('UTC'),
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY (project_id, key_id)
        """),
    ),
    backward=(Sql("DROP TABLE IF EXISTS api_keys"),),
)

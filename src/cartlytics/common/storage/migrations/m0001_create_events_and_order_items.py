"""1: the tables of what ingest accepts, ``events`` and ``order_items``.

No backward: these tables hold the events themselves, which nothing can rebuild; version 0 is an
empty database.
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    1,
    "create_events_and_order_items",
    (
        # One row per accepted event. Hot commerce properties are typed columns; the full
        # properties and context stay as JSON strings. ReplacingMergeTree on the event id makes
        # a retried event collapse on merge; queries that count orders also dedupe by orderId.
        Sql("""
        CREATE TABLE IF NOT EXISTS events (
            project_id String,
            event_id String,
            event {dict},
            ts {datetime},
            received_at {datetime},
            user_id String,
            anonymous_id String,
            session_id String,
            visitor_id String,
            order_id String,
            total Int64,
            currency {dict},
            product_id String,
            page String,
            properties String,
            context String
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project_id, toDate(ts), event, event_id)
        """),
        # One row per product line of an order_completed event, for product figures.
        Sql("""
        CREATE TABLE IF NOT EXISTS order_items (
            project_id String,
            order_id String,
            event_id String,
            line UInt16,
            ts {datetime},
            visitor_id String,
            currency {dict},
            product_id String,
            name String,
            category String,
            price Int64,
            quantity UInt32
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project_id, toDate(ts), order_id, event_id, line)
        """),
    ),
)

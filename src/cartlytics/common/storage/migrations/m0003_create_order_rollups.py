"""3: the order rollups: ``orders``, ``sales_15m``, ``order_index`` (each with its materialized
view on ``events``, backfilled from the events stored so far) and ``order_dups``.

Backward drops the views and the tables (all derived from ``events``: going forward again
rebuilds them).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import ORDER_DUPS, ORDER_INDEX, ORDERS, SALES_15M

from ..sql import Sql
from .migration import Migration

SALES_15M_UNTIL_7 = SALES_15M.with_columns(
    "project_id",
    "currency",
    "toStartOfFifteenMinutes(ts) AS bucket",
    "toInt64(1) AS orders",
    "total AS revenue",
)
"""``sales_15m``'s view as this migration makes it, frozen: its revenue column is Int64 until
migration 7 makes it Decimal128 and the view the current definition (``SALES_15M``), which this
table cannot take (18.16 refuses to convert). Only this migration and 7's backward use it."""

MIGRATION = Migration(
    3,
    "create_order_rollups",
    (
        # Order events only, narrow: what every order figure reads, instead of scanning all
        # events (ClickHouse cannot skip other events inside a date range of `events`).
        # Plain MergeTree on purpose: it must keep exactly the rows sales_15m summed.
        Sql("""
        CREATE TABLE IF NOT EXISTS orders (
            project_id String,
            order_id String,
            event_id String,
            ts {datetime},
            total Int64,
            currency {dict},
            visitor_id String
        ) ENGINE = MergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project_id, toDate(ts), order_id, event_id)
        """),
        ORDERS.create(),
        ORDERS.backfill(),
        # Every order event's count and total per 15-minute UTC bucket.
        Sql("""
        CREATE TABLE IF NOT EXISTS sales_15m (
            project_id String,
            currency {dict},
            bucket DateTime('UTC'),
            orders Int64,
            revenue Int64
        ) ENGINE = SummingMergeTree
        PARTITION BY toYYYYMM(bucket)
        ORDER BY (project_id, currency, bucket)
        """),
        SALES_15M_UNTIL_7.create(),
        SALES_15M_UNTIL_7.backfill(),
        Sql("""
        CREATE TABLE IF NOT EXISTS order_dups (
            project_id String,
            order_id String
        ) ENGINE = ReplacingMergeTree
        ORDER BY (project_id, order_id)
        """),
        # The same order rows sorted by orderId.
        Sql("""
        CREATE TABLE IF NOT EXISTS order_index (
            project_id String,
            order_id String,
            event_id String,
            ts {datetime},
            total Int64,
            currency {dict},
            visitor_id String
        ) ENGINE = MergeTree
        ORDER BY (project_id, order_id)
        SETTINGS index_granularity = 256
        """),
        ORDER_INDEX.create(),
        ORDER_INDEX.backfill(),
        ORDER_DUPS.backfill(),
    ),
    backward=(
        ORDER_INDEX.drop(),
        SALES_15M_UNTIL_7.drop(),
        ORDERS.drop(),
        Sql("DROP TABLE IF EXISTS order_index"),
        Sql("DROP TABLE IF EXISTS order_dups"),
        Sql("DROP TABLE IF EXISTS sales_15m"),
        Sql("DROP TABLE IF EXISTS orders"),
    ),
)

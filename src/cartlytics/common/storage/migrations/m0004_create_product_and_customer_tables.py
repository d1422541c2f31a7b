"""4: the product and customer rollups: ``order_lines``, ``order_line_counts``,
``customer_first``, ``product_views``, ``product_names`` (each view backfilled from what is
stored).

Backward drops the views and the tables (all derived from stored rows, except the names of
product_view events stored before this migration on ClickHouse 18.16, which no backfill can read:
docs/semantics.md).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import (
    CUSTOMER_FIRST,
    ITEM_NAMES,
    ORDER_LINE_COUNTS_EVENTS,
    ORDER_LINE_COUNTS_LINES,
    PRODUCT_NAMES,
    PRODUCT_VIEWS,
    STORED_ORDERS,
)

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    4,
    "create_product_and_customer_tables",
    (
        # Each order event with its line items as arrays, one row per stored event row,
        # written by ingest *after* the event (in the same group-commit flush): a row here
        # always has its event row, so the products figures need no join with `orders`.
        # A flush that failed after the event leaves the event without its row here;
        # services/metrics/products.py notices (row counts differ) and falls back to
        # order_items. The arrays are of Nullable only because chdb's Arrow insert types a
        # column of empty lists as list<null>; no element is ever NULL.
        Sql("""
        CREATE TABLE IF NOT EXISTS order_lines (
            project_id String,
            order_id String,
            event_id String,
            ts {datetime},
            currency {dict},
            visitor_id String,
            product_ids Array(Nullable(String)),
            prices Array(Nullable(Int64)),
            quantities Array(Nullable(UInt32))
        ) ENGINE = MergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project_id, toDate(ts), order_id, event_id)
        """),
        # Backfill: one row per stored order event row (as `orders` has them), with the
        # lines of its event from order_items, each (event, line) once.
        Sql("""
        INSERT INTO order_lines (project_id, order_id, event_id, ts, currency, visitor_id,
                                 product_ids, prices, quantities)
        SELECT project_id, order_id, event_id, ts, currency, visitor_id,
               product_ids, prices, quantities
        FROM orders
        ANY LEFT JOIN (
            SELECT project_id, event_id,
                   groupArray(item_product) AS product_ids,
                   groupArray(item_price) AS prices,
                   groupArray(item_quantity) AS quantities
            FROM (
                SELECT project_id, event_id, line,
                       any(product_id) AS item_product,
                       any(price) AS item_price,
                       any(quantity) AS item_quantity
                FROM order_items
                GROUP BY project_id, event_id, line
            )
            GROUP BY project_id, event_id
        ) AS event_lines USING (project_id, event_id)
        """),
        # Per 15-minute UTC bucket: the order event rows stored, and the order_lines rows.
        Sql("""
        CREATE TABLE IF NOT EXISTS order_line_counts (
            project_id String,
            currency {dict},
            bucket DateTime('UTC'),
            event_rows Int64,
            line_rows Int64
        ) ENGINE = SummingMergeTree
        PARTITION BY toYYYYMM(bucket)
        ORDER BY (project_id, currency, bucket)
        """),
        ORDER_LINE_COUNTS_EVENTS.create(),
        ORDER_LINE_COUNTS_LINES.create(),
        # The event rows as `orders` holds them (order_lines was just filled with one row per
        # `orders` row), and the order_lines rows.
        ORDER_LINE_COUNTS_EVENTS.backfill(STORED_ORDERS),
        ORDER_LINE_COUNTS_LINES.backfill(),
        Sql("""
        CREATE TABLE IF NOT EXISTS customer_first (
            project_id String,
            visitor_id String,
            first_ts AggregateFunction(min, {datetime})
        ) ENGINE = AggregatingMergeTree
        ORDER BY (project_id, visitor_id)
        """),
        CUSTOMER_FIRST.create(),
        CUSTOMER_FIRST.backfill(STORED_ORDERS),
        Sql("""
        CREATE TABLE IF NOT EXISTS product_views (
            project_id String,
            product_id String,
            visitor_id String,
            ts {datetime}
        ) ENGINE = MergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (project_id, product_id, ts)
        SETTINGS index_granularity = 1024
        """),
        PRODUCT_VIEWS.create(),
        PRODUCT_VIEWS.backfill(),
        # Product names as ingest sees them (a line item's name, a product_view's top-level
        # properties.name; non-empty). Nothing is kept here (Null engine): the view keeps, per
        # product, only the latest name by (time, event id, line).
        Sql("""
        CREATE TABLE IF NOT EXISTS product_names (
            project_id String,
            product_id String,
            name String,
            ts {datetime},
            event_id String,
            line UInt16
        ) ENGINE = Null
        """),
        Sql("""
        CREATE TABLE IF NOT EXISTS product_names_latest (
            project_id String,
            product_id String,
            latest AggregateFunction(argMax, String, Tuple({datetime}, String, UInt16))
        ) ENGINE = AggregatingMergeTree
        ORDER BY (project_id, product_id)
        """),
        PRODUCT_NAMES.create(),
        # From stored line items only: product_view names stored before this migration cannot be
        # read back on ClickHouse 18.16 (no JSON functions): see docs/semantics.md.
        ITEM_NAMES.backfill(),
    ),
    backward=(
        PRODUCT_NAMES.drop(),
        PRODUCT_VIEWS.drop(),
        CUSTOMER_FIRST.drop(),
        ORDER_LINE_COUNTS_LINES.drop(),
        ORDER_LINE_COUNTS_EVENTS.drop(),
        *(
            Sql(f"DROP TABLE IF EXISTS {table}")
            for table in (
                "product_names_latest",
                "product_names",
                "product_views",
                "customer_first",
                "order_line_counts",
                "order_lines",
            )
        ),
    ),
)

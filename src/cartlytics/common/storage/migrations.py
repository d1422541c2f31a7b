"""Versioned schema migrations, applied in order at start and recorded in ``schema_migrations``.

DDL may pick types per backend (``$DateTime``: DateTime64(3) where the server has it, DateTime on
ClickHouse 18.16; ``$Dict``: LowCardinality(String) or String). Queries must not depend on which.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

# Backend capabilities that DDL may use.
# ``$MutationsSync``: an ALTER that rewrites data waits for it where that is a background mutation
# (ClickHouse 26); 18.16 rewrites within the ALTER itself and has no SETTINGS clause there.
MODERN_TYPES = {
    "DateTime": "DateTime64(3, 'UTC')",
    "Dict": "LowCardinality(String)",
    "MutationsSync": " SETTINGS mutations_sync = 2",
}
CLASSIC_TYPES = {"DateTime": "DateTime('UTC')", "Dict": "String", "MutationsSync": ""}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    repair_after: tuple[str, ...] = ()
    """Rollups to make whole for the last minutes once applied (repair.py steps): for a migration
    that replaces a materialized view, which missed the INSERTs other replicas made meanwhile."""

    def render(self, types: dict[str, str]) -> list[str]:
        return [Template(sql).substitute(types) for sql in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create_events_and_order_items",
        (
            # One row per accepted event. Hot commerce properties are typed columns; the full
            # properties and context stay as JSON strings. ReplacingMergeTree on the event id makes
            # a retried event collapse on merge; queries that count orders also dedupe by orderId.
            """
            CREATE TABLE IF NOT EXISTS events (
                project_id String,
                event_id String,
                event $Dict,
                ts $DateTime,
                received_at $DateTime,
                user_id String,
                anonymous_id String,
                session_id String,
                visitor_id String,
                order_id String,
                total Int64,
                currency $Dict,
                product_id String,
                page String,
                properties String,
                context String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project_id, toDate(ts), event, event_id)
            """,
            # One row per product line of an order_completed event, for product figures.
            """
            CREATE TABLE IF NOT EXISTS order_items (
                project_id String,
                order_id String,
                event_id String,
                line UInt16,
                ts $DateTime,
                visitor_id String,
                currency $Dict,
                product_id String,
                name String,
                category String,
                price Int64,
                quantity UInt32
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project_id, toDate(ts), order_id, event_id, line)
            """,
        ),
    ),
    Migration(
        2,
        "add_enrichment_columns",
        (
            # What ingest derives from context (services/ingest/enrichment.py). One statement, so a
            # failure cannot leave half the columns (18.16 has no ADD COLUMN IF NOT EXISTS).
            """
            ALTER TABLE events
                ADD COLUMN device $Dict,
                ADD COLUMN browser $Dict,
                ADD COLUMN os $Dict,
                ADD COLUMN ip_hash String,
                ADD COLUMN country $Dict,
                ADD COLUMN region String,
                ADD COLUMN utm_source String,
                ADD COLUMN utm_medium String,
                ADD COLUMN utm_campaign String,
                ADD COLUMN utm_term String,
                ADD COLUMN utm_content String,
                ADD COLUMN referrer_host String
            """,
        ),
    ),
    Migration(
        3,
        "create_order_rollups",
        (
            # Order events only, narrow: what every order figure reads, instead of scanning all
            # events (ClickHouse cannot skip other events inside a date range of `events`).
            # Plain MergeTree on purpose: it must keep exactly the rows sales_15m summed.
            """
            CREATE TABLE IF NOT EXISTS orders (
                project_id String,
                order_id String,
                event_id String,
                ts $DateTime,
                total Int64,
                currency $Dict,
                visitor_id String
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project_id, toDate(ts), order_id, event_id)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS orders_mv TO orders AS
            SELECT project_id, order_id, event_id, ts, total, currency, visitor_id
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            INSERT INTO orders
            SELECT project_id, order_id, event_id, ts, total, currency, visitor_id
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            # Every order event's count and total per 15-minute UTC bucket (every zone's hours,
            # days, weeks and months are unions of these). Duplicates are counted here and
            # corrected at query time for the orderIds listed in order_dups.
            """
            CREATE TABLE IF NOT EXISTS sales_15m (
                project_id String,
                currency $Dict,
                bucket DateTime('UTC'),
                orders Int64,
                revenue Int64
            ) ENGINE = SummingMergeTree
            PARTITION BY toYYYYMM(bucket)
            ORDER BY (project_id, currency, bucket)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS sales_15m_mv TO sales_15m AS
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(1) AS orders, total AS revenue
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            INSERT INTO sales_15m
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(1) AS orders, total AS revenue
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            # OrderIds with more than one stored event row (duplicates, retries stored twice):
            # the only orders whose rollup rows need correcting. Ingest adds to it.
            """
            CREATE TABLE IF NOT EXISTS order_dups (
                project_id String,
                order_id String
            ) ENGINE = ReplacingMergeTree
            ORDER BY (project_id, order_id)
            """,
            # The same order rows sorted by orderId: ingest's duplicate check and the sales
            # correction read a few orderIds without scanning every order.
            """
            CREATE TABLE IF NOT EXISTS order_index (
                project_id String,
                order_id String,
                event_id String,
                ts $DateTime,
                total Int64,
                currency $Dict,
                visitor_id String
            ) ENGINE = MergeTree
            ORDER BY (project_id, order_id)
            SETTINGS index_granularity = 256
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS order_index_mv TO order_index AS
            SELECT project_id, order_id, event_id, ts, total, currency, visitor_id
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            INSERT INTO order_index
            SELECT project_id, order_id, event_id, ts, total, currency, visitor_id
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            INSERT INTO order_dups
            SELECT project_id, order_id FROM order_index
            GROUP BY project_id, order_id HAVING count() > 1
            """,
        ),
    ),
    Migration(
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
            """
            CREATE TABLE IF NOT EXISTS order_lines (
                project_id String,
                order_id String,
                event_id String,
                ts $DateTime,
                currency $Dict,
                visitor_id String,
                product_ids Array(Nullable(String)),
                prices Array(Nullable(Int64)),
                quantities Array(Nullable(UInt32))
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project_id, toDate(ts), order_id, event_id)
            """,
            # Backfill: one row per stored order event row (as `orders` has them), with the
            # lines of its event from order_items, each (event, line) once.
            """
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
            """,
            # Per 15-minute UTC bucket: the order event rows stored, and the order_lines rows.
            # Every order_lines row has its own event row, so equal sums over a range mean every
            # event row there has its order_lines row (the products check, one small read).
            """
            CREATE TABLE IF NOT EXISTS order_line_counts (
                project_id String,
                currency $Dict,
                bucket DateTime('UTC'),
                event_rows Int64,
                line_rows Int64
            ) ENGINE = SummingMergeTree
            PARTITION BY toYYYYMM(bucket)
            ORDER BY (project_id, currency, bucket)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS order_line_counts_events_mv
            TO order_line_counts AS
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(1) AS event_rows, toInt64(0) AS line_rows
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS order_line_counts_lines_mv
            TO order_line_counts AS
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(0) AS event_rows, toInt64(1) AS line_rows
            FROM order_lines
            """,
            """
            INSERT INTO order_line_counts
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(1) AS event_rows, toInt64(1) AS line_rows
            FROM order_lines
            """,
            # Per visitor, the time of its earliest order event row (any currency, duplicates
            # included): "had an order before the period" without reading every order. Rows of
            # duplicated orderIds are corrected at query time (services/metrics/customers.py).
            """
            CREATE TABLE IF NOT EXISTS customer_first (
                project_id String,
                visitor_id String,
                first_ts AggregateFunction(min, $DateTime)
            ) ENGINE = AggregatingMergeTree
            ORDER BY (project_id, visitor_id)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS customer_first_mv TO customer_first AS
            SELECT project_id, visitor_id, minState(ts) AS first_ts
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            GROUP BY project_id, visitor_id
            """,
            """
            INSERT INTO customer_first
            SELECT project_id, visitor_id, minState(ts) FROM orders
            GROUP BY project_id, visitor_id
            """,
            # product_view events only, sorted by product: a product's viewers in a period
            # without reading the period's other events.
            """
            CREATE TABLE IF NOT EXISTS product_views (
                project_id String,
                product_id String,
                visitor_id String,
                ts $DateTime
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (project_id, product_id, ts)
            SETTINGS index_granularity = 1024
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS product_views_mv TO product_views AS
            SELECT project_id, product_id, visitor_id, ts
            FROM events
            WHERE event = 'product_view'
            """,
            """
            INSERT INTO product_views
            SELECT project_id, product_id, visitor_id, ts FROM events
            WHERE event = 'product_view'
            """,
            # Product names as ingest sees them (a line item's name, a product_view's top-level
            # properties.name; non-empty). Nothing is kept here (Null engine): the view below
            # keeps, per product, only the latest name by (time, event id, line).
            """
            CREATE TABLE IF NOT EXISTS product_names (
                project_id String,
                product_id String,
                name String,
                ts $DateTime,
                event_id String,
                line UInt16
            ) ENGINE = Null
            """,
            """
            CREATE TABLE IF NOT EXISTS product_names_latest (
                project_id String,
                product_id String,
                latest AggregateFunction(argMax, String, Tuple($DateTime, String, UInt16))
            ) ENGINE = AggregatingMergeTree
            ORDER BY (project_id, product_id)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS product_names_mv TO product_names_latest AS
            SELECT project_id, product_id, argMaxState(name, tuple(ts, event_id, line)) AS latest
            FROM product_names
            GROUP BY project_id, product_id
            """,
            # Backfill from stored line items. product_view names stored before this migration
            # cannot be read back on ClickHouse 18.16 (no JSON functions): see docs/semantics.md.
            """
            INSERT INTO product_names
            SELECT project_id, product_id, name, ts, event_id, line FROM order_items
            WHERE name != ''
            """,
        ),
    ),
    Migration(
        5,
        "create_api_keys",
        (
            # API keys (src/cartlytics/common/keys.py, docs/keys.md). The key's text is never
            # stored, only its SHA-256. Rows are never updated: a revocation is the same key
            # inserted again with revoked = 1 and version 2, which the engine keeps on merge;
            # readers take max(revoked) per key_id, so they need no FINAL and no merge.
            """
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
            """,
        ),
    ),
    Migration(
        6,
        "add_declared_items_to_order_lines",
        (
            # The order event's own `properties.items` (a count the store reports), -1 when it
            # sent none: the orders export's `items` column shows it, else the number of line
            # items (docs/export.md). Rows stored before this migration read -1.
            "ALTER TABLE order_lines ADD COLUMN declared_items Int64 DEFAULT -1",
        ),
    ),
    Migration(
        7,
        "exact_revenue_in_sales_15m",
        (
            # A bucket's revenue summed in Int64 wraps past 2^63 (9.2 million orders of the
            # largest amount in one quarter hour): Decimal128 cannot (docs/decisions.md 46). The
            # view must write the column's exact type (18.16 refuses to convert), so it is made
            # again; a write by another replica in between is put back by the repair that follows.
            "DROP TABLE IF EXISTS sales_15m_mv",
            "ALTER TABLE sales_15m MODIFY COLUMN revenue Decimal128(0)$MutationsSync",
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS sales_15m_mv TO sales_15m AS
            SELECT project_id, currency, toStartOfFifteenMinutes(ts) AS bucket,
                   toInt64(1) AS orders, toDecimal128(total, 0) AS revenue
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
        ),
        repair_after=("sales_15m",),
    ),
)


def check_unique(migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions) or versions != sorted(versions):
        raise RuntimeError(f"migration versions must be unique and ascending: {versions}")

"""Versioned schema migrations, applied in order at start and recorded in ``schema_migrations``.

DDL may pick types per backend (``$DateTime``: DateTime64(3) where the server has it, DateTime on
ClickHouse 18.16; ``$Dict``: LowCardinality(String) or String). Queries must not depend on which.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

# Backend capabilities that DDL may use.
MODERN_TYPES = {"DateTime": "DateTime64(3, 'UTC')", "Dict": "LowCardinality(String)"}
CLASSIC_TYPES = {"DateTime": "DateTime('UTC')", "Dict": "String"}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

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
                currency $Dict
            ) ENGINE = MergeTree
            ORDER BY (project_id, order_id)
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS order_index_mv TO order_index AS
            SELECT project_id, order_id, event_id, ts, total, currency
            FROM events
            WHERE event = 'order_completed' AND order_id != ''
            """,
            """
            INSERT INTO order_index
            SELECT project_id, order_id, event_id, ts, total, currency
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
)


def check_unique(migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions) or versions != sorted(versions):
        raise RuntimeError(f"migration versions must be unique and ascending: {versions}")

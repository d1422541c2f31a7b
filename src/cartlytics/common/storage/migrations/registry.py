"""Every migration, in order: a new migration is a new file beside this one and a line here."""

from __future__ import annotations

from . import (
    m0001_create_events_and_order_items,
    m0002_add_enrichment_columns,
    m0003_create_order_rollups,
    m0004_create_product_and_customer_tables,
    m0005_create_api_keys,
    m0006_add_declared_items_to_order_lines,
    m0007_exact_revenue_in_sales_15m,
    m0008_create_identity_links,
    m0009_create_erasures,
    m0010_create_people_snapshot,
    m0011_version_people_snapshots,
    m0012_snapshot_first_orders,
)
from .migration import Migration

MIGRATIONS: tuple[Migration, ...] = (
    m0001_create_events_and_order_items.MIGRATION,
    m0002_add_enrichment_columns.MIGRATION,
    m0003_create_order_rollups.MIGRATION,
    m0004_create_product_and_customer_tables.MIGRATION,
    m0005_create_api_keys.MIGRATION,
    m0006_add_declared_items_to_order_lines.MIGRATION,
    m0007_exact_revenue_in_sales_15m.MIGRATION,
    m0008_create_identity_links.MIGRATION,
    m0009_create_erasures.MIGRATION,
    m0010_create_people_snapshot.MIGRATION,
    m0011_version_people_snapshots.MIGRATION,
    m0012_snapshot_first_orders.MIGRATION,
)

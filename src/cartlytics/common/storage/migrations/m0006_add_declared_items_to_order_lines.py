"""6: an order event's declared item count beside its lines.

Backward drops the column (the counts go: an events row keeps them in its properties).
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    6,
    "add_declared_items_to_order_lines",
    (
        # The order event's own `properties.items` (a count the store reports), -1 when it sent
        # none: the orders export's `items` column shows it, else the number of line items
        # (docs/export.md). Rows stored before this migration read -1.
        Sql("ALTER TABLE order_lines ADD COLUMN declared_items Int64 DEFAULT -1"),
    ),
    backward=(Sql("ALTER TABLE order_lines DROP COLUMN declared_items"),),
)

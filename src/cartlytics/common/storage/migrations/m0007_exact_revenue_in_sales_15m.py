"""7: ``sales_15m``'s revenue in Decimal128, its view made again from the current definition.

A bucket's revenue summed in Int64 wraps past 2^63 (9.2 million orders of the largest amount in
one quarter hour): Decimal128 cannot (docs/decisions.md 47). The view must write the column's
exact type (18.16 refuses to convert), so it is made again; a write by another replica in between
is put back by the repair that follows (``repair_after``). This is the shape of every change to a
rollup's definition (``cartlytics.common.commerce.rollups``).

Backward: the column back to Int64 and the view as migration 3 made it (a bucket whose revenue
passed 2^63 would wrap).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import SALES_15M

from ..sql import Sql
from .m0003_create_order_rollups import SALES_15M_UNTIL_7
from .migration import Migration

MIGRATION = Migration(
    7,
    "exact_revenue_in_sales_15m",
    (
        SALES_15M.drop(),
        Sql("ALTER TABLE sales_15m MODIFY COLUMN revenue Decimal128(0){mutations_sync}"),
        SALES_15M.create(),
    ),
    repair_after=("sales_15m",),
    backward=(
        SALES_15M.drop(),
        Sql("ALTER TABLE sales_15m MODIFY COLUMN revenue Int64{mutations_sync}"),
        SALES_15M_UNTIL_7.create(),
    ),
)

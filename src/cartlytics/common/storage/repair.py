"""Repair of the rollups after the embedded engine died in the middle of a write.

ClickHouse writes an INSERT into ``events`` and then each materialized view on it in turn. A
ClickHouse server finishes or drops a whole INSERT whatever happens to its client, but chdb runs
inside our process: a kill -9 (or an OOM kill, a power cut) between two of those writes leaves an
event in some rollups and not in others. The event was never acknowledged, so its client sends
it again; but with ``sales_15m`` holding the first copy and ``order_index`` not, the duplicate
check sees one row, never lists the orderId in ``order_dups``, and sales count the order twice
(docs/decisions.md 41).

So the chdb backend leaves a marker beside its folder while it is open (``Backend.interrupted``
says the last process did not close it), and on the next start, before serving, every table
derived from ``events`` is made whole again for the events received in the last
``WINDOW_SECONDS`` before the stop (the only ones a write in flight can have cut): first the
per-event tables get the copies they lack (``orders`` from ``events``, then ``order_index`` and
``order_lines`` from ``orders``), then each summing rollup gets, per bucket concerned, the
difference to what those tables add up to. So every table counts the same stored copies again,
and ``order_dups`` lists an orderId stored twice. Only inserts: running the repair again (killed
during the repair itself) finds nothing missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .backends import Backend
from .sql import exact_sum

WINDOW_SECONDS = 300
"""Events received this long before the newest one are rebuilt. An INSERT in flight at the stop
holds the newest events (received_at is set as a request arrives, group commit flushes within a
second, and a batch is at most 1,000 events); five minutes leaves a wide margin."""

ORDER = "event = 'order_completed' AND order_id != ''"
BUCKET = "toStartOfFifteenMinutes(ts)"

# Scratch tables (Memory engine: gone with the process): what the repair works on, fixed once so
# that every step sees the same keys however the tables merge meanwhile.
SCRATCH = ("repair_window", "repair_orders", "repair_buckets")
WINDOW_IDS = "(SELECT project_id, event_id FROM repair_window)"


def _add_missing(table: str, columns: str, key: str, source: str, target: str) -> str:
    """SQL: insert into ``table`` the copies of each ``key`` that ``source`` (a subquery: the key
    columns, the other ``columns`` and ``stored``, its number of stored copies) has more of than
    ``target`` (a subquery: the key columns and ``kept``)."""
    return f"""
        INSERT INTO {table} ({columns})
        SELECT {columns} FROM (
            SELECT *,
                   arrayJoin(range(toUInt64(greatest(toInt64(stored) - toInt64(kept), 0))))
                       AS copy
            FROM ({source}) AS wanted
            ALL LEFT JOIN ({target}) AS present USING ({key})
            WHERE stored > kept
        )
    """


ORDER_COLUMNS = "project_id, order_id, event_id, ts, total, currency, visitor_id"
LINES_COLUMNS = (
    "project_id, order_id, event_id, ts, currency, visitor_id, product_ids, prices, quantities,"
    " declared_items"
)
ORDER_EVENT = (
    "any(order_id) AS order_id, any(ts) AS ts, any(total) AS total, "
    "any(currency) AS currency, any(visitor_id) AS visitor_id"
)


def _delta(table: str, values: tuple[str, str], expected: str, current: str) -> str:
    """SQL: add to the summing rollup ``table`` what makes each repaired bucket's sums equal to
    ``expected`` (a subquery: project_id, currency, bucket and the two value columns), given
    ``current`` (the same, as the rollup holds them now)."""
    first, second = values
    return f"""
        INSERT INTO {table} (project_id, currency, bucket, {first}, {second})
        SELECT project_id, currency, bucket,
               wanted.{first} - present.{first}, wanted.{second} - present.{second}
        FROM ({expected}) AS wanted
        FULL OUTER JOIN ({current}) AS present USING (project_id, currency, bucket)
        WHERE wanted.{first} != present.{first} OR wanted.{second} != present.{second}
    """


IN_BUCKETS = f"(project_id, currency, {BUCKET}) IN (SELECT * FROM repair_buckets)"

# Every step only adds rows (no deletion, so no mutation: a delete of 10 rows among a million
# orders took 6-8 s embedded): what is missing from a per-event table, the difference to what it
# should sum to in a rollup. Tables only ever lack rows after a cut write, never hold extra ones:
# each view writes a row for every `events` row, and `events` may merge its copies away later.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "scope",
        (
            # Every event id received in the window (its other stored copies come with it).
            """
            CREATE TABLE repair_window ENGINE = Memory AS
            SELECT DISTINCT project_id, event_id FROM events
            WHERE received_at >= (SELECT max(received_at) FROM events)
                                 - INTERVAL {window} SECOND
            """,
            # The 15-minute buckets those events' orders fall in.
            f"""
            CREATE TABLE repair_buckets ENGINE = Memory AS
            SELECT DISTINCT project_id, currency, {BUCKET} AS bucket FROM events
            WHERE {ORDER} AND (project_id, event_id) IN $window_ids
            """,
        ),
    ),
    (
        # One row per stored order event row (`events` unmerged: every copy an INSERT wrote).
        "orders",
        (
            _add_missing(
                "orders",
                ORDER_COLUMNS,
                "project_id, event_id",
                f"SELECT project_id, event_id, {ORDER_EVENT}, count() AS stored FROM ("
                f"SELECT {ORDER_COLUMNS} FROM events"
                f" WHERE {ORDER} AND (project_id, event_id) IN $window_ids"
                ") GROUP BY project_id, event_id",
                "SELECT project_id, event_id, count() AS kept FROM orders"
                " WHERE (project_id, event_id) IN $window_ids GROUP BY project_id, event_id",
            ),
            """
            CREATE TABLE repair_orders ENGINE = Memory AS
            SELECT DISTINCT project_id, order_id FROM orders
            WHERE (project_id, event_id) IN $window_ids
            """,
        ),
    ),
    (
        # The same rows as `orders`, sorted by orderId.
        "order_index",
        (
            _add_missing(
                "order_index",
                ORDER_COLUMNS,
                "project_id, event_id",
                f"SELECT project_id, event_id, {ORDER_EVENT}, count() AS stored FROM ("
                f"SELECT {ORDER_COLUMNS} FROM orders WHERE (project_id, event_id) IN $window_ids"
                ") GROUP BY project_id, event_id",
                "SELECT project_id, event_id, count() AS kept FROM order_index"
                " WHERE (project_id, order_id) IN (SELECT * FROM repair_orders)"
                " AND (project_id, event_id) IN $window_ids GROUP BY project_id, event_id",
            ),
        ),
    ),
    (
        # Ingest writes an order's lines after its event: one row per stored event row, the
        # lines from order_items (written before the event, so there).
        "order_lines",
        (
            _add_missing(
                "order_lines",
                LINES_COLUMNS,
                "project_id, event_id",
                f"""
                SELECT * FROM (
                    SELECT project_id, event_id, {ORDER_EVENT}, count() AS stored FROM (
                        SELECT {ORDER_COLUMNS} FROM orders
                        WHERE (project_id, event_id) IN $window_ids
                    )
                    GROUP BY project_id, event_id
                ) AS stored_orders
                ALL LEFT JOIN (
                    SELECT project_id, event_id,
                           arraySort(x -> x.1, groupArray((line, item_product, item_price,
                                                           item_quantity))) AS sorted_lines,
                           arrayMap(x -> x.2, sorted_lines) AS product_ids,
                           arrayMap(x -> x.3, sorted_lines) AS prices,
                           arrayMap(x -> x.4, sorted_lines) AS quantities
                    FROM (
                        SELECT project_id, event_id, line,
                               any(product_id) AS item_product,
                               any(price) AS item_price,
                               any(quantity) AS item_quantity
                        FROM order_items
                        WHERE (project_id, event_id) IN $window_ids
                        GROUP BY project_id, event_id, line
                    )
                    GROUP BY project_id, event_id
                ) AS event_lines USING (project_id, event_id)
                ALL LEFT JOIN (
                    SELECT project_id, event_id,
                           any(if(JSONHas(properties, 'items'),
                                  toInt64(JSONExtractFloat(properties, 'items')), -1))
                               AS declared_items
                    FROM events
                    WHERE (project_id, event_id) IN $window_ids
                    GROUP BY project_id, event_id
                ) AS event_declared USING (project_id, event_id)
                """,
                "SELECT project_id, event_id, count() AS kept FROM order_lines"
                " WHERE (project_id, event_id) IN $window_ids GROUP BY project_id, event_id",
            ),
        ),
    ),
    (
        "sales_15m",
        (
            _delta(
                "sales_15m",
                ("orders", "revenue"),
                f"SELECT project_id, currency, {BUCKET} AS bucket, toInt64(count()) AS orders,"
                f" {exact_sum('total')} AS revenue FROM orders WHERE {IN_BUCKETS}"
                " GROUP BY project_id, currency, bucket",
                "SELECT project_id, currency, bucket, toInt64(sum(orders)) AS orders,"
                f" {exact_sum('revenue')} AS revenue FROM sales_15m"
                " WHERE (project_id, currency, bucket) IN (SELECT * FROM repair_buckets)"
                " GROUP BY project_id, currency, bucket",
            ),
        ),
    ),
    (
        "order_line_counts",
        (
            _delta(
                "order_line_counts",
                ("event_rows", "line_rows"),
                f"""
                SELECT project_id, currency, bucket,
                       toInt64(sum(events)) AS event_rows, toInt64(sum(lines)) AS line_rows
                FROM (
                    SELECT project_id, currency, {BUCKET} AS bucket, 1 AS events, 0 AS lines
                    FROM orders WHERE {IN_BUCKETS}
                    UNION ALL
                    SELECT project_id, currency, {BUCKET} AS bucket, 0 AS events, 1 AS lines
                    FROM order_lines WHERE {IN_BUCKETS}
                )
                GROUP BY project_id, currency, bucket
                """,
                "SELECT project_id, currency, bucket, toInt64(sum(event_rows)) AS event_rows,"
                " toInt64(sum(line_rows)) AS line_rows FROM order_line_counts"
                " WHERE (project_id, currency, bucket) IN (SELECT * FROM repair_buckets)"
                " GROUP BY project_id, currency, bucket",
            ),
        ),
    ),
    (
        # min() of times: adding what is already there changes nothing.
        "customer_first",
        (
            """
            INSERT INTO customer_first (project_id, visitor_id, first_ts)
            SELECT project_id, visitor_id, minState(ts) FROM orders
            WHERE (project_id, event_id) IN $window_ids
            GROUP BY project_id, visitor_id
            """,
        ),
    ),
    (
        "product_views",
        (
            _add_missing(
                "product_views",
                "project_id, product_id, visitor_id, ts",
                "project_id, product_id, visitor_id, ts",
                "SELECT project_id, product_id, visitor_id, ts, count() AS stored FROM events"
                " WHERE event = 'product_view' AND (project_id, event_id) IN $window_ids"
                " GROUP BY project_id, product_id, visitor_id, ts",
                "SELECT project_id, product_id, visitor_id, ts, count() AS kept"
                " FROM product_views WHERE (project_id, product_id, visitor_id, ts) IN ("
                " SELECT project_id, product_id, visitor_id, ts FROM events"
                " WHERE event = 'product_view' AND (project_id, event_id) IN $window_ids)"
                " GROUP BY project_id, product_id, visitor_id, ts",
            ),
        ),
    ),
    (
        # The latest name per product (argMax): adding names already seen changes nothing.
        "product_names",
        (
            """
            INSERT INTO product_names (project_id, product_id, name, ts, event_id, line)
            SELECT project_id, product_id, name, ts, event_id, line FROM order_items
            WHERE name != '' AND (project_id, event_id) IN $window_ids
            """,
            """
            INSERT INTO product_names (project_id, product_id, name, ts, event_id, line)
            SELECT project_id, product_id, JSONExtractString(properties, 'name') AS name,
                   ts, event_id, toUInt16(0)
            FROM events
            WHERE event = 'product_view' AND name != ''
              AND (project_id, event_id) IN $window_ids
            """,
        ),
    ),
    (
        "order_dups",
        (
            """
            INSERT INTO order_dups (project_id, order_id)
            SELECT project_id, order_id FROM order_index
            WHERE (project_id, order_id) IN (SELECT * FROM repair_orders)
            GROUP BY project_id, order_id HAVING count() > 1
            """,
        ),
    ),
)


@dataclass
class RepairReport:
    window_events: int = 0
    orders: int = 0
    buckets: int = 0
    seconds: float = 0.0


def repair_rollups(
    backend: Backend, window_seconds: int = WINDOW_SECONDS, only: tuple[str, ...] = ()
) -> RepairReport:
    """Make every table derived from ``events`` whole again for the events received in the
    last ``window_seconds`` before the newest one (blocking; run before serving). ``only``: just
    these steps (after the scope), e.g. the one rollup a migration rebuilt the view of."""
    started = time.monotonic()
    report = RepairReport()
    _drop_scratch(backend)
    try:
        for name, statements in STEPS:
            if only and name != "scope" and name not in only:
                continue
            for statement in statements:
                backend.execute(
                    statement.replace("{window}", str(int(window_seconds))).replace(
                        "$window_ids", WINDOW_IDS
                    )
                )
            if name == "scope":
                report.window_events = _count(backend, "repair_window")
                report.buckets = _count(backend, "repair_buckets")
            elif name == "orders":
                report.orders = _count(backend, "repair_orders")
    finally:
        _drop_scratch(backend)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _count(backend: Backend, table: str) -> int:
    rows = backend.execute(f"SELECT count() FROM {table}")
    return int(rows[0][0]) if rows else 0


def _drop_scratch(backend: Backend) -> None:
    for table in SCRATCH:
        backend.execute(f"DROP TABLE IF EXISTS {table}")

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

from cartlytics.common.commerce.rollups import (
    BUCKET,
    CUSTOMER_FIRST,
    IDENTITY_LINKS,
    ITEM_NAMES,
    ORDER_DUPS,
    ORDER_EVENT,
    ORDER_INDEX,
    ORDER_LINE_COUNTS_EVENTS,
    ORDER_LINE_COUNTS_LINES,
    ORDERS,
    PEOPLE_FIRST,
    PRODUCT_VIEWS,
    SALES_15M,
    STORED_ORDERS,
    VIEW_NAMES,
    Rollup,
)

from .backends import Backend
from .sql import Sql, exact_sum, render

WINDOW_SECONDS = 300
"""Events received this long before the newest one are rebuilt. An INSERT in flight at the stop
holds the newest events (received_at is set as a request arrives, group commit flushes within a
second, and a batch is at most 1,000 events); five minutes leaves a wide margin."""

# Scratch tables (Memory engine: gone with the process): what the repair works on, fixed once so
# that every step sees the same keys however the tables merge meanwhile.
SCRATCH = ("repair_window", "repair_orders", "repair_buckets")
WINDOW_IDS = Sql("(SELECT project_id, event_id FROM repair_window)")

# Slots of the statements below: {window} (seconds, a value) and {window_ids} (the subquery).
IN_WINDOW = Sql("(project_id, event_id) IN {window_ids}")
"""A row of an event received in the window."""
IN_ORDERS = Sql("(project_id, order_id) IN (SELECT * FROM repair_orders)")
"""A row of an orderId the window's events carry."""
IN_BUCKETS = Sql(f"(project_id, currency, {BUCKET}) IN (SELECT * FROM repair_buckets)")
"""A row in a 15-minute bucket of the window's orders."""
EVENT_KEY = ("project_id", "event_id")
LINES_COLUMNS = (
    *("project_id", "order_id", "event_id", "ts", "currency", "visitor_id"),
    *("product_ids", "prices", "quantities", "declared_items"),
)


def _add_missing(
    target: str, names: tuple[str, ...], key: tuple[str, ...], wanted: Sql, kept_where: Sql
) -> Sql:
    """SQL: insert into ``target`` (its columns ``names``) the copies of each ``key`` that
    ``wanted`` (a subquery: the key columns, the other ``names`` and ``stored``, its number of
    stored copies) has more of than ``target`` holds among its rows matching ``kept_where``."""
    columns = ", ".join(names)
    keys = ", ".join(key)
    return (
        Sql(f"""
        INSERT INTO {target} ({columns})
        SELECT {columns} FROM (
            SELECT *,
                   arrayJoin(range(toUInt64(greatest(toInt64(stored) - toInt64(kept), 0))))
                       AS copy
            FROM (""")
        + wanted
        + Sql(f""") AS wanted
            ALL LEFT JOIN (
                SELECT {keys}, count() AS kept FROM {target}
                WHERE """)
        + kept_where
        + Sql(f"""
                GROUP BY {keys}
            ) AS present USING ({keys})
            WHERE stored > kept
        )
        """)
    )


def _copies(rollup: Rollup, key: tuple[str, ...], rows: Sql) -> Sql:
    """SQL: per ``key``, ``rows`` (``rollup``'s SELECT over the rows concerned) as one row with
    ``stored``, its number of copies (the other columns are the same in every copy)."""
    keys = ", ".join(key)
    others = "".join(f"any({name}) AS {name}, " for name in rollup.names if name not in key)
    return (
        Sql(f"SELECT {keys}, {others}count() AS stored FROM (") + rows + Sql(f") GROUP BY {keys}")
    )


def _add_copies(rollup: Rollup, key: tuple[str, ...], rows: Sql, kept_where: Sql) -> Sql:
    """SQL: insert into ``rollup``'s target the copies of ``rows`` (its SELECT over the rows
    concerned) it lacks, by ``key``."""
    return _add_missing(rollup.target, rollup.names, key, _copies(rollup, key, rows), kept_where)


REPAIRED_BUCKETS = Sql("(project_id, currency, bucket) IN (SELECT * FROM repair_buckets)")
"""A summing rollup's row in a bucket the repair rebuilds."""


def _delta(
    target: str, sums: dict[str, Sql], rows: tuple[Sql, ...], present: Sql = REPAIRED_BUCKETS
) -> Sql:
    """SQL: add to the summing rollup ``target`` what makes each bucket's ``sums`` (value
    column: its sum) equal to what they are over ``rows`` (its views' SELECTs over the rows
    concerned, all of them with project_id, currency, bucket and the value columns), for the
    buckets of its rows that ``present`` picks (by default the repaired ones; the erasure and
    retention purge pass a whole project, ``storage/purge.py``)."""
    key = "project_id, currency, bucket"
    summed = Sql.join(", ", [expression + Sql(f" AS {name}") for name, expression in sums.items()])
    differ = " OR ".join(f"wanted.{name} != present.{name}" for name in sums)
    return (
        Sql(f"\nINSERT INTO {target} ({key}, {', '.join(sums)})\nSELECT {key}, ")
        + Sql(", ".join(f"wanted.{name} - present.{name}" for name in sums))
        + Sql(f"\nFROM (SELECT {key}, ")
        + summed
        + Sql(" FROM (")
        + Sql.join("\n    UNION ALL\n    ", rows)
        + Sql(f") GROUP BY {key}) AS wanted\nFULL OUTER JOIN (SELECT {key}, ")
        + summed
        + Sql(f" FROM {target} WHERE ")
        + present
        + Sql(f" GROUP BY {key}) AS present USING ({key})\nWHERE {differ}")
    )


# The value columns of the two summing rollups, summed exactly.
SALES_SUMS = {"orders": Sql("toInt64(sum(orders))"), "revenue": Sql(exact_sum("revenue"))}
LINE_COUNT_SUMS = {
    "event_rows": Sql("toInt64(sum(event_rows))"),
    "line_rows": Sql("toInt64(sum(line_rows))"),
}


# Every step only adds rows (no deletion, so no mutation: a delete of 10 rows among a million
# orders took 6-8 s embedded): what is missing from a per-event table, the difference to what it
# should sum to in a rollup. Each rollup's rows are its definition's SELECT (commerce/rollups.py)
# over the rows concerned. Tables only ever lack rows after a cut write, never hold extra ones:
# each view writes a row for every `events` row, and `events` may merge its copies away later;
# so the rollups after `orders` read the order rows from `orders` (STORED_ORDERS), which keeps
# every copy written.
STEPS: tuple[tuple[str, tuple[Sql, ...]], ...] = (
    (
        "scope",
        (
            # Every event id received in the window (its other stored copies come with it).
            Sql("""
            CREATE TABLE repair_window ENGINE = Memory AS
            SELECT DISTINCT project_id, event_id FROM events
            WHERE received_at >= (SELECT max(received_at) FROM events)
                                 - INTERVAL {window} SECOND
            """),
            # The 15-minute buckets those events' orders fall in.
            Sql(f"""
            CREATE TABLE repair_buckets ENGINE = Memory AS
            SELECT DISTINCT project_id, currency, {BUCKET} AS bucket FROM events
            WHERE {ORDER_EVENT.text} AND (project_id, event_id) IN {{window_ids}}
            """),
        ),
    ),
    (
        # One row per stored order event row (`events` unmerged: every copy an INSERT wrote).
        "orders",
        (
            _add_copies(ORDERS, EVENT_KEY, ORDERS.select(where=IN_WINDOW), IN_WINDOW),
            Sql("""
            CREATE TABLE repair_orders ENGINE = Memory AS
            SELECT DISTINCT project_id, order_id FROM orders
            WHERE (project_id, event_id) IN {window_ids}
            """),
        ),
    ),
    (
        # The same rows as `orders`, sorted by orderId.
        "order_index",
        (
            _add_copies(
                ORDER_INDEX,
                EVENT_KEY,
                ORDER_INDEX.select(STORED_ORDERS, where=IN_WINDOW),
                IN_ORDERS + Sql(" AND ") + IN_WINDOW,
            ),
        ),
    ),
    (
        # Ingest writes an order's lines after its event (no view): one row per stored event
        # row, the lines from order_items (written before the event, so there).
        "order_lines",
        (
            _add_missing(
                "order_lines",
                LINES_COLUMNS,
                EVENT_KEY,
                Sql("SELECT * FROM (")
                + _copies(ORDERS, EVENT_KEY, ORDERS.select(STORED_ORDERS, where=IN_WINDOW))
                + Sql("""
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
                        WHERE (project_id, event_id) IN {window_ids}
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
                    WHERE (project_id, event_id) IN {window_ids}
                    GROUP BY project_id, event_id
                ) AS event_declared USING (project_id, event_id)
                """),
                IN_WINDOW,
            ),
        ),
    ),
    (
        "sales_15m",
        (_delta("sales_15m", SALES_SUMS, (SALES_15M.select(STORED_ORDERS, where=IN_BUCKETS),)),),
    ),
    (
        "order_line_counts",
        (
            _delta(
                "order_line_counts",
                LINE_COUNT_SUMS,
                (
                    ORDER_LINE_COUNTS_EVENTS.select(STORED_ORDERS, where=IN_BUCKETS),
                    ORDER_LINE_COUNTS_LINES.select(where=IN_BUCKETS),
                ),
            ),
        ),
    ),
    (
        # min() of times: adding what is already there changes nothing.
        "customer_first",
        (CUSTOMER_FIRST.backfill(STORED_ORDERS, where=IN_WINDOW),),
    ),
    (
        "product_views",
        (
            _add_copies(
                PRODUCT_VIEWS,
                PRODUCT_VIEWS.names,
                PRODUCT_VIEWS.select(where=IN_WINDOW),
                Sql("(project_id, product_id, visitor_id, ts) IN (")
                + PRODUCT_VIEWS.select(where=IN_WINDOW)
                + Sql(")"),
            ),
        ),
    ),
    (
        # The latest name per product (argMax): adding names already seen changes nothing.
        "product_names",
        (ITEM_NAMES.backfill(where=IN_WINDOW), VIEW_NAMES.backfill(where=IN_WINDOW)),
    ),
    (
        "order_dups",
        (ORDER_DUPS.backfill(where=IN_ORDERS),),
    ),
    (
        # min() / argMin() of the first link: adding what is already there changes nothing.
        "identity_links",
        (IDENTITY_LINKS.backfill(where=IN_WINDOW), PEOPLE_FIRST.backfill(where=IN_WINDOW)),
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
    slots = {"window": int(window_seconds), "window_ids": WINDOW_IDS}
    _drop_scratch(backend)
    try:
        for name, statements in STEPS:
            if only and name != "scope" and name not in only:
                continue
            for statement in statements:
                backend.execute(render(statement, slots))
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

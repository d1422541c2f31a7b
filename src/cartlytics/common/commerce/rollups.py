"""The rollups: each materialized view's SELECT, written once.

A rollup is a table that ClickHouse keeps from stored rows by a materialized view (``orders``,
``sales_15m``, ...), or, for the two that ingest writes itself (``order_dups``), by a query of the
same shape. Its definition here is the only place its SELECT is written; everything else is built
from it:

- the migration that creates the view: ``ROLLUP.create()``;
- the backfill that fills the target from rows stored before the view existed:
  ``ROLLUP.backfill()`` (the same SELECT, ``INSERT INTO`` the target), or over other rows holding
  the same columns, ``ROLLUP.backfill(STORED_ORDERS)``;
- the repair after a cut write (``common/storage/repair.py``): the same SELECT narrowed to the
  events of the repair window, ``ROLLUP.select(where=...)``, compared with what the target holds.

tests/test_rollups.py checks, on both backends, that every target holds exactly what its
definition's SELECT gives over the stored rows.

Changing a rollup's definition: change it here, and add a migration (a new file in
``common/storage/migrations/``) whose forward statements replace the view from the current
definition, ``*ROLLUP.replace()`` (with any ALTER of the target's columns between the drop and the
create), and ``repair_after=(<its repair step>,)``: on a live store, INSERTs by other replicas
between the drop and the create miss the view, and the repair that runs after the migration puts
them back. The earlier migration that created the view keeps referring to this definition (a new
store gets the current view at once; the new migration replaces it by the same). Only when that
earlier migration's target cannot hold the new definition (a column type the later migration
changes) does the earlier migration freeze the columns it had, as migration 3 does for
``sales_15m`` (see ``m0003_create_order_rollups.SALES_15M_UNTIL_7``).

Slots: the SQL here has no ``{name}`` slots (a literal ``{`` followed by a lowercase name and
``}`` would be read as one by ``render``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cartlytics.common.storage.sql import EMPTY, Sql

ORDER_EVENT = Sql("event = 'order_completed' AND order_id != ''")
"""An ``events`` row that is an order event: what every order rollup reads."""


@dataclass(frozen=True)
class Rows:
    """The rows a rollup reads: a table, and the condition that picks them (none: every row)."""

    table: str
    where: Sql = EMPTY


ORDER_EVENTS = Rows("events", ORDER_EVENT)
"""Every stored order event row, duplicates included."""

STORED_ORDERS = Rows("orders")
"""The same rows as ``ORDER_EVENTS``, as they were written: ``events`` (ReplacingMergeTree) may
merge the copies of an event away, ``orders`` keeps one row per copy written, as every view on
``events`` saw them. Backfills and repairs of order rollups read order rows here; it has every
column an order rollup reads (``ORDERS``)."""


def _name(column: str) -> str:
    """The name of a SELECT list entry: ``expression AS name``, or a plain column."""
    return column.rsplit(" AS ", 1)[-1].strip()


def _where(own: Sql, extra: Sql) -> Sql:
    """The WHERE clause of rows picked by ``own`` (as written: a view's text stays the same) and
    narrowed by ``extra``; each in parentheses when both apply."""
    if not extra:
        return Sql("\nWHERE ") + own if own else EMPTY
    if not own:
        return Sql("\nWHERE ") + extra
    return Sql("\nWHERE (") + own + Sql(") AND (") + extra + Sql(")")


@dataclass(frozen=True)
class Rollup:
    """A rollup table and the SELECT that fills it: ``SELECT columns FROM rows [GROUP BY ...
    HAVING ...]``. ``view``: the materialized view writing ``target`` (None: ingest writes it
    with this query's rows, as for ``order_dups``)."""

    view: str | None
    target: str
    columns: tuple[str, ...]
    """The SELECT list, each entry a column or ``expression AS name`` (trusted SQL)."""
    rows: Rows
    group_by: Sql = EMPTY
    having: Sql = EMPTY

    @property
    def names(self) -> tuple[str, ...]:
        """The target's columns this SELECT writes, in order."""
        return tuple(_name(column) for column in self.columns)

    def with_columns(self, *columns: str) -> Rollup:
        """The same rollup with another SELECT list (a migration's frozen, superseded one)."""
        return dataclasses.replace(self, columns=columns)

    def select(self, rows: Rows | None = None, where: Sql = EMPTY) -> Sql:
        """This rollup's SELECT over ``rows`` (its own by default; other rows holding the same
        columns, e.g. ``STORED_ORDERS``), narrowed by ``where``."""
        source = rows or self.rows
        sql = Sql("SELECT ") + Sql.join(", ", map(Sql, self.columns))
        sql += Sql("\nFROM " + source.table) + _where(source.where, where)
        if self.group_by:
            sql += Sql("\nGROUP BY ") + self.group_by
        if self.having:
            sql += Sql(" HAVING ") + self.having
        return sql

    def create(self) -> Sql:
        """The statement creating the view (if it does not exist)."""
        return (
            Sql(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self._view()} TO {self.target} AS\n")
            + self.select()
        )

    def drop(self) -> Sql:
        """The statement dropping the view (the target and its rows stay)."""
        return Sql(f"DROP TABLE IF EXISTS {self._view()}")

    def replace(self) -> tuple[Sql, Sql]:
        """A changed definition's migration: the view dropped and made again from this one."""
        return self.drop(), self.create()

    def backfill(self, rows: Rows | None = None, where: Sql = EMPTY) -> Sql:
        """The statement adding to the target what the view would have written for ``rows``
        (its own by default) narrowed by ``where``."""
        return Sql(f"INSERT INTO {self.target}\n") + self.select(rows, where)

    def _view(self) -> str:
        if self.view is None:
            raise ValueError(f"{self.target} has no materialized view: ingest writes it")
        return self.view


@dataclass(frozen=True)
class Feed:
    """Rows ingest writes into a view's source table (a Null table: only its views keep
    anything), as they can be read back from stored rows: the backfill and repair of the views
    on it."""

    table: str
    into: tuple[str, ...]
    """The source table's columns, in the order of ``columns``."""
    columns: tuple[str, ...]
    rows: Rows

    def select(self, where: Sql = EMPTY) -> Sql:
        """The rows ingest would have written, of those stored, narrowed by ``where``."""
        sql = Sql("SELECT ") + Sql.join(", ", map(Sql, self.columns))
        return sql + Sql("\nFROM " + self.rows.table) + _where(self.rows.where, where)

    def backfill(self, where: Sql = EMPTY) -> Sql:
        """The statement writing them into the source table (its views keep what they keep)."""
        return Sql(f"INSERT INTO {self.table} ({', '.join(self.into)})\n") + self.select(where)


ORDER_COLUMNS = ("project_id", "order_id", "event_id", "ts", "total", "currency", "visitor_id")

ORDERS = Rollup("orders_mv", "orders", ORDER_COLUMNS, ORDER_EVENTS)
"""``orders``: every stored order event row, narrow (what every order figure reads instead of
scanning all events), one row per copy written (a plain MergeTree: exactly the rows ``sales_15m``
summed)."""

ORDER_INDEX = Rollup("order_index_mv", "order_index", ORDER_COLUMNS, ORDER_EVENTS)
"""``order_index``: the same rows as ``orders``, sorted by orderId (ingest's duplicate check and
the sales correction read a few orderIds without scanning every order)."""

BUCKET = "toStartOfFifteenMinutes(ts)"
"""A row's 15-minute UTC bucket: every zone's hours, days, weeks and months are unions of them."""

SALES_15M = Rollup(
    "sales_15m_mv",
    "sales_15m",
    (
        "project_id",
        "currency",
        f"{BUCKET} AS bucket",
        "toInt64(1) AS orders",
        "toDecimal128(total, 0) AS revenue",
    ),
    ORDER_EVENTS,
)
"""``sales_15m`` (SummingMergeTree): per project, currency and 15-minute bucket, the number of
order event rows and the sum of their totals (exact, Decimal128). Duplicates are counted here and
corrected at query time for the orderIds listed in ``order_dups``."""

ORDER_DUPS = Rollup(
    None,
    "order_dups",
    ("project_id", "order_id"),
    Rows("order_index"),
    group_by=Sql("project_id, order_id"),
    having=Sql("count() > 1"),
)
"""``order_dups``: the orderIds with more than one stored event row (duplicates, retries stored
twice), the only orders whose rollup rows need correcting. Ingest adds to it (no view)."""

ORDER_LINE_COUNTS_EVENTS = Rollup(
    "order_line_counts_events_mv",
    "order_line_counts",
    ("project_id", "currency", f"{BUCKET} AS bucket", "toInt64(1) AS event_rows",
     "toInt64(0) AS line_rows"),
    ORDER_EVENTS,
)  # fmt: skip
"""``order_line_counts``, its ``event_rows``: per 15-minute bucket, the order event rows stored."""

ORDER_LINE_COUNTS_LINES = Rollup(
    "order_line_counts_lines_mv",
    "order_line_counts",
    ("project_id", "currency", f"{BUCKET} AS bucket", "toInt64(0) AS event_rows",
     "toInt64(1) AS line_rows"),
    Rows("order_lines"),
)  # fmt: skip
"""``order_line_counts``, its ``line_rows``: per 15-minute bucket, the ``order_lines`` rows. Every
order_lines row has its own event row, so equal sums over a range mean every event row there has
its order_lines row (the products figures' check, one small read)."""

CUSTOMER_FIRST = Rollup(
    "customer_first_mv",
    "customer_first",
    ("project_id", "visitor_id", "minState(ts) AS first_ts"),
    ORDER_EVENTS,
    group_by=Sql("project_id, visitor_id"),
)
"""``customer_first`` (AggregatingMergeTree): per visitor, the time of its earliest order event
row (any currency, duplicates included): "had an order before the period" without reading every
order. Rows of duplicated orderIds are corrected at query time."""

PRODUCT_VIEWS = Rollup(
    "product_views_mv",
    "product_views",
    ("project_id", "product_id", "visitor_id", "ts"),
    Rows("events", Sql("event = 'product_view'")),
)
"""``product_views``: the product_view events only, sorted by product: a product's viewers in a
period without reading the period's other events."""

PRODUCT_NAMES = Rollup(
    "product_names_mv",
    "product_names_latest",
    ("project_id", "product_id", "argMaxState(name, tuple(ts, event_id, line)) AS latest"),
    Rows("product_names"),
    group_by=Sql("project_id, product_id"),
)
"""``product_names_latest`` (AggregatingMergeTree): per product, its latest name by (time, event
id, line), from the names ingest writes into ``product_names`` (a Null table)."""

NAME_COLUMNS = ("project_id", "product_id", "name", "ts", "event_id", "line")

ITEM_NAMES = Feed(
    "product_names", NAME_COLUMNS, NAME_COLUMNS, Rows("order_items", Sql("name != ''"))
)
"""The names of ``PRODUCT_NAMES`` from line items: each non-empty line item name."""

VIEW_NAMES = Feed(
    "product_names",
    NAME_COLUMNS,
    ("project_id", "product_id", "JSONExtractString(properties, 'name') AS name", "ts",
     "event_id", "toUInt16(0)"),
    Rows("events", Sql("event = 'product_view' AND name != ''")),
)  # fmt: skip
"""The names of ``PRODUCT_NAMES`` from product_view events (their top-level ``properties.name``).
Needs JSON functions, which ClickHouse 18.16 lacks: the repair (embedded engine only) reads them,
no backfill does (docs/semantics.md)."""

IDENTITY_LINKS = Rollup(
    "identity_links_mv",
    "identity_links",
    ("project_id", "anonymous_id", "user_id", "minState(tuple(ts, event_id)) AS first_link"),
    Rows("events", Sql("user_id != '' AND anonymous_id != ''")),
    group_by=Sql("project_id, anonymous_id, user_id"),
)
"""``identity_links`` (AggregatingMergeTree): per anonymousId and userId seen together on an
event, the first such event by (time, event id): every link, kept (a later link of a device to
another user is recorded, not merged; the erasure recomputes ``people`` from what remains)."""

LINK_KEY = "concat(toString(ts), ' ', event_id, ' ', user_id)"
"""A link as one string that sorts as (time, event id): the time's text is of one width on a
store, event ids hold no space (which sorts below every character they may hold), and the userId
follows the third space. The min of one string merges about 3x faster than an argMin state of
a tuple (``people`` is read by every visitor figure)."""

PEOPLE_FIRST = Rollup(
    "people_mv",
    "people",
    ("project_id", "anonymous_id", f"minState({LINK_KEY}) AS first_link"),
    Rows("events", Sql("user_id != '' AND anonymous_id != ''")),
    group_by=Sql("project_id, anonymous_id"),
)
"""``people`` (AggregatingMergeTree): per anonymousId, its first link by (time, event id) as a
``LINK_KEY`` string: the lookup every visitor figure joins (``commerce.visitors.PEOPLE``), one row
per linked device once merged."""

VIEWS: tuple[Rollup, ...] = (
    ORDERS,
    SALES_15M,
    ORDER_INDEX,
    ORDER_LINE_COUNTS_EVENTS,
    ORDER_LINE_COUNTS_LINES,
    CUSTOMER_FIRST,
    PRODUCT_VIEWS,
    PRODUCT_NAMES,
    IDENTITY_LINKS,
    PEOPLE_FIRST,
)
"""Every materialized view, in the order the migrations create them."""

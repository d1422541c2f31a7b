"""Removing stored events for good, and making every table derived from them exact again.

The one deletion core of erasure (``cartlytics.common.erasure``: one shopper's events) and
retention (``cartlytics.common.retention``: a project's events older than its retention). A
``Selection`` says which events go, as conditions over ``events`` and over the tables holding one
row per event; ``purge`` then, in order, each step a statement that can run again with the same
result (so a purge cut by a crash is finished by running it again):

1. deletes the events and their rows in ``order_items``, ``order_lines``, ``orders``,
   ``order_index`` and ``product_views`` (mutations, waited for on every backend);
2. makes each rollup exact again from what remains, with its definition in
   ``cartlytics.common.commerce.rollups`` (never a second copy of its SELECT):

   - ``sales_15m`` and ``order_line_counts`` (summing): per bucket of the project, the difference
     between what ``orders``/``order_lines`` now add up to and what the rollup sums to is inserted
     (``repair._delta``, as the repair after a cut write does): exact, and a no-op when run again;
   - ``customer_first``, ``identity_links``, ``people`` (aggregating), ``product_views``: the
     rows of the visitors (links, anonymousIds, viewers) concerned are deleted and their
     definition's SELECT over what remains is inserted again; the people snapshot is emptied
     (``people_snapshot.py``: it may hold removed links);
   - ``product_names_latest``: the products concerned are deleted and rebuilt, line item names by
     ``ITEM_NAMES``, product_view names read by Python from the remaining events' properties (the
     exact rule ingest applies; ClickHouse 18.16 has no JSON functions, so ``VIEW_NAMES`` cannot be
     used there) and written through ``product_names`` like ingest does;
   - ``order_dups``: the orderIds it lists that no longer have two stored rows are deleted.

Between a deletion and its rebuild a reader may briefly see a rollup without the rows being
rebuilt (seconds); once ``purge`` returns, every figure is what it would be had the removed events
never been sent. Blocking: run it in a thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from cartlytics.common.commerce.rollups import (
    CUSTOMER_FIRST,
    IDENTITY_LINKS,
    ITEM_NAMES,
    ORDER_DUPS,
    ORDER_LINE_COUNTS_EVENTS,
    ORDER_LINE_COUNTS_LINES,
    PEOPLE_FIRST,
    PRODUCT_VIEWS,
    SALES_15M,
    STORED_ORDERS,
)

from . import Storage
from .backends import StorageError
from .migrations import type_slots
from .people_snapshot import PeopleSnapshot
from .repair import LINE_COUNT_SUMS, SALES_SUMS, _delta
from .sql import EMPTY, Sql

log = structlog.get_logger(__name__)

PROJECT = Sql("project_id = {project}")
MUTATION_TIMEOUT_SECONDS = 600.0
MAX_LIST = 2000
"""Values per literal list in one statement (a statement stays well below ClickHouse's
max_query_size of 256 KiB); longer lists are deleted in several statements."""

PER_EVENT_TABLES = ("order_items", "order_lines", "orders", "order_index")
"""The tables with one row per stored event row (or line), each with project_id, event_id,
visitor_id and ts."""

_VIEW_NAME_CANDIDATES = Sql("""
    SELECT product_id, ts, event_id, properties
    FROM events
    WHERE project_id = {project} AND event = 'product_view'{which_products}
      AND position(properties, '"name"') > 0
    ORDER BY product_id, ts DESC, event_id DESC{limit}
""")
_LISTED_DUPS = Sql("""
    SELECT DISTINCT order_id FROM order_dups
    WHERE project_id = {project} AND order_id NOT IN (SELECT order_id FROM ({still}))
""")
_PENDING_MUTATIONS = Sql("""
    SELECT count() FROM system.mutations
    WHERE database = currentDatabase() AND table = {table} AND is_done = 0
""")


@dataclass(frozen=True)
class Selection:
    """The events a purge removes, as conditions (``Sql`` with slots filled from ``params``),
    each applied within the project.

    ``events``: over ``events``; ``rows``: over the per-event tables (``PER_EVENT_TABLES``),
    with one statement per ``row_lists`` chunk when it names a list slot; ``views``: over
    ``product_views`` (and, to put back views that stay, over ``events``); ``visitors``: the
    ``customer_first`` rows to rebuild (None: the project's); ``products``: the product names to
    rebuild (None: every product of the project; an empty condition skips them); ``links``: the
    ``identity_links`` rows to rebuild (None: the project's)."""

    events: Sql
    rows: Sql
    views: Sql
    visitors: Sql | None
    products: Sql | None
    links: Sql | None
    people: Sql | None = None
    """The ``people`` rows (anonymousIds' first links) to rebuild (None: the project's; an empty
    condition skips them)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    row_lists: str = ""
    """The name of a tuple parameter of ``rows`` too long for one statement: chunked."""


class NotOnACluster(StorageError):
    """Purges delete with mutations and drop partitions of the tables by their own names, which
    are Distributed tables in cluster mode and take neither: refused before anything is deleted
    (docs/cluster.md, "Costs and limits")."""

    def __init__(self) -> None:
        super().__init__(
            "erasure and retention are not supported in cluster mode yet (docs/cluster.md)"
        )


@dataclass
class PurgeReport:
    mutations: int = 0
    names: int = 0
    seconds: float = 0.0


def _and(*conditions: Sql | None) -> Sql:
    parts = [Sql("(") + c + Sql(")") for c in conditions if c is not None and c]
    return Sql.join(" AND ", parts)


def chunks(values: Sequence[str], size: int = MAX_LIST) -> list[tuple[str, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values), size)]


class Purger:
    """Runs ``Selection``s against one ``Storage`` (blocking)."""

    def __init__(self, storage: Storage, timeout: float = MUTATION_TIMEOUT_SECONDS) -> None:
        self._storage = storage
        self._timeout = timeout
        self._slots = type_slots(storage.backend.types)

    # The steps ----------------------------------------------------------------------------------

    def purge(self, project: str, selection: Selection) -> PurgeReport:
        """Remove the selected events of ``project`` and make every rollup exact again."""
        if self._storage.cluster:
            raise NotOnACluster()
        started = time.monotonic()
        report = PurgeReport()
        params = {"project": project, **selection.params}
        self.delete("events", _and(PROJECT, selection.events), params, report)
        batches: list[Mapping[str, Any]] = [params]
        if selection.row_lists:
            listed = list(params[selection.row_lists])
            batches = [{**params, selection.row_lists: values} for values in chunks(listed)]
        for table in PER_EVENT_TABLES:
            for batch in batches:
                self.delete(table, _and(PROJECT, selection.rows), batch, report)
        views = _and(PROJECT, selection.views)
        self.delete("product_views", views, params, report)
        self._run(PRODUCT_VIEWS.backfill(where=views), params)

        # The summing rollups: inserted differences, per bucket of the project.
        self._run(
            _delta(
                "sales_15m",
                SALES_SUMS,
                (SALES_15M.select(STORED_ORDERS, where=PROJECT),),
                present=PROJECT,
            ),
            params,
        )
        self._run(
            _delta(
                "order_line_counts",
                LINE_COUNT_SUMS,
                (
                    ORDER_LINE_COUNTS_EVENTS.select(STORED_ORDERS, where=PROJECT),
                    ORDER_LINE_COUNTS_LINES.select(where=PROJECT),
                ),
                present=PROJECT,
            ),
            params,
        )
        # A bucket left with nothing sums to zero: merged away now (SummingMergeTree drops rows
        # whose sums are all zero), so each rollup holds exactly its definition's rows again.
        # Both tables are small (a row per project, currency and quarter hour).
        for table in ("sales_15m", "order_line_counts"):
            self._run(Sql("OPTIMIZE TABLE " + table + " FINAL"), params)
        self._rebuild_order_dups(params, report)

        customers = _and(PROJECT, selection.visitors)
        self.delete("customer_first", customers, params, report)
        self._run(CUSTOMER_FIRST.backfill(STORED_ORDERS, where=customers), params)

        links = _and(PROJECT, selection.links)
        self.delete("identity_links", links, params, report)
        self._run(IDENTITY_LINKS.backfill(where=links), params)

        if selection.people is None or selection.people:
            people = _and(PROJECT, selection.people)
            self.delete("people", people, params, report)
            self._run(PEOPLE_FIRST.backfill(where=people), params)
        # The snapshot may hold the links and order times just removed: emptied (the keeper
        # rebuilds it).
        PeopleSnapshot(self._storage).invalidate()

        if selection.products is None or selection.products:
            products = _and(PROJECT, selection.products)
            self.delete("product_names_latest", products, params, report)
            self._run(ITEM_NAMES.backfill(where=products), params)
            report.names = self._put_back_view_names(project, selection.products, params)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def drop_months(self, months: Iterable[int]) -> list[int]:
        """Drop whole months (YYYYMM) of every table partitioned by month: only for months that
        no project keeps any more (the caller checks; ``retention.expired_months``)."""
        if self._storage.cluster:
            raise NotOnACluster()
        dropped = []
        for month in sorted(months):
            for table in MONTHLY_TABLES:
                self._storage.query_sync(
                    Sql("ALTER TABLE " + table + " DROP PARTITION {month}"), {"month": month}
                )
            dropped.append(month)
        return dropped

    # Helpers -----------------------------------------------------------------------------------

    def _run(self, statement: Sql, params: Mapping[str, Any]) -> None:
        self._storage.query_sync(statement, {**self._slots, **params})

    def delete(
        self,
        table: str,
        where: Sql,
        params: Mapping[str, Any],
        report: PurgeReport | None = None,
    ) -> None:
        """``ALTER TABLE table DELETE WHERE where``, waited for (a background mutation on
        ClickHouse 18.16, synchronous with mutations_sync elsewhere)."""
        statement = Sql("ALTER TABLE " + table + " DELETE WHERE ") + where
        self._run(statement + Sql("{mutations_sync}"), params)
        if report is not None:
            report.mutations += 1
        self.wait_for_mutations(table)

    def wait_for_mutations(self, table: str) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.02
        while True:
            rows = self._storage.query_sync(_PENDING_MUTATIONS, {"table": table})
            if not rows or int(rows[0][0]) == 0:
                return
            if time.monotonic() > deadline:
                raise StorageError(f"mutations on {table} not done after {self._timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _rebuild_order_dups(self, params: Mapping[str, Any], report: PurgeReport) -> None:
        """Delete the orderIds listed in order_dups that no longer have two stored rows (a
        purge never makes new duplicates)."""
        still = ORDER_DUPS.select(where=PROJECT)
        rows = self._storage.query_sync(_LISTED_DUPS.fill(still=still), params)
        gone = sorted(str(row[0]) for row in rows)
        for values in chunks(gone):
            where = _and(PROJECT, Sql("order_id IN {gone_orders}"))
            self.delete("order_dups", where, {**params, "gone_orders": values}, report)

    def _put_back_view_names(
        self, project: str, products: Sql | None, params: Mapping[str, Any]
    ) -> int:
        """Each product's latest product_view name among the remaining events, written into
        ``product_names`` as ingest writes it (``services/ingest/ingestor._name_rows``: a
        product_view's top-level ``properties.name``, a non-empty string). Read in Python, so
        that it is exact on ClickHouse 18.16 too (no JSON functions there): first the latest
        candidate per product, then, for a product whose latest candidate has no such name (the
        text ``"name"`` elsewhere in its properties), all of its candidates."""
        which = EMPTY if products is None else Sql(" AND ") + products
        found: dict[str, tuple[str, datetime, str]] = {}
        unresolved: set[str] = set()
        first = self._storage.query_sync(
            _VIEW_NAME_CANDIDATES,
            {**params, "which_products": which, "limit": Sql(" LIMIT 1 BY product_id")},
        )
        for product, ts, event_id, properties in first:
            name = _view_name(str(properties))
            if name:
                found[str(product)] = (name, _timestamp(ts), str(event_id))
            else:
                unresolved.add(str(product))
        for values in chunks(sorted(unresolved)):
            more = self._storage.query_sync(
                _VIEW_NAME_CANDIDATES,
                {
                    **params,
                    "which_products": which + Sql(" AND product_id IN {unresolved}"),
                    "unresolved": values,
                    "limit": EMPTY,
                },
            )
            for product, ts, event_id, properties in more:
                name = _view_name(str(properties))
                if name and str(product) not in found:
                    found[str(product)] = (name, _timestamp(ts), str(event_id))
        rows = [
            (project, product, name, ts, event_id, 0)
            for product, (name, ts, event_id) in sorted(found.items())
        ]
        if rows:
            self._storage.insert_sync(
                "product_names",
                ("project_id", "product_id", "name", "ts", "event_id", "line"),
                rows,
            )
        return len(rows)


MONTHLY_TABLES = (
    "events",
    "order_items",
    "order_lines",
    "orders",
    "product_views",
    "sales_15m",
    "order_line_counts",
)
"""The tables partitioned by month (``toYYYYMM`` of their time or bucket)."""


def _view_name(properties: str) -> str:
    try:
        value = json.loads(properties)
    except ValueError:
        return ""
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) and name else ""


def _timestamp(value: Any) -> datetime:
    """A time as the backends return it (``YYYY-MM-DD HH:MM:SS[.fff]``, UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)

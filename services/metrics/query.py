"""POST /analytics/query: custom metrics split by dimensions, from a fixed catalogue.

Every metric and dimension a request may name is defined here once (docs/query.md restates the
catalogue) as SQL fragments written in this file; a request only *selects* entries by name. One
builder (``_select``) composes the selected fragments into a query per source; every value that
comes from a request (filter values, period bounds, time zone, currency, row cap) is passed as a
``{name}`` parameter and rendered by ``cartlytics.common.storage.sql.render``. No string from a
request ever becomes SQL text: an unknown name is a 400 whose ErrorInfo lists the valid ones.

Three sources, each a fixed relation of the schema:

- ``events``: the period's stored events. Event counts are distinct event ids (a retry stored
  twice until a merge counts once), visitors and sessions distinct ids.
- ``orders``: one row per distinct order whose first ``order_completed`` (by (timestamp, event
  id), over all time) is in the period (commerce.orders.PERIOD_ORDERS: the period's rows of
  ``orders``, and only the duplicated orderIds looked up over all time); revenue = its total.
- ``lines``: the line items of those first events, once per (event id, line); revenue =
  price * quantity. Used for ``units_sold`` and, when a product dimension or filter is in play,
  for every order metric (the spec: revenue by product uses line-item revenue).

Order-level rows take their attributes (device, country, utm_*, page, ...) from the order's first
event, through a join on its event id. Each source is one GROUP BY; rows are merged in Python on
the dimension values, then derived metrics (aov, conversion_rate), ordering and the limit apply.
Queries use only functions both ClickHouse 26 (chdb) and ClickHouse 18.16 have.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

from cartlytics.common.commerce.orders import (
    ORDER_COUNT,
    ORDER_REVENUE,
    PERIOD_ORDERS,
    PERIOD_ORDERS_ANY_CURRENCY,
)
from cartlytics.common.commerce.products import (
    LINE_REVENUE,
    ORDERS_LISTING,
    UNITS_SOLD,
    first_events_of,
    line_items,
)
from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.errors import ApiError, FieldViolation, invalid_argument
from cartlytics.common.money import average, parse_currency, percent
from cartlytics.common.periods import parse_timezone, resolve_period
from cartlytics.common.storage import Sql, literal

from .base import Reader
from .reports import CustomQuery, QueryReport

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
# Groups one source may return before the request is refused as too broad (the rows are merged
# and ordered in memory, so an unbounded GROUP BY must not reach Python).
MAX_GROUPS = 100_000
MAX_FILTER_VALUE = 1000
RESERVED_FILTERS = ("period", "currency", "timezone")
_ORDER_BY = re.compile(r"^([a-z_]+)(?::(asc|desc))?$")
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII digits only (not \d)


class Source(Enum):
    EVENTS = "events"
    ORDERS = "orders"
    LINES = "lines"


ALL_SOURCES = (Source.EVENTS, Source.ORDERS, Source.LINES)

# ---------------------------------------------------------------------------------------------
# Relations: fixed fragments of this file and of cartlytics.common.commerce; their {name} slots
# are values rendered by sql.render, or fragments the builder fills (never request text).

EVENTS_RELATION = Sql("events")
EVENTS_WHERE = (Sql("project_id = {project}"), Sql("ts >= {start}"), Sql("ts < {end}"))


def _period_orders(by_currency: bool) -> Sql:
    """The period's distinct orders (their first events in the window), in {currency} or in
    every currency; not every order of all time grouped per request (decision 42: 680 -> 52 ms
    p50 at 10M events on 18.16)."""
    return PERIOD_ORDERS if by_currency else PERIOD_ORDERS_ANY_CURRENCY


def _orders_relation(by_currency: bool) -> Sql:
    return Sql("""(
        SELECT first_event_id AS event_id, order_id, first_ts, order_total, order_currency
        FROM ({orders})
    ) AS o""").fill(orders=_period_orders(by_currency))


def _lines_relation(by_currency: bool) -> Sql:
    """The line items of the period's orders. An item's ts and currency are its event's, so
    (for a first event) the order's first_ts and currency."""
    items = line_items(
        Sql(" AND ts >= {start} AND ts < {end}") + first_events_of(_period_orders(by_currency))
    )
    return Sql("({items}) AS o").fill(items=items)


# The attributes of order events in the period, one row per event id; joined (ANY LEFT JOIN, the
# right side has unique keys, so both server versions agree) on the order's first event id.
ATTRIBUTES_JOIN = Sql("""
    ANY LEFT JOIN (
        SELECT event_id, {columns}
        FROM events
        WHERE project_id = {project} AND event = 'order_completed'
          AND ts >= {start} AND ts < {end}
        GROUP BY event_id
    ) AS a USING event_id""")

# ---------------------------------------------------------------------------------------------
# Dimensions


@dataclass(frozen=True)
class Dimension:
    name: str
    definition: str
    # The expression per source it exists in.
    sql: Mapping[Source, Sql]
    kind: str = "text"  # "text" | "day" (YYYY-MM-DD) | "hour" (unix seconds -> RFC 3339)
    # On the order sources, read from the order's first event (the attributes join).
    attribute: str = ""


TIME_COLUMN = {
    Source.EVENTS: Sql("ts"),
    Source.ORDERS: Sql("first_ts"),
    Source.LINES: Sql("item_ts"),
}


def _timed(expression: str) -> dict[Source, Sql]:
    """The expression per source, its {time} slot filled with the source's timestamp column."""
    return {source: Sql(expression).fill(time=column) for source, column in TIME_COLUMN.items()}


def _attribute(name: str, definition: str) -> Dimension:
    """A typed column of events; on orders, the same column of the order's first event."""
    alias = f"attr_{name}"
    return Dimension(
        name,
        definition,
        {Source.EVENTS: Sql(name), Source.ORDERS: Sql(alias), Source.LINES: Sql(alias)},
        attribute=name,
    )


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension(
        "date", "day YYYY-MM-DD in the timezone", _timed("toString(toDate({time}, {tz}))"), "day"
    ),
    Dimension(
        "week",
        "Monday YYYY-MM-DD of the ISO week in the timezone",
        _timed("toString(toMonday({time}, {tz}))"),
        "day",
    ),
    Dimension(
        "month",
        "first day YYYY-MM-DD of the month in the timezone",
        _timed("toString(toStartOfMonth({time}, {tz}))"),
        "day",
    ),
    Dimension(
        "hour",
        "start of the hour in the timezone, RFC 3339 with offset",
        _timed("toUnixTimestamp(toStartOfHour({time}, {tz}))"),
        "hour",
    ),
    # On orders, the first event's own column (always order_completed): a constant GROUP BY key
    # would make ClickHouse 18.16 answer one row of zeros for an empty selection.
    _attribute("event", "event name"),
    Dimension(
        "currency",
        "order currency",
        {Source.ORDERS: Sql("order_currency"), Source.LINES: Sql("item_currency")},
    ),
    Dimension(
        "product_id",
        "properties.productId; the line item's for order metrics",
        {Source.EVENTS: Sql("product_id"), Source.LINES: Sql("item_product")},
    ),
    Dimension("product_category", "line item category", {Source.LINES: Sql("item_category")}),
    _attribute("page", "page path"),
    _attribute("referrer_host", "referrer host"),
    _attribute("utm_source", "campaign source"),
    _attribute("utm_medium", "campaign medium"),
    _attribute("utm_campaign", "campaign name"),
    _attribute("country", "ISO 3166-1 country code"),
    _attribute("region", "region"),
    _attribute("device", "desktop, mobile, tablet or bot"),
    _attribute("browser", "browser family"),
)
DIMENSION_BY_NAME = {d.name: d for d in DIMENSIONS}
PRODUCT_DIMENSIONS = frozenset({"product_id", "product_category"})

# The columns of events that every query of events may read (measures, filters, time).
EVENT_BASE_COLUMNS = ("project_id", "event_id", "event", "ts", "visitor_id", "session_id")


def events_with_people(dimensions: Sequence[Dimension]) -> Sql:
    """The period's events with each one's person beside it (PERSON), for the measures that
    count visitors (commerce.visitors), carrying only the columns ``dimensions`` read (each
    column carried through the join costs: the whole period's events go through it)."""
    wanted = list(EVENT_BASE_COLUMNS)
    for dimension in dimensions:
        column = dimension.attribute or ("product_id" if dimension.name == "product_id" else None)
        if column and column not in wanted:
            wanted.append(column)
    return Sql("({people}) AS events_of_people").fill(
        people=as_people(
            Sql(
                "SELECT " + ", ".join(wanted) + ", visitor_id AS person FROM events"
                " WHERE project_id = {project} AND ts >= {start} AND ts < {end}"
            ),
            (*wanted, "person"),
            "person",
            hashed=True,  # only counted
        )
    )


PERSON = Sql("person")

# ---------------------------------------------------------------------------------------------
# Measures: the aggregate columns metrics are computed from.


@dataclass(frozen=True)
class Measure:
    name: str
    sql: Mapping[Source, Sql]  # one source, or ORDERS and LINES for money (chosen per request)
    events: tuple[str, ...] = ()  # the only event names it counts (empty: any)
    people: bool = False  # reads PERSON (the events joined with commerce.visitors.PEOPLE)


def _count_of(event: str) -> Measure:
    condition = Sql("event = ") + Sql(literal(event))  # a catalogue constant
    return Measure(
        event, {Source.EVENTS: Sql("uniqExactIf(event_id, {c})").fill(c=condition)}, (event,)
    )


# Order money: commerce's definitions (an order's total; a line's price * quantity).
REVENUE = Measure("revenue", {Source.ORDERS: ORDER_REVENUE, Source.LINES: LINE_REVENUE})
ORDERS = Measure("orders", {Source.ORDERS: ORDER_COUNT, Source.LINES: ORDERS_LISTING})
UNITS = Measure("units", {Source.LINES: UNITS_SOLD})
EVENTS = Measure("events", {Source.EVENTS: Sql("uniqExact(event_id)")})
# Visitors are people (commerce.visitors): a shopper's anonymous and signed-in events count once.
VISITORS = Measure(
    "visitors",
    {Source.EVENTS: Sql("uniqExactIf({person}, visitor_id != '')").fill(person=PERSON)},
    people=True,
)
SESSIONS = Measure("sessions", {Source.EVENTS: Sql("uniqExactIf(session_id, session_id != '')")})
# Visitors of the group whose event is the first event of an order of the period (any currency).
BUYERS = Measure(
    "buyers",
    {
        Source.EVENTS: Sql("""uniqExactIf({person}, visitor_id != '' AND event = 'order_completed'
                                 AND event_id IN (SELECT first_event_id FROM ({orders})))""").fill(
            person=PERSON, orders=_period_orders(by_currency=False)
        )
    },
    people=True,
)
PAGE_VIEWS = _count_of("page_view")
PRODUCT_VIEWS = _count_of("product_view")
ADD_TO_CARTS = _count_of("add_to_cart")
CHECKOUTS = _count_of("checkout_started")

# ---------------------------------------------------------------------------------------------
# Metrics

Value = int | float


@dataclass(frozen=True)
class Metric:
    name: str
    definition: str
    measures: tuple[Measure, ...]
    value: Callable[[Mapping[str, int]], Value]
    refused: Mapping[str, str] = field(default_factory=dict)  # dimension -> why not


NOT_MONEY = "only order metrics have a currency"
NO_CATEGORY = "events carry no product category (only order line items do)"
NO_PRODUCT = "these events carry no product"


def _counted(measure: Measure) -> Callable[[Mapping[str, int]], Value]:
    return lambda m: m[measure.name]


def _event_metric(name: str, definition: str, measure: Measure, **refused: str) -> Metric:
    reasons = {"currency": NOT_MONEY, "product_category": NO_CATEGORY, **refused}
    return Metric(name, definition, (measure,), _counted(measure), reasons)


METRICS: tuple[Metric, ...] = (
    Metric(
        "revenue",
        "order totals in the currency, line items by product",
        (REVENUE,),
        _counted(REVENUE),
    ),
    Metric("orders", "distinct orders in the currency", (ORDERS,), _counted(ORDERS)),
    Metric(
        "aov",
        "revenue / orders",
        (REVENUE, ORDERS),
        lambda m: average(m["revenue"], m["orders"]),
    ),
    Metric("units_sold", "line-item quantities", (UNITS,), _counted(UNITS)),
    _event_metric("visitors", "distinct visitors", VISITORS),
    _event_metric("sessions", "distinct sessions", SESSIONS),
    _event_metric("page_views", "page_view events", PAGE_VIEWS, product_id=NO_PRODUCT),
    _event_metric("product_views", "product_view events", PRODUCT_VIEWS),
    _event_metric("add_to_carts", "add_to_cart events", ADD_TO_CARTS),
    _event_metric("checkouts", "checkout_started events", CHECKOUTS, product_id=NO_PRODUCT),
    _event_metric("events", "events of any name", EVENTS),
    Metric(
        "conversion_rate",
        "% of visitors with an order",
        (BUYERS, VISITORS),
        lambda m: percent(m["buyers"], m["visitors"]),
        {
            "currency": NOT_MONEY,
            "product_category": NO_CATEGORY,
            "product_id": "an order carries its products in line items, not in productId",
            "event": "an order event is not a page view, a product view, ...",
            "page": "an order event is not on the page that converted",
        },
    ),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}

# ---------------------------------------------------------------------------------------------
# The request, checked


@dataclass(frozen=True)
class Plan:
    metrics: list[Metric]
    dimensions: list[Dimension]
    filters: list[tuple[Dimension, Any]]  # dimension equality filters, values as compared in SQL
    currency: str | None  # the order metrics' currency; None: every currency (a dimension)
    zone: ZoneInfo
    start: datetime
    end: datetime
    order_by: str
    descending: bool
    limit: int


def _names(items: Iterable[str]) -> str:
    return ", ".join(items)


# An unknown name's violation says only "unknown metric 'x'"; the accepted names of that kind go
# once in the error's ErrorInfo metadata, the definitions stay in docs/query.md. (Each violation
# used to carry the whole catalogue: 20 unknown metrics made a 20 KB status, past gRPC's
# metadata limit, which the client saw as a 429.)
CATALOGUE_KEYS = {
    "metric": ("validMetrics", ",".join(m.name for m in METRICS)),
    "dimension": ("validDimensions", ",".join(d.name for d in DIMENSIONS)),
    "filter": (
        "validFilters",
        ",".join(dict.fromkeys([*RESERVED_FILTERS, *(d.name for d in DIMENSIONS)])),
    ),
}


def _unknown(kind: str, name: str) -> str:
    shown = name if len(name) <= 64 else name[:64] + "..."
    return f"unknown {kind} {shown!r}"


def _catalogue(violations: Sequence[FieldViolation]) -> dict[str, str]:
    """ErrorInfo metadata: the accepted names of each kind a violation did not know."""
    metadata: dict[str, str] = {}
    for kind, (key, names) in CATALOGUE_KEYS.items():
        if any(v.description.startswith(f"unknown {kind} ") for v in violations) or (
            kind == "metric" and any(v.field == "metrics" for v in violations)
        ):
            metadata[key] = names
    if metadata:
        metadata["docs"] = "docs/query.md"
    return metadata


def _listed(
    names: Sequence[str], catalogue: Mapping[str, Any], field_name: str, kind: str
) -> tuple[list[Any], list[FieldViolation]]:
    found: list[Any] = []
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        where = f"{field_name}[{index}]"
        if name not in catalogue:
            violations.append(FieldViolation(where, _unknown(kind, name)))
        elif name in seen:
            violations.append(FieldViolation(where, f"{kind} {name!r} is listed twice"))
        else:
            seen.add(name)
            found.append(catalogue[name])
    return found, violations


def _filter_value(dimension: Dimension, value: str, zone: ZoneInfo) -> Any:
    """The value a dimension filter is compared with; ValueError says what is wrong."""
    if dimension.kind == "day":
        try:
            if _DAY.match(value):
                return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
        raise ValueError("must be a date YYYY-MM-DD, as the dimension prints it")
    if dimension.kind == "hour":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise ValueError("must be an RFC 3339 time with offset, as the dimension prints it")
        return int(moment.timestamp())
    return value


def plan(query: CustomQuery, default_currency: str, now: datetime) -> Plan:
    """Check the whole request against the catalogue; every problem found is one violation."""
    violations: list[FieldViolation] = []
    limit = query.limit or DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        violations.append(
            FieldViolation("limit", f"must be from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
        )
    metrics, problems = _listed(query.metrics, METRIC_BY_NAME, "metrics", "metric")
    violations += problems
    if not query.metrics:
        violations.append(FieldViolation("metrics", "at least one is required"))
    dimensions, problems = _listed(query.dimensions, DIMENSION_BY_NAME, "dimensions", "dimension")
    violations += problems

    filters = query.filters
    zone = ZoneInfo("UTC")
    start = end = now
    try:
        zone = parse_timezone(filters.get("timezone", ""), "filters.timezone")
    except ApiError as exc:  # naming the filter
        violations += exc.violations
    try:
        window = resolve_period(filters.get("period", ""), zone, now, "filters.period")
        start, end = window.start, window.end
    except ApiError as exc:
        violations += exc.violations
    currency: str | None = None
    try:
        explicit = filters.get("currency", "")
        currency = parse_currency(explicit, default_currency, "filters.currency")
        if not explicit and "currency" in query.dimensions:
            currency = None  # every currency, one row each
    except ApiError as exc:
        violations += exc.violations

    dimension_filters: list[tuple[Dimension, Any]] = []
    for key in sorted(filters):
        value = filters[key]
        where = f"filters.{key}"
        if key in RESERVED_FILTERS:
            continue
        dimension = DIMENSION_BY_NAME.get(key)
        if dimension is None:
            violations.append(FieldViolation(where, _unknown("filter", key)))
            continue
        if len(value) > MAX_FILTER_VALUE:
            violations.append(FieldViolation(where, f"must be at most {MAX_FILTER_VALUE} chars"))
            continue
        try:
            dimension_filters.append((dimension, _filter_value(dimension, value, zone)))
        except ValueError as exc:
            violations.append(FieldViolation(where, str(exc)))

    # Combinations that would print misleading numbers are refused, naming what asked for them.
    used = [(f"dimensions[{i}]", d.name) for i, d in enumerate(dimensions)]
    used += [(f"filters.{d.name}", d.name) for d, _ in dimension_filters]
    for metric in metrics:
        for where, name in used:
            reason = metric.refused.get(name)
            if reason is not None:
                violations.append(
                    FieldViolation(
                        where,
                        f"metric {metric.name!r} cannot be split by {name!r}: "
                        f"{reason} (docs/query.md)",
                    )
                )

    order_by, descending = "", False
    if query.order_by:
        match = _ORDER_BY.match(query.order_by)
        requested = [*query.metrics, *query.dimensions]
        if match is None or match.group(1) not in requested:
            violations.append(
                FieldViolation(
                    "orderBy",
                    "must be NAME, NAME:asc or NAME:desc, NAME a requested metric or dimension"
                    f" (one of: {_names(requested)})",
                )
            )
        else:
            order_by, descending = match.group(1), match.group(2) == "desc"
    if violations:
        raise invalid_argument(violations, metadata=_catalogue(violations))
    return Plan(
        metrics=metrics,
        dimensions=dimensions,
        filters=dimension_filters,
        currency=currency,
        zone=zone,
        start=start,
        end=end,
        order_by=order_by,
        descending=descending,
        limit=limit,
    )


# ---------------------------------------------------------------------------------------------
# The builder: the one place where catalogue fragments become a query.


@dataclass(frozen=True)
class Select:
    source: Source
    sql: Sql
    measures: tuple[Measure, ...]


def _money_source(plan_: Plan) -> Source:
    used = {d.name for d in plan_.dimensions} | {d.name for d, _ in plan_.filters}
    return Source.LINES if used & PRODUCT_DIMENSIONS else Source.ORDERS


def _source_of(measure: Measure, money: Source) -> Source:
    if len(measure.sql) == 1:
        return next(iter(measure.sql))
    return money


def _select(source: Source, plan_: Plan, measures: Sequence[Measure]) -> Select:
    """SELECT <dimensions>, <measures> FROM <source> WHERE <filters> GROUP BY <dimensions>.

    Every piece is a catalogue fragment; the filter values are {f0}, {f1}, ... parameters."""
    keys = [d.sql[source] for d in plan_.dimensions]
    columns = [expression + Sql(f" AS d{i}") for i, expression in enumerate(keys)]
    columns += [m.sql[source] + Sql(f" AS m{i}") for i, m in enumerate(measures)]
    conditions = [d.sql[source] + Sql(f" = {{f{i}}}") for i, (d, _) in enumerate(plan_.filters)]
    if source is Source.EVENTS:
        used = [*plan_.dimensions, *(d for d, _ in plan_.filters)]
        people = any(m.people for m in measures)
        relation = events_with_people(used) if people else EVENTS_RELATION
        conditions = [*EVENTS_WHERE, *conditions]
        counted = {name for m in measures for name in m.events}
        if all(m.events for m in measures):  # rows only where something counted happened
            names = Sql.join(", ", (Sql(literal(name)) for name in sorted(counted)))
            conditions.append(Sql("event IN ({names})").fill(names=names))
    else:
        by_currency = plan_.currency is not None
        if source is Source.ORDERS:
            relation = _orders_relation(by_currency)
        else:
            relation = _lines_relation(by_currency)
        used = [*plan_.dimensions, *(d for d, _ in plan_.filters)]
        attributes = sorted({d.attribute for d in used if d.attribute})
        if attributes:
            # Catalogue attribute names (typed columns of events), never request text.
            picked = Sql.join(", ", (Sql(f"any({a}) AS attr_{a}") for a in attributes))
            relation += ATTRIBUTES_JOIN.fill(columns=picked)
    sql = Sql("SELECT ") + Sql.join(", ", columns) + Sql("\nFROM ") + relation
    if conditions:
        sql += Sql("\nWHERE ") + Sql.join("\n  AND ", conditions)
    if keys:
        sql += Sql("\nGROUP BY ") + Sql.join(", ", (Sql(f"d{i}") for i in range(len(keys))))
    sql += Sql("\nLIMIT {max_groups}")
    return Select(source, sql, tuple(measures))


def build(plan_: Plan) -> list[Select]:
    """One query per source the requested metrics read."""
    money = _money_source(plan_)
    by_source: dict[Source, list[Measure]] = {}
    for metric in plan_.metrics:
        for measure in metric.measures:
            source = _source_of(measure, money)
            chosen = by_source.setdefault(source, [])
            if measure not in chosen:
                chosen.append(measure)
    return [
        _select(source, plan_, by_source[source]) for source in ALL_SOURCES if source in by_source
    ]


def parameters(project_id: str, plan_: Plan) -> dict[str, Any]:
    params: dict[str, Any] = {
        "project": project_id,
        "start": plan_.start,
        "end": plan_.end,
        "since": plan_.start,
        "until": plan_.end,
        "tz": plan_.zone.key,
        "currency": plan_.currency or "",
        "max_groups": MAX_GROUPS + 1,
    }
    for i, (_, value) in enumerate(plan_.filters):
        params[f"f{i}"] = value
    return params


# ---------------------------------------------------------------------------------------------
# Results


Key = tuple[str | int, ...]


def _key(plan_: Plan, row: Sequence[Any]) -> Key:
    width = len(plan_.dimensions)
    return tuple(
        int(value) if dimension.kind == "hour" else str(value)
        for dimension, value in zip(plan_.dimensions, row[:width], strict=True)
    )


def _label(dimension: Dimension, value: str | int, zone: ZoneInfo) -> str:
    if dimension.kind == "hour":
        return datetime.fromtimestamp(int(value), UTC).astimezone(zone).isoformat()
    return str(value)


def assemble(
    plan_: Plan, results: Sequence[tuple[Select, Sequence[Sequence[Any]]]]
) -> list[dict[str, str | int | float]]:
    """Merge the sources' rows on the dimension values; compute, order and cut the rows."""
    width = len(plan_.dimensions)
    measured: dict[Key, dict[str, int]] = {}
    for select, found in results:
        for row in found:
            values = measured.setdefault(_key(plan_, row), {})
            for measure, value in zip(select.measures, row[width:], strict=True):
                values[measure.name] = int(value)
    if not plan_.dimensions:
        measured.setdefault((), {})
    needed = {m.name for metric in plan_.metrics for m in metric.measures}
    table: list[tuple[Key, dict[str, Value]]] = []
    for key in sorted(measured):  # ties: dimension values ascending (hours by time)
        values = {name: measured[key].get(name, 0) for name in needed}
        table.append((key, {metric.name: metric.value(values) for metric in plan_.metrics}))
    if plan_.order_by:
        position = (
            [d.name for d in plan_.dimensions].index(plan_.order_by)
            if (plan_.order_by in DIMENSION_BY_NAME)
            else None
        )
        if position is not None:
            table.sort(key=lambda entry: entry[0][position], reverse=plan_.descending)
        else:
            table.sort(key=lambda entry: entry[1][plan_.order_by], reverse=plan_.descending)
    out: list[dict[str, str | int | float]] = []
    for key, metrics in table[: plan_.limit]:
        line: dict[str, str | int | float] = {
            d.name: _label(d, value, plan_.zone)
            for d, value in zip(plan_.dimensions, key, strict=True)
        }
        line.update(metrics)
        out.append(line)
    return out


class QueryRunner(Reader):
    async def run(self, project_id: str, query: CustomQuery) -> QueryReport:
        checked = plan(query, self._default_currency, self._clock())
        params = parameters(project_id, checked)
        selects = build(checked)
        answers = await asyncio.gather(*(self._storage.query(s.sql, params) for s in selects))
        results = []
        for select, rows in zip(selects, answers, strict=True):
            if len(rows) > MAX_GROUPS:
                raise invalid_argument(
                    [
                        FieldViolation(
                            "dimensions",
                            f"more than {MAX_GROUPS} rows to combine; narrow the period, add "
                            "filters or use fewer dimensions",
                        )
                    ]
                )
            results.append((select, rows))
        # Off the event loop: up to MAX_GROUPS rows a source, merged in Python, take a second
        # or more, and the loop also carries ingestion (measured: tests/test_faults.py).
        return QueryReport(rows=await asyncio.to_thread(assemble, checked, results))

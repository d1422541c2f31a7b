"""Distinct orders: the one definition every figure about orders uses.

An order is (project, orderId); its first ``order_completed`` by (timestamp, event id) wins, over
all time: its time, total, currency, visitor and line items are the order's. Later duplicates of an
orderId never count, whatever they carry.

FIRST_ORDERS reads the narrow ``orders`` table (order events only, kept by a materialized view)
over all time. A period's orders need not look at other orders: an orderId not listed in
``order_dups`` has one stored event row (ingest lists every orderId with more than one), which is
therefore its winner; only the listed orderIds need the per-order computation, over their rows in
``order_index`` (the same rows sorted by orderId). PERIOD_ORDERS does this: at 10 million events
it reads ~30k rows for 30 days, where FIRST_ORDERS reads every order (~300k).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# One row per distinct order of {project}, over all time: order_id, first_ts, order_total,
# order_currency, order_visitor, first_event_id. Filter the outer query on first_ts etc.
FIRST_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM orders
    WHERE project_id = {project}
    GROUP BY order_id
"""

# The orderIds of {project} with more than one stored event row, and (a scalar subquery) whether
# there are any.
DUPLICATE_IDS = "SELECT order_id FROM order_dups WHERE project_id = {project}"
DUPLICATE_COUNT = "(SELECT count() FROM order_dups WHERE project_id = {project})"

# FIRST_ORDERS' rows for the orderIds listed in order_dups only, over all time (order_index is
# sorted by orderId, so this reads those orders' rows, not every order). Used by the exports.
DUPLICATED_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM order_index
    WHERE project_id = {project}
      AND order_id IN (SELECT order_id FROM order_dups WHERE project_id = {project})
    GROUP BY order_id
"""

# FIRST_ORDERS' rows of the duplicated orderIds whose first event is in [{start}, {end})
# ($currency: and in {currency}). Such an order has an event row in the window (its first), so
# only the duplicated orderIds seen in the window are looked up, each over all its rows in
# order_index (sorted by orderId).
_PERIOD_DUPLICATED_ORDERS = """
    SELECT order_id,
           min(ts) AS first_ts,
           argMin(total, tuple(ts, event_id)) AS order_total,
           argMin(currency, tuple(ts, event_id)) AS order_currency,
           argMin(visitor_id, tuple(ts, event_id)) AS order_visitor,
           argMin(event_id, tuple(ts, event_id)) AS first_event_id
    FROM order_index
    WHERE project_id = {project}
      AND order_id IN (
          SELECT order_id FROM orders
          WHERE project_id = {project} AND ts >= {start} AND ts < {end}
            AND order_id IN (SELECT order_id FROM order_dups WHERE project_id = {project})
      )
    GROUP BY order_id
    HAVING first_ts >= {start}$having_currency
"""

# FIRST_ORDERS' rows of the orders whose first event is in [{start}, {end}) ($currency: and in
# {currency}), exactly, reading only that window of `orders`: the single row of every orderId
# not in order_dups, and the winners of the listed ones.
_PERIOD_ORDERS = (
    """
    SELECT order_id,
           ts AS first_ts,
           total AS order_total,
           currency AS order_currency,
           visitor_id AS order_visitor,
           event_id AS first_event_id
    FROM orders
    WHERE project_id = {project}$currency AND ts >= {start} AND ts < {end}
      AND order_id NOT IN (SELECT order_id FROM order_dups WHERE project_id = {project})
    UNION ALL
    SELECT order_id, first_ts, order_total, order_currency, order_visitor, first_event_id
    FROM ("""
    + _PERIOD_DUPLICATED_ORDERS
    + """)
"""
)


def period_orders(by_currency: bool) -> str:
    """PERIOD_ORDERS, in {currency} only when ``by_currency`` (else in every currency)."""
    return _in_currency(_PERIOD_ORDERS, by_currency)


def _in_currency(template: str, by_currency: bool) -> str:
    return template.replace(
        "$currency", " AND currency = {currency}" if by_currency else ""
    ).replace("$having_currency", " AND order_currency = {currency}" if by_currency else "")


PERIOD_ORDERS = period_orders(by_currency=True)
PERIOD_DUPLICATED_ORDERS = _in_currency(_PERIOD_DUPLICATED_ORDERS, by_currency=True)


class DuplicatedProjects:
    """Projects known to have duplicated orderIds. order_dups only grows, so once a project is
    known to have some it always has: its queries take the duplicate-aware form at once. Others
    run the plain form, whose result also says whether duplicates appeared (then it is rerun)."""

    def __init__(self) -> None:
        self._projects: set[str] = set()

    def known(self, project_id: str) -> bool:
        return project_id in self._projects

    def add(self, project_id: str) -> None:
        self._projects.add(project_id)


QUARTER = timedelta(minutes=15)


def quarter_floor(moment: datetime) -> datetime:
    """The start of the 15-minute UTC bucket holding ``moment``."""
    utc = moment.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)


def quarter_ceil(moment: datetime) -> datetime:
    """The end of the 15-minute UTC bucket holding ``moment`` (itself when it starts one)."""
    floor = quarter_floor(moment)
    return floor if floor == moment else floor + QUARTER

"""GET /analytics/funnel: how many visitors went through ordered steps within a window.

A visitor reaches step k when, among its events of the period, there are events of steps 1..k,
each no earlier than the one before, the k-th within ``window`` seconds of the first (timestamps
compared in whole seconds). docs/semantics.md defines each figure.

ClickHouse's ``windowFunnel`` does this, but not identically on every version: 18.16 orders events
of the same second as they arrive (so step 2 stamped in the same second as step 1 may or may not
count), ClickHouse 26 orders them by step, and neither takes DateTime64. So the timestamp given to
it is (seconds since the period's start) * 8 + (step index): events sort by (second, step) on both,
and ``window * 8 + 7`` allows exactly ``window`` whole seconds from the step-1 event. Steps must
be distinct events: the versions also disagree on one event matching two steps.
"""

from __future__ import annotations

import re

from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.errors import invalid_field
from cartlytics.common.money import percent
from cartlytics.common.storage import Sql

from .base import Reader
from .reports import FunnelQuery, FunnelReport, FunnelStageRow

# Standard events and their display names; any other step is shown by its event name.
DISPLAY_NAMES = {
    "page_view": "Page Views",
    "product_view": "Product Views",
    "add_to_cart": "Add to Cart",
    "remove_from_cart": "Remove from Cart",
    "checkout_started": "Checkout Started",
    "order_completed": "Order Completed",
    "search": "Searches",
}
DEFAULT_STEPS = ("product_view", "add_to_cart", "checkout_started", "order_completed")
CUSTOM_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MIN_STEPS = 2
MAX_STEPS = 8  # the step index must fit in the 3 low bits of the encoded timestamp
DEFAULT_WINDOW = 86400
MAX_WINDOW = 30 * 86400

# {s1}..{s8}: the steps, padded with '' (no event is named ''). The encoded time fits UInt32
# (18.16's windowFunnel takes DateTime or UInt32): a period is at most 24 months.
FUNNEL = Sql("""
    SELECT level, count()
    FROM (
        SELECT visitor_id,
               windowFunnel({encoded_window})(
                   toUInt32((toUInt32(toDateTime(ts)) - toUInt32({start})) * 8
                            + indexOf({steps}, event) - 1),
                   event = {s1}, event = {s2}, event = {s3}, event = {s4},
                   event = {s5}, event = {s6}, event = {s7}, event = {s8}
               ) AS level
        FROM ({step_events})
        GROUP BY visitor_id
    )
    WHERE level > 0
    GROUP BY level
""").fill(
    # The period's step events, each visitor read as its person (commerce.visitors): a shopper
    # who viewed anonymously and ordered signed in goes down the funnel once.
    step_events=as_people(
        Sql("""
        SELECT visitor_id, ts, event FROM events
        WHERE project_id = {project} AND ts >= {start} AND ts < {end} AND has({steps}, event)"""),
        ("visitor_id", "ts", "event"),
        "visitor_id",
        hashed=True,  # only counted
    )
)


def parse_steps(values: list[str], field: str = "steps") -> list[str]:
    """Event names, in order: repeated values, each possibly comma-separated."""
    if not values:
        return list(DEFAULT_STEPS)
    steps = [piece.strip() for value in values for piece in value.split(",")]
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise invalid_field(field, f"must list {MIN_STEPS} to {MAX_STEPS} event names")
    for step in steps:
        if step not in DISPLAY_NAMES and not CUSTOM_EVENT.match(step):
            raise invalid_field(
                field,
                f"{step!r} is not an event name (a standard event or ^[a-z][a-z0-9_]{{0,63}}$)",
            )
    if len(set(steps)) != len(steps):
        raise invalid_field(field, "must not name the same event twice")
    return steps


def parse_window(value: int, field: str = "window") -> int:
    if value == 0:
        return DEFAULT_WINDOW
    if not 1 <= value <= MAX_WINDOW:
        raise invalid_field(field, f"must be from 1 to {MAX_WINDOW} seconds (default 86400)")
    return value


class FunnelReader(Reader):
    async def funnel(self, project_id: str, query: FunnelQuery) -> FunnelReport:
        window = self._window(query.period, query.timezone)
        steps = parse_steps(query.steps)
        seconds = parse_window(query.window)
        padded = steps + [""] * (MAX_STEPS - len(steps))
        params: dict[str, object] = {
            "project": project_id,
            "start": window.start,
            "end": window.end,
            "steps": steps,
            "encoded_window": seconds * 8 + 7,
            **{f"s{index + 1}": step for index, step in enumerate(padded)},
        }
        rows = await self._storage.query(FUNNEL, params)
        reached_exactly = {int(level): int(count) for level, count in rows}
        counts = [
            sum(count for level, count in reached_exactly.items() if level >= k)
            for k in range(1, len(steps) + 1)
        ]
        stages = [
            FunnelStageRow(
                name=DISPLAY_NAMES.get(step, step),
                count=count,
                rate=100.0 if k == 0 else percent(count, counts[k - 1]),
            )
            for k, (step, count) in enumerate(zip(steps, counts, strict=True))
        ]
        return FunnelReport(stages=stages, conversion_rate=percent(counts[-1], counts[0]))

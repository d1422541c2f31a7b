"""GET /analytics/customers' "ordered before the period" through every state of the people
snapshot (storage/people_snapshot.py builds, per person, the earliest order time of its devices;
services/metrics/customers.py reads it with the later rows as changes), on both backends, against
the plain-Python oracle (tests/oracle_metrics.customers) over the same events: no build, a fresh
build, orders and links after it (a backfilled earlier order, a device linked after the build
whose guest order makes its user returning), the cases where the build's figure of a person is
no longer right (a device whose earlier link arrived after the build moves to another user; an
anonymousId equal to a userId), a rebuild and an invalidation.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cartlytics.common.storage import Sql, Storage
from cartlytics.common.storage.people_snapshot import PeopleSnapshot
from services.metrics.customers import SIDE, CustomersReader
from services.metrics.reports import CustomersQuery
from tests import oracle_metrics as om

COLUMNS = ["project_id", "event_id", "event", "ts", "received_at", "user_id", "anonymous_id",
           "session_id", "visitor_id", "order_id", "total", "currency"]  # fmt: skip
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


class Shop:
    """Events stored as ingest stores them (the snapshot's tables follow by the views), and
    the same events in the API's shape for the oracle."""

    def __init__(self, storage: Storage, project: str) -> None:
        self.storage, self.project = storage, project
        self.events: list[dict[str, Any]] = []

    def _store(
        self, days_ago: float, user: str, anonymous: str, order: tuple[str, int] | None
    ) -> None:
        event_id = f"e{len(self.events):03d}"
        ts = NOW - days_ago * DAY
        event: dict[str, Any] = {
            "id": event_id,
            "event": "order_completed" if order else "page_view",
            "timestamp": om.iso(ts),
            "userId": user,
            "anonymousId": anonymous,
        }
        order_id, total = order or ("", 0)
        if order:
            event["properties"] = {"orderId": order_id, "total": total, "currency": "USD"}
        self.events.append(event)
        row = (self.project, event_id, event["event"], ts, ts, user, anonymous, "",
               user or anonymous, order_id, total, "USD")  # fmt: skip
        self.storage.insert_sync("events", COLUMNS, [row])

    def order(
        self, days_ago: float, who: str, order_id: str, total: int, anonymous: str = ""
    ) -> None:
        """An order by ``who`` (a userId; with ``anonymous`` too, a link), or a guest order
        (``who`` empty, ``anonymous`` set)."""
        self._store(days_ago, who, anonymous, (order_id, total))

    def link(self, days_ago: float, user: str, anonymous: str) -> None:
        self._store(days_ago, user, anonymous, None)

    def report(self) -> dict[str, Any]:
        reader = CustomersReader(self.storage, "USD", clock=lambda: NOW)
        got = asyncio.run(reader.customers(self.project, CustomersQuery("30d", 100, "USD")))
        return {
            "period": got.period,
            "currency": got.currency,
            "totalCustomers": got.total_customers,
            "newCustomers": got.new_customers,
            "returningCustomers": got.returning_customers,
            "repeatPurchaseRate": got.repeat_purchase_rate,
            "revenuePerCustomer": got.revenue_per_customer,
            "topCustomers": [
                {"customerId": c.customer_id, "orders": c.orders, "revenue": c.revenue}
                for c in got.top_customers
            ],
        }

    def expected(self) -> dict[str, Any]:
        return om.customers(
            self.events, period="30d", currency="USD", zone=ZoneInfo("UTC"), now=NOW, limit=100
        )

    def check(self, state: str) -> dict[str, Any]:
        expected = self.expected()
        assert self.report() == expected, state
        return expected

    def hazards(self) -> int:
        """1 when changes since the build may have made its figure of some person wrong (the
        reader then counts exactly): SIDE's first column."""
        params = {"project": self.project, "start": NOW - 30 * DAY}
        return int(self.storage.query_sync(SIDE, params)[0][0])


def test_customers_are_exact_through_every_state_of_the_snapshot(
    storage: Storage, project_id: str
) -> None:
    snapshot = PeopleSnapshot(storage, changed_rows=1)
    shop = Shop(storage, project_id)
    snapshot.invalidate()  # the store is shared with other tests: start from no snapshot
    # A merge of a part the build holds with a later one is read whole as changes (exact, and
    # the build's table then answers nothing): no merges, so that the build's table is read.
    storage.query_sync(Sql("SYSTEM STOP MERGES customer_first"))
    try:
        _every_state(snapshot, shop)
    finally:
        storage.query_sync(Sql("SYSTEM START MERGES customer_first"))


def _every_state(snapshot: PeopleSnapshot, shop: Shop) -> None:

    # Before any build: a1's guest order 40 days ago, a1 signs in as u1, u1 orders in the
    # period (returning through a1); u2 only in the period (new); u4 before and in it; a3 a
    # guest 50 days ago, linked later; a9 a guest 40 days ago linked to u9 20 days ago.
    shop.order(40, "", "o_a1", 500, anonymous="a1")
    shop.link(35, "u1", "a1")
    shop.order(5, "u1", "o_u1", 1_000)
    shop.order(3, "u2", "o_u2", 2_000)
    shop.order(60, "u4", "o_u4_old", 300)
    shop.order(2, "u4", "o_u4", 400)
    shop.order(50, "", "o_a3", 700, anonymous="a3")
    shop.order(40, "", "o_a9", 900, anonymous="a9")
    shop.link(20, "u9", "a9")
    # b12 a guest 40 days ago, linked to u12 20 days ago; u12 ordered 35 days ago too.
    shop.order(40, "", "o_b12", 120, anonymous="b12")
    shop.link(20, "u12", "b12")
    shop.order(35, "u12", "o_u12_old", 130)
    # x: an anonymousId that is also a userId, not linked yet; d2 is linked to the user x and
    # orders in the period as a guest: the person x's earliest order is x's own, 45 days ago.
    shop.order(45, "", "o_x", 100, anonymous="x")
    shop.link(44, "x", "d2")
    shop.order(4, "", "o_d2", 250, anonymous="d2")
    # y: a guest 45 days ago, never linked before the build.
    shop.order(45, "", "o_y", 100, anonymous="y")
    first = shop.check("no build: every row read as a change")
    assert first["returningCustomers"] >= 2 and first["newCustomers"] >= 1

    assert snapshot.rebuild() is not None
    assert shop.hazards() == 0
    shop.check("a fresh build")

    # After the build: a3 signs in as u6, who orders (returning through a3's guest order);
    # u7's order 45 days ago arrives late (a backfill) and u7 orders again; u8 is new; u20 is
    # returning through a late guest order of a device linked after the build.
    shop.link(1, "u6", "a3")
    shop.order(1, "u6", "o_u6", 600)
    shop.order(45, "u7", "o_u7_old", 50)
    shop.order(1, "u7", "o_u7", 70)
    shop.order(1, "u8", "o_u8", 80)
    # a20's guest order 40 days ago arrives late, a20 signs in as u20, who orders.
    shop.order(40, "", "o_a20", 30, anonymous="a20")
    shop.link(1, "u20", "a20")
    shop.order(1, "u20", "o_u20", 35)
    assert shop.hazards() == 0, "new orders and new links are no hazard"
    shop.check("the build, later orders and later links")

    # u9, u10 and u12 order; then the earlier links of a9 and b12, to u10, arrive: both devices
    # (and their guest orders) are u10's now. u9, whose build figure was a9's order, is new;
    # u12, whose build figure was b12's, is returning by its own order.
    shop.order(1, "u9", "o_u9", 90)
    shop.order(1, "u10", "o_u10", 95)
    shop.order(1, "u12", "o_u12", 140)
    shop.link(30, "u10", "a9")
    shop.link(30, "u10", "b12")
    assert shop.hazards() == 1, "the case is a hazard (u9 and u12)"
    shop.check("devices moved to another user after the build")

    assert snapshot.rebuild() is not None
    assert shop.hazards() == 0
    shop.check("rebuilt")

    # x signs in as u11: x's guest order is u11's now, and the person x (d2) is new.
    shop.link(0.5, "u11", "x")
    shop.order(0.5, "u11", "o_u11", 110)
    assert shop.hazards() == 1, "the case is a hazard (x)"
    shop.check("an anonymousId equal to a userId linked after the build")

    assert snapshot.rebuild() is not None
    assert shop.hazards() == 0
    shop.check("rebuilt again")

    # d3 signs in as the user y and orders: the person y (its own guest order, d3) is
    # returning. Then y signs in as u13: y's order is u13's, and the person y (d3) is new.
    shop.link(0.4, "y", "d3")
    shop.order(0.4, "", "o_d3", 260, anonymous="d3")
    assert shop.hazards() == 0
    shop.check("a device linked after the build to a user who is an anonymousId")
    shop.link(0.3, "u13", "y")
    shop.order(0.3, "u13", "o_u13", 270)
    assert shop.hazards() == 1, "the case is a hazard (y)"
    shop.check("that anonymousId linked after the build")

    snapshot.invalidate()
    shop.check("invalidated: no build")

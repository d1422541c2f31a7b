"""Identity stitching (docs/semantics.md, "Identity") on both backends: shoppers who browse
anonymously and sign in count once, whenever the link arrives; a shared device stays with its
first user.

The shared dataset's stitched shoppers are compared with the oracles by every endpoint's own
tests; here a few shoppers whose figures are hand-computed (and checked against the oracle too)
pin the cases down one by one, in figures no other test's events reach: custom funnel steps, one
product and the XPD currency of this module's own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import oracle_metrics as om
from tests.oracle import first_links
from tests.rest import call, midday_zone
from tests.servers import System

CURRENCY = "XPD"


class Shop:
    """This module's events, stamped in the last hours (today where it is midday)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.zone = midday_zone()
        self.start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
        self.events: list[dict[str, Any]] = []
        self.product = f"idp_{self.tag}"
        self.steps = [f"idview_{self.tag}", f"idcart_{self.tag}", f"idbuy_{self.tag}"]

    def add(self, event: str, second: int, ids: dict[str, str], **props: Any) -> dict[str, Any]:
        record = {
            "id": f"evt_id_{self.tag}_{len(self.events):03d}",
            "event": event,
            "timestamp": om.iso(self.start + timedelta(seconds=second)),
            "properties": props,
            **{k: f"{v}_{self.tag}" for k, v in ids.items()},
        }
        self.events.append(record)
        return record

    def order(self, second: int, ids: dict[str, str], order: str, total: int) -> None:
        line = {"productId": self.product, "name": "Stitch", "price": total, "quantity": 1}
        self.add("order_completed", second, ids, orderId=f"{order}_{self.tag}", total=total,
                 currency=CURRENCY, products=[line])  # fmt: skip

    def person(self, name: str) -> str:
        return f"{name}_{self.tag}"


def _build() -> Shop:
    shop = Shop()
    view, cart, buy = shop.steps
    # 1: browses anonymously on device a1 (custom step 1, a product view), signs in to add to
    # cart (both ids: the link), orders signed in, and views the product again signed in.
    a1, u1 = {"anonymousId": "a1"}, {"userId": "u1"}
    shop.add(view, 10, a1)
    shop.add("product_view", 20, a1, productId=shop.product)
    shop.add(cart, 30, {**u1, **a1})
    shop.add(buy, 40, u1)
    shop.order(41, u1, "o1", 1000)
    shop.add("product_view", 50, u1, productId=shop.product)
    # 2: the link is sent first (below, the batch is sent in this order) and its anonymous view,
    # earlier in time, afterwards: still one person.
    a2, u2 = {"anonymousId": "a2"}, {"userId": "u2"}
    shop.add(cart, 110, {**u2, **a2})
    shop.add(view, 100, a2)
    # 3: a guest checkout on device a3 (no userId on the order), and only then an account
    # (the link): the order is u3's, whose earlier signed-in order makes u3 a repeat customer.
    a3, u3 = {"anonymousId": "a3"}, {"userId": "u3"}
    shop.order(200, u3, "o3a", 500)
    shop.order(210, a3, "o3b", 700)
    shop.add("page_view", 220, {**u3, **a3}, page="/account")
    # 4: a shared device: a4 linked to u4 first, then to u5 (recorded, not merged). Its later
    # anonymous view is u4's; u5's own events stay u5's.
    a4, u4, u5 = {"anonymousId": "a4"}, {"userId": "u4"}, {"userId": "u5"}
    shop.add(view, 300, {**u4, **a4})
    shop.add(cart, 310, {**u5, **a4})
    shop.add("product_view", 320, a4, productId=shop.product)
    shop.add("product_view", 330, u5, productId=shop.product)
    return shop


_SHOPS: dict[str, Shop] = {}


@pytest.fixture
def shop(system: System) -> Shop:
    cached = _SHOPS.get(system.identity)
    if cached is None:
        cached = _build()
        om.send(system, cached.events)  # the other modules' oracles see them too
        _SHOPS[system.identity] = cached
    return cached


def _get(system: System, path: str) -> Any:
    reply = call("GET", f"{system.http_url}{path}", system.key)
    assert reply.status == 200, reply.body
    return reply.json()


def test_the_oracle_links_as_the_spec_says(shop: Shop) -> None:
    links = first_links(shop.events)
    assert links == {
        shop.person("a1"): shop.person("u1"),
        shop.person("a2"): shop.person("u2"),
        shop.person("a3"): shop.person("u3"),
        shop.person("a4"): shop.person("u4"),  # the first link of the shared device
    }


def test_funnel_counts_each_shopper_once(system: System, shop: Shop) -> None:
    steps = ",".join(shop.steps)
    body = _get(system, f"/analytics/funnel?period=7d&steps={steps}&timezone={shop.zone}")
    # u1: view (as a1), cart, buy; u2: view (as a2, sent after the link), cart; u4: view; u5:
    # cart without a view of its own (a4's link to u5 is not the first): not counted.
    assert [s["count"] for s in body["stages"]] == [3, 2, 1]
    now = datetime.now(UTC)
    expected = om.funnel(shop.events, period="7d", steps=shop.steps, window_seconds=86400,
                         zone=ZoneInfo(shop.zone), now=now)  # fmt: skip
    assert body["stages"] == expected["stages"]
    unstitched = om.funnel(
        [{k: v for k, v in e.items() if k != "anonymousId" or "userId" not in e}
         for e in shop.events],
        period="7d", steps=shop.steps, window_seconds=86400, zone=ZoneInfo(shop.zone), now=now,
    )  # fmt: skip
    assert [s["count"] for s in unstitched["stages"]] != [3, 2, 1], "the case must need links"


def test_product_conversion_counts_people(system: System, shop: Shop) -> None:
    body = _get(system, f"/analytics/products?period=7d&currency={CURRENCY}&timezone={shop.zone}")
    sellers = {p["productId"]: p for p in body["topSellers"]}
    # Viewers: u1 (as a1, and signed in), u4 (a4's anonymous view), u5. Buyers: u1 (o1), u3
    # (o3a, and the guest order o3b through a3's link).
    assert sellers[shop.product]["conversionRate"] == 66.7
    assert sellers[shop.product]["unitsSold"] == 3


def test_customers_are_people(system: System, shop: Shop) -> None:
    body = _get(system, f"/analytics/customers?period=7d&currency={CURRENCY}&timezone={shop.zone}")
    top = {c["customerId"]: (c["orders"], c["revenue"]) for c in body["topCustomers"]}
    assert top[shop.person("u3")] == (2, 1200)  # the guest order is u3's
    assert shop.person("a3") not in top
    assert top[shop.person("u1")] == (1, 1000)


def test_query_visitors_are_people(system: System, shop: Shop) -> None:
    request = {
        "metrics": ["visitors"],
        "filters": {"period": "7d", "product_id": shop.product, "timezone": shop.zone},
    }
    reply = call("POST", f"{system.http_url}/analytics/query", system.key, request)
    assert reply.status == 200, reply.body
    # The product's events (its product_views; an order's products are line items, not the
    # event's product): u1 (as a1, and signed in), u4 (as a4), u5: three people, four ids.
    assert reply.json()["rows"] == [{"visitors": 3}]

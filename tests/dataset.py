"""One shared, seeded test dataset of realistic shoppers, and a loader that sends it.

Sessions browse pages, search, view products, add and remove from carts, start checkouts,
abandon or buy (with line items), across several currencies; some shoppers are anonymous; some
browse anonymously and sign in to order (stitched: one person); a few events are retried (same
id sent again) and a few orders are sent twice (same orderId, another event id, later).
Timestamps span the last ~100 days and avoid the few minutes around "now minus whole days", where
a test's clock and the server's could disagree on which period an event is in.

Expected figures are computed from ``Dataset.events`` by plain-Python oracles in the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.rest import call
from tests.servers import System

PRODUCTS = [
    # (productId, name, category, price in minor units)
    ("prod_tshirt", "Premium T-Shirt", "apparel", 2999),
    ("prod_hoodie", "Hoodie", "apparel", 5999),
    ("prod_cap", "Cap", "accessories", 1999),
    ("prod_mug", "Mug", "home", 1299),
    ("prod_socks", "Socks (3 pack)", "apparel", 999),
    ("prod_poster", "Poster", "home", 2499),
    ("prod_bottle", "Bottle", "accessories", 1799),
    ("prod_jacket", "Rain Jacket", "apparel", 11999),
    ("prod_lamp", "Desk Lamp", "home", 4599),
    ("prod_pin", "Enamel Pin", "accessories", 499),
    ("prod_scarf", "Scarf", "apparel", 2299),
    ("prod_book", "Notebook", "stationery", 899),
]
CURRENCIES = ["USD"] * 6 + ["EUR"] * 3 + ["GBP", "JPY"]
PAGES = ["/", "/collections/sale", "/products/shirts", "/about", "/blog/summer", "/cart"]
REFERRERS = ["https://www.google.com/search?q=shirts", "https://instagram.com/shop", "", ""]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
]


@dataclass
class Dataset:
    now: datetime
    events: list[dict[str, Any]] = field(default_factory=list)  # distinct events, as stored
    sent: list[dict[str, Any]] = field(default_factory=list)  # what is sent, retries included


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _safe(ts: datetime, now: datetime) -> bool:
    """Away from now minus whole days (±1 h for DST), and in the past."""
    if ts > now - timedelta(minutes=3):
        return False
    seconds = (ts - now).total_seconds() % 86400
    return all(abs(seconds - shift) > 600 for shift in (0, 3600, 82800, 86400))


def build(
    seed: int = 7, sessions: int = 700, days: int = 100, now: datetime | None = None
) -> Dataset:
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    data = Dataset(now=now)
    visitors = [f"user_{n:04d}" for n in range(260)]
    serial = 0

    def add(
        event: str, who: tuple[str, str], ts: datetime, props: dict[str, Any], ctx: dict[str, Any]
    ) -> dict[str, Any]:
        nonlocal serial
        serial += 1
        record: dict[str, Any] = {
            "id": f"evt_ds_{serial:06d}",
            "event": event,
            "timestamp": _iso(ts),
            "properties": props,
            "context": ctx,
        }
        if who[0]:
            record["userId"] = who[0]
        else:
            record["anonymousId"] = who[1]
        record["sessionId"] = who[1]
        data.events.append(record)
        data.sent.append(record)
        return record

    made = 0
    while made < sessions:
        start = now - timedelta(seconds=rng.randint(600, days * 86400))
        if not _safe(start, now) or not _safe(start + timedelta(hours=3), now):
            continue
        made += 1
        anonymous = rng.random() < 0.15
        user = "" if anonymous else rng.choice(visitors)
        who = (user, f"sess_{made:05d}")
        ctx = {
            "userAgent": rng.choice(USER_AGENTS),
            "ip": f"198.51.100.{rng.randint(1, 254)}",
            "campaign": {"source": rng.choice(["google", "newsletter", ""]), "medium": "cpc"},
        }
        ts = start
        currency = rng.choice(CURRENCIES)

        def step(max_seconds: int = 400) -> datetime:
            nonlocal ts
            ts += timedelta(seconds=rng.randint(0, max_seconds))  # 0: same-second events happen
            return ts

        for _ in range(rng.randint(1, 4)):
            page = rng.choice(PAGES)
            add(
                "page_view",
                who,
                step(),
                {"page": page, "referrer": rng.choice(REFERRERS)},
                {**ctx, "page": page},
            )
        if rng.random() < 0.3:
            add(
                "search",
                who,
                step(),
                {"query": rng.choice(["shirt", "mug", "gift"]), "resultCount": rng.randint(0, 40)},
                ctx,
            )
        viewed = rng.sample(PRODUCTS, rng.randint(0, 4))
        for product_id, name, _category, price in viewed:
            add(
                "product_view",
                who,
                step(),
                {"productId": product_id, "name": name, "price": price, "currency": currency},
                ctx,
            )
        cart = [p for p in viewed if rng.random() < 0.5]
        if rng.random() < 0.1:  # some add to cart without a product_view (deep links)
            cart.append(rng.choice(PRODUCTS))
        quantities: dict[str, int] = {}
        for product_id, _name, _category, price in cart:
            quantities[product_id] = rng.randint(1, 3)
            add(
                "add_to_cart",
                who,
                step(),
                {
                    "productId": product_id,
                    "quantity": quantities[product_id],
                    "price": price,
                    "currency": currency,
                },
                ctx,
            )
        if cart and rng.random() < 0.15:
            removed = cart.pop()
            add("remove_from_cart", who, step(), {"productId": removed[0], "quantity": 1}, ctx)
        if not cart or rng.random() < 0.35:
            continue
        total = sum(p[3] * quantities[p[0]] for p in cart)
        add(
            "checkout_started",
            who,
            step(),
            {
                "cartId": f"cart_{made}",
                "total": total,
                "itemCount": len(cart),
                "currency": currency,
            },
            ctx,
        )
        if rng.random() < 0.3:
            continue  # abandoned at checkout
        lines = [
            {
                "productId": p[0],
                "name": p[1],
                "category": p[2],
                "price": p[3],
                "quantity": quantities[p[0]],
            }
            for p in cart
        ]
        order_id = f"order_{made:05d}"
        props = {
            "orderId": order_id,
            "total": total,
            "currency": currency,
            "items": len(cart),
            "products": lines,
        }
        order = add("order_completed", who, step(900), props, ctx)
        if rng.random() < 0.06:  # the store's backend reports the same order again, later
            later = datetime.fromisoformat(order["timestamp"].replace("Z", "+00:00"))
            later += timedelta(minutes=rng.randint(1, 300))
            if _safe(later, now):
                dup_props = {**props, "total": total + 1}  # must never count: first wins
                add("order_completed", who, later, dup_props, ctx)
    # Retries: the same events (same ids) sent again; stored once.
    for event in rng.sample(data.events, len(data.events) // 40):
        data.sent.append(event)
    rng.shuffle(data.sent)
    _stitched_shoppers(data, random.Random(seed * 1000 + 15), visitors, days)
    data.events.sort(key=lambda e: (e["timestamp"], e["id"]))
    return data


def _stitched_shoppers(
    data: Dataset, rng: random.Random, members: list[str], days: int, shoppers: int = 40
) -> None:
    """Shoppers who browse anonymously (their device's anonymousId), sign in at checkout (events
    carrying both ids: the link) and order as users; some come back anonymously on that device
    later; a few devices are shared and signed in later by another user (recorded, not merged:
    docs/semantics.md, "Identity"). Half are existing members (with orders of their own above),
    half new. Each shopper's events are sent in a shuffled order, so the link sometimes arrives
    before the anonymous events it stitches. Own generator: the events above stay as they were."""
    for k in range(shoppers):
        user = rng.choice(members) if rng.random() < 0.5 else f"member_{k:04d}"
        start = data.now - timedelta(seconds=rng.randint(3600, days * 86400))
        mine = _stitched_shopper(k, user, start, rng)
        if all(_safe(datetime.fromisoformat(e["timestamp"][:-1] + "+00:00"), data.now)
               for e in mine):  # fmt: skip
            data.events.extend(mine)
            rng.shuffle(mine)
            data.sent.extend(mine)


def _stitched_shopper(
    k: int, user: str, start: datetime, rng: random.Random
) -> list[dict[str, Any]]:
    ts = start
    currency = rng.choice(CURRENCIES)
    ctx = {"userAgent": rng.choice(USER_AGENTS), "ip": f"203.0.113.{rng.randint(1, 254)}"}
    mine: list[dict[str, Any]] = []

    def add(event: str, ids: dict[str, str], props: dict[str, Any]) -> None:
        nonlocal ts
        ts += timedelta(seconds=rng.randint(1, 300))
        event_id = f"evt_st_{k:03d}_{len(mine):03d}"
        mine.append({"id": event_id, "event": event, "timestamp": _iso(ts),
                     "properties": props, "context": ctx, **ids})  # fmt: skip

    browsing = {"anonymousId": f"anon_{k:04d}", "sessionId": f"stitch_{k:04d}"}
    signed_in = {"userId": user, **browsing}
    add("page_view", browsing, {"page": rng.choice(PAGES)})
    cart = rng.sample(PRODUCTS, rng.randint(1, 3))
    for product_id, name, _category, price in cart:
        add("product_view", browsing, {"productId": product_id, "name": name, "price": price})
    quantities = {p[0]: rng.randint(1, 2) for p in cart}
    for product_id, _name, _category, price in cart:
        quantity = quantities[product_id]
        add(
            "add_to_cart", browsing, {"productId": product_id, "quantity": quantity, "price": price}
        )
    total = sum(p[3] * quantities[p[0]] for p in cart)
    # Signed in at checkout (most): these events carry both ids and link the device to the user.
    add("checkout_started", signed_in if rng.random() < 0.6 else browsing,
        {"cartId": f"cart_st_{k}", "total": total, "currency": currency})  # fmt: skip
    if rng.random() < 0.8:
        lines = [{"productId": p[0], "name": p[1], "category": p[2], "price": p[3],
                  "quantity": quantities[p[0]]} for p in cart]  # fmt: skip
        # Some check out as guests and sign in only afterwards (creating their account): the
        # order's event has the anonymousId alone, and is the user's once the link is made.
        guest = rng.random() < 0.4
        add("order_completed", browsing if guest else signed_in,
            {"orderId": f"order_st_{k:03d}", "total": total, "currency": currency,
             "products": lines})  # fmt: skip
        if guest:
            add("page_view", signed_in, {"page": "/account"})
    if rng.random() < 0.5:  # back later on the same device, signed out
        ts += timedelta(hours=rng.randint(2, 40))
        viewed = rng.choice(PRODUCTS)
        add("page_view", browsing, {"page": rng.choice(PAGES)})
        add("product_view", browsing,
            {"productId": viewed[0], "name": viewed[1], "price": viewed[3]})  # fmt: skip
    if rng.random() < 0.2:  # a shared device: another user signs in on it later
        ts += timedelta(hours=rng.randint(1, 20))
        add("page_view", {"userId": f"member_other_{k:04d}", **browsing}, {"page": "/"})
        add("product_view", browsing,
            {"productId": cart[0][0], "name": cart[0][1], "price": cart[0][3]})  # fmt: skip
    return mine


# Keyed by the system's identity (its data folder), never by its URL: systems listen on port 0,
# so a module's system may get the port of an earlier module's stopped one, and a URL key then
# said "already loaded" to an empty system (issue 12, item 9).
_LOADED: dict[tuple[str, int], Dataset] = {}


def load(system: System, seed: int = 7) -> Dataset:
    """Send the dataset once per running system (REST batches); return it."""
    cached = _LOADED.get((system.identity, seed))
    if cached is not None:
        return cached
    data = build(seed)
    for start in range(0, len(data.sent), 400):
        reply = call(
            "POST",
            f"{system.http_url}/analytics/event/batch",
            system.key,
            {"events": data.sent[start : start + 400]},
            timeout=120,
        )
        assert reply.status == 200, reply.body
        assert reply.json()["rejectedCount"] == 0, reply.body
    _LOADED[(system.identity, seed)] = data
    return data

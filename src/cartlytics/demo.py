"""A demo shop: a year of a small store's shoppers, sent through the public ingest API.

`cartlytics demo` runs the whole system (as `cartlytics run`) and, once it is ready, loads the
demo shop into it, so that the dashboard at `/` shows every panel full; `cartlytics demo --into
URL --key KEY` only loads into a server already running. The events go through
`POST /analytics/event/batch` like any shop's: validated, enriched, deduplicated and counted in
the realtime counters exactly as real traffic, and independent of how storage lays them out.

The shop is generated from a seed (the same seed, `now` and size give the same events): visitors
arrive with more traffic in the evenings, at weekends and as the year goes on; they read pages,
search, view products, add to carts, check out and order, in USD, EUR, GBP or JPY by their
country. Every event carries a client id (`demo_<seed>_<n>`), so a load that is retried or run
twice stores each event once.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["PRODUCTS", "DemoLoadError", "generate", "load"]

DAYS = 360  # within the 366 days an event may be old (docs/semantics.md, "Events")
BATCH = 500  # events a request (at most 1000 and 500 KB)

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str
    category: str
    price_usd_cents: int


_CATALOGUE = {
    "apparel": ["Organic Tee", "Linen Shirt", "Merino Sweater", "Rain Jacket", "Canvas Sneakers",
                "Wool Beanie", "Denim Jeans", "Hoodie", "Running Shorts", "Silk Scarf"],
    "home": ["Ceramic Mug", "Pour-over Kettle", "Linen Napkins", "Oak Cutting Board",
             "Scented Candle", "Cotton Throw", "Glass Carafe", "Plant Pot"],
    "accessories": ["Leather Wallet", "Tote Bag", "Sunglasses", "Watch Strap", "Backpack",
                    "Card Holder", "Keyring"],
    "stationery": ["Dot Notebook", "Fountain Pen", "Desk Planner", "Sticky Notes",
                   "Pencil Set", "Greeting Cards"],
}  # fmt: skip
PRODUCTS: tuple[Product, ...] = tuple(
    Product(
        f"prod_{category[:3]}_{n:02d}",
        name,
        category,
        # Deterministic prices between 4.99 and 149.99 USD.
        499 + (sum(map(ord, name)) * 37) % 14500 // 100 * 100,
    )
    for category, names in _CATALOGUE.items()
    for n, name in enumerate(names)
)

# Country -> (currency, share of visitors, minor units per USD cent). Amounts are whole minor
# units of the order's currency: JPY has none, so a 29.99 USD item is 4,499 yen.
_MARKETS: tuple[tuple[str, str, float, float], ...] = (
    ("US", "USD", 0.50, 1.0),
    ("DE", "EUR", 0.12, 0.92),
    ("FR", "EUR", 0.08, 0.92),
    ("GB", "GBP", 0.18, 0.79),
    ("JP", "JPY", 0.12, 1.5),
)
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
)
_SOURCES = (  # (utm_source, utm_medium, referrer) or none: direct traffic
    ("google", "cpc", "https://www.google.com/"),
    ("newsletter", "email", ""),
    ("instagram", "social", "https://www.instagram.com/"),
    ("", "", "https://www.bing.com/"),
    ("", "", "https://news.ycombinator.com/"),
)
_SEARCHES = ("gift", "linen", "black tee", "mug", "notebook", "sale", "wallet", "candle")
_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 7, 8, 7, 6, 6, 7, 8, 9, 10, 10, 8, 5, 2)


def generate(total: int, now: datetime | None = None, seed: int = 1) -> Iterator[Event]:
    """About ``total`` events of the demo shop (whole visits, so it may stop a few past it)
    over the ``DAYS`` days before ``now``, oldest visits first; each a JSON-ready event with
    its client id. The last visits fall within the last few minutes, so the realtime tiles
    have someone on the shop right after a load."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    visitors = max(50, total // 15)
    start = now - timedelta(days=DAYS)
    made = 0
    serial = 0
    while made < total:
        # Where in the year: denser as the shop grows (a density rising 1 -> 3 over the year:
        # inverse of its cumulative share), evenings and weekends busier.
        share = made / total
        day = DAYS * (math.sqrt(1 + 8 * share) - 1) / 2
        moment = start + timedelta(days=min(day, DAYS - 1))
        date = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if date.weekday() < 5 and rng.random() < 0.08:  # busier weekends: some move to Saturday
            date += timedelta(days=5 - date.weekday())
        hour = rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
        at = date + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
        if share > 0.995:  # the very last visits: now, for the realtime tiles
            at = now - timedelta(seconds=rng.uniform(20, 200))
        at = max(at, start + timedelta(minutes=1))
        visit = _visit(rng, rng.randrange(visitors), at, seed, serial)
        # A visit lasts minutes: one that would run past `now` ends just before it instead (an
        # event stamped in the future would only enter the figures later).
        late = visit[-1]["timestamp"] - (now - timedelta(seconds=5))
        for event in visit:
            stamp: datetime = event["timestamp"] - max(late, timedelta(0))
            event["timestamp"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        serial += len(visit)
        made += len(visit)
        yield from visit


def _visit(rng: random.Random, visitor: int, at: datetime, seed: int, serial: int) -> list[Event]:
    """One visit: pages, maybe a search, product views, maybe a cart, a checkout, an order."""
    vrng = random.Random(visitor * 7919 + seed)  # a visitor keeps its country, device, name
    country, currency, _, rate = vrng.choices(_MARKETS, weights=[m[2] for m in _MARKETS])[0]
    agent = vrng.choice(_AGENTS)
    signed_in = vrng.random() < 0.55
    anonymous = f"anon_{visitor:06d}"
    user = f"cust_{visitor:06d}" if signed_in else ""
    session = f"sess_{visitor:06d}_{serial}"
    source = rng.choice((*_SOURCES, None, None, None))
    events: list[Event] = []
    clock = at

    def add(name: str, properties: dict[str, Any], page: str, *, ordering: bool = False) -> None:
        nonlocal clock
        context: dict[str, Any] = {
            "userAgent": agent,
            "page": page,
            "location": {"country": country},
        }
        if source is not None and not events:  # the visit's landing: where it came from
            utm_source, utm_medium, referrer = source
            if utm_source:
                campaign = "spring" if clock.month < 7 else "autumn"
                context["campaign"] = {"source": utm_source, "medium": utm_medium, "name": campaign}
            if referrer and name == "page_view":
                properties = {**properties, "referrer": referrer}
        event: Event = {
            "id": f"demo_{seed}_{serial + len(events)}",
            "event": name,
            "anonymousId": anonymous,
            "sessionId": session,
            "timestamp": clock,  # written out by `generate`
            "properties": properties,
            "context": context,
        }
        if user or ordering:  # an order signs the shopper in (checkout asks for an email)
            event["userId"] = user or f"cust_{visitor:06d}"
        events.append(event)
        clock += timedelta(seconds=rng.uniform(8, 90))

    for _ in range(rng.choice((1, 1, 2, 3))):
        page = rng.choice(("/", "/collections/new", "/collections/sale", "/about", "/journal"))
        add("page_view", {"page": page}, page)
    if rng.random() < 0.2:
        query = rng.choice(_SEARCHES)
        add("search", {"query": query, "resultCount": rng.randrange(0, 24)}, f"/search?q={query}")
    viewed = rng.sample(PRODUCTS, k=rng.choice((1, 1, 2, 3)))
    for product in viewed:
        page = f"/products/{product.product_id}"
        add("page_view", {"page": page}, page)
        add(
            "product_view",
            {"productId": product.product_id, "name": product.name,
             "price": _price(product, rate), "currency": currency},
            page,
        )  # fmt: skip
    if rng.random() > 0.30:
        return events
    cart = [(p, rng.choice((1, 1, 1, 2, 3))) for p in viewed[: rng.choice((1, len(viewed)))]]
    for product, quantity in cart:
        add(
            "add_to_cart",
            {"productId": product.product_id, "quantity": quantity,
             "price": _price(product, rate), "currency": currency},
            "/cart",
        )  # fmt: skip
    total = sum(_price(p, rate) * q for p, q in cart)
    if rng.random() > 0.55:
        if rng.random() < 0.3:
            product, quantity = cart[0]
            add(
                "remove_from_cart", {"productId": product.product_id, "quantity": quantity}, "/cart"
            )
        return events
    cart_id = f"cart_{seed}_{serial}"
    items = sum(q for _, q in cart)
    add("checkout_started", {"cartId": cart_id, "total": total, "itemCount": items,
                             "currency": currency}, "/checkout")  # fmt: skip
    if rng.random() > 0.62:
        return events
    add(
        "order_completed",
        {
            "orderId": f"order_{seed}_{serial}",
            "total": total,
            "currency": currency,
            "items": items,
            "products": [
                {
                    "productId": p.product_id,
                    "name": p.name,
                    "category": p.category,
                    "price": _price(p, rate),
                    "quantity": q,
                }
                for p, q in cart
            ],
        },
        "/checkout/confirm",
        ordering=True,
    )
    return events


def _price(product: Product, rate: float) -> int:
    """The product's price in whole minor units of the market's currency."""
    return int(product.price_usd_cents * rate)


class DemoLoadError(RuntimeError):
    """The server refused the demo's events (a key without the ingest scope, a bad URL)."""


def _post(url: str, key: str, events: list[Event], timeout: float = 60) -> int:
    """Send one batch, retrying 429 and 503 as an SDK would; return the events accepted."""
    body = json.dumps({"events": events}).encode()
    for attempt in range(20):
        request = urllib.request.Request(
            f"{url}/analytics/event/batch",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code in (429, 503):
                wait = float(error.headers.get("Retry-After") or 0.5 * (attempt + 1))
                time.sleep(min(wait, 10))
                continue
            detail = error.read().decode(errors="replace")[:500]
            message = f"the server refused the demo events ({error.code}): {detail}"
            raise DemoLoadError(message) from None
        except (urllib.error.URLError, TimeoutError) as error:
            if attempt >= 4:
                raise DemoLoadError(f"cannot reach {url}: {error}") from error
            time.sleep(1 + attempt)
            continue
        refused = answer.get("rejected") or []
        if refused:
            raise DemoLoadError(f"the server refused demo events: {refused[:3]}")
        return int(answer.get("acceptedCount", len(events)))
    raise DemoLoadError("the server kept answering 429/503")


def load(
    url: str,
    key: str,
    total: int,
    *,
    now: datetime | None = None,
    seed: int = 1,
    workers: int = 4,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Send the demo shop (about ``total`` events) to the server at ``url`` with ``key`` (it
    needs the ingest scope), ``workers`` batches at a time, reporting progress; return the
    number of events stored."""
    report = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.monotonic()
    done = 0
    shown = 0.0
    lock = threading.Lock()

    def batches() -> Iterator[list[Event]]:
        batch: list[Event] = []
        for event in generate(total, now, seed):
            batch.append(event)
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def send(batch: list[Event]) -> None:
        nonlocal done, shown
        stored = _post(url, key, batch)
        with lock:
            done += stored
            elapsed = time.monotonic() - started
            if elapsed - shown >= 1 or done >= total:
                shown = elapsed
                rate = done / max(elapsed, 1e-6)
                report(f"  demo shop: {done:,}/~{total:,} events stored ({rate:,.0f}/s)")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Any] = []
        for batch in batches():
            pending.append(pool.submit(send, batch))
            if len(pending) >= workers * 2:  # bounded: the generator is not run far ahead
                pending.pop(0).result()
        for future in pending:
            future.result()
    report(f"  demo shop: {done:,} events stored in {time.monotonic() - started:,.0f} s")
    return done

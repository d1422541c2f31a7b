"""Synthetic shop data at scale, written straight into storage (columnar, through Arrow).

For benchmarks and demos: N events over the last year for one project, with visitors browsing,
viewing products, adding to carts, checking out and ordering (with line items), in a few
currencies. Generated in blocks with numpy, so 10 million events take about a minute or two.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cartlytics.common.storage import Storage
from services.ingest.rows import EVENTS, ORDER_ITEMS, ORDER_LINES, PRODUCT_NAMES

EVENT_TYPES = np.array(
    [
        "page_view",
        "product_view",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        "order_completed",
        "search",
    ]
)
EVENT_WEIGHTS = np.array([0.42, 0.30, 0.10, 0.02, 0.05, 0.03, 0.08])
CURRENCIES = np.array(["USD", "USD", "USD", "EUR", "GBP"])
PAGES = np.array([f"/products/{n}" for n in range(200)] + ["/", "/cart", "/collections/sale"])
CATEGORIES = np.array(["apparel", "home", "accessories", "stationery"])
DEVICES = np.array(["desktop", "mobile", "tablet"])
BROWSERS = np.array(["Chrome", "Safari", "Firefox", "Mobile Safari", "Chrome Mobile"])


Columns = dict[str, Any]


def blocks(
    project_id: str,
    total: int,
    now: datetime,
    block: int = 500_000,
    seed: int = 1,
    first: int = 0,
) -> Iterator[tuple[Columns, Columns, Columns, Columns]]:
    """Yield (events, order_items, order_lines, product_names) columns for blocks of up to
    ``block`` events (the tables ingest writes, as it would write them).

    ``first`` numbers the events from there, so a store can be grown in steps (1M, then 9M
    more) without repeating ids; 0 gives the same data as before."""
    rng = np.random.default_rng(seed if not first else [seed, first])
    end = now.timestamp() - 60
    start = end - 365 * 86400
    visitors = max(1000, (first + total) // 50)
    made = 0
    while made < total:
        n = min(block, total - made)
        kinds = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_WEIGHTS)
        ts = np.sort(rng.uniform(start, end, size=n))
        stamps = (ts * 1000).astype("datetime64[ms]")
        visitor = rng.integers(0, visitors, size=n)
        product = rng.integers(0, 500, size=n)
        currency = CURRENCIES[rng.integers(0, len(CURRENCIES), size=n)]
        is_order = kinds == 5
        serial = np.arange(first + made, first + made + n).astype(str)
        ids = np.char.add("evt_demo_", serial)
        order_ids = np.where(is_order, np.char.add("ord_", serial), "")
        # Every device has an anonymousId; 60% of events are signed in (orders always), and those
        # carry both ids (as the SDKs send them after identify): one link per visitor, so the
        # people lookup (commerce.visitors) is as large as the visitors.
        user_ids = np.char.add("v_", visitor.astype(str))
        anonymous_ids = np.char.add("a_", visitor.astype(str))
        signed_in = is_order | (rng.random(n) < 0.6)
        visitor_ids = np.where(signed_in, user_ids, anonymous_ids)
        lines = np.where(is_order, rng.integers(1, 4, size=n), 0)
        prices = rng.integers(5, 200, size=(n, 3)) * 100 - 1
        quantities = rng.integers(1, 4, size=(n, 3))
        totals = np.where(
            is_order, (prices * quantities * (np.arange(3) < lines[:, None])).sum(axis=1), 0
        )
        events_cols = {
            "project_id": np.full(n, project_id),
            "event_id": ids,
            "event": EVENT_TYPES[kinds],
            "ts": stamps,
            "received_at": stamps,
            "user_id": np.where(signed_in, user_ids, ""),
            "anonymous_id": anonymous_ids,
            "session_id": np.char.add(
                "s_", (visitor * 7 + (ts // 1800).astype(int) % 7).astype(str)
            ),
            "visitor_id": visitor_ids,
            "order_id": order_ids,
            "total": totals,
            "currency": np.where(is_order | (kinds == 4), currency, ""),
            "product_id": np.where(
                (kinds >= 1) & (kinds <= 3), np.char.add("prod_", product.astype(str)), ""
            ),
            "page": np.where(kinds == 0, PAGES[rng.integers(0, len(PAGES), size=n)], ""),
            "properties": np.full(n, "{}"),
            "context": np.full(n, "{}"),
            "device": DEVICES[rng.integers(0, 3, size=n)],
            "browser": BROWSERS[rng.integers(0, len(BROWSERS), size=n)],
            "os": np.full(n, ""),
            "ip_hash": np.full(n, ""),
            "country": np.full(n, "US"),
            "region": np.full(n, ""),
            "utm_source": np.full(n, ""),
            "utm_medium": np.full(n, ""),
            "utm_campaign": np.full(n, ""),
            "utm_term": np.full(n, ""),
            "utm_content": np.full(n, ""),
            "referrer_host": np.full(n, ""),
        }
        rows = np.nonzero(is_order)[0]
        item_rows = [(r, line) for r in rows for line in range(lines[r])]
        idx = np.array([r for r, _ in item_rows], dtype=int)
        line_no = np.array([line for _, line in item_rows], dtype=int)
        item_products = (product[idx] + line_no * 37) % 500
        items_cols = {
            "project_id": np.full(len(idx), project_id),
            "order_id": order_ids[idx],
            "event_id": ids[idx],
            "line": line_no,
            "ts": stamps[idx],
            "visitor_id": visitor_ids[idx],
            "currency": currency[idx],
            "product_id": np.char.add("prod_", item_products.astype(str)),
            "name": np.char.add("Product ", item_products.astype(str)),
            "category": CATEGORIES[item_products % len(CATEGORIES)],
            "price": prices[idx, line_no],
            "quantity": quantities[idx, line_no],
        }
        # order_lines: each order event with its lines as arrays (items are grouped by order
        # event, in line order, since idx is sorted).
        starts = np.searchsorted(idx, rows)
        ends = np.searchsorted(idx, rows, side="right")
        item_products_str = items_cols["product_id"].tolist()
        item_prices = items_cols["price"].tolist()
        item_quantities = items_cols["quantity"].tolist()
        lines_cols = {
            "project_id": np.full(len(rows), project_id),
            "order_id": order_ids[rows],
            "event_id": ids[rows],
            "ts": stamps[rows],
            "currency": currency[rows],
            "visitor_id": visitor_ids[rows],
            "product_ids": [item_products_str[a:b] for a, b in zip(starts, ends, strict=True)],
            "prices": [item_prices[a:b] for a, b in zip(starts, ends, strict=True)],
            "quantities": [item_quantities[a:b] for a, b in zip(starts, ends, strict=True)],
            "declared_items": np.full(len(rows), -1),  # the demo orders send no `items` count
        }
        names_cols = {  # every demo line item is named
            "project_id": items_cols["project_id"],
            "product_id": items_cols["product_id"],
            "name": items_cols["name"],
            "ts": items_cols["ts"],
            "event_id": items_cols["event_id"],
            "line": items_cols["line"],
        }
        made += n
        yield events_cols, items_cols, lines_cols, names_cols


def load(
    storage: Storage, project_id: str, total: int, now: datetime | None = None, first: int = 0
) -> None:
    """Write ``total`` synthetic events (and their order lines), printing progress; ids are
    numbered from ``first``."""
    import pyarrow as pa

    now = now or datetime.now(UTC)
    started = time.perf_counter()
    done = 0
    for events_cols, items_cols, lines_cols, names_cols in blocks(
        project_id, total, now, first=first
    ):
        for spec, cols in (
            (ORDER_ITEMS, items_cols),
            (EVENTS, events_cols),
            (ORDER_LINES, lines_cols),
            (PRODUCT_NAMES, names_cols),
        ):
            table = pa.table({c: cols[c] for c in spec.columns})
            storage.insert_arrow(spec.name, spec.columns, table)
        done += len(events_cols["event_id"])
        rate = done / (time.perf_counter() - started)
        print(f"  loaded {done:,}/{total:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    print(json.dumps({"help": "use bench/metrics.py"}))

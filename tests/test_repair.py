"""Repair of the rollups after the embedded engine died mid-write (storage/repair.py).

A kill -9 of a process embedding chdb can land between `events` and its materialized views,
or between the event and its `order_lines` row. Such a write was never acknowledged; the client
sends the order again. These tests store orders through the running system, stop it, then cut
the derived tables of one order exactly as such a kill leaves them (its rows taken out of the
tables whose views "had not run yet"; a negative row taken off the summing rollups), and leave
the open marker of a process that never closed the folder. The next start must repair, and
after the client's retry every figure must count the order once: sales, products and
customers, against the orders as sent (a plain-Python oracle).

Embedded only: a ClickHouse server finishes or drops a whole INSERT whatever its client does,
so there is nothing to repair there (the server backend never reports itself interrupted).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.rest import call, midday_zone
from tests.servers import System, start_system

CURRENCY = "NOK"
# "Today" (period=1d) read where it is midday: orders stamped 5 minutes ago are today at any hour.
ZONE = midday_zone()
ROOT = Path(__file__).resolve().parent.parent

# What a kill left of the cut order, by the step the engine had reached (chdb writes `events`,
# then its views one after another; ingest writes `order_lines` after the whole INSERT).
CUTS = {
    # Killed right after `events`: no view ran.
    "events-only": ("orders", "sales_15m", "order_index", "order_line_counts", "order_lines"),
    # The shape seen in the fault suite: `sales_15m` has the order, `order_index` does not, so
    # the duplicate check misses the retry.
    "sales-without-index": ("order_index", "order_line_counts", "order_lines"),
    # Killed after the INSERT, before ingest wrote the order's lines.
    "lines-missing": ("order_lines",),
}

CUT_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {src!r})
from cartlytics.common.storage import open_storage
storage = open_storage("", Path({data!r}))
backend = storage.backend
backend.execute("SET mutations_sync = 2")
tables = {tables!r}
where = "project_id = 'default' AND event_id = {event_id!r}"
rows = backend.execute(
    "SELECT currency, toStartOfFifteenMinutes(ts), total FROM orders WHERE " + where
)
assert len(rows) == 1, rows
currency, bucket, total = rows[0]
for table in ("orders", "order_index", "order_lines"):
    if table in tables:
        backend.execute(f"ALTER TABLE {{table}} DELETE WHERE {{where}}")
key = f"'default', '{{currency}}', toDateTime('{{bucket}}', 'UTC')"
if "sales_15m" in tables:
    backend.execute(f"INSERT INTO sales_15m VALUES ({{key}}, -1, -{{total}})")
if "order_line_counts" in tables:
    lines = -1 if "order_lines" in tables else 0
    backend.execute(f"INSERT INTO order_line_counts VALUES ({{key}}, -1, {{lines}})")
elif "order_lines" in tables:
    backend.execute(f"INSERT INTO order_line_counts VALUES ({{key}}, 0, -1)")
storage.close()
"""


def _order(order_id: str, event_id: str, total_items: list[tuple[str, int, int]], user: str) -> Any:
    return {
        "id": event_id,
        "event": "order_completed",
        "userId": user,
        "timestamp": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        "properties": {
            "orderId": order_id,
            "total": sum(price * quantity for _, price, quantity in total_items),
            "currency": CURRENCY,
            "products": [
                {"productId": p, "price": price, "quantity": quantity}
                for p, price, quantity in total_items
            ],
        },
    }


def _send(system: System, event: Any) -> None:
    reply = call("POST", f"{system.http_url}/analytics/event", system.key, event)
    assert reply.status == 201, reply.body


def _oracle(orders: list[Any]) -> dict[str, Any]:
    """Sales, units and revenue per product, and customers, counting each orderId once."""
    seen: dict[str, Any] = {}
    for event in orders:
        seen.setdefault(event["properties"]["orderId"], event)
    units: dict[str, int] = defaultdict(int)
    revenue: dict[str, int] = defaultdict(int)
    for event in seen.values():
        for line in event["properties"]["products"]:
            units[line["productId"]] += line["quantity"]
            revenue[line["productId"]] += line["price"] * line["quantity"]
    return {
        "orders": len(seen),
        "revenue": sum(e["properties"]["total"] for e in seen.values()),
        "units": dict(units),
        "product_revenue": dict(revenue),
        "customers": len({e["userId"] for e in seen.values()}),
    }


def _figures(system: System) -> dict[str, Any]:
    base, key = system.http_url, system.key
    today = f"period=1d&currency={CURRENCY}&timezone={ZONE}"
    sales = call("GET", f"{base}/analytics/sales?{today}", key)
    assert sales.status == 200, sales.body
    products = call("GET", f"{base}/analytics/products?{today}", key)
    assert products.status == 200, products.body
    customers = call("GET", f"{base}/analytics/customers?{today}", key)
    assert customers.status == 200, customers.body
    top = products.json()["topSellers"]
    return {
        "orders": sales.json()["orders"],
        "revenue": sales.json()["revenue"],
        "units": {p["productId"]: p["unitsSold"] for p in top},
        "product_revenue": {p["productId"]: p["revenue"] for p in top},
        "customers": customers.json()["totalCustomers"],
    }


def _cut(data_dir: Path, event_id: str, tables: tuple[str, ...]) -> None:
    script = CUT_SCRIPT.format(
        src=str(ROOT / "src"), data=str(data_dir), tables=tables, event_id=event_id
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def _kill_and_cut(system: System, data_dir: Path, event_id: str, cut: str, marker: bool) -> None:
    system.stop()
    _cut(data_dir, event_id, CUTS[cut])
    # The killed process's claim on the id never reached the dedup window, so the retry of the
    # same id is stored again: the embedded Redis keeps its data under data_dir/redis.
    shutil.rmtree(data_dir / "redis", ignore_errors=True)
    if marker:
        (data_dir / "clickhouse.open").write_text("4194305\n")  # no such process


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("retry", ["same-id", "new-id"])
def test_a_cut_write_counts_once_after_repair_and_retry(
    tmp_path: Path, cut: str, retry: str
) -> None:
    data_dir = tmp_path / "data"
    key = "cak_" + uuid.uuid4().hex
    sent = [
        _order("r_a", "evt_r_a", [("p1", 1500, 2), ("p2", 999, 1)], "u1"),
        _order("r_b", "evt_r_b", [("p1", 1500, 1)], "u2"),  # the order the kill cuts
        _order("r_c", "evt_r_c", [("p3", 250, 4)], "u1"),
    ]
    system = start_system(data_dir, key)
    try:
        for event in sent:
            _send(system, event)
    finally:
        _kill_and_cut(system, data_dir, "evt_r_b", cut, marker=True)
    restarted = start_system(data_dir, key)
    try:
        assert "rollups repaired after an unclean stop" in restarted.log()
        retried = dict(sent[1], id="evt_r_b" if retry == "same-id" else "evt_r_b_again")
        _send(restarted, retried)
        assert _figures(restarted) == _oracle([*sent, retried])
    finally:
        restarted.stop()
    # A clean stop leaves no marker: the next start repairs nothing.
    assert not (data_dir / "clickhouse.open").exists()


def test_without_the_repair_the_retry_of_a_cut_write_counts_twice(tmp_path: Path) -> None:
    """Why the repair exists: the same cut and retry, without the marker, double-count."""
    data_dir = tmp_path / "data"
    key = "cak_" + uuid.uuid4().hex
    sent = [_order("r_b", "evt_r_b", [("p1", 1500, 1)], "u2")]
    system = start_system(data_dir, key)
    try:
        _send(system, sent[0])
    finally:
        _kill_and_cut(system, data_dir, "evt_r_b", "sales-without-index", marker=False)
    restarted = start_system(data_dir, key)
    try:
        assert "rollups repaired" not in restarted.log()
        _send(restarted, sent[0])
        figures = _figures(restarted)
        assert (figures["orders"], figures["revenue"]) == (2, 3000)
    finally:
        restarted.stop()

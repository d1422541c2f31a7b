"""Each rollup holds exactly what its one definition says (common/commerce/rollups.py).

A store fed the shared dataset through the running system (ingest's own writes: events, line
items, order_lines, product names, order_dups); then, per rollup, its target's figures are
compared with the same figures over its definition's SELECT over the stored rows, and over every
other rows its backfills and repair read it from (``STORED_ORDERS``). The migrations' backfills
and the repair are built from these same SELECTs, so a view that no longer matches them, or a
backfill or repair written apart from its view, fails here. On both backends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import dataset
from tests.load import clickhouse_url as _clickhouse_url
from tests.servers import start_system

ROOT = Path(__file__).resolve().parent.parent

CHECK_SCRIPT = """
import json, sys
from pathlib import Path
from cartlytics.common.commerce import rollups as r
from cartlytics.common.storage import open_storage
from cartlytics.common.storage.sql import Sql

storage = open_storage(sys.argv[1], Path(sys.argv[2]))
json_functions = sys.argv[3] == "yes"

# Each target's figures, whatever its engine and merges: the rows with their number of copies
# (MergeTree), the sums per key (SummingMergeTree), the merged states (AggregatingMergeTree).
ROWS = "SELECT {names}, count() AS copies FROM {rows} GROUP BY {names} ORDER BY {names}"
FIGURES = {
    "orders": ROWS,
    "order_index": ROWS,
    "product_views": ROWS,
    "order_dups": "SELECT DISTINCT project_id, order_id FROM {rows} ORDER BY project_id, order_id",
    "sales_15m": "SELECT project_id, currency, bucket, sum(orders), toString(sum(revenue))"
                 " FROM {rows} GROUP BY project_id, currency, bucket"
                 " ORDER BY project_id, currency, bucket",
    "order_line_counts": "SELECT project_id, currency, bucket, sum(event_rows), sum(line_rows)"
                         " FROM {rows} GROUP BY project_id, currency, bucket"
                         " ORDER BY project_id, currency, bucket",
    "customer_first": "SELECT project_id, visitor_id, minMerge(first_ts) FROM {rows}"
                      " GROUP BY project_id, visitor_id ORDER BY project_id, visitor_id",
    "product_names_latest": "SELECT project_id, product_id, argMaxMerge(latest) FROM {rows}"
                            " GROUP BY project_id, product_id ORDER BY project_id, product_id",
    "order_lines": ROWS,
    "identity_links": "SELECT project_id, anonymous_id, user_id, minMerge(first_link) FROM {rows}"
                      " GROUP BY project_id, anonymous_id, user_id"
                      " ORDER BY project_id, anonymous_id, user_id",
    "people": "SELECT project_id, anonymous_id, minMerge(first_link) FROM {rows}"
              " GROUP BY project_id, anonymous_id ORDER BY project_id, anonymous_id",
}
LINES = ("project_id", "order_id", "event_id", "ts", "currency", "visitor_id", "product_ids",
         "prices", "quantities", "declared_items")

def figures(target, rows, names):
    sql = Sql(FIGURES[target])
    found = storage.query_sync(sql, {"rows": rows, "names": Sql(", ".join(names))})
    return [[str(value) for value in row] for row in found]

def subquery(*selects):
    return Sql("(") + Sql.join(" UNION ALL ", selects) + Sql(")")

# The SELECTs each target is the result of, as migrations and repair read them.
order_line_counts = (r.ORDER_LINE_COUNTS_EVENTS, r.ORDER_LINE_COUNTS_LINES)
names_feeds = (r.ITEM_NAMES, r.VIEW_NAMES) if json_functions else (r.ITEM_NAMES,)
names_rows = r.Rows(subquery(*(feed.select() for feed in names_feeds)).text)
cases = {
    "orders": [r.ORDERS.select()],
    "order_index": [r.ORDER_INDEX.select(), r.ORDER_INDEX.select(r.STORED_ORDERS)],
    "sales_15m": [r.SALES_15M.select(), r.SALES_15M.select(r.STORED_ORDERS)],
    "order_dups": [r.ORDER_DUPS.select()],
    "order_line_counts": [
        subquery(*(view.select() for view in order_line_counts)),
        subquery(r.ORDER_LINE_COUNTS_EVENTS.select(r.STORED_ORDERS),
                 r.ORDER_LINE_COUNTS_LINES.select()),
    ],
    "customer_first": [r.CUSTOMER_FIRST.select(), r.CUSTOMER_FIRST.select(r.STORED_ORDERS)],
    "product_views": [r.PRODUCT_VIEWS.select()],
    "identity_links": [r.IDENTITY_LINKS.select()],
    "people": [r.PEOPLE_FIRST.select()],
}
if json_functions:  # ClickHouse 18.16 cannot read the product_view names back (no JSON)
    cases["product_names_latest"] = [r.PRODUCT_NAMES.select(names_rows)]
views = {view.target: view for view in r.VIEWS}
result = {}
for target, selects in cases.items():
    names = (views.get(target) or r.ORDER_DUPS).names
    held = figures(target, Sql(target), names)
    result[target] = [len(held)] + [
        figures(target, select if select.text.startswith("(") else subquery(select), names) == held
        for select in selects
    ]

# The repair rebuilds every derived table to what the views and ingest wrote: each emptied, then
# repaired over a window holding every event (embedded only: the repair's reason to exist, and
# ClickHouse 18.16 cannot read the declared item counts back).
if json_functions:
    from cartlytics.common.storage.repair import STEPS, repair_rollups

    names_of = {**{t: (views.get(t) or r.ORDER_DUPS).names for t in cases}, "order_lines": LINES}
    names_of["product_names_latest"] = r.PRODUCT_NAMES.names
    held = {target: figures(target, Sql(target), names_of[target]) for target in names_of}
    for target in names_of:
        storage.query_sync(Sql("TRUNCATE TABLE " + target))
    report = repair_rollups(storage.backend, window_seconds=10**9)
    result["repaired"] = {
        target: [len(held[target]), figures(target, Sql(target), names_of[target]) == held[target]]
        for target in names_of
    }
    result["repaired_steps"] = sorted(name for name, _ in STEPS if name != "scope")
storage.close()
print(json.dumps(result))
"""


def test_every_rollup_holds_what_its_definition_selects(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = _clickhouse_url(backend, request)
    data_dir = tmp_path / "data"
    system = start_system(data_dir, "cak_" + uuid.uuid4().hex, clickhouse_url=url)
    try:
        dataset.load(system)
    finally:
        system.stop()  # the embedded store is one process's at a time
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, str(data_dir), "no" if url else "yes"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    expected_targets = {
        "orders",
        "order_index",
        "sales_15m",
        "order_dups",
        "order_line_counts",
        "customer_first",
        "product_views",
        "identity_links",
        "people",
    }
    repaired = result.pop("repaired", None)
    steps = result.pop("repaired_steps", None)
    assert expected_targets <= set(result)
    for target, (rows, *same) in result.items():
        assert rows > 0, f"{target} holds nothing to compare"
        assert all(same), f"{target} differs from its definition's SELECT: {same}"
    assert (repaired is not None) == (backend == "chdb")
    if repaired is not None:
        # Every repair step's table, rebuilt from nothing, holds what it held.
        # (The identity_links step repairs `people` too.)
        assert set(repaired) == {*steps, "product_names_latest", "people"} - {"product_names"}
        for target, (rows, same) in repaired.items():
            assert rows > 0, f"{target} holds nothing to compare"
            assert same, f"{target} repaired differs from what the views and ingest wrote"

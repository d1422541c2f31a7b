"""How a table is made in each mode: the one place that says so (docs/cluster.md).

Migrations are written once, for one server: ``CREATE TABLE``, materialized views, backfills,
``ALTER`` and ``DROP``. A ``Layout`` turns each rendered statement into what the store runs:

- ``SINGLE`` (one clickhouse-server, or chdb): the statement as written.
- ``ClusterLayout`` (``CLICKHOUSE_CLUSTER``): every statement ``ON CLUSTER``, so on every node,
  each table placed as ``PLACEMENT`` says:

  - sharded (``SHARDED``: events and everything derived from them): ``<table>_local``, the same
    columns with the ``Replicated`` engine of the same family (ZooKeeper path
    ``/clickhouse/tables/{shard}/<database>/<table>``, replica ``{replica}``), and under the
    table's own name a ``Distributed`` table over the locals with the sharding key given here.
    So every query, insert and backfill reads and writes ``<table>`` unchanged. Materialized
    views connect the local tables: a rollup is computed on the shard of its rows, and its
    replicas get it by replication (a fetched part feeds no view);
  - everywhere (``EVERYWHERE``: keys, erasures, migrations, the snapshot's record): one
    replicated table with one ZooKeeper path for the whole cluster (no ``{shard}``), replica
    ``{shard}-{replica}``: every node holds all of it, so a node answers them alone;
  - per node (``PER_NODE``: the people snapshot's ``Join`` tables, which cannot be replicated):
    made on every node and left empty (cluster mode builds no snapshot: people_snapshot.py).

  ``ALTER`` of a sharded table changes the locals ``ON CLUSTER`` and makes the ``Distributed``
  table again (ClickHouse 18.16 refuses ``ALTER ... ON CLUSTER`` of a non-replicated table on a
  cluster whose shards replicate internally; a Distributed table holds no rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

ORDER_KEY = "cityHash64(project_id, order_id)"

SHARDED: Final[dict[str, str]] = {
    # An order event lands with its orderId's other copies (retries, duplicates sent for another
    # visitor), its line items and its lines; any other event with its visitor's.
    "events": "cityHash64(project_id, if(order_id != '', order_id, visitor_id))",
    "order_items": ORDER_KEY,
    "order_lines": ORDER_KEY,
    "orders": ORDER_KEY,
    "order_index": ORDER_KEY,
    "order_dups": ORDER_KEY,
    # Filled by views on the shard of their rows: the key only routes a backfill's rows.
    "sales_15m": "cityHash64(project_id, currency, bucket)",
    "order_line_counts": "cityHash64(project_id, currency, bucket)",
    "customer_first": "cityHash64(project_id, visitor_id)",
    "product_views": "cityHash64(project_id, product_id)",
    "product_names": "cityHash64(project_id, product_id)",
    "product_names_latest": "cityHash64(project_id, product_id)",
    "identity_links": "cityHash64(project_id, anonymous_id)",
    "people": "cityHash64(project_id, anonymous_id)",
}
"""Tables split across shards, and the sharding key of their ``Distributed`` table."""

EVERYWHERE: Final = frozenset({
    "schema_migrations",
    "api_keys",
    "erasures",
    "erasure_scope",
    "retention_runs",
    "people_snapshots",
    "people_snapshot_state",
})  # fmt: skip
"""Small tables every node holds whole (one replicated table across the cluster)."""

PER_NODE: Final = frozenset({"people_snapshot", "people_snapshot_links", "people_snapshot_first"})
"""Tables made on each node and never replicated (``Join`` engine): empty in cluster mode."""

_CREATE_TABLE = re.compile(
    r"^\s*CREATE TABLE (?P<if>IF NOT EXISTS )?(?P<name>\w+)\s*(?P<columns>\(.*?\))\s*"
    r"ENGINE = (?P<engine>\w+)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(
    r"^\s*CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<name>\w+) TO (?P<target>\w+) AS\n"
    r"(?P<select>.*)$",
    re.DOTALL,
)
_DROP = re.compile(r"^\s*DROP TABLE IF EXISTS (?P<name>\w+)(?P<sync> SYNC)?\s*$")
_ALTER = re.compile(r"^\s*ALTER TABLE (?P<name>\w+)(?P<rest>\s.*)$", re.DOTALL)
_FROM = re.compile(r"\bFROM (\w+)")


class Layout(Protocol):
    @property
    def cluster(self) -> str:
        """The cluster's name; empty for one server."""
        ...

    def statements(self, sql: str) -> list[str]:
        """What the store runs for the rendered DDL (or backfill) statement ``sql``."""
        ...


@dataclass(frozen=True)
class SingleServer:
    """One server (or chdb): statements as written."""

    cluster: str = ""

    def statements(self, sql: str) -> list[str]:
        return [sql]


SINGLE: Final = SingleServer()


class UnplacedTable(ValueError):
    """A migration names a table that ``PLACEMENT`` does not place (add it to layout.py)."""


@dataclass(frozen=True)
class ClusterLayout:
    """The statements of a cluster named ``cluster`` (in the servers' ``remote_servers``)
    holding ``database``."""

    cluster: str
    database: str

    def local(self, table: str) -> str:
        return f"{self.database}.{table}_local"

    def statements(self, sql: str) -> list[str]:
        for pattern, translate in (
            (_CREATE_TABLE, self._create_table),
            (_CREATE_VIEW, self._create_view),
            (_DROP, self._drop),
            (_ALTER, self._alter),
        ):
            match = pattern.match(sql)
            if match:
                return translate(match)
        # INSERT ... SELECT (backfills): through the Distributed tables, as written.
        return [sql]

    def _on(self, table: str) -> str:
        return f"{self.database}.{table} ON CLUSTER {self.cluster}"

    def _create_table(self, match: re.Match[str]) -> list[str]:
        name, engine, args = match["name"], match["engine"], match["args"]
        columns, rest, exists = match["columns"], match["rest"], match["if"] or ""
        if name in PER_NODE:
            return [f"CREATE TABLE {exists}{self._on(name)} {columns} ENGINE = {engine}({args})"]
        if name in EVERYWHERE:
            path = f"/clickhouse/tables/all/{self.database}/{name}"
            replicated = _replicated(engine, args, path, "{shard}-{replica}")
            return [f"CREATE TABLE {exists}{self._on(name)} {columns} ENGINE = {replicated}{rest}"]
        key = _key(name)
        path = f"/clickhouse/tables/{{shard}}/{self.database}/{name}"
        local = (
            f"{engine}{rest}"  # a Null table keeps nothing: nothing to replicate
            if engine == "Null"
            else _replicated(engine, args, path, "{replica}") + rest
        )
        on_local = f"{self.local(name)} ON CLUSTER {self.cluster}"
        return [
            f"CREATE TABLE {exists}{on_local} {columns} ENGINE = {local}",
            self._distributed(name, key, exists),
        ]

    def _distributed(self, name: str, key: str, exists: str = "IF NOT EXISTS ") -> str:
        return (
            f"CREATE TABLE {exists}{self._on(name)} AS {self.local(name)}"
            f" ENGINE = Distributed({self.cluster}, {self.database}, {name}_local, {key})"
        )

    def _create_view(self, match: re.Match[str]) -> list[str]:
        target, select = match["target"], match["select"]
        _key(target)
        sources = _FROM.findall(select)
        for source in sources:
            _key(source)
        local_select = _FROM.sub(lambda m: f"FROM {self.local(m.group(1))}", select)
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self._on(match['name'])}"
            f" TO {self.local(target)} AS\n{local_select}"
        ]

    def _drop(self, match: re.Match[str]) -> list[str]:
        name, sync = match["name"], match["sync"] or ""
        if name in SHARDED:
            return [
                f"DROP TABLE IF EXISTS {self._on(name)}{sync}",
                f"DROP TABLE IF EXISTS {self.local(name)} ON CLUSTER {self.cluster}{sync}",
            ]
        # A view, a table everywhere or on each node.
        return [f"DROP TABLE IF EXISTS {self._on(name)}{sync}"]

    def _alter(self, match: re.Match[str]) -> list[str]:
        name = match["name"]
        if name not in SHARDED:
            # Every node holds it: the ALTER replicates from this node.
            return [f"ALTER TABLE {self.database}.{name}{match['rest']}"]
        return [
            f"ALTER TABLE {self.local(name)} ON CLUSTER {self.cluster}{match['rest']}",
            f"DROP TABLE IF EXISTS {self._on(name)}",
            self._distributed(name, SHARDED[name]),
        ]


def _key(table: str) -> str:
    if table not in SHARDED:
        raise UnplacedTable(f"table {table!r} has no placement in cluster mode (layout.py)")
    return SHARDED[table]


def _replicated(engine: str, args: str | None, path: str, replica: str) -> str:
    """``engine`` (a MergeTree family member) replicated at ``path`` as ``replica``."""
    if not engine.endswith("MergeTree"):
        raise UnplacedTable(f"engine {engine} has no replicated twin")
    extra = f", {args}" if args else ""
    return f"Replicated{engine}('{path}', '{replica}'{extra})"


def layout_for(cluster: str, database: str) -> Layout:
    return ClusterLayout(cluster, database) if cluster else SINGLE

"""Cluster mode: orderIds stored twice that ingest's check could not see, listed afterwards.

Ingest lists an orderId in ``order_dups`` when, just after storing its events, it reads more than
one stored row of it (``commerce.orders.NEWLY_DUPLICATED_IDS``). One server always shows it
every row. A cluster's replicas copy each other in the background: after a failover (a replica
killed, a shard restarted) the replica read may lack a copy another one holds, and a copy that a
refused write stored on a replica then down appears only once that replica is back. So in
cluster mode the keeper (``people_snapshot.keep``) lists every orderId with more than one row
that is not listed yet, at each tick: figures are exact again within a tick of replication
catching up (docs/cluster.md). The copies of an orderId share a shard (``layout.SHARDED``).
"""

from __future__ import annotations

from cartlytics.common.commerce.rollups import ORDER_DUPS

from . import Storage
from .sql import Sql

UNLISTED = Sql("(project_id, order_id) NOT IN (SELECT project_id, order_id FROM order_dups)")

RELIST = ORDER_DUPS.backfill(where=UNLISTED)
"""Every orderId of ``order_index`` with several rows and not in ``order_dups``, added to it."""


def relist_duplicates(storage: Storage) -> None:
    """List in ``order_dups`` every orderId stored more than once and not listed (blocking)."""
    storage.query_sync(RELIST)

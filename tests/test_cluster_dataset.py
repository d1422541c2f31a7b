"""The shared dataset's figures on a cluster: every endpoint, every export type and the custom
query give the oracles' figures on 2 shards x 2 replicas (``CLICKHOUSE_CLUSTER``), duplicated
orders and retried ids included.

The checks are the single-server modules' own test functions, imported here: in this module
``system`` is a ``cartlytics run`` on one node of the cluster and ``storage`` a cluster-mode
store, so they run once each on the cluster (not once per backend: the suite stays minutes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartlytics.common.storage import Storage, open_storage
from tests.cluster import CLUSTER, ClickHouseCluster
from tests.servers import System, start_system

# The checks, by module (each over the shared dataset plus that module's own extra events).
from tests.test_customers import (  # noqa: F401
    test_customers_match_oracle,
    test_customers_targeted,
    test_new_customers_with_orders_reused_across_visitors,
)
from tests.test_export import (  # noqa: F401
    test_customers_match_oracle as test_export_customers_match_oracle,
)
from tests.test_export import (  # noqa: F401
    test_events_match_oracle as test_export_events_match_oracle,
)
from tests.test_export import (  # noqa: F401
    test_order_items_match_oracle as test_export_order_items_match_oracle,
)
from tests.test_export import (  # noqa: F401
    test_orders_in_a_range_currency_and_zone as test_export_orders_in_a_range_currency_and_zone,
)
from tests.test_export import (  # noqa: F401
    test_orders_match_oracle as test_export_orders_match_oracle,
)
from tests.test_export import (  # noqa: F401
    test_products_match_oracle as test_export_products_match_oracle,
)
from tests.test_export_agrees_with_metrics import (  # noqa: F401
    test_customer_figures_agree,
    test_orders_and_revenue_agree,
    test_product_figures_agree,
)
from tests.test_funnel import (  # noqa: F401
    test_funnel_matches_oracle,
    test_funnel_same_second_and_window,
)
from tests.test_products import (  # noqa: F401
    test_products_count_the_first_event_of_duplicated_orders,
    test_products_match_oracle,
    test_products_targeted,
)
from tests.test_query import (  # noqa: F401
    test_a_retry_stored_twice_counts_once,
    test_every_metric_by_every_dimension,
    test_query_matches_oracle,
)
from tests.test_shared_dataset import (  # noqa: F401
    test_realtime_today_on_the_shared_dataset,
    test_sales_on_the_shared_dataset,
)


@pytest.fixture(scope="module")
def _cluster_systems(
    clickhouse_cluster: ClickHouseCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, System]]:
    """One system per module the checks come from (each adds its own events to the dataset and
    its oracle counts only those), each in a database of its own, started when first asked."""
    systems: dict[str, System] = {}
    yield systems
    for system in systems.values():
        system.stop()


@pytest.fixture
def system(
    request: pytest.FixtureRequest,
    clickhouse_cluster: ClickHouseCluster,
    _cluster_systems: dict[str, System],
    tmp_path_factory: pytest.TempPathFactory,
) -> System:
    """The system on the cluster for this check's module (overrides conftest's, which runs per
    backend): ``cartlytics run`` with ``CLICKHOUSE_URL`` at one node and ``CLICKHOUSE_CLUSTER``."""
    origin = request.function.__module__
    if origin not in _cluster_systems:
        database = "analytics_" + uuid.uuid4().hex[:8]
        _cluster_systems[origin] = start_system(
            tmp_path_factory.mktemp("system-cluster"),
            key="cak_test_" + uuid.uuid4().hex,
            clickhouse_url=clickhouse_cluster.url(database),
            # Acknowledged once stored: the checks read right after loading the dataset, and
            # with the ingest log a read waits for the log's writer at most a second
            # (services/ingest/log_writer.py), less than the cluster takes to store it all here.
            extra_env={"CLICKHOUSE_CLUSTER": CLUSTER, "ANALYTICS_INGEST_LOG": "no"},
            timeout=180,  # migrations ON CLUSTER: every node applies each statement
        )
    return _cluster_systems[origin]


@pytest.fixture(scope="module")
def _cluster_storage(clickhouse_cluster: ClickHouseCluster) -> Iterator[Storage]:
    # On the last node: a store's node plays no part in what it reads.
    database = "analytics_" + uuid.uuid4().hex[:8]
    storage = open_storage(clickhouse_cluster.url(database, node=3), Path("/nonexistent"), CLUSTER)
    storage.migrate()
    yield storage
    storage.close()


@pytest.fixture
def storage(_cluster_storage: Storage) -> Storage:
    """A cluster-mode store (overrides conftest's, which runs per backend); tests keep apart by
    project ids."""
    return _cluster_storage

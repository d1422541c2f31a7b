"""The fault suite (issue 7): break one thing under load, then count.

For every fault the invariant is the same: the ids acknowledged to clients and the ids found in
ClickHouse afterwards are the same set, and no figure counts one twice. Clients send orders with
their own ids and retry what failed (tests/load.py); after the fault each id sent but never
acknowledged is retried until it is, so the two sets must end up equal. docs/faults.md describes
each test.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cartlytics.common.config import Config
from tests.load import (
    Load,
    RestStream,
    Stream,
    clickhouse_url,
    logged_ids,
    sales,
    statuses,
    stored_ids,
)
from tests.rest import call
from tests.servers import ClickHouseServer, RedisServer, System, free_port, start_system

pytestmark = pytest.mark.faults

GRACE = 5  # ANALYTICS_SHUTDOWN_GRACE of the systems here: the drain timeout SIGTERM must meet


def _ingest_log_on() -> bool:
    """Whether the systems started here acknowledge from the ingest log (the environment's
    ANALYTICS_INGEST_LOG, else its default)."""
    return Config.from_env().ingest_log


def _stored(url: str, data_dir: Path, prefix: str) -> dict[str, int]:
    return {k: v for k, v in stored_ids(url, data_dir).items() if k.startswith(prefix)}


def _check_counts(load: Load, stored: dict[str, int], counted_orders: int) -> None:
    """Acknowledged == stored (distinct ids), and the sales figure counts each order once."""
    assert not load.errors, load.errors
    lost, unknown = load.acked - set(stored), set(stored) - load.acked
    assert not lost and not unknown, (
        f"acknowledged {len(load.acked)}, stored {len(stored)}: "
        f"lost {sorted(lost)[:3]}, stored unacknowledged {sorted(unknown)[:3]}"
    )
    assert counted_orders == len(load.acked), "an order counted twice (or not at all)"


def _no_500(load: Load) -> None:
    codes = statuses(load.refusals)
    assert not any(code.startswith("5") and code not in ("502", "503", "504") for code in codes)
    assert not load.errors, load.errors


# Microservices: kill -9 and SIGTERM of each process under load ---------------------------------


@dataclass
class Cluster:
    """ingest, metrics, export and a gateway as processes of their own, on fixed ports so that a
    restarted process is found where the others expect it."""

    root: Path
    key: str
    url: str
    redis_url: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, System] = field(default_factory=dict)

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> System:
        env = {"REDIS_URL": self.redis_url, "ANALYTICS_SHUTDOWN_GRACE": str(GRACE)}
        env |= extra_env or {}
        if name == "gateway":
            upstreams = ",".join(f"{s}=127.0.0.1:{self.ports[s]}" for s in ROUTED)
            env |= {
                "ANALYTICS_HTTP_PORT": str(self.ports[name]),
                "ANALYTICS_GATEWAY_UPSTREAM": upstreams,
            }
        else:
            env["ANALYTICS_GRPC_PORT"] = str(self.ports[name])
        self.processes[name] = start_system(
            self.root / name, self.key, clickhouse_url=self.url, target=name, extra_env=env
        )
        return self.processes[name]

    @property
    def gateway(self) -> System:
        return self.processes["gateway"]


SERVICES = ("ingest", "metrics", "export")
# Every service the gateway routes to: the privacy service (erasure) runs beside them, unharmed.
ROUTED = (*SERVICES, "privacy")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_server: ClickHouseServer
) -> Iterator[Cluster]:
    redis_server = RedisServer(tmp_path_factory.mktemp("faults-redis"))
    redis_server.start()
    database = "faults_" + uuid.uuid4().hex[:8]
    cluster = Cluster(
        root=tmp_path_factory.mktemp("faults-cluster"),
        key="cak_" + uuid.uuid4().hex,
        url=clickhouse_server.url.replace("/analytics", "/" + database),
        redis_url=redis_server.url,
    )
    try:
        for name in (*ROUTED, "gateway"):
            cluster.ports[name] = free_port()
            cluster.start(name)
        yield cluster
    finally:
        for process in cluster.processes.values():
            process.stop()
        redis_server.stop()


# A currency per case keeps the cases' sales figures apart in the shared database.
CURRENCIES = {
    ("ingest", "SIGKILL"): "SEK",
    ("gateway", "SIGKILL"): "CHF",
    ("metrics", "SIGKILL"): "AUD",
    ("export", "SIGKILL"): "CAD",
    ("ingest", "SIGTERM"): "NZD",
    ("gateway", "SIGTERM"): "SGD",
    ("metrics", "SIGTERM"): "HKD",
    ("export", "SIGTERM"): "MXN",
}


def _reads(gateway: System, currency: str) -> list[int]:
    """Status of a metrics query and of an export through the gateway."""
    sales_reply = call(
        "GET", f"{gateway.http_url}/analytics/sales?currency={currency}", gateway.key
    )
    path = f"/analytics/export?type=orders&period=1d&currency={currency}&format=ndjson"
    export_reply = call("GET", f"{gateway.http_url}{path}", gateway.key)
    return [sales_reply.status, export_reply.status]


def _read_errors(gateway: System, currency: str) -> str:
    reply = call("GET", f"{gateway.http_url}/analytics/sales?currency={currency}", gateway.key)
    return f"{reply.status} {reply.body[:300]!r}"


@pytest.mark.clickhouse_server
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("service", ["ingest", "gateway", "metrics", "export"])
def test_each_service_stopped_under_load(
    cluster: Cluster, service: str, sig: signal.Signals
) -> None:
    currency = CURRENCIES[(service, sig.name)]
    prefix = f"{service}_{sig.name}_{uuid.uuid4().hex[:6]}_"
    load = RestStream(cluster.gateway.http_url, cluster.key, currency, prefix=prefix)
    load.start()
    try:
        load.wait_for(100)
        victim = cluster.processes[service].process
        started = time.monotonic()
        victim.send_signal(sig)
        code = victim.wait(timeout=GRACE + 20)
        if sig == signal.SIGTERM:
            # Drained within its timeout (in-flight calls finish, new ones are refused), exit 0.
            assert code == 0, cluster.processes[service].log()[-2000:]
            assert time.monotonic() - started < GRACE + 5
        if service != "gateway":
            # Every event acknowledged so far is already in ClickHouse, whatever happens next;
            # with the ingest log, in ClickHouse or in the ingest process's log.
            with load.lock:
                acked = set(load.acked)
            logged = logged_ids(cluster.root / "ingest") if _ingest_log_on() else set()
            in_clickhouse = set(_stored(cluster.url, Path(), prefix))
            assert not acked - in_clickhouse - logged, "acknowledged, lost"
        if service in ("metrics", "export"):
            # Reads of the stopped service fail cleanly (503, not 500), the others carry on,
            # and ingestion does not notice.
            down = _reads(cluster.gateway, currency)
            assert down[0] == (503 if service == "metrics" else 200), down
            assert down[1] == (503 if service == "export" else 200), down
            load.wait_for(len(load.acked) + 100, timeout=30)
        else:
            # Clients got 503 from the gateway (ingest down) or no connection (gateway down).
            # Polled, not a fixed second: on a busy machine a client thread may not have run.
            deadline = time.monotonic() + 30
            while not (seen := statuses([r for r in load.refusals if r.at >= started])):
                assert time.monotonic() < deadline, "no send was refused while it was down"
                time.sleep(0.05)
            if service == "ingest":
                assert set(seen) == {"503"}, seen
        cluster.start(service)
        load.wait_for(len(load.acked) + 100, timeout=60)
    finally:
        load.finish()
    load.settle()
    _no_500(load)
    # The gateway finds a restarted service again within its reconnect backoff (1 s at most).
    deadline = time.monotonic() + 10
    while _reads(cluster.gateway, currency) != [200, 200]:
        assert time.monotonic() < deadline, _read_errors(cluster.gateway, currency)
        time.sleep(0.2)
    # The ingest process is another process: its log writer stores the last acknowledgements
    # within its linger (no read here waits for it, as one in the same process would).
    _wait_until_the_log_is_stored(cluster.root / "ingest")
    stored = _stored(cluster.url, Path(), prefix)
    _check_counts(load, stored, sales(cluster.gateway, currency)["orders"])


def _wait_until_the_log_is_stored(data_dir: Path, timeout: float = 30) -> None:
    if not _ingest_log_on():
        return
    deadline = time.monotonic() + timeout
    while logged_ids(data_dir):
        assert time.monotonic() < deadline, "the ingest log writer stored nothing for 30 s"
        time.sleep(0.1)


# ClickHouse stopped for 10 seconds ----------------------------------------------------------


@pytest.fixture
def own_clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    from tests.conftest import _need_server

    _need_server()
    server = ClickHouseServer(tmp_path / "ch")
    server.start()
    yield server
    server.stop()


@pytest.mark.clickhouse_server
def test_clickhouse_stopped_for_10_seconds_under_load(
    tmp_path: Path, own_clickhouse: ClickHouseServer
) -> None:
    key = "cak_" + uuid.uuid4().hex
    # Acknowledged once stored (the ingest log absorbs an outage: the test after this one).
    system = start_system(
        tmp_path / "data", key, clickhouse_url=own_clickhouse.url,
        extra_env={"ANALYTICS_INGEST_LOG": "no"},
    )  # fmt: skip
    loads: list[Load] = [
        Stream(system.grpc_target, key, "PLN", prefix="g_", workers=2),
        RestStream(system.http_url, key, "PLN", prefix="r_", workers=1),
    ]
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for(60)
        own_clickhouse.stop()
        stopped = time.monotonic()
        acked_when_down = [len(load.acked) for load in loads]
        queried = call("GET", f"{system.http_url}/analytics/sales?currency=PLN", key)
        assert queried.status == 503, queried.body
        time.sleep(10)
        back = time.monotonic()
        # Nothing acknowledged while ClickHouse was down; every send was refused as retryable,
        # saying when to retry (RetryInfo over gRPC, Retry-After and RetryInfo over REST).
        assert [len(load.acked) for load in loads] == acked_when_down
        for load in loads:
            during = [r for r in load.refusals if stopped <= r.at <= back]
            assert during, "no send was refused during the outage"
            assert {r.code for r in during} <= {"UNAVAILABLE", "503"}, statuses(during)
            assert all(r.hint for r in during), "a refusal without Retry-After / RetryInfo"
        own_clickhouse.start()
        for load in loads:
            load.wait_for(acked_when_down[loads.index(load)] + 60, timeout=60)
        for load in loads:
            load.finish()
        for load in loads:
            load.settle()
        stored = stored_ids(own_clickhouse.url, Path())
        assert set(stored) == loads[0].acked | loads[1].acked
        for load in loads:
            assert not load.errors, load.errors
        # A retried batch may have landed twice before merges; no figure counts it so.
        assert sales(system, "PLN")["orders"] == len(stored)
    finally:
        for load in loads:
            load.finish()
        system.stop()


def _watch_refusal(port: int, refused_from: list[float], limit: float = 30) -> None:
    """Append the first moment a TCP connection to ``port`` is refused (within ``limit`` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            refused_from.append(time.monotonic())
            return
        time.sleep(0.02)


@pytest.mark.clickhouse_server
def test_clickhouse_stopped_for_10_seconds_with_the_ingest_log(
    tmp_path: Path, own_clickhouse: ClickHouseServer
) -> None:
    """With the ingest log on, ClickHouse down does not stop acknowledgements: they go on into
    the log until it is full, then every send is refused as retryable (503 / UNAVAILABLE, with
    when to retry); once ClickHouse is back the writer stores the log, every acknowledged event
    once."""
    key = "cak_" + uuid.uuid4().hex
    # A few seconds of this load: full during the outage, not before ClickHouse has stopped (it
    # takes 2-3 s to close its port; ingest workers fill 4 MiB in about 2).
    env = {"ANALYTICS_INGEST_LOG": "yes", "ANALYTICS_INGEST_LOG_MAX_BYTES": str(16 << 20)}
    system = start_system(tmp_path / "data", key, clickhouse_url=own_clickhouse.url, extra_env=env)
    loads: list[Load] = [
        Stream(system.grpc_target, key, "PLN", prefix="g_", workers=2),
        RestStream(system.http_url, key, "PLN", prefix="r_", workers=1),
    ]
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for(60)
        stopping = time.monotonic()
        # The server closes its port at once and takes seconds to exit: the outage starts when
        # a connection is first refused.
        refused_from: list[float] = []
        watcher = threading.Thread(target=_watch_refusal, args=(own_clickhouse.port, refused_from))
        watcher.start()
        own_clickhouse.stop()
        watcher.join(timeout=30)
        assert refused_from, "the server still took connections once stopped"
        stopped = refused_from[0]
        acked_at_stop = sum(len(load.acked) for load in loads)
        queried = call("GET", f"{system.http_url}/analytics/sales?currency=PLN", key)
        assert queried.status == 503, queried.body
        time.sleep(10)
        # Then until the log is full (a slow machine fills the log more slowly).
        deadline = time.monotonic() + 60
        while not all(any(r.at >= stopped for r in load.refusals) for load in loads):
            assert time.monotonic() < deadline, "the log never filled"
            time.sleep(0.2)
        back = time.monotonic()
        assert any(load.acks_between(stopped, back) for load in loads), (
            f"the log took nothing: {acked_at_stop} acknowledged when the server exited"
            f" ({stopped - stopping:.1f} s to stop), {sum(len(x.acked) for x in loads)} now,"
            f" refusals from {min(r.at for x in loads for r in x.refusals) - stopping:.1f} s"
        )
        for load in loads:
            during = [r for r in load.refusals if stopped <= r.at <= back]
            assert {r.code for r in during} <= {"UNAVAILABLE", "503"}, statuses(during)
            assert all(r.hint for r in during), "a refusal without Retry-After / RetryInfo"
        own_clickhouse.start()
        for load in loads:
            load.wait_for(len(load.acked) + 60, timeout=60)
        for load in loads:
            load.finish()
        for load in loads:
            load.settle()
        acked = loads[0].acked | loads[1].acked
        # The writer drains the log as fast as ClickHouse takes it: wait for the last of it.
        deadline = time.monotonic() + 60
        while not acked <= set(stored := stored_ids(own_clickhouse.url, Path())):
            assert time.monotonic() < deadline, f"{len(acked - set(stored))} still unstored"
            time.sleep(0.5)
        assert set(stored) == acked
        assert all(count == 1 for count in stored.values()), "an event stored twice"
        for load in loads:
            assert not load.errors, load.errors
        assert sales(system, "PLN")["orders"] == len(stored)
    finally:
        for load in loads:
            load.finish()
        system.stop()


# Redis stopped ------------------------------------------------------------------------------


def _realtime_orders(system: System, currency: str) -> int:
    reply = call("GET", f"{system.http_url}/analytics/realtime?currency={currency}", system.key)
    assert reply.status == 200, reply.body
    return int(reply.json()["ordersToday"])


def test_redis_stopped_under_load(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    url = clickhouse_url(backend, request)
    key = "cak_" + uuid.uuid4().hex
    system = start_system(
        tmp_path / "data", key, clickhouse_url=url, extra_env={"REDIS_URL": redis_server.url}
    )
    load = Stream(system.grpc_target, key, "ISK")
    try:
        load.start()
        load.wait_for(100)
        redis_server.stop()
        at_stop = len(load.acked)
        load.wait_for(at_stop + 200, timeout=30)  # acknowledgements carry on
        # Realtime falls back to ClickHouse: every order acknowledged so far is counted.
        acked_before = len(load.acked)
        counted = _realtime_orders(system, "ISK")
        assert acked_before <= counted <= len(load.sent)
    finally:
        load.finish()
        redis_server.stop()
    try:
        load.settle()
        counted = sales(system, "ISK")["orders"]
        assert _realtime_orders(system, "ISK") == len(load.acked)
    finally:
        system.stop()  # the embedded store is read by one process at a time
    _check_counts(load, _stored(url, tmp_path / "data", ""), counted)


# A slow query does not hold up ingestion ----------------------------------------------------

SEEDED_EVENTS = 500_000
# A custom query over a year of the seeded shop: ~0.5 s alone on the reference machine, ~1-2 s
# with ingestion and other queries running (docs/faults.md).
HEAVY_QUERY = {
    "metrics": ["visitors", "sessions", "events", "product_views", "add_to_carts"],
    "dimensions": ["week", "product_id"],
    "filters": {"period": "12m"},
    "orderBy": "visitors:desc",
    "limit": 10,
}
SEED = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench.demo_data import load
from cartlytics.common.storage import open_storage
storage = open_storage("", Path(sys.argv[2]))
storage.migrate()
load(storage, "default", int(sys.argv[3]))
storage.close()
"""


def _seed(data_dir: Path, events: int) -> None:
    import subprocess

    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run(
        [sys.executable, "-c", SEED, root, str(data_dir), str(events)],
        check=True,
        capture_output=True,
    )


def _slow_export(
    system: System, stop: threading.Event, read: list[int], failures: list[str]
) -> None:
    """An export of the whole seeded year, read 64 KB at a time, slowly, until stopped."""
    request = urllib.request.Request(
        f"{system.http_url}/analytics/export?type=events&period=12m&format=ndjson",
        headers={"Authorization": f"Bearer {system.key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            while not stop.is_set():
                chunk = response.read(65536)
                if not chunk:
                    return
                read[0] += len(chunk)
                time.sleep(0.05)
    except Exception as exc:
        failures.append(f"export: {exc!r}")


def test_a_slow_query_does_not_hold_up_ingestion(tmp_path: Path) -> None:
    _seed(tmp_path / "data", SEEDED_EVENTS)
    key = "cak_" + uuid.uuid4().hex
    system = start_system(tmp_path / "data", key)
    load = Stream(system.grpc_target, key, "KRW", prefix="f_", workers=3, batch=10)
    stop = threading.Event()
    durations: list[float] = []
    read = [0]

    def heavy_queries() -> None:
        while not stop.is_set():
            started = time.monotonic()
            reply = call("POST", f"{system.http_url}/analytics/query", key, HEAVY_QUERY, timeout=60)
            if reply.status != 200:
                failures.append(f"{reply.status}: {reply.body[:200]!r}")
                return
            durations.append(time.monotonic() - started)

    failures: list[str] = []
    readers = [threading.Thread(target=heavy_queries)]
    readers.append(threading.Thread(target=_slow_export, args=(system, stop, read, failures)))
    try:
        load.start()
        load.wait_for(200)
        quiet_start = time.monotonic()
        time.sleep(3)
        quiet = load.acks_between(quiet_start, time.monotonic())
        for thread in readers:
            thread.start()
        time.sleep(1)  # the queries are under way
        busy_start = time.monotonic()
        time.sleep(6)
        busy = sorted(load.acks_between(busy_start, time.monotonic()))
        stop.set()
        for thread in readers:
            thread.join(timeout=60)
        assert not failures, failures
        assert durations, "no heavy query finished"
        assert read[0] > 0, "the export sent nothing"
        # Acknowledgements kept flowing while a client ran heavy queries back to back and an
        # export was read slowly. The queries cost CPU (two cores, shared), but must not make
        # ingestion wait for them: before the fixes, every INSERT queued behind the query that
        # held the one chdb session, and the query's rows were merged on the event loop, so
        # acknowledgements came in bursts, one per query (measured: 7 in 6 s, p50 2.2 s; now
        # 45, p50 0.4 s, max 1.3 s).
        assert busy, "no event acknowledged while the slow queries ran"
        p99 = busy[min(len(busy) - 1, int(len(busy) * 0.99))]
        slowest_query = max(durations)
        assert p99 < 2.0, f"p99 acknowledgement {p99:.2f}s (slowest query {slowest_query:.2f}s)"
        # Throughput: not down to nothing (generous: CPU is shared with the queries themselves).
        assert len(busy) / 6 >= 0.2 * len(quiet) / 3, f"{len(busy)} in 6 s, {len(quiet)} in 3 s"
        load.settle()
        counted = sales(system, "KRW")["orders"]
    finally:
        stop.set()
        load.finish()
        system.stop()
    _check_counts(load, _stored("", tmp_path / "data", "f_"), counted)


# SIGTERM of the one-process system ----------------------------------------------------------


def test_sigterm_drains_the_single_process_under_load(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    key = "cak_" + uuid.uuid4().hex
    env = {"ANALYTICS_SHUTDOWN_GRACE": str(GRACE)}
    url = clickhouse_url(backend, request)
    system = start_system(tmp_path / "data", key, clickhouse_url=url, extra_env=env)
    loads: list[Load] = [
        Stream(system.grpc_target, key, "TRY", prefix="g_", workers=2),
        RestStream(system.http_url, key, "TRY", prefix="r_", workers=2),
    ]
    try:
        for load in loads:
            load.start()
        for load in loads:
            load.wait_for(100)
        started = time.monotonic()
        for load in loads:
            load.shutdown_at = started  # calls queued unstarted may now end CANCELLED (load.py)
        system.process.send_signal(signal.SIGTERM)
        code = system.process.wait(timeout=GRACE + 20)
        elapsed = time.monotonic() - started
    finally:
        for load in loads:
            load.finish()
        system.stop()  # a no-op once it has exited
    assert code == 0, system.log()[-2000:]
    assert elapsed < GRACE + 5, f"took {elapsed:.1f}s to drain"
    stored = stored_ids(url, tmp_path / "data")
    for load in loads:
        assert not load.acked - set(stored), "an acknowledged event was lost in the drain"
    restarted = start_system(tmp_path / "data", key, clickhouse_url=url, extra_env=env)
    try:
        for load in loads:
            load.target = restarted.grpc_target if isinstance(load, Stream) else restarted.http_url
            load.shutdown_at = None  # the restarted system is not being stopped
            load.settle()
            _no_500(load)
        counted = sales(restarted, "TRY")["orders"]
    finally:
        code = restarted.stop()
    assert code == 0, restarted.log()[-2000:]
    stored = stored_ids(url, tmp_path / "data")
    assert set(stored) == loads[0].acked | loads[1].acked
    assert counted == len(stored), "an order counted twice (or not at all)"


# An erasure in another process while the shopper's events wait in ingest's log -------------------


@pytest.mark.clickhouse_server
def test_an_erasure_elsewhere_drops_the_events_still_in_ingests_log(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    """Microservices: the shopper's events are acknowledged by the ingest process and wait in
    its log (a long linger) when the privacy process erases the shopper; they are stored by
    nobody afterwards (ingest's writer drops them once its suppression list has the erasure),
    while another shopper's events of the same requests are stored."""
    if not _ingest_log_on():
        pytest.skip("without the ingest log an acknowledged event is already stored")
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    database = "erase_elsewhere_" + uuid.uuid4().hex[:8]
    cluster = Cluster(
        root=tmp_path / "cluster",
        key="cak_" + uuid.uuid4().hex,
        url=clickhouse_server.url.replace("/analytics", "/" + database),
        redis_url=redis_server.url,
    )
    shared = {"ANALYTICS_IP_SALT": "erase-elsewhere-" + uuid.uuid4().hex}
    env = {
        "ingest": {
            **shared,
            "ANALYTICS_INGEST_LOG_LINGER_SECONDS": "8",
            "ANALYTICS_KEY_REFRESH_SECONDS": "0.5",
        },
        "privacy": shared,
    }
    try:
        for name in ("ingest", "privacy", "gateway"):
            cluster.ports[name] = free_port()
        # Not started: the gateway needs an address for each, and nothing here calls them.
        cluster.ports["metrics"] = cluster.ports["export"] = cluster.ports["ingest"]
        for name in ("ingest", "privacy", "gateway"):
            cluster.start(name, env.get(name, {}))
        base = cluster.gateway.http_url
        at = datetime.now(UTC) - timedelta(minutes=10)
        events = [
            {"event": "order_completed", "userId": user, "id": f"evt_{user}_{n}",
             "timestamp": (at + timedelta(seconds=n)).isoformat(),
             "properties": {"orderId": f"o_{user}_{n}", "total": 100 + n, "currency": "EUR"}}
            for n in range(5)
            for user in ("erase_me", "keep_me")
        ]  # fmt: skip
        reply = call("POST", f"{base}/analytics/event/batch", cluster.key, {"events": events})
        assert reply.status == 200 and reply.json()["acceptedCount"] == 10, reply.body
        assert call("DELETE", f"{base}/analytics/users/erase_me", cluster.key).status == 200
        _wait_until_the_log_is_stored(cluster.root / "ingest")
        stored = stored_ids(cluster.url, Path())
        assert set(stored) == {f"keep_me_{n}" for n in range(5)}
    finally:
        for process in cluster.processes.values():
            process.stop()
        redis_server.stop()

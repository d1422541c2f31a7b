"""Many replicas of each service behind one gateway (issue 17): two ingest and two metrics
processes, one process for export, privacy and admin, and one gateway process whose
``ANALYTICS_GATEWAY_UPSTREAM`` lists both replicas of ingest and of metrics, all sharing one
Redis and one clickhouse-server database.

Here: the REST conformance suite through that gateway (the tests of
``tests/test_rest_conformance.py``, collected again with this module's ``api``), calls spread
over both replicas, dedup, rate limits and key revocation exact across them, and one ingest
replica stopped under load without a request failing for it afterwards or an acknowledged event
lost. Expected figures come from what the test sent (``tests/oracle.py``), never from the code.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cartlytics.common.config import Config, ConfigError
from cartlytics.common.upstreams import grpc_target, parse_upstreams
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from tests import test_rest_conformance
from tests.load import RestStream, stored_ids
from tests.oracle import Order, first_orders
from tests.rest import Reply, call
from tests.servers import ClickHouseServer, RedisServer, System, free_port, start_system
from tests.test_keys import create_key, key_id_of, revoke

# The conformance suite, run here through the replicas: the same test functions, given this
# module's `api` fixture (pytest resolves a test's fixtures where it is collected).
globals().update(
    {name: test for name, test in vars(test_rest_conformance).items() if name.startswith("test_")}
)

RATE, BURST = 2.0, 40  # the ingest limit of every process here (per key, shared in Redis)
KEY_REFRESH = 2.0  # ANALYTICS_KEY_REFRESH_SECONDS: its default, as documented
TRACK = "/analytics.ingest.v1.IngestService/TrackEventJson"  # POST /analytics/event
GET_SALES = "/analytics.metrics.v1.MetricsService/GetSales"


@dataclass
class Replica:
    """One service process on fixed ports, so that a restart is found where the gateway expects."""

    name: str
    target: str
    grpc_port: int
    prometheus_port: int
    system: System | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def counter(self, metric: str, **labels: str) -> float:
        """The sum of a Prometheus counter's samples matching ``labels``, read from the process."""
        url = f"http://127.0.0.1:{self.prometheus_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == f"{metric}_total"
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )


@dataclass
class Replicas:
    root: Path
    key: str
    clickhouse_url: str
    env: dict[str, str]
    services: dict[str, Replica] = field(default_factory=dict)
    gateway: System | None = None

    def start(self, replica: Replica) -> None:
        env = {
            **self.env,
            "ANALYTICS_GRPC_PORT": str(replica.grpc_port),
            "ANALYTICS_PROMETHEUS_PORT": str(replica.prometheus_port),
        }
        replica.system = start_system(
            self.root / replica.name, self.key, self.clickhouse_url, replica.target, env
        )

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.services.values() if r.target == service]

    @property
    def api(self) -> System:
        assert self.gateway is not None
        return self.gateway

    @property
    def admin(self) -> System:
        system = self.services["rest"].system
        assert system is not None
        return system


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    clickhouse_server: ClickHouseServer,
    redis_server: RedisServer,
) -> Iterator[Replicas]:
    database = "replicas_" + uuid.uuid4().hex[:8]
    system = Replicas(
        root=tmp_path_factory.mktemp("replicas"),
        key="cak_" + uuid.uuid4().hex,
        clickhouse_url=clickhouse_server.url.replace("/analytics", "/" + database),
        # What replicas must share besides ClickHouse, Redis and the bootstrap key (start_system
        # gives each `key`): the salt (IP hashes and erasure records agree) and the limits
        # (docs/architecture.md, "Replicas behind the in-process gateway").
        env={
            "REDIS_URL": redis_server.url,
            "ANALYTICS_IP_SALT": uuid.uuid4().hex,
            "ANALYTICS_RATE_LIMIT_INGEST": str(RATE),
            "ANALYTICS_RATE_LIMIT_INGEST_BURST": str(BURST),
            "ANALYTICS_KEY_REFRESH_SECONDS": str(KEY_REFRESH),
            "ANALYTICS_SHUTDOWN_GRACE": "5",
        },
    )
    for name, target in (
        ("ingest-1", "ingest"),
        ("ingest-2", "ingest"),
        ("metrics-1", "metrics"),
        ("metrics-2", "metrics"),
        ("rest", "export,privacy,admin"),
    ):
        system.services[name] = Replica(name, target, free_port(), free_port())
    try:
        for replica in system.services.values():
            system.start(replica)
        ingest, metrics = ("|".join(r.address for r in system.of(s)) for s in ("ingest", "metrics"))
        rest = system.services["rest"].address
        upstreams = f"ingest={ingest},metrics={metrics},export={rest},privacy={rest}"
        system.gateway = start_system(
            system.root / "gateway", system.key, target="gateway",
            extra_env={**system.env, "ANALYTICS_GATEWAY_UPSTREAM": upstreams},
        )  # fmt: skip
        yield system
    finally:
        if system.gateway is not None:
            system.gateway.stop()
        for replica in system.services.values():
            if replica.system is not None:
                replica.system.stop()


@pytest.fixture
def api(replicas: Replicas) -> System:
    """The conformance suite's system: the gateway in front of the replicas."""
    return replicas.api


def _new_key(replicas: Replicas, project: str, scopes: list[str]) -> str:
    """A key made on the admin process, once every replica it may call knows it (each
    reads the keys every ANALYTICS_KEY_REFRESH_SECONDS). Takes a token of the key's ingest
    bucket on each ingest replica."""
    secret = create_key(replicas.admin, project, scopes)
    deadline = time.monotonic() + KEY_REFRESH + 3
    for service, scope in (("ingest", "ingest"), ("metrics", "read")):
        for replica in replicas.of(service) if scope in scopes else []:
            _until(replica, secret, grpc.StatusCode.OK, deadline)
    return secret


# ---------------------------------------------------------------------------------------------
# The setting


@pytest.mark.parametrize(
    ("value", "default", "per_service"),
    [
        ("", (), {}),
        ("10.0.0.1:50051", ("10.0.0.1:50051",), {}),
        ("ingest=ingest.svc:50051", (), {"ingest": ("ingest.svc:50051",)}),
        (
            "ingest=10.0.0.1:7001|10.0.0.2:7001, metrics=[::1]:7003|[::1]:7004,127.0.0.1:9",
            ("127.0.0.1:9",),
            {"ingest": ("10.0.0.1:7001", "10.0.0.2:7001"), "metrics": ("[::1]:7003", "[::1]:7004")},
        ),
    ],
)
def test_the_upstream_setting_reads_one_or_several_addresses(
    value: str, default: tuple[str, ...], per_service: dict[str, tuple[str, ...]]
) -> None:
    parsed = parse_upstreams(value)
    assert (parsed.default, dict(parsed.per_service)) == (default, per_service)


def test_several_addresses_are_one_balanced_grpc_target() -> None:
    assert grpc_target(["10.0.0.1:7001"]) == "10.0.0.1:7001"
    assert grpc_target(["10.0.0.1:7001", "10.0.0.2:7001"]) == "ipv4:10.0.0.1:7001,10.0.0.2:7001"
    assert grpc_target(["[::1]:7003", "[::1]:7004"]) == "ipv6:[::1]:7003,[::1]:7004"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("search=127.0.0.1:1", "unknown service 'search'"),
        ("ingest=a.example:1|b.example:1", "must be IP addresses"),
        ("ingest=10.0.0.1:1|[::1]:1", "mixes IPv4 and IPv6"),
        ("ingest=10.0.0.1:1|10.0.0.1:1", "listed twice"),
        ("ingest=10.0.0.1:1,ingest=10.0.0.2:1", "ingest is given twice"),
        ("ingest=10.0.0.1", "is not host:port"),
        ("ingest=10.0.0.1:1|", "'' is not host:port"),
        ("ingest=10.0.0.1:70000", "port 70000 is not between 1 and 65535"),
        ("ingest=::1:7001", "IPv6: in brackets"),
        ("ingest=bad host:1", "is not a host name"),
    ],
)
def test_a_bad_upstream_setting_fails_at_start_naming_the_variable(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"ANALYTICS_GATEWAY_UPSTREAM": value})
    assert str(refused.value).startswith("ANALYTICS_GATEWAY_UPSTREAM=")
    assert reason in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Balancing


def _order(order_id: str, currency: str, total: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "event": "order_completed",
        "userId": "u_" + order_id,
        "properties": {"orderId": order_id, "total": total, "currency": currency},
        **extra,
    }


def test_calls_are_spread_over_both_replicas_of_a_service(replicas: Replicas) -> None:
    api = replicas.api
    key = _new_key(replicas, "spread_" + uuid.uuid4().hex[:8], ["ingest", "read"])
    ingest, metrics = replicas.of("ingest"), replicas.of("metrics")
    tracked = [r.counter("cartlytics_rpc", method=TRACK, code="OK") for r in ingest]
    read = [r.counter("cartlytics_rpc", method=GET_SALES, code="OK") for r in metrics]
    calls = 20
    for n in range(calls):
        reply = call("POST", f"{api.http_url}/analytics/event", key, _order(f"sp{n}", "SEK"))
        assert reply.status == 201, reply.body
        reply = call("GET", f"{api.http_url}/analytics/sales?period=1d&currency=SEK", key)
        assert reply.status == 200, reply.body
    for replicas_of, before, method in ((ingest, tracked, TRACK), (metrics, read, GET_SALES)):
        served = [
            r.counter("cartlytics_rpc", method=method, code="OK") - b
            for r, b in zip(replicas_of, before, strict=True)
        ]
        assert sum(served) == calls, (method, served)
        # Round-robin over two healthy replicas: about half each (a quarter at the very least).
        assert min(served) >= calls / 4, (method, served)
    # Written by two processes, read by two others: one store.
    expected = (calls, 100 * calls)  # every order of 100, each counted once
    assert _eventually(lambda: _sales(replicas, key, "SEK"), expected) == expected


# ---------------------------------------------------------------------------------------------
# Dedup across replicas


def _concurrently(count: int, send: Callable[[int], Reply]) -> list[Reply]:
    """``send(n)`` from ``count`` threads released at once; the replies in order."""
    replies: list[Reply | None] = [None] * count
    ready = threading.Barrier(count)

    def run(n: int) -> None:
        ready.wait()
        replies[n] = send(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reply is not None for reply in replies)
    return [reply for reply in replies if reply is not None]


T = TypeVar("T")


def _eventually(read: Callable[[], T], expected: T, timeout: float = 15) -> T:
    """``read()`` once it equals ``expected`` (or at the timeout), read again a second later so
    that a figure still growing past it is caught. With the ingest log on, an event is
    acknowledged before it is in ClickHouse, and other processes see it once the log's writer
    stored it (decision 66)."""
    deadline = time.monotonic() + timeout
    while (got := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    if got == expected:
        time.sleep(1)
        got = read()
    return got


def _sales(replicas: Replicas, key: str, currency: str) -> tuple[int, int]:
    path = f"/analytics/sales?period=1d&currency={currency}"
    reply = call("GET", f"{replicas.api.http_url}{path}", key)
    assert reply.status == 200, reply.body
    return int(reply.json()["orders"]), int(reply.json()["revenue"])


def _rows_of(replicas: Replicas, prefix: str) -> dict[str, int]:
    """Stored rows per event id (``evt_`` removed) whose id starts with ``prefix``."""
    stored = stored_ids(replicas.clickhouse_url, Path("/nonexistent"))
    return {k: v for k, v in stored.items() if k.startswith(prefix)}


def test_one_event_id_sent_at_once_through_both_replicas_is_stored_once(
    replicas: Replicas,
) -> None:
    api = replicas.api
    key = _new_key(replicas, "dedup_" + uuid.uuid4().hex[:8], ["ingest", "read"])
    ingest = replicas.of("ingest")
    before = [r.counter("cartlytics_rpc", method=TRACK) for r in ingest]
    tag = "dd" + uuid.uuid4().hex[:8]
    event = _order(tag, "NOK", total=4200, id=f"evt_{tag}")
    sends = 16
    replies = _concurrently(
        sends, lambda _: call("POST", f"{api.http_url}/analytics/event", key, event)
    )
    # Each answer is the acknowledgement, or 409 (ABORTED) while another request stores it.
    assert {r.status for r in replies} <= {201, 409}, [(r.status, r.body) for r in replies]
    acks = {(r.json()["id"], r.json()["timestamp"]) for r in replies if r.status == 201}
    assert len(acks) == 1, f"one acknowledgement, the same for every retry: {acks}"
    reached = [
        r.counter("cartlytics_rpc", method=TRACK) - b for r, b in zip(ingest, before, strict=True)
    ]
    assert min(reached) > 0, f"the sends reached both ingest replicas: {reached}"
    # A 409 is retried by a client: the retry gets the same acknowledgement.
    retried = call("POST", f"{api.http_url}/analytics/event", key, event)
    assert retried.status == 201 and (retried.json()["id"], retried.json()["timestamp"]) in acks
    assert _eventually(lambda: _rows_of(replicas, tag), {tag: 1}) == {tag: 1}
    assert _eventually(lambda: _sales(replicas, key, "NOK"), (1, 4200)) == (1, 4200)


def test_a_duplicated_order_id_counts_once_across_replicas(replicas: Replicas) -> None:
    api = replicas.api
    key = _new_key(replicas, "orders_" + uuid.uuid4().hex[:8], ["ingest", "read"])
    now = datetime.now(UTC).replace(microsecond=0)
    # Each orderId sent as several events (own ids, own totals), at once, landing on both
    # ingest replicas; the figures count each orderId once, by its earliest event. All of them
    # today (the figures read are today's): over the last 30 minutes, or since midnight in a
    # day's first half hour (at 00:25 UTC, 30 minutes back made every first event yesterday's).
    span = min(timedelta(minutes=30), now - now.replace(hour=0, minute=0, second=0))
    events = [
        _order(f"o{n % 3}", "DKK", total=1000 + 10 * n, id=f"evt_dup{n}",
               timestamp=(now - span + span * n / 9).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for n in range(9)
    ]  # fmt: skip
    replies = _concurrently(
        len(events), lambda n: call("POST", f"{api.http_url}/analytics/event", key, events[n])
    )
    assert [r.status for r in replies] == [201] * len(events), [r.body for r in replies]
    orders = [
        Order(
            e["id"],
            e["properties"]["orderId"],
            datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")),
            e["properties"]["total"],
            "DKK",
        )
        for e in events
    ]
    counted = first_orders(orders)
    expected = (len(counted), sum(o.total for o in counted))
    assert _eventually(lambda: _sales(replicas, key, "DKK"), expected) == expected
    assert len(counted) == 3


# ---------------------------------------------------------------------------------------------
# Rate limits across replicas


def _limited(replica: Replica) -> float:
    return replica.counter("cartlytics_rate_limit_requests", scope="ingest", result="limited")


def test_a_keys_ingest_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    api = replicas.api
    key = _new_key(replicas, "limit_" + uuid.uuid4().hex[:8], ["ingest", "read"])
    time.sleep(2 / RATE + 0.2)  # the bucket full again after _new_key's two ingest calls
    ingest = replicas.of("ingest")
    limited = [_limited(r) for r in ingest]
    sends = 2 * BURST
    started = time.monotonic()
    replies = _concurrently(
        sends,
        lambda n: call("POST", f"{api.http_url}/analytics/event", key, _order(f"rl{n}", "PLN")),
    )
    elapsed = time.monotonic() - started
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {201, 429}, statuses
    accepted = statuses[201]
    # One bucket for the key, shared in Redis: the burst, plus what refilled while the calls ran
    # (+1: a token being refilled as the window closed). A bucket per replica would let all 80
    # through.
    assert BURST <= accepted <= BURST + RATE * elapsed + 1, (accepted, elapsed)
    refusal = next(r for r in replies if r.status == 429)
    headers = {name.lower(): value for name, value in refusal.headers.items()}
    assert headers.get("retry-after") == "1", headers  # at 2 a second: within a second
    refused_by = [_limited(r) - b for r, b in zip(ingest, limited, strict=True)]
    assert min(refused_by) > 0 and sum(refused_by) == statuses[429], refused_by
    # What was acknowledged is stored, nothing refused is.
    stored = _eventually(lambda: _sales(replicas, key, "PLN")[0], accepted)
    assert stored == accepted, f"{stored} orders stored, {accepted} acknowledged"


# ---------------------------------------------------------------------------------------------
# Key revocation across replicas


def _grpc_status(replica: Replica, key: str) -> grpc.StatusCode:
    """The status of one call with ``key`` straight to ``replica`` (a read or an ingest call)."""
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(replica.address) as channel:
        try:
            if replica.target == "metrics":
                stub = metrics_pb2_grpc.MetricsServiceStub(channel)
                stub.GetSales(
                    metrics_pb2.GetSalesRequest(period="1d"), metadata=metadata, timeout=10
                )
            else:
                event = ingest_pb2.Event(event="search", user_id="u")
                event.properties.update({"query": "boots"})
                stub_i = ingest_pb2_grpc.IngestServiceStub(channel)
                stub_i.TrackEvent(
                    ingest_pb2.TrackEventRequest(event=event), metadata=metadata, timeout=10
                )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _until(replica: Replica, key: str, wanted: grpc.StatusCode, deadline: float) -> None:
    while (got := _grpc_status(replica, key)) != wanted:
        assert time.monotonic() < deadline, f"{replica.name}: still {got.name}"
        time.sleep(0.1)


def test_a_revoked_key_is_refused_by_every_replica_within_the_refresh_time(
    replicas: Replicas,
) -> None:
    project = "revoke_" + uuid.uuid4().hex[:8]
    secret = create_key(replicas.admin, project, ["ingest", "read"])
    serving = [*replicas.of("ingest"), *replicas.of("metrics")]
    # A new key reaches every replica by the next refresh too.
    for replica in serving:
        _until(replica, secret, grpc.StatusCode.OK, time.monotonic() + KEY_REFRESH + 3)
    revoke(replicas.admin, key_id_of(replicas.admin, project, secret))
    # Documented: within ANALYTICS_KEY_REFRESH_SECONDS plus one read of the table (allowed 3 s
    # here, on a machine shared with other tests).
    deadline = time.monotonic() + KEY_REFRESH + 3
    for replica in serving:
        _until(replica, secret, grpc.StatusCode.UNAUTHENTICATED, deadline)
    api = replicas.api
    for method, path, body in (
        ("POST", "/analytics/event", _order("rv", "EUR")),
        ("GET", "/analytics/sales", None),
    ):
        for _ in range(4):  # round-robin: both replicas of each service
            assert call(method, f"{api.http_url}{path}", secret, body).status == 401


# ---------------------------------------------------------------------------------------------
# A replica stopped


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_one_ingest_replica_stopped_under_load_loses_nothing(
    replicas: Replicas, how: signal.Signals
) -> None:
    """SIGTERM: the replica says NOT_SERVING, drains and exits; SIGKILL: it is gone mid-call."""
    api = replicas.api
    key = _new_key(replicas, "stop_" + uuid.uuid4().hex[:8], ["ingest", "read"])
    stopped = replicas.services["ingest-1" if how == signal.SIGTERM else "ingest-2"]
    assert stopped.system is not None
    prefix = "st" + uuid.uuid4().hex[:6] + "_"
    # A key of its own for the requests sent once the replica is gone (the load's key is held
    # at its rate limit: those answers are 429 as often as not).
    probe = _new_key(replicas, "probe_" + uuid.uuid4().hex[:8], ["ingest"])
    load = RestStream(api.http_url, key, "CHF", prefix=prefix, workers=3, batch=10)
    load.start()
    try:
        load.wait_for(100)
        load.shutdown_at = time.monotonic()
        assert stopped.system.stop(how) == (0 if how == signal.SIGTERM else -how)
        # Once it is gone, every request goes to the other replica: none fails.
        for n in range(BURST // 2):
            body = _order(f"probe{n}", "CZK")
            reply = call("POST", f"{api.http_url}/analytics/event", probe, body)
            assert reply.status == 201, reply.body
        load.wait_for(len(load.acked) + 100)
        load.settle()
    finally:
        load.finish()
        replicas.start(stopped)  # the module's other tests have both replicas again
    # Back on its port, the replica gets calls again (the gateway retries within a second).
    deadline = time.monotonic() + 5
    while stopped.counter("cartlytics_rpc", method=TRACK, code="OK") == 0:
        assert time.monotonic() < deadline, "the restarted replica gets no call"
        reply = call("POST", f"{api.http_url}/analytics/event", probe, _order("back", "CZK"))
        assert reply.status == 201, reply.body
        time.sleep(0.1)
    refused = Counter(r.code for r in load.refusals)
    assert set(refused) <= {"429", "503"}, refused  # 503: calls the stopped replica had taken
    stored = _eventually(lambda: set(_rows_of(replicas, prefix)), load.acked)
    lost, unknown = load.acked - stored, stored - load.acked
    assert not lost and not unknown, (len(load.acked), len(stored), sorted(lost)[:3])
    if how == signal.SIGTERM:
        # Drained: every call it took was answered, so no retry stored an event again. (Killed,
        # it may have stored a batch it never answered; the retry, once the dedup claim of the
        # dead process expired, stores those rows again, which the figures count once.)
        twice = sorted(k for k, rows in _rows_of(replicas, prefix).items() if rows != 1)
        assert not twice, f"stored more than once: {twice[:3]}"
    orders = _eventually(lambda: _sales(replicas, key, "CHF")[0], len(load.acked))
    assert orders == len(load.acked), "each acknowledged order counted once"

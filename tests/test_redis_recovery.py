"""Redis faults heal (issue 12, items 3 and 4), on the running system, both backends.

- A data error in one project's counters (an overflowing HINCRBY, WRONGTYPE) is that command's
  failure only: another project's order shows in realtime at once, its retried id is still
  deduplicated, and the broken project's counters are rebuilt from ClickHouse.
- A flushed Redis (REDIS_URL) and a killed embedded valkey-server (SIGKILL) come back: health
  says NOT_SERVING while the embedded one is down, it is restarted, and realtime ordersToday and
  revenueToday equal a plain-Python oracle over every order sent before, during and after.

Expected figures are sums over what the test sent; Redis is read directly (key layout documented
in common/realtime.py) to show the counters themselves were rebuilt, not only the fallback.
docs/faults.md describes each case.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.load import clickhouse_url
from tests.rest import call
from tests.servers import RedisServer, System, start_system
from tests.test_keys import create_key

pytestmark = pytest.mark.faults

EPOCH_KEY = "rt:{.meta}:epoch"  # documented in common/realtime.py
STALE_KEY = "rt:{.meta}:stale"
DEADLINE = 90  # seconds for anything that waits on the system (a loaded machine is slow)


def wait_for(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def midday_zone() -> str:
    """A fixed-offset zone where it is about noon now: "today" there spans hours either side,
    so the orders of a test never straddle its midnight."""
    offset = 12 - datetime.now(UTC).hour  # -11 .. 12
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT-{offset}" if offset > 0 else f"Etc/GMT+{-offset}"


class Shop:
    """One project's key and a plain-Python oracle of the orders it had acknowledged."""

    def __init__(self, system: System, key: str, currency: str = "USD") -> None:
        self.system, self.key, self.currency = system, key, currency
        self.orders: dict[str, int] = {}  # orderId -> total

    def send(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST a batch; retried while refused as a whole (429/503). Every event must be
        accepted; returns the acknowledgements."""
        deadline = time.monotonic() + DEADLINE
        while True:
            reply = call(
                "POST", f"{self.system.http_url}/analytics/event/batch", self.key,
                {"events": events},
            )  # fmt: skip
            if reply.status in (429, 503) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            assert reply.status == 200, reply.body
            body = reply.json()
            assert not body.get("rejected"), body
            accepted: list[dict[str, Any]] = body["accepted"]
            assert len(accepted) == len(events)
            return accepted

    def order(self, total: int | None = None) -> dict[str, Any]:
        order_id = "o_" + uuid.uuid4().hex[:16]
        amount = total if total is not None else random.randint(1, 10**9)
        return {
            "id": "evt_" + order_id,
            "event": "order_completed",
            "userId": "u_" + order_id,
            "properties": {"orderId": order_id, "total": amount, "currency": self.currency},
        }

    def send_orders(self, n: int) -> None:
        """Send ``n`` orders; then realtime must count exactly the orders sent so far. Whatever
        state Redis is in: counters known to be behind are never served (ClickHouse answers)."""
        events = [self.order() for _ in range(n)]
        self.send(events)
        for e in events:
            self.orders[e["properties"]["orderId"]] = e["properties"]["total"]
        assert self.realtime() == self.expected()

    def expected(self) -> tuple[int, int]:
        return len(self.orders), sum(self.orders.values())

    def realtime(self) -> tuple[int, int]:
        reply = call(
            "GET",
            f"{self.system.http_url}/analytics/realtime?currency={self.currency}"
            f"&timezone={midday_zone()}",
            self.key,
        )
        assert reply.status == 200, reply.body
        body = reply.json()
        return int(body["ordersToday"]), int(body["revenueToday"])


def redis_figures(client: redis.Redis, project: str, currency: str = "USD") -> tuple[int, int]:
    """Orders and revenue in every order bucket of the project, read from Redis itself:
    ``c<q>`` counts, revenue ``R<q>`` * 10^12 + ``r<q>`` (common/realtime.py)."""
    orders = revenue = 0
    for key in client.scan_iter(match=f"rt:{{{project}}}:orders:*:{currency}", count=1000):
        for name, value in client.hgetall(key).items():
            field = name.decode() if isinstance(name, bytes) else str(name)
            if field.startswith("c"):
                orders += int(value)
            elif field.startswith("r"):
                revenue += int(value)
            elif field.startswith("R"):
                revenue += int(value) * 10**12
    return orders, revenue


def caught_up(client: redis.Redis, project: str, shop: Shop) -> bool:
    try:
        return redis_figures(client, project, shop.currency) == shop.expected()
    except redis.ConnectionError:
        return False


def rebuilt(client: redis.Redis, project: str) -> bool:
    """Nothing vouches against the project's counters: the epoch is there, no rebuild pending."""
    try:
        return bool(client.exists(EPOCH_KEY)) and not client.hexists(STALE_KEY, project)
    except redis.ConnectionError:
        return False


# A system on a Redis of its own (REDIS_URL) ------------------------------------------------------


@pytest.fixture(scope="module")
def _external(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, tuple[System, RedisServer]]]:
    """Per backend, started on first use: a system and the valkey-server it alone uses (the
    counters' epoch belongs to one ClickHouse, so two systems never share a Redis here)."""
    started: dict[str, tuple[System, RedisServer]] = {}
    yield started
    for system, server in started.values():
        system.stop()
        server.stop()


@pytest.fixture
def external(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _external: dict[str, tuple[System, RedisServer]],
) -> tuple[System, RedisServer]:
    if backend not in _external:
        server = RedisServer(tmp_path_factory.mktemp(f"redis-{backend}"))
        server.start()
        system = start_system(
            tmp_path_factory.mktemp(f"system-{backend}"),
            key="cak_" + uuid.uuid4().hex,
            clickhouse_url=clickhouse_url(backend, request),
            extra_env={"REDIS_URL": server.url, "ANALYTICS_REALTIME_CHECK_SECONDS": "0.5"},
        )
        _external[backend] = (system, server)
    return _external[backend]


@pytest.mark.parametrize("damage", ["overflow", "wrongtype"])
def test_a_data_error_in_one_project_leaves_redis_on_for_the_others(
    external: tuple[System, RedisServer], damage: str
) -> None:
    system, server = external
    client = redis.Redis.from_url(server.url)
    tag = uuid.uuid4().hex[:8]
    bad_project, good_project = f"bad_{tag}", f"good_{tag}"
    bad = Shop(system, create_key(system, bad_project, ["ingest", "read"]))
    good = Shop(system, create_key(system, good_project, ["ingest", "read"]))
    bad.send_orders(1)
    assert redis_figures(client, bad_project) == bad.expected()

    # Break the bad project's counters by hand, as a bug or an attacker's data could.
    if damage == "overflow":  # its next order's HINCRBY overflows
        for key in client.scan_iter(match=f"rt:{{{bad_project}}}:orders:*"):
            client.hset(key, mapping={f"c{q}": 2**63 - 1 for q in range(96)})
    else:  # its next write meets WRONGTYPE
        client.delete(f"rt:{{{bad_project}}}:visitors")
        client.set(f"rt:{{{bad_project}}}:visitors", "not a sorted set")
    bad.send_orders(1)  # stored and acknowledged; its recording fails on that data

    # At once, another project's order is counted in Redis and shows in realtime.
    good.send_orders(1)
    assert redis_figures(client, good_project) == good.expected()
    assert good.realtime() == good.expected()
    # And the dedup window still works: a retry gets the first acknowledgement, time included.
    event = {
        "id": f"evt_retry_{tag}",
        "event": "page_view",
        "anonymousId": "a1",
        "properties": {"page": "/"},
    }
    first = good.send([event])[0]
    time.sleep(0.05)
    assert good.send([event])[0]["timestamp"] == first["timestamp"]

    # The broken project's counters are rebuilt from ClickHouse, the damage deleted.
    wait_for(lambda: caught_up(client, bad_project, bad), "the bad project's rebuild")
    wait_for(lambda: rebuilt(client, bad_project), "the bad project's rebuild marked done")
    assert bad.realtime() == bad.expected()
    assert good.realtime() == good.expected()


def members(client: redis.Redis, key: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m) for m in client.zrange(key, 0, -1)}


def _hex(text: str) -> str:
    """blake2b-128 of the text, as the counters' keys name ids (common/realtime.py)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def test_a_flushed_redis_is_rebuilt_from_clickhouse(external: tuple[System, RedisServer]) -> None:
    system, server = external
    client = redis.Redis.from_url(server.url)
    tag = uuid.uuid4().hex[:8]
    project = "flush_" + tag
    shop = Shop(system, create_key(system, project, ["ingest", "read"]))
    # A shopper browsing anonymously who signs in, and one who never does.
    anonymous, user, alone = f"anon_{tag}", f"user_{tag}", f"alone_{tag}"

    def visit(**ids: str) -> dict[str, Any]:
        return {"event": "page_view", "properties": {"page": "/stitched"}, **ids}

    shop.send([visit(anonymousId=anonymous)])
    shop.send([visit(userId=user, anonymousId=anonymous), visit(anonymousId=alone)])
    for _ in range(5):
        shop.send_orders(20)
    wait_for(lambda: caught_up(client, project, shop), "counters recorded before the flush")

    client.flushall()
    # Recorded into the empty Redis: the link is known again through the rebuild only.
    shop.send([visit(anonymousId=anonymous)])
    for _ in range(3):
        shop.send_orders(10)  # recorded into the empty Redis; realtime still exact

    wait_for(lambda: caught_up(client, project, shop), "the rebuild")
    wait_for(lambda: rebuilt(client, project), "the rebuild marked done")
    assert shop.realtime() == shop.expected()
    assert shop.expected()[0] == 130
    # The stitched shopper is one person again, in the visitors and the page's set.
    prefix = f"rt:{{{project}}}:"
    visitors = members(client, prefix + "visitors")
    assert user in visitors and alone in visitors and anonymous not in visitors
    assert members(client, prefix + "page:" + _hex("/stitched")) == {user, alone}
    assert client.hget(prefix + "link:" + _hex(anonymous), "u") == user.encode()


# The embedded valkey-server killed --------------------------------------------------------------


class HealthWatch:
    """Every status the gRPC health service streams for the whole server (service "")."""

    def __init__(self, target: str) -> None:
        self.statuses: list[str] = []
        self._channel = grpc.insecure_channel(target)
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._stream:
                self.statuses.append(
                    health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                )
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


def _valkey_pid(system: System) -> int:
    """The live valkey-server child of the system's process, from the process tree."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        state, parent = fields[0], int(fields[1])
        if parent == system.process.pid and name.endswith("(valkey-server") and state != "Z":
            return int(stat.parent.name)
    raise AssertionError("no live valkey-server under the system")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def _allowed_calls(system: System) -> float:
    """cartlytics_rate_limit_requests_total{scope="ingest",result="allowed"} from /metrics."""
    text = call("GET", f"{system.http_url}/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("cartlytics_rate_limit_requests_total{") and (
            'scope="ingest"' in line and 'result="allowed"' in line
        ):
            return float(line.split()[-1])
    return 0.0


def test_a_killed_embedded_redis_is_restarted_and_its_counters_rebuilt(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    system = start_system(
        tmp_path / "data",
        key="cak_" + uuid.uuid4().hex,
        clickhouse_url=clickhouse_url(backend, request),
        # 2 s before the restart: long enough to see /healthz say so on a busy machine.
        extra_env={
            "ANALYTICS_REDIS_RESTART_BACKOFF": "2",
            "ANALYTICS_REALTIME_CHECK_SECONDS": "0.5",
        },
    )
    watch = HealthWatch(system.grpc_target)
    pidfile = tmp_path / "data" / "redis" / "valkey.pid"
    socket = tmp_path / "data" / "redis" / "valkey.sock"
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=2)
    try:
        shop = Shop(system, system.key)
        for _ in range(5):
            shop.send_orders(20)
        wait_for(lambda: caught_up(client, "default", shop), "counters recorded before the kill")
        wait_for(lambda: watch.statuses == ["SERVING"], "the health stream")

        old_pid = _valkey_pid(system)
        os.kill(old_pid, signal.SIGKILL)

        # Orders keep being acknowledged while Redis is down; /healthz says it is not serving.
        def restarted() -> bool:
            seen = watch.statuses
            return "NOT_SERVING" in seen and "SERVING" in seen[seen.index("NOT_SERVING") :]

        unhealthy, deadline = 0, time.monotonic() + DEADLINE
        while not restarted():
            shop.send_orders(10)
            if call("GET", f"{system.http_url}/healthz").status == 503:
                unhealthy += 1
            assert time.monotonic() < deadline, f"not restarted; health said {watch.statuses}"
        assert watch.statuses[:3] == ["SERVING", "NOT_SERVING", "SERVING"], watch.statuses
        assert unhealthy > 0
        assert call("GET", f"{system.http_url}/healthz").status == 200
        new_pid = _valkey_pid(system)
        assert new_pid != old_pid and not _zombie(old_pid)  # reaped, not left a zombie
        assert int(pidfile.read_text()) == new_pid  # and the pid is where the docs say

        for _ in range(3):
            shop.send_orders(10)
        wait_for(lambda: caught_up(client, "default", shop), "the rebuild")
        wait_for(lambda: rebuilt(client, "default"), "the rebuild marked done")
        assert shop.realtime() == shop.expected()
        assert shop.expected()[0] >= 100 + 10 + 30

        # The dedup window and the rate limits work again (after the guard's cooldown).
        def deduplicated() -> bool:
            event = {
                "id": "evt_" + uuid.uuid4().hex,
                "event": "page_view",
                "anonymousId": "a",
                "properties": {"page": "/"},
            }
            first = shop.send([event])[0]
            time.sleep(0.05)
            return bool(shop.send([event])[0]["timestamp"] == first["timestamp"])

        wait_for(deduplicated, "a retried id deduplicated again")

        def rate_limited() -> bool:  # a call checked against its bucket, not waved through
            counted = _allowed_calls(system)
            shop.send_orders(1)
            return _allowed_calls(system) > counted

        wait_for(rate_limited, "rate limits enforced again")
    finally:
        watch.close()
        client.close()
        system.stop()

"""Rate limits: the Redis token bucket, and the limit as clients see it across replicas.

The bucket script runs against a real valkey-server and is compared with a plain-Python token
bucket. The system tests start real ``cartlytics run`` processes sharing one Redis: two full
replicas (``--target all``) that one key hammers through the REST gateway and over gRPC, and an
ingest-only process (microservices mode) with another key. A last system sees its Redis stopped
and must keep acknowledging and storing events.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cartlytics.common.ratelimit import Limit, RateLimited, RateLimiter
from cartlytics.common.redis_guard import RedisGuard
from cartlytics.common.redis_server import connect
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2
from gateway.status import retry_after_from_rpc
from tests.rest import Reply, call
from tests.servers import ClickHouseServer, RedisServer, System, free_port, start_system

INGEST = options_pb2.SCOPE_INGEST
READ = options_pb2.SCOPE_READ
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The bucket script against a real Redis


def _with_limiter(
    url: str, limits: dict[int, Limit], body: Callable[[RateLimiter], Awaitable[T]]
) -> T:
    """Run ``body`` with a limiter on a fresh client (redis.asyncio clients belong to a loop)."""

    async def run() -> T:
        client = connect(url)
        try:
            return await body(RateLimiter(RedisGuard(client), limits))
        finally:
            await client.aclose()

    return asyncio.run(run())


@dataclass
class OracleBucket:
    """A token bucket on paper: ``burst`` tokens, ``rate`` more a second, capped at ``burst``."""

    rate: float
    burst: int
    tokens: float | None = None
    last_us: int = 0

    def take(self, now_us: int, cost: int) -> tuple[bool, int, float]:
        """(allowed, microseconds until ``cost`` tokens are there, tokens left)."""
        if self.tokens is None:
            self.tokens, self.last_us = float(self.burst), now_us
        now_us = max(now_us, self.last_us)
        self.tokens = min(self.burst, self.tokens + (now_us - self.last_us) * self.rate / 1e6)
        self.last_us = now_us
        if self.tokens >= cost:
            self.tokens -= cost
            return True, 0, self.tokens
        return False, math.ceil((cost - self.tokens) * 1e6 / self.rate), self.tokens


@pytest.mark.parametrize(("rate", "burst"), [(5.0, 5), (0.5, 1), (1000.0, 2000), (2.5, 3)])
def test_bucket_matches_the_oracle(redis_server: RedisServer, rate: float, burst: int) -> None:
    rng = random.Random(f"{rate}/{burst}")
    key_id = "oracle_" + uuid.uuid4().hex[:8]
    # Calls at one instant, gaps of about a token, idle gaps up to past a full refill; mostly
    # single tokens, sometimes a big share of the bucket.
    token_us = int(1e6 / rate)
    steps: list[tuple[int, int]] = []
    for _ in range(300):
        gap = rng.choice(
            [0, 0, 0, rng.randint(1, 2 * token_us), rng.randint(1, token_us * burst * 3 // 2)]
        )
        steps.append((gap, rng.choice([1, 1, 1, 2, 3, rng.randint(1, burst)])))
    oracle = OracleBucket(rate, burst)

    async def body(limiter: RateLimiter) -> list[tuple[bool, int, float]]:
        now = 1_700_000_000_000_000
        answers = []
        for gap, cost in steps:
            now += gap
            decision = await limiter.take(INGEST, key_id, cost, now_us=now)
            assert decision is not None
            answers.append(
                (decision.allowed, round(decision.retry_after * 1e6), decision.remaining)
            )
        return answers

    answers = _with_limiter(redis_server.url, {INGEST: Limit(rate, burst)}, body)
    now = 1_700_000_000_000_000
    allowed_count = 0
    for (gap, cost), (allowed, wait_us, remaining) in zip(steps, answers, strict=True):
        now += gap
        want_allowed, want_wait, want_remaining = oracle.take(now, cost)
        assert allowed == want_allowed, (now, cost)
        assert abs(wait_us - want_wait) <= 1, (now, cost)
        assert remaining == pytest.approx(want_remaining, abs=1e-9)
        allowed_count += allowed
    assert 0 < allowed_count < len(steps), "the sequence must exercise both outcomes"


def test_burst_then_sustained_rate(redis_server: RedisServer) -> None:
    """5 a second, bursts of 5, worked out by hand."""
    key_id = "byhand_" + uuid.uuid4().hex[:8]
    t0 = 1_800_000_000_000_000

    async def body(limiter: RateLimiter) -> None:
        async def take(at_us: int) -> tuple[bool, float]:
            decision = await limiter.take(INGEST, key_id, now_us=at_us)
            assert decision is not None
            return decision.allowed, decision.retry_after

        assert [await take(t0) for _ in range(5)] == [(True, 0.0)] * 5  # the burst
        assert await take(t0) == (False, 0.2)  # one token every 200 ms
        assert await take(t0 + 150_000) == (False, 0.05)
        assert await take(t0 + 200_000) == (True, 0.0)
        assert await take(t0 + 200_000) == (False, 0.2)
        # One second of 10 calls a second: exactly 5 go through.
        results = [(await take(t0 + 300_000 + n * 100_000))[0] for n in range(10)]
        assert sum(results) == 5
        # An hour idle refills to the burst, never beyond.
        later = t0 + 3600 * 1_000_000
        assert [(await take(later))[0] for _ in range(7)] == [True] * 5 + [False] * 2

    _with_limiter(redis_server.url, {INGEST: Limit(5.0, 5)}, body)


def test_keys_and_scopes_have_their_own_buckets(redis_server: RedisServer) -> None:
    first, second = "iso_a_" + uuid.uuid4().hex[:8], "iso_b_" + uuid.uuid4().hex[:8]
    now = 1_900_000_000_000_000

    async def body(limiter: RateLimiter) -> None:
        async def allowed(scope: int, key_id: str) -> bool:
            decision = await limiter.take(scope, key_id, now_us=now)
            assert decision is not None
            return decision.allowed

        assert [await allowed(INGEST, first) for _ in range(3)] == [True, True, False]
        assert [await allowed(INGEST, second) for _ in range(3)] == [True, True, False]
        assert await allowed(READ, first), "a key's read bucket is not its ingest bucket"

    _with_limiter(redis_server.url, {INGEST: Limit(1.0, 2), READ: Limit(1.0, 2)}, body)


def test_redis_clock_refills_the_bucket(redis_server: RedisServer) -> None:
    """Without an explicit clock the script reads Redis' TIME; the delay it gives is right."""
    key_id = "clock_" + uuid.uuid4().hex[:8]

    async def body(limiter: RateLimiter) -> None:
        for _ in range(2):
            first = await limiter.take(INGEST, key_id)
            assert first is not None and first.allowed
        refused = await limiter.take(INGEST, key_id)
        assert refused is not None and not refused.allowed
        assert 0 < refused.retry_after <= 0.1  # 10 a second
        await asyncio.sleep(refused.retry_after + 0.01)
        again = await limiter.take(INGEST, key_id)
        assert again is not None and again.allowed, "a token is there after the given delay"

    _with_limiter(redis_server.url, {INGEST: Limit(10.0, 2)}, body)


def test_a_clock_going_back_gives_no_tokens(redis_server: RedisServer) -> None:
    key_id = "back_" + uuid.uuid4().hex[:8]
    t0 = 2_000_000_000_000_000

    async def body(limiter: RateLimiter) -> None:
        decisions = [await limiter.take(INGEST, key_id, now_us=t0) for _ in range(2)]
        assert [d is not None and d.allowed for d in decisions] == [True, False]
        earlier = await limiter.take(INGEST, key_id, now_us=t0 - 10_000_000)
        assert earlier is not None and not earlier.allowed
        # Time resumes from the latest instant seen: one second after t0, one token.
        resumed = await limiter.take(INGEST, key_id, now_us=t0 + 1_000_000)
        assert resumed is not None and resumed.allowed

    _with_limiter(redis_server.url, {INGEST: Limit(1.0, 1)}, body)


def test_over_the_limit_is_resource_exhausted_with_retry_info(redis_server: RedisServer) -> None:
    key_id = "rich_" + uuid.uuid4().hex[:8]

    async def body(limiter: RateLimiter) -> RateLimited:
        await limiter.enforce(READ, key_id)
        with pytest.raises(RateLimited) as refused:
            await limiter.enforce(READ, key_id)
        return refused.value

    error = _with_limiter(redis_server.url, {READ: Limit(2.0, 1)}, body)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = error.to_status()
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert any(d.Unpack(retry) for d in status.details)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 500_000_000  # 2 a second
    assert any(d.Unpack(quota) for d in status.details)
    assert quota.violations[0].subject == f"api_key:{key_id}"
    assert "read" in quota.violations[0].description


def test_unlimited_and_unreachable_redis_let_everything_through() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def body(limiter: RateLimiter) -> None:
        assert await limiter.take(READ, "k", now_us=1) is None  # rate 0: not even asked
        started = time.monotonic()
        for _ in range(50):
            await limiter.enforce(INGEST, "k")  # Redis unreachable: fail open, no raise
        assert time.monotonic() - started < 2, "the guard must skip Redis after one failure"

    _with_limiter(nowhere, {INGEST: Limit(1.0, 1), READ: Limit(0.0, 1)}, body)


# ---------------------------------------------------------------------------------------------
# Replicas sharing one Redis

LIMIT_ENV = {
    "ANALYTICS_RATE_LIMIT_INGEST": "5",
    "ANALYTICS_RATE_LIMIT_INGEST_BURST": "5",
    "ANALYTICS_RATE_LIMIT_READ": "5",
    "ANALYTICS_RATE_LIMIT_READ_BURST": "5",
}
RATE, BURST = 5.0, 5


@dataclass
class Replicas:
    redis: RedisServer
    first: System  # --target all, key `key`
    second: System  # --target all, key `key`
    ingest_only: System  # --target ingest (gRPC only), key `other_key`
    key: str
    other_key: str


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    redis_server = RedisServer(tmp_path_factory.mktemp("shared-redis"))
    redis_server.start()
    key, other_key = "cak_rl_" + uuid.uuid4().hex, "cak_rl_other_" + uuid.uuid4().hex
    env = {**LIMIT_ENV, "REDIS_URL": redis_server.url}
    started: list[System] = []
    try:
        for name, target, its_key in (
            ("replica-1", "all", key),
            ("replica-2", "all", key),
            ("ingest-only", "ingest", other_key),
        ):
            directory = tmp_path_factory.mktemp(name)
            started.append(start_system(directory, its_key, target=target, extra_env=env))
        first, second, ingest_only = started
        yield Replicas(redis_server, first, second, ingest_only, key=key, other_key=other_key)
    finally:
        for system in started:
            system.stop()
        redis_server.stop()


def _header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply.headers.items() if k.lower() == name.lower()), None)


def _order(order_id: str, currency: str) -> dict[str, object]:
    return {
        "event": "order_completed",
        "userId": "rl_user",
        "properties": {"orderId": order_id, "total": 100, "currency": currency},
    }


def _grpc_order(order_id: str, currency: str) -> ingest_pb2.TrackEventRequest:
    event = ingest_pb2.Event(event="order_completed", user_id="rl_user")
    event.properties.update({"orderId": order_id, "total": 100, "currency": currency})
    return ingest_pb2.TrackEventRequest(event=event)


def _details(error: grpc.RpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin"
    return status


def _check_rest_refusal(reply: Reply) -> None:
    assert reply.status == 429, reply.body
    retry_after = _header(reply, "Retry-After")
    assert retry_after is not None and re.fullmatch(r"[1-9][0-9]*", retry_after), reply.headers
    # At 5 a second the next token is at most 200 ms away: rounded up, 1 second.
    assert retry_after == "1"
    body = reply.json()
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    kinds = {d["@type"].rpartition("/")[2]: d for d in body["details"]}
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "RATE_LIMITED"
    delay = float(kinds["google.rpc.RetryInfo"]["retryDelay"].rstrip("s"))
    assert 0 < delay <= 1 / RATE + 1e-6
    assert kinds["google.rpc.QuotaFailure"]["violations"][0]["subject"].startswith("api_key:")


def _check_grpc_refusal(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = _details(error)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 1e9 / RATE + 1000
    trailing = dict(error.trailing_metadata() or ())
    assert trailing.get("retry-after") == "1"


@dataclass
class Tally:
    """What the hammering threads saw, per process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, process: str, ok: bool) -> None:
        with self.lock:
            target = self.accepted if ok else self.refused
            target[process] = target.get(process, 0) + 1


def _hammer(replicas: Replicas, currency: str, seconds: float) -> tuple[Tally, float]:
    """Four threads, each alternating REST and gRPC over both replicas, for ``seconds``."""
    tally = Tally()
    metadata = (("authorization", f"Bearer {replicas.key}"),)
    systems = {"first": replicas.first, "second": replicas.second}
    channels = {name: grpc.insecure_channel(s.grpc_target) for name, s in systems.items()}
    stubs = {name: ingest_pb2_grpc.IngestServiceStub(c) for name, c in channels.items()}
    stop_at = time.monotonic() + seconds

    def worker(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            process = ("first", "second")[(n + i) % 2]
            order_id = f"{currency}_{n}_{i}"
            try:
                if (n // 2 + i) % 2 == 0:
                    url = f"{systems[process].http_url}/analytics/event"
                    reply = call("POST", url, replicas.key, _order(order_id, currency))
                    if reply.status != 201:
                        _check_rest_refusal(reply)
                    tally.add(process, reply.status == 201)
                else:
                    try:
                        stubs[process].TrackEvent(
                            _grpc_order(order_id, currency), metadata=metadata, timeout=10
                        )
                        tally.add(process, True)
                    except grpc.RpcError as error:
                        _check_grpc_refusal(error)
                        tally.add(process, False)
            except Exception as exc:  # an assertion in a thread: report it, keep hammering
                with tally.lock:
                    tally.problems.append(f"{type(exc).__name__}: {exc}")
            i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for channel in channels.values():
        channel.close()
    return tally, elapsed


def _sales_orders(system: System, currency: str) -> int:
    url = f"{system.http_url}/analytics/sales?period=1d&currency={currency}"
    reply = call("GET", url, system.key)
    assert reply.status == 200, reply.body
    return int(reply.json()["orders"])


def test_the_limit_holds_across_two_replicas_sharing_redis(replicas: Replicas) -> None:
    time.sleep(BURST / RATE + 0.2)  # whatever ran before, the bucket is full again
    tally, elapsed = _hammer(replicas, "SEK", seconds=3.0)
    assert not tally.problems, tally.problems[:5]
    accepted = sum(tally.accepted.values())
    refused = sum(tally.refused.values())
    # One shared bucket: at most the burst plus what refilled while the calls ran (+1 for the
    # rounding of a token being refilled just as the window closed). Two separate buckets
    # would let through about twice as many.
    bound = BURST + RATE * elapsed + 1
    assert accepted <= bound, f"{accepted} accepted in {elapsed:.2f}s; bound {bound:.1f}"
    assert accepted >= BURST, f"only {accepted} accepted in {elapsed:.2f}s"
    assert refused > accepted, "four threads must outrun 5 calls a second"
    assert set(tally.refused) == {"first", "second"}, "both replicas refuse the shared key"
    # What was acknowledged is stored, what was refused is not.
    for name, system in (("first", replicas.first), ("second", replicas.second)):
        assert _sales_orders(system, "SEK") == tally.accepted.get(name, 0), name


def test_another_key_is_not_held_back_by_an_exhausted_one(replicas: Replicas) -> None:
    url = f"{replicas.first.http_url}/analytics/event"
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 200:
        statuses.append(call("POST", url, replicas.key, _order(f"x_{len(statuses)}", "NOK")).status)
    assert statuses[-1] == 429, "the first key is exhausted"
    # The other key, on the ingest-only process (microservices mode) sharing the same Redis.
    metadata = (("authorization", f"Bearer {replicas.other_key}"),)
    with grpc.insecure_channel(replicas.ingest_only.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for n in range(BURST):
            stub.TrackEvent(_grpc_order(f"other_{n}", "NOK"), metadata=metadata, timeout=10)
        # ... which enforces limits too: its own bucket runs out in turn.
        refusals = []
        for n in range(200):  # however slow the calls, 200 outrun 5 a second
            try:
                stub.TrackEvent(_grpc_order(f"more_{n}", "NOK"), metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                refusals.append(error)
                break
    assert refusals, "the ingest-only process let 205 calls through at 5 a second"
    _check_grpc_refusal(refusals[0])
    # The first key's read bucket is not its ingest bucket.
    assert call("GET", f"{replicas.first.http_url}/analytics/realtime", replicas.key).status == 200


# ---------------------------------------------------------------------------------------------
# Redis down


def _clickhouse_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "chdb":
        return ""
    server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
    return server.url.replace("/analytics", "/analytics_rl_" + uuid.uuid4().hex[:8])


def _counter(system: System, result: str) -> float:
    with urllib.request.urlopen(f"{system.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("} ")
        if name == "cartlytics_rate_limit_requests_total" and set(labels.split(",")) == {
            'scope="ingest"',
            f'result="{result}"',
        }:
            return float(value)
    return 0.0


def test_redis_stopped_refuses_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    system = start_system(
        tmp_path / "data", "cak_rl_down_" + uuid.uuid4().hex,
        clickhouse_url=_clickhouse_url(backend, request),
        extra_env={**LIMIT_ENV, "ANALYTICS_RATE_LIMIT_INGEST": "1",
                   "ANALYTICS_RATE_LIMIT_INGEST_BURST": "2", "REDIS_URL": redis_server.url},
    )  # fmt: skip
    try:
        url = f"{system.http_url}/analytics/event"
        before = [call("POST", url, system.key, _order(f"up_{n}", "DKK")) for n in range(6)]
        assert [r.status for r in before].count(429) >= 3, "the limit is enforced while up"
        redis_server.stop()
        started = time.monotonic()
        during = [call("POST", url, system.key, _order(f"down_{n}", "DKK")) for n in range(20)]
        elapsed = time.monotonic() - started
        assert [r.status for r in during] == [201] * 20, [r.body for r in during if r.status != 201]
        assert elapsed < 10, f"20 events took {elapsed:.1f}s with Redis down"
        assert _counter(system, "unchecked") >= 20
        acknowledged = sum(r.status == 201 for r in before) + 20
        assert _sales_orders(system, "DKK") == acknowledged
    finally:
        system.stop()
        redis_server.stop()


@pytest.mark.parametrize(
    ("delay", "header"), [(0.001, "1"), (0.2, "1"), (1.0, "1"), (1.2, "2"), (59.01, "60")]
)
def test_gateway_derives_retry_after_from_retry_info(delay: float, header: str) -> None:
    """A service that sends RetryInfo but no retry-after metadata still gets the header."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(round(delay * 1e9))
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow")
    status.details.add().Pack(retry)
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    assert retry_after_from_rpc(trailing) == header
    assert retry_after_from_rpc((("grpc-status-details-bin", b"\xff not a status"),)) is None
    assert retry_after_from_rpc(()) is None

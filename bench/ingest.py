"""Ingest throughput: REST single events, REST batches and gRPC batches, and what they cost.

Every request is built before the clock starts (REST: JSON bodies as bytes; gRPC: serialized
``BatchTrackEventsRequest`` messages sent through the channel with identity serializers), so the
client spends its time sending and reading answers, not encoding. Each request is sent once: an
order's ``orderId`` is unique across the run (ingest lists repeated orderIds as duplicates, a
write the service would not do for real traffic); events carry no client id (the server assigns
one, so the dedup window never answers from its cache). A pool covers ``--seconds`` at
``--pool-rate`` events/s (batches) or ``--pool-rate-single`` (single events); a mode that uses
its pool up before its time ends there, its rate measured over what it ran (``pool_used_up``).

Beside events/s: CPU µs per event of the server (``cartlytics run`` and its children, from
/proc/<pid>/stat before and after the mode; on a ClickHouse server also the server's) and of
this client process.

Standalone, it starts `cartlytics run` (embedded chdb + valkey) in a fresh data folder; the
client shares the machine's cores with the server, as a store's backend on the same host would.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import PARTS, Meter, per_unit_us  # noqa: E402
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2  # noqa: E402
from tests.servers import start_system  # noqa: E402

BATCH_METHOD = "/analytics.ingest.v1.IngestService/BatchTrackEvents"
PING_METHOD = "/analytics.ingest.v1.IngestService/Ping"
# Stands for an orderId in a request template; stamped with a fresh id of the same length (so a
# serialized protobuf stays valid) for each request of a pool.
ORDER_PLACEHOLDER = "ord_" + "#" * 32
POOL_RATE = 150_000  # events/s a batch mode's pool covers (1.5x issue 16's 100k target)
POOL_RATE_SINGLE = 20_000  # single events/s a pool covers
SINGLE_TEMPLATES = 1000
MODES = ("single", "rest", "grpc")  # REST single events, REST batches, gRPC batches
# (and "ping": the no-op REST Ping, only when asked for)
BATCH_TEMPLATES = 16
ACCEPTED = re.compile(rb'"acceptedCount"\s*:\s*"?(\d+)')


def make_event(n: int, order_id: str | None = None) -> dict[str, Any]:
    """A realistic mix: mostly views, some carts, a few orders with line items."""
    user = f"user_{n % 5000}"
    kind = n % 20
    if kind < 12:
        return {"event": "page_view", "userId": user, "properties": {"page": f"/p/{n % 300}"},
                "context": {"userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0",
                            "ip": "203.0.113.42"}}  # fmt: skip
    product = f"prod_{n % 500}"
    if kind < 17:
        return {"event": "product_view", "userId": user,
                "properties": {"productId": product, "name": "Shirt", "price": 2999}}  # fmt: skip
    if kind < 19:
        return {"event": "add_to_cart", "userId": user,
                "properties": {"productId": product, "quantity": 1}}  # fmt: skip
    line = {"productId": product, "price": 2999, "quantity": 2}
    order = order_id or f"ord_{uuid.uuid4().hex}"
    return {"event": "order_completed", "userId": user,
            "properties": {"orderId": order, "total": 6578, "currency": "USD",
                           "products": [line]}}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Requests built before the clock


def stamp(templates: list[bytes], count: int) -> list[bytes]:
    """``count`` request bodies: the templates in turn, each orderId placeholder replaced by an
    id used once (``ord_`` + 32 hex digits: this pool's tag, then a serial number)."""
    tag = uuid.uuid4().hex[:16].encode()
    marker = ORDER_PLACEHOLDER.encode()
    split = [t.split(marker) for t in templates]
    serial = 0
    out: list[bytes] = []
    for i in range(count):
        parts = split[i % len(split)]
        if len(parts) == 1:
            out.append(templates[i % len(templates)])
            continue
        pieces = [parts[0]]
        for part in parts[1:]:
            pieces.append(b"ord_%s%016x" % (tag, serial))
            pieces.append(part)
            serial += 1
        out.append(b"".join(pieces))
    return out


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def single_bodies(count: int) -> list[bytes]:
    templates = [json_bytes(make_event(n, ORDER_PLACEHOLDER)) for n in range(SINGLE_TEMPLATES)]
    return stamp(templates, count)


def rest_batch_bodies(count: int, batch: int) -> list[bytes]:
    templates = [
        json_bytes({"events": [make_event(t * batch + i, ORDER_PLACEHOLDER) for i in range(batch)]})
        for t in range(BATCH_TEMPLATES)
    ]
    return stamp(templates, count)


def grpc_batch_messages(count: int, batch: int) -> list[bytes]:
    """Serialized ``BatchTrackEventsRequest``s (ParseDict runs here, before the clock)."""
    templates = [
        ingest_pb2.BatchTrackEventsRequest(
            events=[
                json_format.ParseDict(
                    make_event(t * batch + i, ORDER_PLACEHOLDER), ingest_pb2.Event()
                )
                for i in range(batch)
            ]
        ).SerializeToString()
        for t in range(BATCH_TEMPLATES)
    ]
    return stamp(templates, count)


def pool_size(seconds: float, rate: float, per_request: int) -> int:
    return max(1, math.ceil(seconds * rate / per_request))


# ---------------------------------------------------------------------------------------------
# The closed loop


class Counter:
    def __init__(self, pool: list[bytes] | None = None) -> None:
        self.events = 0
        self.requests = 0
        self.errors = 0
        self.pool = pool or []
        self.sent = 0

    def next_request(self) -> bytes | None:
        """The next pre-built request, or None when the pool is used up."""
        if self.sent >= len(self.pool):
            return None
        body = self.pool[self.sent]
        self.sent += 1
        return body


async def run_for(
    seconds: float,
    connections: int,
    one: Callable[[Counter], Awaitable[bool]],
    label: str,
    pool: list[bytes] | None = None,
    meter: Meter | None = None,
) -> dict[str, Any]:
    """``connections`` loops calling ``one`` (False: nothing left to send) for ``seconds``,
    once the server is idle (the previous mode's merges not counted in this one)."""
    counter = Counter(pool)
    meter = meter or Meter()
    settled = meter.settle()
    deadline = time.perf_counter() + seconds
    before = meter.read()
    started = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            if not await one(counter):
                return

    async def progress() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1)
            rate = counter.events / (time.perf_counter() - started)
            print(f"  {label}: {counter.events} events, {rate:,.0f}/s", file=sys.stderr, flush=True)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    cpu = meter.since(before)
    reporter.cancel()
    result = {
        "mode": label,
        "connections": connections,
        "seconds": round(elapsed, 2),
        "events": counter.events,
        "requests": counter.requests,
        "errors": counter.errors,
        "events_per_second": round(counter.events / elapsed),
        "requests_per_second": round(counter.requests / elapsed),
        "idle_wait_s": settled,
        "load_average_1min": round(os.getloadavg()[0], 2),  # others' work on a shared machine
        **cpu,
        **per_unit_us(cpu, counter.events),
    }
    if pool is not None:
        result["pool_requests"] = len(pool)
        result["pool_used_up"] = counter.sent >= len(pool)
    return result


async def bench(
    http_url: str, grpc_target: str, key: str, args: argparse.Namespace, meter: Meter | None = None
) -> list[dict[str, Any]]:
    """The three modes in turn; ``meter`` reads the server's CPU (none standalone: client only)."""
    results = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    batch, seconds, connections = args.batch, args.seconds, args.connections
    pool_rate = getattr(args, "pool_rate", POOL_RATE)
    pool_rate_single = getattr(args, "pool_rate_single", POOL_RATE_SINGLE)
    modes = set(getattr(args, "modes", MODES))

    def built(what: str, make: Callable[[], list[bytes]]) -> list[bytes]:
        started = time.perf_counter()
        pool = make()
        size = sum(map(len, pool)) / 1e6
        print(
            f"  {what}: {len(pool):,} requests built in {time.perf_counter() - started:.1f} s "
            f"({size:,.0f} MB)",
            file=sys.stderr,
            flush=True,
        )
        return pool

    async def measure(
        what: str,
        label: str,
        one: Callable[[Counter], Awaitable[bool]],
        make: Callable[[], list[bytes]],
    ) -> None:
        """Build a mode's pool of requests, then run it (the pool freed after)."""
        pool = built(what, make)
        print(what, file=sys.stderr)
        results.append(await run_for(seconds, connections, one, label, pool, meter))

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        single_url, batch_url = f"{http_url}/analytics/event", f"{http_url}/analytics/event/batch"

        async def rest_single(c: Counter) -> bool:
            body = c.next_request()
            if body is None:
                return False
            async with session.post(single_url, data=body) as reply:
                await reply.read()
                c.requests += 1
                if reply.status == 201:
                    c.events += 1
                else:
                    c.errors += 1
            return True

        async def rest_batch(c: Counter) -> bool:
            body = c.next_request()
            if body is None:
                return False
            async with session.post(batch_url, data=body) as reply:
                answer = await reply.read()
                c.requests += 1
                accepted = ACCEPTED.search(answer) if reply.status == 200 else None
                if accepted is None:
                    c.errors += 1
                else:
                    c.events += int(accepted.group(1))
            return True

        async def rest_ping(c: Counter) -> bool:
            async with session.get(f"{http_url}/analytics/ping") as reply:
                await reply.read()
                c.requests += 1
                c.events += reply.status == 200
                c.errors += reply.status != 200
            return True

        if "ping" in modes:  # the reference of single events (bench/run.py measures it itself)
            print("REST Ping", file=sys.stderr)
            results.append(await run_for(seconds, connections, rest_ping, "REST Ping", None, meter))
        if "single" in modes:
            await measure(
                "REST single events",
                "REST single",
                rest_single,
                lambda: single_bodies(pool_size(seconds, pool_rate_single, 1)),
            )
        if "rest" in modes:
            await measure(
                f"REST batches of {batch}",
                f"REST batch of {batch}",
                rest_batch,
                lambda: rest_batch_bodies(pool_size(seconds, pool_rate, batch), batch),
            )
    if "grpc" not in modes:
        return results

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        # Identity request serializer: the bytes built above go out as they are.
        call = channel.unary_unary(
            BATCH_METHOD, response_deserializer=ingest_pb2.BatchTrackEventsResponse.FromString
        )
        metadata = (("authorization", f"Bearer {key}"),)

        async def grpc_batch(c: Counter) -> bool:
            request = c.next_request()
            if request is None:
                return False
            try:
                reply = await call(request, metadata=metadata, timeout=60)
            except grpc.RpcError:
                c.errors += 1
                return True
            c.requests += 1
            c.events += reply.accepted_count
            return True

        await measure(
            f"gRPC batches of {batch}",
            f"gRPC batch of {batch}",
            grpc_batch,
            lambda: grpc_batch_messages(pool_size(seconds, pool_rate, batch), batch),
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--pool-rate", type=float, default=POOL_RATE, help="events/s a batch mode's pool covers"
    )
    parser.add_argument(
        "--pool-rate-single", type=float, default=POOL_RATE_SINGLE, help="the same, single events"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} and ping"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    key = "cak_bench_" + uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="cartlytics-bench-") as tmp:
        print("starting cartlytics (embedded chdb + valkey)...", file=sys.stderr)
        system = start_system(Path(tmp) / "data", key, extra_env={"ANALYTICS_LOG_LEVEL": "warning"})
        try:
            meter = Meter(system.process.pid)
            results = asyncio.run(bench(system.http_url, system.grpc_target, key, args, meter))
        finally:
            system.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0],
        },
        "results": results,
    }
    print()
    columns = (
        "events/s | requests/s | server CPU µs/event | of it: Python · native · workers · valkey"
        " | client CPU µs/event | errors"
    )
    print(f"| mode | connections | {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        rates = f"{r['events_per_second']:,} | {r['requests_per_second']:,}"
        split = " · ".join(str(r.get(f"{part}_cpu_us")) for part in PARTS)
        cpu = f"{r['service_cpu_us']} | {split} | {r['client_cpu_us']}"
        print(f"| {r['mode']} | {r['connections']} | {rates} | {cpu} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

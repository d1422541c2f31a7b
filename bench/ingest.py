"""Ingest throughput on the embedded default: gRPC batch, REST batch and REST single events.

Starts `cartlytics run` (chdb + embedded valkey) in a fresh data folder, sends events for a fixed
time per mode from concurrent clients in this process, and reports events per second. The client
shares the machine's cores with the server, as a store's backend on the same host would.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc  # noqa: E402
from tests.servers import start_system  # noqa: E402


def make_event(n: int) -> dict[str, Any]:
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
    return {"event": "order_completed", "userId": user,
            "properties": {"orderId": f"ord_{uuid.uuid4().hex}", "total": 6578, "currency": "USD",
                           "products": [line]}}  # fmt: skip


class Counter:
    def __init__(self) -> None:
        self.events = 0
        self.requests = 0
        self.errors = 0
        self.next_id = 0

    def take(self, count: int) -> int:
        start = self.next_id
        self.next_id += count
        return start


async def run_for(
    seconds: float, connections: int, one: Callable[[Counter], Awaitable[None]], label: str
) -> dict[str, Any]:
    counter = Counter()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one(counter)

    async def progress() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1)
            rate = counter.events / (time.perf_counter() - started)
            print(f"  {label}: {counter.events} events, {rate:,.0f}/s", file=sys.stderr, flush=True)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(worker() for _ in range(connections)))
    reporter.cancel()
    elapsed = time.perf_counter() - started
    return {
        "mode": label,
        "connections": connections,
        "seconds": round(elapsed, 2),
        "events": counter.events,
        "requests": counter.requests,
        "errors": counter.errors,
        "events_per_second": round(counter.events / elapsed),
        "requests_per_second": round(counter.requests / elapsed),
    }


async def bench(
    http_url: str, grpc_target: str, key: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    results = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    batch = args.batch
    async with aiohttp.ClientSession(headers=headers) as session:

        async def rest_single(c: Counter) -> None:
            body = json.dumps(make_event(c.take(1)))
            async with session.post(f"{http_url}/analytics/event", data=body) as reply:
                await reply.read()
                c.requests += 1
                if reply.status == 201:
                    c.events += 1
                else:
                    c.errors += 1

        async def rest_batch(c: Counter) -> None:
            start = c.take(batch)
            body = json.dumps({"events": [make_event(start + i) for i in range(batch)]})
            async with session.post(f"{http_url}/analytics/event/batch", data=body) as reply:
                payload = await reply.json()
                c.requests += 1
                if reply.status == 200:
                    c.events += int(payload["acceptedCount"])
                else:
                    c.errors += 1

        print("REST single events", file=sys.stderr)
        results.append(await run_for(args.seconds, args.connections, rest_single, "REST single"))
        print("REST batches", file=sys.stderr)
        results.append(
            await run_for(args.seconds, args.connections, rest_batch, f"REST batch of {batch}")
        )

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)

        async def grpc_batch(c: Counter) -> None:
            start = c.take(batch)
            request = ingest_pb2.BatchTrackEventsRequest(
                events=[
                    json_format.ParseDict(make_event(start + i), ingest_pb2.Event())
                    for i in range(batch)
                ]
            )
            try:
                reply = await stub.BatchTrackEvents(request, metadata=metadata, timeout=60)
            except grpc.RpcError:
                c.errors += 1
                return
            c.requests += 1
            c.events += reply.accepted_count

        print("gRPC batches", file=sys.stderr)
        results.append(
            await run_for(args.seconds, args.connections, grpc_batch, f"gRPC batch of {batch}")
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    key = "cak_bench_" + uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="cartlytics-bench-") as tmp:
        print("starting cartlytics (embedded chdb + valkey)...", file=sys.stderr)
        system = start_system(Path(tmp) / "data", key, extra_env={"ANALYTICS_LOG_LEVEL": "warning"})
        try:
            results = asyncio.run(bench(system.http_url, system.grpc_target, key, args))
        finally:
            system.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "results": results,
    }
    print()
    print("| mode | connections | events/s | requests/s | errors |")
    print("|---|---|---|---|---|")
    for r in results:
        rates = f"{r['events_per_second']:,} | {r['requests_per_second']:,}"
        print(f"| {r['mode']} | {r['connections']} | {rates} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

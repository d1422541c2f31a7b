"""Measurements against a running system: the no-op Ping, sequential latency, freshness and a
sustained open-loop load. Each returns plain dicts for the report (bench/report.py)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import Meter  # noqa: E402
from bench.ingest import PING_METHOD, Counter, make_event, run_for  # noqa: E402
from bench.metrics import call, percentile  # noqa: E402

PING_PATH = "/analytics/ping"
# Probe orders are in a currency nothing else sends, so each one moves the counts by exactly
# one (USD counts also change as old demo orders leave the one-day window).
PROBE_CURRENCY = "CHF"
SALES_PATH = f"/analytics/sales?period=1d&granularity=hour&currency={PROBE_CURRENCY}"
REALTIME_PATH = f"/analytics/realtime?currency={PROBE_CURRENCY}"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def latency(
    base: str, key: str, method: str, path: str, body: Any, requests: int
) -> dict[str, Any]:
    """p50/p99 of ``requests`` sequential calls after one warm-up call."""
    status, _ = call(base, key, method, path, body)
    timings = []
    for _ in range(requests):
        status, ms = call(base, key, method, path, body)
        timings.append(ms)
    return {
        "status": status,
        "p50_ms": round(statistics.median(timings), 2),
        "p99_ms": round(percentile(timings, 99), 2),
    }


async def ping_throughput(
    http_url: str,
    grpc_target: str,
    key: str,
    seconds: float,
    connections: int,
    meter: Meter | None = None,
) -> list[dict[str, Any]]:
    """Closed-loop Ping over REST and over gRPC, as bench/ingest.py drives ingest: the same
    client (aiohttp, ``connections`` connections; one gRPC channel with as many calls in
    flight), the request built once (gRPC: empty bytes through identity serializers)."""
    results = []
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        url = f"{http_url}{PING_PATH}"

        async def rest_ping(c: Counter) -> bool:
            async with session.get(url) as reply:
                await reply.read()
                c.requests += 1
                if reply.status == 200:
                    c.events += 1  # run_for counts events: here, answered Pings
                else:
                    c.errors += 1
            return True

        progress(f"  no-op Ping over REST, {connections} connections")
        results.append(await run_for(seconds, connections, rest_ping, "REST Ping", meter=meter))

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        ping = channel.unary_unary(PING_METHOD)  # bytes in, bytes out
        metadata = (("authorization", f"Bearer {key}"),)

        async def grpc_ping(c: Counter) -> bool:
            c.requests += 1
            try:
                await ping(b"", metadata=metadata, timeout=30)
            except grpc.RpcError:
                c.errors += 1
                return True
            c.events += 1
            return True

        progress(f"  no-op Ping over gRPC, {connections} concurrent calls")
        results.append(await run_for(seconds, connections, grpc_ping, "gRPC Ping", meter=meter))
    return results


# ---------------------------------------------------------------------------------------------
# Freshness


async def _read(session: aiohttp.ClientSession, url: str, field: str) -> int:
    async with session.get(url) as reply:
        body = await reply.json(content_type=None)
        if reply.status != 200:
            raise RuntimeError(f"GET {url}: {reply.status} {body}")
        return int(body.get(field, 0))  # proto3 JSON leaves zeros out


async def _until(
    session: aiohttp.ClientSession, url: str, field: str, want: int, deadline: float
) -> tuple[float | None, int]:
    """(when ``field`` first read at least ``want``, number of reads); None if never."""
    reads = 0
    while time.perf_counter() < deadline:
        value = await _read(session, url, field)
        reads += 1
        if value >= want:
            return time.perf_counter(), reads
    return None, reads


async def freshness(http_url: str, key: str, probes: int, give_up_s: float = 30) -> dict[str, Any]:
    """Time from an order's acknowledgement to its visibility in sales and in realtime."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    sales_url, realtime_url = http_url + SALES_PATH, http_url + REALTIME_PATH
    seen: dict[str, list[float]] = {"sales": [], "realtime": []}
    missed = {"sales": 0, "realtime": 0}
    reads: dict[str, list[int]] = {"sales": [], "realtime": []}
    async with aiohttp.ClientSession(headers=headers) as session:
        for n in range(probes):
            sales_before = await _read(session, sales_url, "orders")
            realtime_before = await _read(session, realtime_url, "ordersToday")
            event = {
                "event": "order_completed",
                "userId": f"fresh_{n}",
                "properties": {
                    "orderId": f"ord_fresh_{uuid.uuid4().hex}",
                    "total": 1000,
                    "currency": PROBE_CURRENCY,
                },
            }
            async with session.post(f"{http_url}/analytics/event", json=event) as reply:
                await reply.read()
                if reply.status != 201:
                    raise RuntimeError(f"probe order refused: {reply.status}")
            acked = time.perf_counter()
            deadline = acked + give_up_s
            found = await asyncio.gather(
                _until(session, sales_url, "orders", sales_before + 1, deadline),
                _until(session, realtime_url, "ordersToday", realtime_before + 1, deadline),
            )
            for view, (when, count) in zip(("sales", "realtime"), found, strict=True):
                reads[view].append(count)
                if when is None:
                    missed[view] += 1
                else:
                    seen[view].append((when - acked) * 1000)
            if (n + 1) % 10 == 0 or n + 1 == probes:
                progress(f"  freshness: {n + 1}/{probes} probes")
    rows = []
    for view, path in (("sales", SALES_PATH), ("realtime", REALTIME_PATH)):
        values = seen[view]
        rows.append(
            {
                "view": f"{view} (`GET {path}`)",
                "probes": probes,
                "not_visible": missed[view],
                "p50_ms": round(statistics.median(values), 2) if values else None,
                "p99_ms": round(percentile(values, 99), 2) if values else None,
                "max_ms": round(max(values), 2) if values else None,
                "reads_p50": statistics.median(reads[view]) if reads[view] else None,
            }
        )
    return {"probes": probes, "give_up_s": give_up_s, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Sustained load


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def sustained(
    http_url: str,
    key: str,
    pid: int,
    rate: float,
    seconds: float,
    bucket_seconds: float,
    connections: int,
    storage_pid: int | None = None,
) -> dict[str, Any]:
    """Single events at ``rate``/s for ``seconds``, open loop; latency and RSS per bucket.

    ``storage_pid``: a clickhouse-server whose memory is sampled too."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    buckets = max(1, round(seconds / bucket_seconds))
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    sent, errors = [0] * buckets, [0] * buckets
    rss: list[tuple[float, float]] = []
    storage_rss: list[float] = []
    shed = 0
    started = time.perf_counter()
    end = started + seconds

    def bucket_of(at: float) -> int:
        return min(buckets - 1, int((at - started) / bucket_seconds))

    async def sample_memory() -> None:
        while True:
            value = rss_mb(pid)
            if value is not None:
                rss.append((time.perf_counter() - started, value))
            other = rss_mb(storage_pid) if storage_pid else None
            if other is not None:
                storage_rss.append(other)
            await asyncio.sleep(1)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def send(n: int, scheduled: float) -> None:
            b = bucket_of(scheduled)
            try:
                async with session.post(f"{http_url}/analytics/event", json=make_event(n)) as reply:
                    await reply.read()
                    ok = reply.status == 201
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies[b].append((time.perf_counter() - scheduled) * 1000)
            else:
                errors[b] += 1

        sampler = asyncio.create_task(sample_memory())
        pending: set[asyncio.Task[None]] = set()
        n = 0
        next_report = started + bucket_seconds
        while True:
            scheduled = started + n / rate
            if scheduled >= end:
                break
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            if len(pending) >= connections * 20:
                shed += 1  # the server is this far behind: count it rather than queue forever
            else:
                sent[bucket_of(scheduled)] += 1
                task = asyncio.create_task(send(n, scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
            n += 1
            if time.perf_counter() >= next_report:
                next_report += bucket_seconds
                done = sum(len(x) for x in latencies)
                progress(
                    f"  sustained: {time.perf_counter() - started:.0f}/{seconds:.0f} s, "
                    f"{done:,} acknowledged, server RSS {rss[-1][1] if rss else 0:.0f} MB"
                )
        if pending:
            await asyncio.wait(pending, timeout=60)
        sampler.cancel()
    elapsed = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    for b in range(buckets):
        inside = [v for t, v in rss if t <= (b + 1) * bucket_seconds]
        values = latencies[b]
        rows.append(
            {
                "start_s": round(b * bucket_seconds),
                "end_s": round(min(seconds, (b + 1) * bucket_seconds)),
                "sent": sent[b],
                "acked": len(values),
                "errors": errors[b],
                "p50_ms": round(statistics.median(values), 2) if values else None,
                "p99_ms": round(percentile(values, 99), 2) if values else None,
                "rss_mb": inside[-1] if inside else None,
            }
        )
    memory = [v for _, v in rss]
    start_mb = memory[0] if memory else None
    warm_mb = rows[0]["rss_mb"]
    end_mb = memory[-1] if memory else None
    flat = None
    if warm_mb is not None and end_mb is not None:
        flat = end_mb - warm_mb <= max(16.0, 0.05 * warm_mb)
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"] is not None]
    half = max(1, len(p99s) // 2)
    bounded = max(p99s) <= 2 * max(p99s[:half]) if p99s else None
    acked = sum(r["acked"] for r in rows)
    return {
        "target_rate": round(rate, 1),
        # Over the sending time; the acknowledgements still due at its end follow in drain_s.
        "achieved_rate": round(acked / seconds, 1),
        "seconds": seconds,
        "drain_s": round(elapsed - seconds, 1),
        "bucket_seconds": bucket_seconds,
        "connections": connections,
        "sent": sum(sent),
        "acked": acked,
        "errors": sum(errors),
        "shed": shed,
        "rss_mb": {
            "start": start_mb,
            "after_first_interval": warm_mb,
            "end": end_mb,
            "peak": max(memory) if memory else None,
        },
        "rss_samples": [[round(t, 1), v] for t, v in rss],
        "storage_rss_mb": {
            "start": storage_rss[0],
            "end": storage_rss[-1],
            "peak": max(storage_rss),
        }
        if storage_rss
        else None,
        "rss_flat": flat,
        "p99_ms_worst": max(p99s) if p99s else None,
        "p99_bounded": bounded,
        "buckets": rows,
    }

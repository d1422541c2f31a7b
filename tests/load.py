"""Load for the fault tests: clients that send orders with their own ids, retry as a client
should, and record what was acknowledged; and readers of what storage really holds.

Each order carries its own event id (``evt_<id>``) and orderId (``<id>``), so a retry is safe and
the ids acknowledged can be compared with the ids stored, one by one.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from cartlytics.gen.analytics.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from tests.rest import call
from tests.servers import ClickHouseServer, System

# What a client retries: the service (or the path to it) is down or asks to slow down.
RETRY_GRPC = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
RETRY_HTTP = (429, 502, 503, 504)


def order(order_id: str, currency: str) -> ingest_pb2.Event:
    event = ingest_pb2.Event(id=f"evt_{order_id}", event="order_completed", user_id="u_" + order_id)
    event.properties.update({"orderId": order_id, "total": 100, "currency": currency})
    return event


class Retry(Exception):
    """A send that acknowledged nothing and is to be retried (``hint``: it said when)."""

    def __init__(self, code: str, hint: bool) -> None:
        super().__init__(code)
        self.code = code
        self.hint = hint


@dataclass
class Refusal:
    """A retryable answer: when, which code, and whether it carried Retry-After/RetryInfo."""

    at: float
    code: str
    hint: bool


@dataclass
class Load:
    """Workers sending batches of orders with their own ids until stopped.

    ``acked`` holds the ids an answer acknowledged, ``sent`` every id ever sent; ``latencies``
    (end time, seconds) each acknowledged request; ``refusals`` each retryable failure; ``errors``
    anything a client must never see (a 500, an unknown rejection).

    ``shutdown_at`` (monotonic) is when the test began stopping the server the load calls over
    gRPC. From then on a CANCELLED is the server's, not ours: gRPC core ends the calls it had
    received but not yet handed to a handler with CANCELLED when shutdown starts (not
    UNAVAILABLE; grpc/grpc#41785), and a busy event loop leaves more of them queued. Nothing of
    such a call ran, so it is retried like UNAVAILABLE; a CANCELLED at any other time is an error.
    """

    target: str
    key: str
    currency: str
    prefix: str = ""
    workers: int = 3
    batch: int = 20
    acked: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    shutdown_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # One transport: send ids, return (accepted ids, ids refused as in flight); raise Retry.
    def _sender(self) -> Any:
        raise NotImplementedError

    def _close(self, sender: Any) -> None:
        pass

    def _send(self, sender: Any, ids: list[str]) -> tuple[set[str], set[str]]:
        raise NotImplementedError

    def _deliver(self, sender: Any, ids: list[str], until: float | None = None) -> None:
        """Send ``ids`` until each is acknowledged (or the load stops / ``until`` passes)."""
        pending = list(ids)
        while pending:
            if until is None and self.stop.is_set():
                return
            if until is not None and time.monotonic() > until:
                return
            started = time.monotonic()
            try:
                accepted, in_flight = self._send(sender, pending)
            except Retry as retry:
                at = time.monotonic()
                if retry.code == "CANCELLED" and not (self.shutdown_at and at >= self.shutdown_at):
                    self.errors.append("CANCELLED while no shutdown was under way")
                    return
                with self.lock:
                    self.refusals.append(Refusal(at, retry.code, retry.hint))
                time.sleep(0.1)
                continue
            except Exception as exc:  # anything else is a finding, not a retry
                self.errors.append(repr(exc))
                return
            done = time.monotonic()
            with self.lock:
                self.acked.update(accepted)
                if accepted:
                    self.latencies.append((done, done - started))
            unknown = set(pending) - accepted - in_flight
            if unknown:
                self.errors.append(f"refused without a retryable reason: {sorted(unknown)[:3]}")
                return
            pending = [i for i in pending if i not in accepted]
            if pending:
                # Ids a killed process had claimed read "in flight" until the claim expires.
                time.sleep(0.5)

    def _run(self, worker: int) -> None:
        sender = self._sender()
        n = 0
        while not self.stop.is_set():
            ids = [f"{self.prefix}w{worker}_{n}_{i}" for i in range(self.batch)]
            n += 1
            with self.lock:
                self.sent.update(ids)
            self._deliver(sender, ids)
        self._close(sender)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in range(self.workers)]
        for thread in self.threads:
            thread.start()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acknowledged"
            assert not self.errors, self.errors
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def settle(self, timeout: float = 60) -> None:
        """Resend every id sent but never acknowledged until each is (after a fault)."""
        self.finish()
        sender = self._sender()
        until = time.monotonic() + timeout
        unacked = sorted(self.sent - self.acked)
        for start in range(0, len(unacked), 100):
            self._deliver(sender, unacked[start : start + 100], until)
        self._close(sender)
        missing = self.sent - self.acked
        assert not missing, f"{len(missing)} sent, never acknowledged: {sorted(missing)[:3]}"
        assert not self.errors, self.errors

    def acks_between(self, start: float, end: float) -> list[float]:
        """Latencies of the requests acknowledged between two monotonic times."""
        with self.lock:
            return [seconds for done, seconds in self.latencies if start <= done <= end]


def _retry_info(metadata: Any) -> bool:
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    return False


@dataclass
class Stream(Load):
    """The load over gRPC: ``BatchTrackEvents`` straight to a service."""

    def _sender(self) -> Any:
        channel = grpc.insecure_channel(self.target)
        return channel, ingest_pb2_grpc.IngestServiceStub(channel)

    def _close(self, sender: Any) -> None:
        sender[0].close()

    def _send(self, sender: Any, ids: list[str]) -> tuple[set[str], set[str]]:
        request = ingest_pb2.BatchTrackEventsRequest(events=[order(i, self.currency) for i in ids])
        metadata = (("authorization", f"Bearer {self.key}"),)
        try:
            reply = sender[1].BatchTrackEvents(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            code = error.code()
            if code in RETRY_GRPC or code == grpc.StatusCode.CANCELLED:  # see Load.shutdown_at
                raise Retry(code.name, _retry_info(error.trailing_metadata())) from None
            raise AssertionError(f"{code}: {error.details()}") from None
        accepted = {a.id.removeprefix("evt_") for a in reply.accepted}
        in_flight = {ids[r.index] for r in reply.rejected if "retry" in r.description}
        return accepted, in_flight


@dataclass
class RestStream(Load):
    """The load over REST: ``POST /analytics/event/batch`` through a gateway (``target`` is
    its base URL)."""

    def _sender(self) -> Any:
        return None

    def _send(self, sender: Any, ids: list[str]) -> tuple[set[str], set[str]]:
        events = [
            {
                "id": f"evt_{i}",
                "event": "order_completed",
                "userId": "u_" + i,
                "properties": {"orderId": i, "total": 100, "currency": self.currency},
            }
            for i in ids
        ]
        request = urllib.request.Request(
            f"{self.target}/analytics/event/batch",
            data=json.dumps({"events": events}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            error.read()
            if error.code in RETRY_HTTP:
                raise Retry(str(error.code), "Retry-After" in error.headers) from None
            raise AssertionError(f"HTTP {error.code}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise Retry(type(error).__name__, False) from None  # the gateway is down
        accepted = {a["id"].removeprefix("evt_") for a in body.get("accepted", [])}
        in_flight = {
            ids[r.get("index", 0)] for r in body.get("rejected", []) if "retry" in r["description"]
        }
        return accepted, in_flight


# Storage, read directly -----------------------------------------------------------------------


def clickhouse_url(backend: str, request: pytest.FixtureRequest) -> str:
    """Empty for the embedded backend; a fresh database on the session's server otherwise."""
    if backend == "chdb":
        return ""
    server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
    return server.url.replace("/analytics", "/durability_" + uuid.uuid4().hex[:8])


def stored_ids(clickhouse_url: str, data_dir: Path) -> dict[str, int]:
    """Each stored event id (without ``evt_``) and how many rows hold it."""
    if not clickhouse_url:
        return _stored_chdb_ids(data_dir)
    from clickhouse_driver import Client

    host_port, _, database = clickhouse_url.split("@")[1].partition("/")
    host, _, port = host_port.partition(":")
    client = Client(host=host, port=int(port), database=database)
    rows = client.execute("SELECT event_id, count() FROM events GROUP BY event_id")
    client.disconnect()
    return {str(k).removeprefix("evt_"): int(v) for k, v in rows}


def logged_ids(data_dir: Path) -> set[str]:
    """Event ids (without ``evt_``) in the ingest log of ``data_dir`` not yet stored in
    ClickHouse (ANALYTICS_INGEST_LOG=yes): what the next start writes."""
    from services.ingest.ingest_log import unstored_records
    from services.ingest.log_writer import LogRecord
    from services.ingest.rows import EVENTS

    at = EVENTS.columns.index("event_id")
    ids: set[str] = set()
    for record in unstored_records(data_dir / "ingest-log"):
        rows = LogRecord.decode(record.payload).rows[EVENTS.name]
        ids.update(str(row[at]).removeprefix("evt_") for row in rows)
    return ids


def _stored_chdb_ids(data_dir: Path) -> dict[str, int]:
    """Event ids in an embedded store, read by a separate process (one chdb per process)."""
    script = (
        "import json, sys; from pathlib import Path;"
        "from cartlytics.common.storage import Sql, open_storage;"
        "s = open_storage('', Path(sys.argv[1]));"
        "q = Sql('SELECT event_id, count() FROM events GROUP BY event_id');"
        "print(json.dumps(s.query_sync(q)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)], capture_output=True, text=True, check=True
    )
    return {str(k).removeprefix("evt_"): int(v) for k, v in json.loads(out.stdout.splitlines()[-1])}


def sales(system: System, currency: str) -> dict[str, int]:
    reply = call(
        "GET", f"{system.http_url}/analytics/sales?period=1d&currency={currency}", system.key
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    return {"orders": body["orders"], "revenue": body["revenue"]}


def statuses(refusals: list[Refusal]) -> Counter[str]:
    return Counter(r.code for r in refusals)

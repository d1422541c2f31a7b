"""Where a request is prepared (``preparation.py``): on the event loop, or in a worker process.

CPython runs one thread of Python at a time, and a batch's parsing, validation, enrichment and
rows are ~15 µs an event of Python: on the event loop they leave the machine's other cores to
ClickHouse and idle. ``ANALYTICS_INGEST_WORKERS`` worker processes take the large requests
(REST bodies of ``MIN_WORKER_BYTES`` or more, gRPC batches of ``MIN_WORKER_EVENTS`` events or
more); the loop keeps the small ones, whose round trip to a worker (~0.2 ms) would cost more than
preparing them. A worker is given the process's settings once, when it starts; each request
goes as its body's bytes and comes back as its keys and the ingest log's record (decision 72).

The workers are started with ``spawn`` (a fork would copy ClickHouse's and gRPC's threads'
state), die with their parent (``PR_SET_PDEATHSIG``), and are replaced if one dies: the request
it held answers 503 (``INGEST_WORKER_LOST``, retryable), the next ones go to the new pool.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from prometheus_client import Counter

from cartlytics.common.errors import unavailable
from cartlytics.gen.analytics.ingest.v1 import ingest_pb2

from .preparation import Prepared, Settings, new_event_id, prepare, prepare_json, prepare_protos
from .proto_events import incoming_of
from .validation import IncomingEvent

log = structlog.get_logger(__name__)

MIN_WORKER_BYTES = 16 * 1024
"""A REST body this large (about 30 events) is prepared in a worker, when there are workers."""
MIN_WORKER_EVENTS = 32
"""A gRPC batch of this many events is prepared in a worker, when there are workers."""

PREPARED_EVENTS = Counter(
    "cartlytics_ingest_prepared_events",
    "Events parsed, validated and enriched, by where: the event loop or a worker process.",
    ["where"],
)
_ON_LOOP, _IN_WORKERS = PREPARED_EVENTS.labels("loop"), PREPARED_EVENTS.labels("worker")
WORKERS_LOST = Counter(
    "cartlytics_ingest_workers_lost", "Ingest worker processes that died and were replaced."
)


class WorkerSetup(NamedTuple):
    """How a worker process is set up when it starts, as its parent is."""

    log_level: str = "warning"
    log_format: str = "console"
    gc_gen0_threshold: int = 0
    """``gc_tuning.tune_gc``'s: 0 leaves Python's default."""


DEFAULT_SETUP = WorkerSetup()


class Preparer:
    """Prepares requests on the event loop, or in ``workers`` processes for large ones."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime],
        new_id: Callable[[], str] = new_event_id,
        workers: int = 0,
        setup: WorkerSetup = DEFAULT_SETUP,
    ) -> None:
        self._settings = settings
        # On the loop, no realtime tally: the log writer makes one from a block's rows of all
        # untallied records at once (~1.9 µs an event), where a request's own costs a single
        # event ~9 µs (made, pickled, read back, merged). Workers tally: they run beside the loop.
        self._loop_settings = replace(settings, tally=False)
        self._clock = clock
        self._new_id = new_id
        self._workers = workers
        self._setup = setup
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the workers now (else with the first large request) and have each import what
        it runs, so that no request waits for that."""
        if self._workers:
            pool = self._ensure_pool()
            for _ in range(self._workers):
                pool.submit(_ready)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def events(
        self, project_id: str, events: Sequence[IncomingEvent], client_ip: str = ""
    ) -> Prepared:
        """IncomingEvents already decoded, prepared on the loop."""
        _ON_LOOP.inc(len(events))
        return prepare(
            project_id, events, self._loop_settings, self._clock(), self._new_id, client_ip
        )

    async def json(
        self, project_id: str, body: bytes, content_type: str, single: bool, client_ip: str
    ) -> Prepared:
        """A REST body (``single``: ``POST /analytics/event``), prepared."""
        received_at = self._clock()
        if single or not self._workers or len(body) < MIN_WORKER_BYTES:
            prepared = prepare_json(
                project_id, body, content_type, single, self._loop_settings, received_at,
                self._new_id, client_ip,
            )  # fmt: skip
            _ON_LOOP.inc(len(prepared.keys) + len(prepared.refused))
            return prepared
        return await self._in_worker(
            _json_in_worker, project_id, body, content_type, received_at, client_ip
        )

    async def protos(
        self, project_id: str, request: ingest_pb2.BatchTrackEventsRequest, client_ip: str
    ) -> Prepared:
        """A gRPC batch (its limits already checked), prepared."""
        if not self._workers or len(request.events) < MIN_WORKER_EVENTS:
            return self.events(project_id, [incoming_of(e) for e in request.events], client_ip)
        return await self._in_worker(
            _protos_in_worker, project_id, request.SerializeToString(), self._clock(), client_ip
        )

    async def _in_worker(self, job: Callable[..., Prepared], *args: Any) -> Prepared:
        pool = self._ensure_pool()
        try:
            prepared = await asyncio.wrap_future(pool.submit(job, *args))
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this request is not prepared; the pool is
            # replaced for the next ones.
            WORKERS_LOST.inc()
            log.error("ingest worker lost; replacing the pool")
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise unavailable(
                "an ingest worker process stopped while preparing the request; retry",
                reason="INGEST_WORKER_LOST",
            ) from None
        _IN_WORKERS.inc(len(prepared.keys) + len(prepared.refused))
        return prepared

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self._settings, self._setup, os.getpid()),
            )
        return self._pool


# In a worker process: its settings, given once when it starts.
_settings: Settings | None = None


def _start_worker(settings: Settings, setup: WorkerSetup, parent: int) -> None:
    global _settings
    _settings = settings
    # Ctrl-C in a terminal reaches the whole process group: the parent stops its workers
    # (Preparer.close), which would otherwise each print a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":  # die with the parent, even a parent killed with SIGKILL
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died while this one started (before the line above)
        os._exit(0)
    from cartlytics.common.gc_tuning import tune_gc
    from cartlytics.common.logging import configure_logging

    from .enrichment import describe_user_agent

    configure_logging(setup.log_level, setup.log_format)
    describe_user_agent("Mozilla/5.0")  # builds the user-agent parser (~0.25 s), before freezing
    tune_gc(setup.gc_gen0_threshold)  # what it imported and built lives as long as it does


def _ready() -> None:
    """Nothing: submitted once per worker at start, so that the pool starts each now (it
    starts them as jobs come) and no request waits for one to import and build its parser."""


def _worker_settings() -> Settings:
    assert _settings is not None, "run in a worker started by Preparer"
    return _settings


def _json_in_worker(
    project_id: str, body: bytes, content_type: str, received_at: datetime, client_ip: str
) -> Prepared:
    return prepare_json(
        project_id, body, content_type, False, _worker_settings(), received_at, new_event_id,
        client_ip,
    )  # fmt: skip


def _protos_in_worker(
    project_id: str, request: bytes, received_at: datetime, client_ip: str
) -> Prepared:
    return prepare_protos(
        project_id, request, _worker_settings(), received_at, new_event_id, client_ip
    )

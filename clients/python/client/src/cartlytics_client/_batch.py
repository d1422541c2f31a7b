"""The batching mode's bookkeeping, shared by the thread (sync) and task (asyncio) senders.

Events get a sequence number when queued. Batches are sent one at a time in queue order, so
"every event up to seq N has had its outcome" is one number, ``done_seq``, which ``flush`` and
``close`` wait on. Each queued event is *settled* once (success or failure, one callback),
whoever settles it first: the sender, or ``close`` giving up on it.

The core does no locking and no waiting: the sync sender calls it under its lock, the asyncio
sender from its event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import grpc
from cartlytics_protos.analytics.ingest.v1 import ingest_pb2

from ._config import OnFailure, OnSuccess, Settings, call_safely
from ._events import AcceptedEvent, Prepared
from ._retry import IN_FLIGHT_DESCRIPTION, IN_FLIGHT_TEXT, retry_delay
from .errors import CartlyticsError, ClientClosed, QueueFull


@dataclass(eq=False)
class Queued:
    prepared: Prepared
    seq: int
    settled: bool = False


@dataclass
class BatchOutcome:
    """What the server answered for each event of a batch request."""

    accepted: list[tuple[Queued, AcceptedEvent]] = field(default_factory=list)
    refused: list[tuple[Queued, CartlyticsError]] = field(default_factory=list)
    # Refused only because an earlier attempt with the same id is still being stored: sent again.
    in_flight: list[Queued] = field(default_factory=list)
    # Neither accepted nor refused (a server bug): failed.
    missing: list[Queued] = field(default_factory=list)


def _utc(stamp: object) -> datetime:
    to_datetime = getattr(stamp, "ToDatetime", None)
    if to_datetime is None:
        return datetime.now(UTC)
    value: datetime = to_datetime(tzinfo=UTC)
    return value


def batch_request(batch: list[Queued]) -> ingest_pb2.BatchTrackEventsRequest:
    return ingest_pb2.BatchTrackEventsRequest(events=[q.prepared.message for q in batch])


def stamp_sent_at(request: ingest_pb2.BatchTrackEventsRequest) -> None:
    """``sent_at`` of every event: now (each attempt)."""
    now = datetime.now(UTC)
    for event in request.events:
        event.sent_at.FromDatetime(now)


def classify(
    batch: list[Queued], response: ingest_pb2.BatchTrackEventsResponse, attempts: int = 1
) -> BatchOutcome:
    """Sort the events of a request by the server's answer (attempts: the batch's so far)."""
    outcome = BatchOutcome()
    accepted = {a.index: a for a in response.accepted if 0 <= a.index < len(batch)}
    violations: dict[int, list[tuple[str, str]]] = {}
    for rejected in response.rejected:
        if 0 <= rejected.index < len(batch) and rejected.index not in accepted:
            violations.setdefault(rejected.index, []).append((rejected.field, rejected.description))
    for index, queued in enumerate(batch):
        if index in accepted:
            ack = accepted[index]
            outcome.accepted.append(
                (
                    queued,
                    AcceptedEvent(
                        id=ack.id,
                        event=ack.event,
                        timestamp=_utc(ack.timestamp),
                        source=queued.prepared.source,
                    ),
                )
            )
        elif index in violations:
            broken = violations[index]
            if all(f == "id" and IN_FLIGHT_TEXT in d for f, d in broken):
                outcome.in_flight.append(queued)
            else:
                outcome.refused.append(
                    (
                        queued,
                        CartlyticsError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "event refused by the server",
                            field_violations=broken,
                            attempts=attempts,
                        ),
                    )
                )
        else:
            outcome.missing.append(queued)
    return outcome


def missing_error(attempts: int = 1) -> CartlyticsError:
    return CartlyticsError(
        grpc.StatusCode.UNKNOWN, "the server answered nothing for this event", attempts=attempts
    )


def in_flight_error(attempts: int) -> CartlyticsError:
    """The failure of events whose id was still in flight at the batch's last attempt: what
    ``track`` answers for one (ABORTED, EVENT_IN_FLIGHT)."""
    return CartlyticsError(
        grpc.StatusCode.ABORTED,
        "an event with this id was still being stored by another request",
        field_violations=[("id", IN_FLIGHT_DESCRIPTION)],
        reason="EVENT_IN_FLIGHT",
        attempts=attempts,
    )


Calls = list[Callable[[], None]]


class BatchSend:
    """One batch's delivery, the I/O left to the sender (thread or task).

    The batch goes in one request, retried by the rules; the events the server refused only
    because their id is in flight are sent again (same ids, in a new request) after a backoff.
    Retries and resends share the batch's one budget: at most ``1 + max_retries`` attempts in
    all (as the Go SDK's ``send``); then the events still in flight fail with
    ``in_flight_error``. The sender loops while ``pending``::

        request = send.request()
        answer = run(attempt, spent=send.attempts)  # each attempt calls send.attempt(request)
        # an error: send.failed(error); else: calls, wait = send.answered(answer)
        # wait is None: done; else sleep wait (closed meanwhile: send.closed())

    Each method settles events through the core and returns the callbacks to run (the sync
    sender calls the methods under its lock and runs the callbacks outside it).
    """

    def __init__(self, core: QueueCore, batch: list[Queued]) -> None:
        self.core = core
        self.pending = batch  # the events of the next request
        self.attempts = 0  # the batch's attempts so far (requests and their retries)

    def request(self) -> ingest_pb2.BatchTrackEventsRequest:
        return batch_request(self.pending)

    def attempt(self, request: ingest_pb2.BatchTrackEventsRequest) -> None:
        """One attempt of ``request`` starts: counted, ``sent_at`` stamped."""
        self.attempts += 1
        stamp_sent_at(request)

    def failed(self, error: CartlyticsError, *, closed: bool = False) -> Calls:
        """The request failed for good (retries exhausted or not retryable): every pending
        event fails with ``error`` (``ClientClosed`` caused by it when close gave up)."""
        if closed:
            gave_up = ClientClosed("the client was closed while these were being sent")
            gave_up.__cause__ = error
            error = gave_up
        return self._fail(error)

    def answered(self, response: ingest_pb2.BatchTrackEventsResponse) -> tuple[Calls, float | None]:
        """Settle the request's accepted and refused events; returns the callbacks and, when
        events in flight are to be sent again, the wait before their request (else None)."""
        outcome = classify(self.pending, response, self.attempts)
        failures = [([queued], error) for queued, error in outcome.refused]
        if outcome.missing:
            failures.append((outcome.missing, missing_error(self.attempts)))
        calls = self.core.resolve(successes=outcome.accepted, failures=failures)
        self.pending = outcome.in_flight
        if not self.pending:
            return calls, None
        still = in_flight_error(self.attempts)
        settings = self.core.settings
        if self.attempts > settings.max_retries:
            return calls + self._fail(still), None
        wait = retry_delay(self.attempts, still, settings)
        return calls, wait or 0.0

    def closed(self) -> Calls:
        """Close gave up while the events in flight waited to be sent again."""
        gave_up = ClientClosed("the client was closed before these were sent again")
        gave_up.__cause__ = in_flight_error(self.attempts)
        return self._fail(gave_up)

    def _fail(self, error: CartlyticsError) -> Calls:
        pending, self.pending = self.pending, []
        return self.core.resolve(failures=[(pending, error)])


class QueueCore:
    """The bounded FIFO queue and the outcome bookkeeping."""

    def __init__(
        self, settings: Settings, on_success: OnSuccess | None, on_failure: OnFailure | None
    ) -> None:
        self.settings = settings
        self.on_success = on_success
        self.on_failure = on_failure
        self.queue: deque[Queued] = deque()
        self.queue_bytes = 0
        self.next_seq = 0  # seq of the last queued event
        self.done_seq = 0  # every event with seq <= done_seq has had its outcome
        self.force_seq = 0  # events with seq <= force_seq are sent whatever the thresholds
        self.in_flight: list[Queued] = []  # the batch being sent
        self.failed = 0  # events settled as failures so far
        self.closed = False

    def add(self, prepared: Prepared) -> None:
        if self.closed:
            raise ClientClosed()
        s = self.settings
        if len(self.queue) >= s.max_queue_events:
            raise QueueFull(f"the event queue holds {len(self.queue)} events (max_queue_events)")
        if self.queue_bytes + prepared.size > s.max_queue_bytes:
            raise QueueFull(
                f"the event queue holds {self.queue_bytes} bytes; this event would pass "
                f"max_queue_bytes ({s.max_queue_bytes})"
            )
        self.next_seq += 1
        self.queue.append(Queued(prepared, self.next_seq))
        self.queue_bytes += prepared.size

    def full(self) -> bool:
        """A whole batch is waiting (flush_at events or max_batch_bytes)."""
        s = self.settings
        return len(self.queue) >= s.flush_at or self.queue_bytes >= s.max_batch_bytes

    def ready(self) -> bool:
        """A batch should be sent now."""
        return bool(self.queue) and (self.force_seq >= self.queue[0].seq or self.full())

    def force_all(self) -> int:
        """Send everything queued so far whatever the thresholds; returns the seq to wait for."""
        self.force_seq = max(self.force_seq, self.next_seq)
        return self.next_seq

    def take(self) -> list[Queued]:
        """The next batch: at most flush_at events and max_batch_bytes (at least one event)."""
        s = self.settings
        batch: list[Queued] = []
        size = 0
        while self.queue and len(batch) < s.flush_at:
            item_size = self.queue[0].prepared.size
            if batch and size + item_size > s.max_batch_bytes:
                break
            batch.append(self.queue.popleft())
            size += item_size
        self.queue_bytes -= size
        self.in_flight = batch
        return batch

    def finish(self, batch: list[Queued]) -> None:
        """Every event of ``batch`` has had its outcome."""
        if batch:
            self.done_seq = max(self.done_seq, batch[-1].seq)
        if self.in_flight is batch:
            # Empty unless the sender was cancelled mid-batch: close settles what is left.
            self.in_flight = [q for q in batch if not q.settled]

    def resolve(
        self,
        successes: Sequence[tuple[Queued, AcceptedEvent]] = (),
        failures: Sequence[tuple[list[Queued], CartlyticsError]] = (),
    ) -> list[Callable[[], None]]:
        """Settle events (those not settled yet); returns the callbacks to run, outside any
        lock: on_success once with the accepted events, on_failure once per failure group."""
        calls: list[Callable[[], None]] = []
        accepted: list[AcceptedEvent] = []
        for queued, ack in successes:
            if not queued.settled:
                queued.settled = True
                accepted.append(ack)
        if accepted:
            calls.append(partial(call_safely, self.on_success, accepted))
        for group, error in failures:
            fresh = [q for q in group if not q.settled]
            for queued in fresh:
                queued.settled = True
            if fresh:
                self.failed += len(fresh)
                events = [q.prepared.source for q in fresh]
                calls.append(partial(call_safely, self.on_failure, events, error))
        return calls

    def abandon(self, error: ClientClosed) -> list[Callable[[], None]]:
        """Give up on every event still queued or being sent (close's timeout)."""
        left = [q for q in self.in_flight if not q.settled] + list(self.queue)
        self.queue.clear()
        self.queue_bytes = 0
        self.in_flight = []
        self.done_seq = self.next_seq
        return self.resolve(failures=[(left, error)])

"""The half of ingesting a request that needs nothing but the request: parse it, validate each
event, enrich the valid ones and build their rows in every table (``prepare``).

The other half (``Ingestor.commit``: the erasure list, the dedup window, the log) needs the
process's state and its event loop. This half is most of a batch's CPU (~15 µs an event of the
~45 a REST batch cost in all on this 2-core machine), and it is a pure function of its
arguments, so ``workers.Preparer`` can run it in another process, beside the event loop rather
than on it (decision 72).

Everything here pickles: a ``Prepared`` crosses from a worker process to the event loop's with
its rows already encoded as the ingest log's record (``LogRecord.encode``), so the loop appends
them to the log without touching a row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from cartlytics.common.random_ids import RandomIds
from cartlytics.common.realtime import RealtimeTally

from . import json_events, proto_events
from .enrichment import enrich
from .log_writer import LogRecord
from .outcome import Rejected
from .rows import (
    EVENTS,
    EVENTS_AT,
    ORDER_ITEMS,
    ORDER_LINES,
    PRODUCT_NAMES,
    TABLES,
    event_row,
    item_rows,
    name_rows,
    order_lines_row,
    realtime_of,
)
from .validation import MAX_EVENT_BYTES, IncomingEvent, ValidEvent, validate

# EventKey.rows counts rows in this order.
assert TABLES == (ORDER_ITEMS, EVENTS, ORDER_LINES, PRODUCT_NAMES)


new_event_id = RandomIds(24, prefix="evt_")
"""``evt_`` and 24 random hex digits (96 bits from the OS's CSPRNG), drawn in bulk."""


@dataclass(frozen=True)
class IngestLimits:
    max_event_bytes: int = MAX_EVENT_BYTES
    ip_mode: str = "hash"


@dataclass(frozen=True)
class Settings:
    """What preparing a request needs besides the request: the same for every request of a
    process (a worker process is given them once, when it starts)."""

    ip_salt: bytes
    limits: IngestLimits = IngestLimits()
    max_batch_events: int = 500
    max_body_bytes: int = 512 * 1024
    tally: bool = False
    """Sum up the events for the realtime counters (``RealtimeTally``) with their rows: the log
    writer then merges a block's sums instead of going over its events. The workers do; on the
    loop ``workers.Preparer`` leaves it off (the writer tallies those records' rows together)."""


class EventKey(NamedTuple):
    """What committing needs of a valid event (its rows are in ``Prepared``)."""

    position: int
    """The event's position in the request."""
    id: str
    event: str
    timestamp: datetime
    client_id: bool
    """The id came from the client (so a retry may repeat it)."""
    user_id: str
    anonymous_id: str
    rows: tuple[int, int, int, int]
    """How many rows the event has in each of ``TABLES``, in their order."""


# EventKey from a tuple of its fields, in C (a NamedTuple's own constructor is a Python function).
_new_key: Callable[[tuple[Any, ...]], EventKey] = functools.partial(tuple.__new__, EventKey)


class Prepared:
    """A request's valid events (``keys``, in request order, and their rows per table), the
    refusals so far (``refused``, by request position, final), and the orderIds of its order
    events. ``message_id_at``: the positions whose id was Segment's ``messageId``."""

    __slots__ = (
        "_payload", "_rows", "keys", "message_id_at", "order_ids", "project_id", "refused", "tally"
    )  # fmt: skip

    def __init__(
        self,
        project_id: str,
        keys: list[EventKey],
        refused: list[Rejected],
        rows: dict[str, list[tuple[Any, ...]]],
        order_ids: tuple[str, ...],
        message_id_at: frozenset[int] = frozenset(),
        tally: RealtimeTally | None = None,
    ) -> None:
        self.project_id = project_id
        self.tally = tally
        self.keys = keys
        self.refused = refused
        self.order_ids = order_ids
        self.message_id_at = message_id_at
        self._rows: dict[str, list[tuple[Any, ...]]] | None = rows
        self._payload: bytes | None = None

    @property
    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        if self._rows is None:
            assert self._payload is not None
            record = LogRecord.decode(self._payload)
            self._rows, self.tally = record.rows, record.tally
        return self._rows

    def record(self) -> LogRecord:
        return LogRecord(self.project_id, self.rows, self.order_ids, self.tally)

    def record_at_hand(self) -> LogRecord | None:
        """The record, when its rows are in this process (prepared here); None for a worker's,
        which only its bytes crossed (not decoded for this)."""
        return None if self._rows is None else self.record()

    def payload(self) -> bytes:
        """Every valid event's rows as the ingest log's record."""
        if self._payload is None:
            self._payload = self.record().encode()
        return self._payload

    def __getstate__(self) -> tuple[Any, ...]:
        # The rows travel once, as the log record's bytes (the loop appends them as they are).
        # (The tally travels inside the payload, with the rows.) The keys travel as columns:
        # pickling 500 NamedTuples and making them again one by one cost ~1.5 µs an event, the
        # columns ~0.8 (measured alone, one core).
        columns = tuple(map(list, zip(*self.keys, strict=True))) if self.keys else ()
        return (self.project_id, columns, self.refused, self.order_ids, self.message_id_at,
                self.payload())  # fmt: skip

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.project_id, columns, self.refused, self.order_ids, self.message_id_at = state[:5]
        self.keys = list(map(_new_key, zip(*columns, strict=True)))
        self._payload = state[5]
        self._rows = None
        self.tally = None  # read with the rows when they are (``rows``); never needed apart

    def stored_part(self, keys: Sequence[EventKey]) -> LogRecord:
        """The record of ``keys`` only (a subset of ``self.keys``, in order): the rows of the
        others left out by position, since a repeated id's rows share their event id."""
        if len(keys) == len(self.keys):
            return self.record()
        wanted = {key.position for key in keys}
        rows = self.rows
        kept: dict[str, list[tuple[Any, ...]]] = {spec.name: [] for spec in TABLES}
        at = [0] * len(TABLES)
        for key in self.keys:
            keep = key.position in wanted
            for table, count in enumerate(key.rows):
                if count:
                    name = TABLES[table].name
                    if keep:
                        kept[name].extend(rows[name][at[table] : at[table] + count])
                    at[table] += count
        order_at = EVENTS_AT["order_id"]
        orders = tuple(sorted({row[order_at] for row in kept[EVENTS.name] if row[order_at]}))
        return LogRecord(self.project_id, kept, orders)  # its tally: made by the writer


def prepare(
    project_id: str,
    events: Sequence[IncomingEvent],
    settings: Settings,
    received_at: datetime,
    new_id: Callable[[], str],
    client_ip: str = "",
    positions: Sequence[int] | None = None,
) -> Prepared:
    """Validate, enrich and build the rows of ``events`` (at ``positions`` in the request, by
    default their own); the refusals are by request position."""
    limits = settings.limits
    refused: list[Rejected] = []
    keys: list[EventKey] = []
    rows: dict[str, list[tuple[Any, ...]]] = {spec.name: [] for spec in TABLES}
    events_rows, items, lines, names = (
        rows[EVENTS.name], rows[ORDER_ITEMS.name], rows[ORDER_LINES.name], rows[PRODUCT_NAMES.name]
    )  # fmt: skip
    orders: set[str] = set()
    valid: list[ValidEvent] = []
    for index, incoming in enumerate(events):
        position = index if positions is None else positions[index]
        outcome = validate(incoming, received_at, new_id, limits.max_event_bytes)
        if not isinstance(outcome, ValidEvent):
            refused.append(Rejected(position, outcome))
            continue
        e = outcome
        valid.append(e)
        extra = enrich(
            e.properties,
            e.context,
            ip_salt=settings.ip_salt,
            ip_mode=limits.ip_mode,
            client_ip=client_ip,
        )
        events_rows.append(event_row(project_id, e, extra))
        item_count = name_count = line_count = 0
        if e.line_items:
            added = item_rows(project_id, e)
            items.extend(added)
            item_count = len(added)
        order_lines = order_lines_row(project_id, e)
        if order_lines is not None:
            lines.append(order_lines)
            line_count = 1
        named = name_rows(project_id, e)
        if named:
            names.extend(named)
            name_count = len(named)
        if e.order_id:
            orders.add(e.order_id)
        keys.append(
            EventKey(
                position, e.id, e.event, e.timestamp, e.client_id, e.user_id, e.anonymous_id,
                (item_count, 1, line_count, name_count),
            )
        )  # fmt: skip
    tally = RealtimeTally.of(realtime_of(e) for e in valid) if settings.tally else None
    return Prepared(project_id, keys, refused, rows, tuple(sorted(orders)), tally=tally)


def prepare_json(
    project_id: str,
    body: bytes,
    content_type: str,
    single: bool,
    settings: Settings,
    received_at: datetime,
    new_id: Callable[[], str],
    client_ip: str = "",
) -> Prepared:
    """A REST body (``POST /analytics/event``: ``single``, else ``.../event/batch``), prepared.

    Raises ApiError (INVALID_ARGUMENT) for a body that cannot be read at all, or a single event
    that cannot be parsed; a batch's unreadable events are refused by position."""
    if single:
        batch = json_events.parse_single(body, content_type, settings.max_body_bytes)
    else:
        batch = json_events.parse_batch(
            body, content_type, settings.max_batch_events, settings.max_body_bytes
        )
    prepared = prepare(
        project_id, batch.events, settings, received_at, new_id, client_ip, batch.positions
    )
    prepared.refused = json_events.refusals(batch, prepared.refused)
    prepared.message_id_at = frozenset(
        key.position
        for key in prepared.keys
        if key.client_id and json_events.id_from_message_id(batch.raw[key.position])
    )
    return prepared


def prepare_protos(
    project_id: str,
    request: bytes,
    settings: Settings,
    received_at: datetime,
    new_id: Callable[[], str],
    client_ip: str = "",
) -> Prepared:
    """A serialized ``BatchTrackEventsRequest`` (its limits checked by the servicer), prepared."""
    events = proto_events.events_of_batch(request)
    return prepare(project_id, events, settings, received_at, new_id, client_ip)

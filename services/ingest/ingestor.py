"""Ingest domain logic: validate a request's events and store the valid ones in one write."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cartlytics.common.errors import FieldViolation
from cartlytics.common.storage import Storage

from .validation import IncomingEvent, ValidEvent, validate

EVENT_COLUMNS = (
    "project_id", "event_id", "event", "ts", "received_at", "user_id", "anonymous_id",
    "session_id", "visitor_id", "order_id", "total", "currency", "product_id", "page",
    "properties", "context",
)  # fmt: skip
ITEM_COLUMNS = (
    "project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency", "product_id",
    "name", "category", "price", "quantity",
)  # fmt: skip


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Rejected:
    index: int
    violations: list[FieldViolation]


@dataclass(frozen=True)
class IngestResult:
    accepted: list[tuple[int, ValidEvent]]
    rejected: list[Rejected]


def _event_row(project_id: str, e: ValidEvent) -> tuple[Any, ...]:
    return (
        project_id, e.id, e.event, e.timestamp, e.received_at, e.user_id, e.anonymous_id,
        e.session_id, e.visitor_id, e.order_id, e.total, e.currency, e.product_id, e.page,
        json.dumps(e.properties, ensure_ascii=False, separators=(",", ":")),
        json.dumps(e.context, ensure_ascii=False, separators=(",", ":")),
    )  # fmt: skip


def _item_rows(project_id: str, e: ValidEvent) -> list[tuple[Any, ...]]:
    return [
        (
            project_id,
            e.order_id,
            e.id,
            line,
            e.timestamp,
            e.visitor_id,
            e.currency,
            item.product_id,
            item.name,
            item.category,
            item.price,
            item.quantity,
        )
        for line, item in enumerate(e.line_items)
    ]


class Ingestor:
    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = new_event_id,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._new_id = new_id

    def check(self, events: Sequence[IncomingEvent]) -> IngestResult:
        received_at = self._clock()
        accepted: list[tuple[int, ValidEvent]] = []
        rejected: list[Rejected] = []
        for index, incoming in enumerate(events):
            outcome = validate(incoming, received_at, self._new_id)
            if isinstance(outcome, ValidEvent):
                accepted.append((index, outcome))
            else:
                rejected.append(Rejected(index, outcome))
        return IngestResult(accepted, rejected)

    async def store(self, project_id: str, events: Sequence[ValidEvent]) -> None:
        """Write the events (and their order lines) before anything is acknowledged."""
        if not events:
            return
        # Line items first: an order line without its event is never counted (queries join on
        # the order's event), while an event without its lines would undercount products.
        items = [row for e in events for row in _item_rows(project_id, e)]
        if items:
            await self._storage.insert("order_items", ITEM_COLUMNS, items)
        await self._storage.insert(
            "events", EVENT_COLUMNS, [_event_row(project_id, e) for e in events]
        )

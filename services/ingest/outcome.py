"""What a request's events came to: each accepted (with its acknowledgement) or refused (why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cartlytics.common.errors import FieldViolation

IN_FLIGHT = "an event with this id is being stored by another request; retry"


class Acknowledged(Protocol):
    """What an accepted event's acknowledgement says: an ``idempotency.Ack`` (answered from the
    dedup window) or the event's own ``preparation.EventKey`` (stored now: no Ack is made for
    each event of a batch)."""

    @property
    def id(self) -> str: ...

    @property
    def event(self) -> str: ...

    @property
    def timestamp(self) -> datetime: ...


@dataclass(frozen=True)
class Rejected:
    """An event of the request not stored: why (``violations``), and whether only because
    another request is storing an event of the same id (``in_flight``: the caller may retry)."""

    index: int
    violations: list[FieldViolation]
    in_flight: bool = False

    @classmethod
    def being_stored(cls, index: int, id_field: str = "id") -> Rejected:
        """``id_field``: where the request gave the id (``messageId``, Segment's, when it had
        no ``id``)."""
        return cls(index, [FieldViolation(id_field, IN_FLIGHT)], in_flight=True)


@dataclass
class IngestResult:
    """Per position in the request: ``accepted`` (with the acknowledgement) or ``rejected``,
    each sorted by position."""

    accepted: list[tuple[int, Acknowledged]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

"""Lands with issue 4; until then it answers UNIMPLEMENTED (501), never placeholder data."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cartlytics.common.errors import unimplemented
from cartlytics.common.storage import Storage

from .reports import FunnelQuery, FunnelReport


class FunnelReader:
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._default_currency = default_currency
        self._clock = clock

    async def funnel(self, project_id: str, query: FunnelQuery) -> FunnelReport:
        raise unimplemented("GetFunnel", "issue 4")

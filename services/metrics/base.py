"""What every metrics reader shares: storage, the project's default currency and a clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cartlytics.common.money import parse_currency
from cartlytics.common.periods import Window, parse_timezone, resolve_period
from cartlytics.common.storage import Storage

from .orders import DuplicatedProjects


class Reader:
    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._default_currency = default_currency
        self._clock = clock

    def _window(self, period: str, timezone: str) -> Window:
        """The period resolved now, in the zone (both checked; a bad one is a 400)."""
        return resolve_period(period, parse_timezone(timezone), self._clock())

    def _currency(self, value: str) -> str:
        return parse_currency(value, self._default_currency)


class OrdersReader(Reader):
    """A reader of per-period orders, which remembers which projects have duplicated orderIds
    (so the exact duplicate-aware queries run only where they can matter)."""

    def __init__(
        self,
        storage: Storage,
        default_currency: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(storage, default_currency, clock)
        self._duplicated = DuplicatedProjects()

"""What every metrics reader shares: storage, the project's default currency and a clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cartlytics.common.money import parse_currency
from cartlytics.common.periods import Window, parse_timezone, resolve_period
from cartlytics.common.storage import Storage


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


class DuplicatedProjects:
    """Projects known to have duplicated orderIds. order_dups only grows, so once a project is
    known to have some it always has: its queries take the duplicate-aware form at once. Others
    run the plain form, whose result also says whether duplicates appeared (then it is rerun)."""

    def __init__(self) -> None:
        self._projects: set[str] = set()

    def known(self, project_id: str) -> bool:
        return project_id in self._projects

    def add(self, project_id: str) -> None:
        self._projects.add(project_id)


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


QUARTER = timedelta(minutes=15)


def quarter_floor(moment: datetime) -> datetime:
    """The start of the 15-minute UTC bucket holding ``moment``."""
    utc = moment.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)


def quarter_ceil(moment: datetime) -> datetime:
    """The end of the 15-minute UTC bucket holding ``moment`` (itself when it starts one)."""
    floor = quarter_floor(moment)
    return floor if floor == moment else floor + QUARTER

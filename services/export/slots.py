"""How many exports stream at once: in the whole process, and per API key within it.

An export holds a slot from before its query starts until its stream ends, fails or its client
hangs up. One that finds no slot free is refused at once, before anything is sent: a 429
(RESOURCE_EXHAUSTED) with a ``RetryInfo`` (the gateways turn it into ``Retry-After``) and a
``QuotaFailure`` naming the limit. Nothing waits in a queue: a queued export would hold its
connection and request while doing nothing, and a client can retry as well as a queue can wait.

The slots are counted per process, not shared through Redis: what they protect is the
process's own memory and event loop (each export holds a page's query in the engine, a block
of rows and a few chunks in flight; docs/export.md), and a count in Redis would need leases to
survive a process that dies holding slots. A key may so stream ``max_per_key`` exports from
each replica; the rate limit (shared through Redis) bounds how fast it starts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from cartlytics.common.config import SETTINGS
from cartlytics.common.errors import ApiError

# When a refused client may try again. A slot frees when some export ends, which we cannot
# predict; a few seconds keep a retrying client from spinning without making it wait long.
RETRY_AFTER_SECONDS = 5.0
REASON = "EXPORT_CONCURRENCY_LIMIT"

EXPORTS_IN_FLIGHT = Gauge("cartlytics_exports_in_flight", "Exports streaming now")
EXPORTS_REFUSED = MetricCounter(
    "cartlytics_exports_refused_total",
    "Exports refused for want of a slot, by the limit reached (key or process)",
    ["limit"],
)


def _default(name: str) -> int:
    setting = SETTINGS[name]
    value: int = setting.parse(setting.default)
    return value


@dataclass(frozen=True)
class ExportLimits:
    max_concurrent: int = _default("export_max_concurrent")  # per process
    max_per_key: int = _default("export_max_per_key")  # per API key, in this process


class ExportSlots:
    """Counts the exports in flight; ``hold`` takes a slot for a ``with`` block or refuses.

    Plain counters, no lock: they are only touched on the event loop, with no await between
    the check and the count.
    """

    def __init__(self, limits: ExportLimits | None = None) -> None:
        self.limits = limits or ExportLimits()
        self._total = 0
        self._per_key: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return self._total

    @contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        """A slot for one export of ``key_id`` while the block runs; ApiError (429) if none."""
        if self._per_key[key_id] >= self.limits.max_per_key:
            EXPORTS_REFUSED.labels("key").inc()
            raise _refused(
                f"api_key:{key_id}",
                f"exports one API key may stream at once: {self.limits.max_per_key}",
            )
        if self._total >= self.limits.max_concurrent:
            EXPORTS_REFUSED.labels("process").inc()
            raise _refused(
                "exports",
                f"exports one server process streams at once: {self.limits.max_concurrent}",
            )
        self._total += 1
        self._per_key[key_id] += 1
        EXPORTS_IN_FLIGHT.inc()
        try:
            yield
        finally:  # no await here: a cancelled export releases its slot all the same
            self._total -= 1
            self._per_key[key_id] -= 1
            if not self._per_key[key_id]:
                del self._per_key[key_id]
            EXPORTS_IN_FLIGHT.dec()


def _refused(subject: str, quota: str) -> ApiError:
    return ApiError(
        message=(
            f"too many exports at once ({quota}); retry in {RETRY_AFTER_SECONDS:g}s, or when "
            "one of them ends"
        ),
        reason=REASON,
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        retry_after_seconds=RETRY_AFTER_SECONDS,
        quota_violations=[(subject, quota)],
    )

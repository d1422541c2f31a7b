"""The retry rules of docs/clients.md, shared by the sync and asyncio clients."""

from __future__ import annotations

import random

import grpc

from ._config import Settings
from .errors import CartlyticsError

# The server refuses a repeat of an id whose first request is still being stored "so the client
# retries" (docs/semantics.md): ABORTED with this reason (single event), or a batch refusal of
# field `id` with this description.
IN_FLIGHT_REASON = "EVENT_IN_FLIGHT"
IN_FLIGHT_TEXT = "is being stored by another request"
IN_FLIGHT_DESCRIPTION = "an event with this id is being stored by another request; retry"


class FinalError(Exception):
    """Raised by an attempt whose error must not be retried (an export that already wrote
    bytes): the runner raises ``error`` as is."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class WriterError(Exception):
    """The caller's writer raised: the runner re-raises the writer's own exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def backoff_cap(n: int, settings: Settings) -> float:
    """The upper bound of retry n's wait (n from 1): min(max_backoff, min_backoff * 2^(n-1))."""
    n = max(n, 1)
    if n > 64:
        return settings.max_backoff
    return float(min(settings.max_backoff, settings.min_backoff * 2 ** (n - 1)))


def backoff(n: int, settings: Settings) -> float:
    """Retry n's wait with full jitter: a random time in [0, backoff_cap(n)]."""
    return random.uniform(0, backoff_cap(n, settings))


def retry_delay(n: int, error: CartlyticsError, settings: Settings) -> float | None:
    """How long to wait before retry n after ``error``; None when it is not retried."""
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return backoff(n, settings)
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return max(error.retry_delay or 0.0, backoff(n, settings))
    if error.code == grpc.StatusCode.ABORTED and error.reason == IN_FLIGHT_REASON:
        return max(error.retry_delay or 0.0, backoff(n, settings))
    return None


def attempt_timeout(settings_timeout: float | None, remaining: float | None) -> float | None:
    """One attempt's timeout: the per-attempt setting, never past the call's deadline."""
    if remaining is None:
        return settings_timeout
    if settings_timeout is None:
        return remaining
    return min(settings_timeout, remaining)


def deadline_error(attempts: int, last: CartlyticsError | None) -> CartlyticsError:
    if last is not None:
        return last
    return CartlyticsError(
        grpc.StatusCode.DEADLINE_EXCEEDED, "the call's timeout passed", attempts=attempts
    )

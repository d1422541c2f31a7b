"""The client's settings, their defaults (docs/clients.md), and the connection they describe."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ._events import AcceptedEvent, Event
from ._version import LIBRARY_NAME, __version__
from .errors import CartlyticsError

log = logging.getLogger("cartlytics_client")

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_FLUSH_AT = 1000

OnSuccess = Callable[[list[AcceptedEvent]], object]
OnFailure = Callable[[list[Event], CartlyticsError], object]


@dataclass(frozen=True)
class Settings:
    """Retries and batching (seconds and bytes). Every SDK has the same defaults."""

    timeout: float | None = 10.0  # one attempt of a call (a timed-out attempt is retried)
    max_retries: int = 5
    min_backoff: float = 0.1
    max_backoff: float = 10.0
    flush_at: int = 100
    flush_interval: float = 5.0
    max_batch_bytes: int = 450 * 1024
    max_queue_events: int = 10_000
    max_queue_bytes: int = 10 * 1024 * 1024
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive (or None: no per-attempt timeout)")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 0 <= self.min_backoff <= self.max_backoff:
            raise ValueError("backoffs must satisfy 0 <= min_backoff <= max_backoff")
        if not 1 <= self.flush_at <= MAX_FLUSH_AT:
            raise ValueError(f"flush_at must be in 1..{MAX_FLUSH_AT}")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if self.max_batch_bytes <= 0 or self.max_queue_events <= 0 or self.max_queue_bytes <= 0:
            raise ValueError("max_batch_bytes, max_queue_events and max_queue_bytes must be > 0")
        if self.close_timeout < 0:
            raise ValueError("close_timeout must be >= 0")


def normalise_target(target: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` (or any gRPC target); an ``https://`` prefix means TLS, ``http://`` none."""
    if target.startswith("https://"):
        return target.removeprefix("https://").rstrip("/"), True
    if target.startswith("http://"):
        return target.removeprefix("http://").rstrip("/"), secure
    return target, secure


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("grpc.primary_user_agent", f"{LIBRARY_NAME}/{__version__}")]
    out.extend(options)
    return out


def channel_credentials(
    secure: bool, credentials: grpc.ChannelCredentials | None
) -> grpc.ChannelCredentials | None:
    """The TLS credentials to dial with, or None for plaintext."""
    if credentials is not None:
        return credentials
    if secure:
        return grpc.ssl_channel_credentials()
    return None


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key is required")
    return (("authorization", f"Bearer {api_key.strip()}"),)


def call_safely(callback: Callable[..., object] | None, *args: Any) -> None:
    """Run a user callback; its exception is logged, never raised into the sender."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("cartlytics_client: a batching callback raised")

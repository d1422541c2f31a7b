"""The client's visitor: an anonymousId and, after ``identify``, a userId (docs/clients.md,
"Identity"). Shared by ``Client`` and ``AsyncClient``; guarded by a lock (threads of a ``Client``,
and an ``AsyncClient`` read from other threads, see one consistent pair)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

# The server's limit on a userId or anonymousId, in characters.
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class Visitor:
    """The ids an event that names neither a user_id nor an anonymous_id is sent with."""

    user_id: str
    anonymous_id: str


def check_id(name: str, value: object) -> str:
    """``value`` when the server would take it as an id; else TypeError / ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} must be at most {MAX_ID_LENGTH} characters ({len(value)})")
    return value


def new_anonymous_id() -> str:
    """A random UUID (version 4), as Segment's and PostHog's SDKs make them."""
    return str(uuid.uuid4())


class Identity:
    def __init__(self, anonymous_id: str | None) -> None:
        if anonymous_id is not None:
            check_id("anonymous_id", anonymous_id)
        self._lock = threading.Lock()
        self._visitor = Visitor(user_id="", anonymous_id=anonymous_id or new_anonymous_id())

    def current(self) -> Visitor:
        with self._lock:
            return self._visitor

    def identify(self, user_id: str) -> None:
        check_id("user_id", user_id)
        with self._lock:
            self._visitor = Visitor(user_id=user_id, anonymous_id=self._visitor.anonymous_id)

    def reset(self) -> None:
        fresh = Visitor(user_id="", anonymous_id=new_anonymous_id())
        with self._lock:
            self._visitor = fresh


class IdentityCalls:
    """``identify``, ``reset``, ``anonymous_id`` and ``user_id`` of ``client.analytics`` (the same
    plain methods in ``Client`` and ``AsyncClient``: they send nothing)."""

    _identity: Identity

    def identify(self, user_id: str) -> None:
        """Make ``user_id`` the client's user: every later ``track`` / ``enqueue`` whose event
        names neither a user id nor an anonymous id carries both ``user_id`` and the client's
        ``anonymous_id``, which is how the server links the anonymousId to the user (the first
        link of an anonymousId wins). Sends nothing; events already queued keep their ids.
        Raises ValueError for an empty id or one over 256 characters (TypeError: not a str)."""
        self._identity.identify(user_id)

    def reset(self) -> None:
        """Sign-out: forget the user and start a new random anonymous id (as Segment's
        analytics.js ``reset()``); later events carry only the new anonymous id. Sends nothing;
        events already queued keep their ids."""
        self._identity.reset()

    @property
    def anonymous_id(self) -> str:
        """The client's anonymous id: the ``anonymous_id`` argument, else a UUID v4 made by the
        client (or by the last ``reset``)."""
        return self._identity.current().anonymous_id

    @property
    def user_id(self) -> str | None:
        """The user of the last ``identify``; None before one or after ``reset``."""
        return self._identity.current().user_id or None

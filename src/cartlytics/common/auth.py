"""API keys: who is calling, for which project, allowed to do what.

Keys are looked up by SHA-256 hash only, so a key's text is never kept in memory tables or logs.
Two kinds of key reach a KeyRing:

- the bootstrap key (``ANALYTICS_BOOTSTRAP_KEY``, or one generated on first start and kept in
  ``<data dir>/bootstrap_key``, mode 0600): every scope on ``ANALYTICS_DEFAULT_PROJECT``, and the
  *operator* key, the only one that may manage the keys of any project;
- the keys stored in ClickHouse (``common/keys.py``), swapped in whole by each refresh.

Unknown and revoked keys get the same answer, whatever project they belong to (docs/keys.md).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cartlytics.gen.analytics.options.v1 import options_pb2

from .errors import permission_denied, unauthenticated

Scope = int  # an options_pb2.Scope value
ALL_SCOPES: frozenset[Scope] = frozenset(
    {options_pb2.SCOPE_INGEST, options_pb2.SCOPE_READ, options_pb2.SCOPE_ADMIN}
)
KEY_PREFIX = "cak_"


@dataclass(frozen=True)
class Principal:
    project_id: str
    scopes: frozenset[Scope]
    key_id: str
    # The bootstrap key: may manage the keys of every project (an admin key: of its own only).
    operator: bool = False


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


class KeyRing:
    """Resolves a bearer token to a Principal, or raises UNAUTHENTICATED / PERMISSION_DENIED."""

    def __init__(self) -> None:
        self._static: dict[str, Principal] = {}  # configured keys (the bootstrap key)
        self._stored: dict[str, Principal] = {}  # the api_keys table, as last read

    def add(
        self, key: str, project_id: str, scopes: frozenset[Scope], *, operator: bool = False
    ) -> Principal:
        digest = hash_key(key)
        principal = Principal(
            project_id=project_id, scopes=scopes, key_id=digest[:12], operator=operator
        )
        self._static[digest] = principal
        return principal

    def replace_stored(self, by_hash: dict[str, Principal]) -> None:
        """Swap in the stored keys (one assignment: a concurrent lookup sees old or new)."""
        self._stored = dict(by_hash)

    @property
    def stored_count(self) -> int:
        return len(self._stored)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        # A dict lookup by hash leaks nothing useful through timing: finding a stored hash
        # needs a preimage of SHA-256 of a 256-bit random key.
        digest = hash_key(token.strip())
        principal = self._static.get(digest) or self._stored.get(digest)
        if principal is None:
            # Unknown, revoked, or of another project: one answer for all.
            raise unauthenticated("invalid API key")
        return principal

    @staticmethod
    def authorize(principal: Principal, scope: Scope) -> None:
        if scope not in principal.scopes:
            name = options_pb2.Scope.Name(scope).removeprefix("SCOPE_").lower()
            raise permission_denied(f"this API key lacks the '{name}' scope")


def load_secret(
    configured: str, data_dir: Path, name: str, make: Callable[[], str]
) -> tuple[str, bool]:
    """The configured secret, else the one kept in ``data_dir/name`` (made once, mode 0600).

    Returns the secret and whether it was generated now.
    """
    if configured:
        return configured, False
    path = data_dir / name
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, True


def load_bootstrap_key(configured: str, data_dir: Path) -> tuple[str, bool]:
    return load_secret(configured, data_dir, "bootstrap_key", new_key)

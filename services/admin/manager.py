"""Who may manage which keys, and what a valid request is. Plain Python over ``KeyStore``.

- The operator (bootstrap) key manages the keys of every project; a project comes into being
  with its first key.
- An admin-scoped key manages the keys of its own project only. Any other project, existing or
  not, is answered as a project that does not exist, and a key of another project as a key that
  does not exist: an admin key learns nothing about other projects.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from cartlytics.common.auth import Principal, Scope
from cartlytics.common.errors import ApiError, FieldViolation, invalid_argument, invalid_field
from cartlytics.common.keys import (
    KEY_ID_PATTERN,
    MAX_NAME_CHARS,
    PROJECT_PATTERN,
    SCOPE_NAMES,
    KeyRefresher,
    StoredKey,
)


def _not_found(what: str) -> ApiError:
    return ApiError(f"{what} not found", "NOT_FOUND", grpc.StatusCode.NOT_FOUND)


class KeyManager:
    def __init__(self, refresher: KeyRefresher) -> None:
        self._refresher = refresher
        self._store = refresher.store

    def _project(self, caller: Principal, requested: str) -> str:
        """The project a request is about, once the caller may manage it."""
        if not requested:
            return caller.project_id
        if not PROJECT_PATTERN.fullmatch(requested):
            raise invalid_field("project_id", "must be 1-64 characters of [A-Za-z0-9_-]")
        if not caller.operator and requested != caller.project_id:
            raise _not_found(f"project '{requested}'")
        return requested

    async def create(
        self, caller: Principal, project_id: str, scopes: Sequence[Scope], name: str
    ) -> tuple[StoredKey, str]:
        project = self._project(caller, project_id)
        violations = [
            FieldViolation(f"scopes[{i}]", "must be SCOPE_INGEST, SCOPE_READ or SCOPE_ADMIN")
            for i, scope in enumerate(scopes)
            if scope not in SCOPE_NAMES
        ]
        if not scopes:
            violations.append(FieldViolation("scopes", "at least one scope is required"))
        if len(name) > MAX_NAME_CHARS:
            violations.append(FieldViolation("name", f"at most {MAX_NAME_CHARS} characters"))
        elif not name.isprintable():
            violations.append(FieldViolation("name", "must be printable text"))
        if violations:
            raise invalid_argument(violations)
        key, secret = await self._store.create(project, frozenset(scopes), name)
        await self._refresher.refresh()  # usable here at once, elsewhere within one interval
        return key, secret

    async def list_keys(self, caller: Principal, project_id: str) -> list[StoredKey]:
        return await self._store.list_project(self._project(caller, project_id))

    async def revoke(self, caller: Principal, key_id: str) -> StoredKey:
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise invalid_field("key_id", "must be the 12 hexadecimal characters of a key id")
        key = await self._store.get(key_id)
        if key is None or (not caller.operator and key.project_id != caller.project_id):
            raise _not_found(f"API key '{key_id}'")
        revoked = await self._store.revoke(key)
        await self._refresher.refresh()  # refused here at once, elsewhere within one interval
        return revoked

"""API keys kept in ClickHouse (table ``api_keys``, migration 5), and the refresh of a KeyRing.

Only a key's SHA-256 is stored; its text exists in the response that created it and nowhere
else. A key row is never updated: revoking inserts the same key again with ``revoked = 1`` and
a higher ``version`` (ReplacingMergeTree keeps that row on merge), and every read takes
``max(revoked)`` over a key's rows, so a revocation wins whatever merges have or have not
happened and whatever the order in which replicas wrote.

Every process that authenticates calls ``KeyRefresher.run``: it reloads the table every
``ANALYTICS_KEY_REFRESH_SECONDS`` into its KeyRing, so a revoked key stops working on every
replica within one interval plus one read. When ClickHouse cannot be read the ring keeps the
last keys it knew (a storage outage must not lock every client out) and says so in the log.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from cartlytics.gen.analytics.options.v1 import options_pb2

from .auth import KEY_PREFIX, KeyRing, Principal, Scope, hash_key
from .storage import Sql, Storage, StorageError

log = structlog.get_logger(__name__)

TABLE = "api_keys"
COLUMNS = (
    "key_id",
    "project_id",
    "key_hash",
    "scopes",
    "name",
    "created_at",
    "revoked",
    "revoked_at",
    "version",
)
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
PROJECT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_NAME_CHARS = 100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Scope names as written in the table, the CLI and error messages.
SCOPE_NAMES: dict[Scope, str] = {
    options_pb2.SCOPE_INGEST: "ingest",
    options_pb2.SCOPE_READ: "read",
    options_pb2.SCOPE_ADMIN: "admin",
}
SCOPES_BY_NAME: dict[str, Scope] = {name: scope for scope, name in SCOPE_NAMES.items()}

# One row per key (its rows grouped); numbers and strings only, so both backends agree.
SELECT_KEYS = Sql("""
    SELECT key_id, any(project_id), any(key_hash), any(scopes), any(name),
           toUInt32(min(created_at)), max(revoked), toUInt32(max(revoked_at))
    FROM api_keys
    WHERE {where}
    GROUP BY key_id
    ORDER BY min(created_at), key_id
""")


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    project_id: str
    key_hash: str
    scopes: frozenset[Scope]
    name: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None

    def principal(self) -> Principal:
        return Principal(project_id=self.project_id, scopes=self.scopes, key_id=self.key_id)


def scopes_text(scopes: Iterable[Scope]) -> str:
    """Scopes as stored: names, sorted, comma-separated (``admin,ingest``)."""
    return ",".join(sorted(SCOPE_NAMES[s] for s in scopes))


def parse_scopes(text: str) -> frozenset[Scope]:
    """The stored text back to scopes; an unknown name (a newer version wrote it) grants nothing."""
    return frozenset(SCOPES_BY_NAME[n] for n in text.split(",") if n in SCOPES_BY_NAME)


def _row(row: tuple[object, ...]) -> StoredKey:
    key_id, project_id, key_hash, scopes, name, created, revoked, revoked_at = row
    revoked_seconds = int(str(revoked_at))
    return StoredKey(
        key_id=str(key_id),
        project_id=str(project_id),
        key_hash=str(key_hash),
        scopes=parse_scopes(str(scopes)),
        name=str(name),
        created_at=datetime.fromtimestamp(int(str(created)), UTC),
        revoked=bool(int(str(revoked))),
        revoked_at=datetime.fromtimestamp(revoked_seconds, UTC) if revoked_seconds else None,
    )


class KeyStore:
    """Create, list, revoke and load keys. Callers check rights and validate input first."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def create(
        self, project_id: str, scopes: frozenset[Scope], name: str
    ) -> tuple[StoredKey, str]:
        """A new key and its text (returned here only; the table gets its hash)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = StoredKey(
            key_id=secrets.token_hex(6),
            project_id=project_id,
            key_hash=hash_key(secret),
            scopes=scopes,
            name=name,
            # Whole seconds: the column is DateTime on every server version.
            created_at=datetime.now(UTC).replace(microsecond=0),
            revoked=False,
            revoked_at=None,
        )
        await self._write(key, version=1)
        return key, secret

    async def get(self, key_id: str) -> StoredKey | None:
        found = await self._select(Sql("key_id = {key_id}"), {"key_id": key_id})
        return found[0] if found else None

    async def list_project(self, project_id: str) -> list[StoredKey]:
        return await self._select(Sql("project_id = {project}"), {"project": project_id})

    async def load(self) -> list[StoredKey]:
        """Every key, revoked ones included."""
        return await self._select(Sql("1"), {})

    async def revoke(self, key: StoredKey) -> StoredKey:
        if key.revoked:
            return key
        revoked = replace(key, revoked=True, revoked_at=datetime.now(UTC).replace(microsecond=0))
        await self._write(revoked, version=2)
        return revoked

    async def _select(self, where: Sql, params: dict[str, object]) -> list[StoredKey]:
        # Keys are not in the ingest log: no wait for it.
        rows = await self._storage.query(SELECT_KEYS, {**params, "where": where}, behind_log=False)
        return [_row(row) for row in rows]

    async def _write(self, key: StoredKey, version: int) -> None:
        row = (
            key.key_id,
            key.project_id,
            key.key_hash,
            scopes_text(key.scopes),
            key.name,
            key.created_at,
            1 if key.revoked else 0,
            key.revoked_at or EPOCH,
            version,
        )
        await self._storage.insert(TABLE, COLUMNS, [row])


class KeyRefresher:
    """Keeps a KeyRing's stored keys in step with the table."""

    def __init__(self, store: KeyStore, keyring: KeyRing, interval: float) -> None:
        self._store = store
        self._keyring = keyring
        self._interval = interval
        self._failing = False

    @property
    def store(self) -> KeyStore:
        return self._store

    async def refresh(self) -> bool:
        """Reload once; on failure keep the last known keys. Returns whether it succeeded."""
        try:
            keys = await self._store.load()
        except StorageError as exc:
            if not self._failing:
                log.warning(
                    "cannot read api_keys; keeping the last known keys",
                    error=str(exc),
                    known_keys=self._keyring.stored_count,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("api_keys readable again", keys=len(keys))
        self._failing = False
        self._keyring.replace_stored({k.key_hash: k.principal() for k in keys if not k.revoked})
        return True

    async def run(self) -> None:
        """Refresh every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # never let the loop die: a dead loop would stop revocations
                log.exception("api key refresh failed")

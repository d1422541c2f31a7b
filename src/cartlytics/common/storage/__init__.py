"""Storage access: one interface over chdb (embedded) and a ClickHouse server.

Domain code calls ``await storage.query(SQL, params)`` and ``await storage.insert(...)``; the
blocking driver work runs in a small thread pool so that gRPC's event loop never waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from .backends import Backend, StorageError, StorageUnavailable, open_backend
from .migrations import MIGRATIONS, Migration, check_unique
from .sql import Row, literal, render

__all__ = [
    "Row",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "literal",
    "open_storage",
    "render",
]

log = structlog.get_logger(__name__)


class Storage:
    def __init__(self, backend: Backend, workers: int = 4) -> None:
        self.backend = backend
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storage")

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # Synchronous API (migrations, CLI, tests).
    @property
    def datetime64(self) -> bool:
        """Whether time columns are DateTime64 here (so constants must be too)."""
        return self.backend.types["DateTime"].startswith("DateTime64")

    def render(self, sql: str, params: Mapping[str, Any] | None = None) -> str:
        return render(sql, params, self.datetime64)

    def query_sync(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        return self.backend.execute(self.render(sql, params))

    def insert_sync(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.backend.insert(table, columns, rows)

    def insert_arrow(self, table: str, columns: Sequence[str], data: Any) -> None:
        """Bulk load a pyarrow Table (demo data, benchmarks)."""
        self.backend.insert_arrow(table, columns, data)

    # Asynchronous API (servicers).
    async def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        rendered = self.render(sql, params)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.backend.execute, rendered)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.backend.insert, table, columns, rows)

    def migrate(self, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
        """Apply every migration not yet recorded; return the versions applied now."""
        check_unique(migrations)
        self.backend.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version UInt32, name String, applied_at DateTime('UTC')) "
            "ENGINE = MergeTree ORDER BY version"
        )
        done = {
            int(row[0]) for row in self.backend.execute("SELECT version FROM schema_migrations")
        }
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            for statement in migration.render(self.backend.types):
                self.backend.execute(statement)
            self.backend.insert(
                "schema_migrations",
                ["version", "name", "applied_at"],
                [(migration.version, migration.name, datetime.now(UTC))],
            )
            log.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration.version)
        return applied

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.backend.close()


def open_storage(clickhouse_url: str, data_dir: Path) -> Storage:
    return Storage(open_backend(clickhouse_url, data_dir))

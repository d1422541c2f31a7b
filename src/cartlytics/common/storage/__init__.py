"""Storage access: one interface over chdb (embedded) and a ClickHouse server.

Domain code calls ``await storage.query(SQL, params)`` and ``await storage.insert(...)``; the
blocking driver work runs in small thread pools so that gRPC's event loop never waits on it:
writes (and the ingest path's own reads, ``ingest=True``) on threads of their own, so that slow
dashboard queries filling the query threads never hold up an acknowledgement.
Results of any size are read with ``storage.stream(SQL, params)``: blocks of rows, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import structlog

from . import migrations as schema
from .backends import Backend, StorageError, StorageUnavailable, open_backend
from .current_snapshot import CurrentSnapshot, WithSnapshot, missing
from .migrations import SCHEMA_MIGRATIONS, Irreversible, Migration, check_unique, type_slots
from .sql import Row, Sql, literal, render

__all__ = [
    "Blocks",
    "Row",
    "RowBlocks",
    "SchemaBehind",
    "Sql",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "literal",
    "open_storage",
    "render",
]

log = structlog.get_logger(__name__)

B = TypeVar("B")
B_co = TypeVar("B_co", covariant=True)

STREAM_BLOCK_ROWS = 8192
"""Rows per streamed block: big enough that per-block overheads vanish, small enough that one
block (and the one read ahead) stays a few MB."""


SNAPSHOT_ATTEMPTS = 5
"""Tries of a query whose people snapshot build was dropped under it. A build is dropped only
``DROP_AFTER_SECONDS`` after a newer one became current, so one retry finds a live build; the
rest are for a keeper that rebuilds and drops as fast as it can (tests/test_people_snapshot.py
moves its clock on to drop at once, and on a loaded machine dropped twice within one read)."""


class SchemaBehind(RuntimeError):
    """The store lacks migrations this build needs, and this process may not apply them."""

    def __init__(self, pending: list[int]) -> None:
        super().__init__(
            f"the schema lacks migrations {pending}: run `cartlytics migrate` first"
            " (ANALYTICS_MIGRATE_ON_START=no leaves them to it)"
        )
        self.pending = pending


class Storage:
    def __init__(self, backend: Backend, workers: int = 4) -> None:
        self.backend = backend
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storage")
        # Group commit writes one flush at a time; the second thread serves the ingest path's
        # duplicate-order check and order_dups inserts alongside it.
        self._ingest_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storage-ingest")
        # The people snapshot a query names (current_snapshot.py), looked up when it needs one.
        self.snapshot = CurrentSnapshot(backend.execute, cluster=bool(backend.layout.cluster))
        # Awaited before every read but the ingest path's own: with the ingest log on, the log
        # writer's ``caught_up`` (a read sees every event acknowledged before it started).
        self.read_barrier: Callable[[], Awaitable[None]] | None = None

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # Synchronous API (migrations, CLI, tests).
    @property
    def datetime64(self) -> bool:
        """Whether time columns are DateTime64 here (so constants must be too)."""
        return self.backend.types["DateTime"].startswith("DateTime64")

    def render(self, sql: Sql, params: Mapping[str, Any] | None = None) -> str:
        """The text of ``sql`` (``sql.render``), the people snapshot's slots filled with the
        current build's values where it has them (a lookup: blocking)."""
        return render(sql, WithSnapshot(params, self.snapshot), self.datetime64)

    def query_sync(self, sql: Sql, params: Mapping[str, Any] | None = None) -> list[Row]:
        for _ in range(SNAPSHOT_ATTEMPTS - 1):
            try:
                return self.backend.execute(self.render(sql, params))
            except StorageError as exc:
                # The build it named was dropped since the lookup (current_snapshot.py): again,
                # with the build current now.
                if not missing(exc):
                    raise
                self.snapshot.forget()
        return self.backend.execute(self.render(sql, params))

    def insert_sync(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.backend.insert(table, columns, rows)

    def insert_arrow(self, table: str, columns: Sequence[str], data: Any) -> None:
        """Bulk load a pyarrow Table (demo data, benchmarks)."""
        self.backend.insert_arrow(table, columns, data)

    # Asynchronous API (servicers).
    async def query(
        self,
        sql: Sql,
        params: Mapping[str, Any] | None = None,
        *,
        ingest: bool = False,
        behind_log: bool = True,
    ) -> list[Row]:
        """Rows of ``sql``; ``ingest=True`` for reads an acknowledgement waits on (neither waits
        for the process's ingest log: ``read_barrier``). ``behind_log=False`` for reads of
        tables ingest does not write (keys, erasures): a wait would only cut the log writer's
        linger short."""
        if not ingest and behind_log and self.read_barrier is not None:
            await self.read_barrier()
        loop = asyncio.get_running_loop()
        pool = self._ingest_pool if ingest else self._pool
        # Rendered in the pool's thread: it may look the people snapshot up.
        return await loop.run_in_executor(pool, self.query_sync, sql, params)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._ingest_pool, self.backend.insert, table, columns, rows)

    def stream(
        self,
        sql: Sql,
        params: Mapping[str, Any] | None = None,
        block_rows: int = STREAM_BLOCK_ROWS,
    ) -> RowBlocks:
        """The rows of ``sql`` as an async iterator of blocks (lists of rows), read as consumed.

        Memory stays that of about two blocks whatever the result's size: the query runs on a
        connection of its own and each block is fetched when the previous one is taken (one is
        read ahead). Use ``async with storage.stream(...) as blocks`` to start the query at once
        and to stop it for sure when leaving early; plain ``async for`` starts it on first use.
        """
        return RowBlocks(
            self._pool,
            lambda: self.backend.open_stream(self._render_fresh(sql, params), block_rows),
            self.read_barrier,
        )

    def stream_text(
        self,
        sql: Sql,
        params: Mapping[str, Any] | None = None,
        block_rows: int = STREAM_BLOCK_ROWS,
    ) -> Blocks[bytes]:
        """The values of ``sql`` (one String column) as bytes, each followed by ``\\n``: blocks
        as ``stream`` reads them, but passed on as ClickHouse wrote them, with no Python object
        per row (for output that the query itself formats, as the CSV export does)."""
        return Blocks(
            self._pool,
            lambda: self.backend.open_text_stream(self._render_fresh(sql, params), block_rows),
            self.read_barrier,
        )

    def _render_fresh(self, sql: Sql, params: Mapping[str, Any] | None) -> str:
        """``render`` with the people snapshot looked up now: a stream is not run again when its
        build is dropped, and the keeper drops a superseded one only seconds after a newer one
        is recorded (an erasure drops them at once: a stream starting meanwhile fails)."""
        self.snapshot.forget()
        return self.render(sql, params)

    def migrate(self, migrations: tuple[Migration, ...] | None = None) -> list[int]:
        """Apply every migration not yet recorded (of ``migrations``, by default all of them);
        return the versions applied now."""
        migrations = schema.MIGRATIONS if migrations is None else migrations
        self._execute_ddl(SCHEMA_MIGRATIONS.text)
        pending = set(self.pending_migrations(migrations))
        applied = []
        for migration in migrations:
            if migration.version not in pending:
                continue
            for statement in migration.render(self.backend.types):
                self._execute_ddl(statement)
            if migration.repair_after and pending != {m.version for m in migrations}:
                # Not on a new store (nothing to repair); see Migration.repair_after.
                from .repair import repair_rollups  # built from commerce's rollups, imported here

                repair_rollups(self.backend, only=migration.repair_after)
            self.backend.insert(
                "schema_migrations",
                ["version", "name", "applied_at"],
                [(migration.version, migration.name, datetime.now(UTC))],
            )
            log.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration.version)
        return applied

    def migrate_down(
        self, to_version: int, migrations: tuple[Migration, ...] | None = None
    ) -> list[int]:
        """Run backward every applied migration above ``to_version``, newest first, and take
        each off ``schema_migrations``; return the versions undone. Nothing runs if one of them
        has no backward statements (``Irreversible``) or is unknown to this build. For an
        operator with writers stopped: no repair runs, and a backward may drop data (each
        migration's docstring says what)."""
        migrations = schema.MIGRATIONS if migrations is None else migrations
        check_unique(migrations)
        known = {m.version: m for m in migrations}
        applied = sorted(self._applied_versions(), reverse=True)
        undo = [version for version in applied if version > to_version]
        unknown = [version for version in undo if version not in known]
        if unknown:
            raise RuntimeError(f"migrations {unknown} are applied but unknown to this build")
        for version in undo:
            if known[version].backward is None:
                raise Irreversible(version)
        undone = []
        for version in undo:
            migration = known[version]
            for statement in migration.render_backward(self.backend.types):
                self._execute_ddl(statement)
            self._forget(version)
            log.info("migration undone", version=version, name=migration.name)
            undone.append(version)
        return undone

    def _execute_ddl(self, statement: str) -> None:
        """A migration's statement, as this store's layout makes it (layout.py)."""
        for sql in self.backend.layout.statements(statement):
            self.backend.execute(sql)

    @property
    def cluster(self) -> str:
        """The ClickHouse cluster's name in cluster mode, else empty."""
        return self.backend.layout.cluster

    def _forget(self, version: int, timeout: float = 60) -> None:
        """Delete ``version``'s row of schema_migrations and wait until it is gone (a mutation:
        in the background on 18.16)."""
        slots = {"version": version, **type_slots(self.backend.types)}
        self.query_sync(
            Sql("ALTER TABLE schema_migrations DELETE WHERE version = {version}{mutations_sync}"),
            slots,
        )
        deadline = time.monotonic() + timeout
        while version in self._applied_versions():
            if time.monotonic() > deadline:
                raise StorageError(f"schema_migrations still lists {version} after {timeout} s")
            time.sleep(0.05)

    def _applied_versions(self) -> set[int]:
        """The versions schema_migrations lists (none on a store without it)."""
        try:
            rows = self.backend.execute("SELECT version FROM schema_migrations")
        except StorageUnavailable:
            raise
        except StorageError:  # no such table yet
            rows = []
        return {int(row[0]) for row in rows}

    def pending_migrations(self, migrations: tuple[Migration, ...] | None = None) -> list[int]:
        """The versions not applied yet (all of them on a store without schema_migrations)."""
        migrations = schema.MIGRATIONS if migrations is None else migrations
        check_unique(migrations)
        done = self._applied_versions()
        return [m.version for m in migrations if m.version not in done]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._ingest_pool.shutdown(wait=True)
        self.backend.close()


def open_storage(clickhouse_url: str, data_dir: Path, cluster: str = "") -> Storage:
    """The store at ``clickhouse_url`` (a node of ``cluster`` in cluster mode), else chdb under
    ``data_dir``."""
    return Storage(open_backend(clickhouse_url, data_dir, cluster))


class BlockStream(Protocol[B_co]):
    """What a backend's ``open_stream``/``open_text_stream`` returns."""

    def fetch(self) -> B_co | None: ...

    def close(self) -> None: ...


class Blocks(Generic[B]):
    """A streaming query's blocks (``Storage.stream``, ``Storage.stream_text``); an async
    iterator and context.

    Each block is fetched in the storage thread pool, the next one while the caller works on the
    current one. Closing waits for a fetch in flight (a driver connection is not to be closed
    under a running call), then stops the query and releases its connection.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        start: Callable[[], BlockStream[B]],
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._start = start
        self._barrier = barrier
        self._stream: BlockStream[B] | None = None
        self._pending: Future[B | None] | None = None
        self._done = False

    async def open(self) -> None:
        """Start the query and read its first block (errors surface here, before any output)."""
        if self._stream is not None or self._done:
            return
        if self._barrier is not None:
            await self._barrier()
        loop = asyncio.get_running_loop()
        self._stream = await loop.run_in_executor(self._pool, self._start)
        self._pending = self._pool.submit(self._stream.fetch)
        try:
            await asyncio.wrap_future(self._pending)
        except BaseException:
            await self.aclose()  # __aexit__ does not run when __aenter__ fails
            raise

    def __aiter__(self) -> Blocks[B]:
        return self

    async def __anext__(self) -> B:
        await self.open()
        if self._pending is None:
            raise StopAsyncIteration
        try:
            block = await asyncio.wrap_future(self._pending)
        except BaseException:
            await self.aclose()  # waits for the fetch if it still runs (cancelled caller)
            raise
        if block is None:
            self._pending = None
            await self.aclose()
            raise StopAsyncIteration
        assert self._stream is not None
        self._pending = self._pool.submit(self._stream.fetch)  # read ahead
        return block

    async def aclose(self) -> None:
        """Stop the query and release its connection; safe to call more than once."""
        self._done = True
        stream, pending = self._stream, self._pending
        self._stream = self._pending = None
        if stream is None:
            return

        def finish() -> None:
            if pending is not None and not pending.cancel():
                wait_for_futures([pending])
            stream.close()

        await asyncio.get_running_loop().run_in_executor(self._pool, finish)

    async def __aenter__(self) -> Blocks[B]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


RowBlocks = Blocks[list[Row]]

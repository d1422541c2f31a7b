"""The two ClickHouse backends behind one small interface.

- ``ChdbBackend``: ClickHouse in-process (chdb), data in a local folder. One embedded engine per
  process, one connection to it per thread, so a slow query never waits for or blocks an INSERT.
- ``ServerBackend``: a ClickHouse server over the native protocol (clickhouse-driver), one client
  per thread.

Both take rendered SQL and return rows of numbers and strings only (dates as ``YYYY-MM-DD``,
datetimes as ``YYYY-MM-DD HH:MM:SS[.fff]``), so domain code sees the same values on either.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from .layout import SINGLE, Layout, layout_for
from .migrations import CLASSIC_TYPES, MODERN_TYPES
from .sql import Row, literal


class StorageError(Exception):
    """ClickHouse refused or failed a statement (its text stays in logs, never in responses)."""


class StorageUnavailable(StorageError):
    """ClickHouse cannot be reached."""


class Backend(Protocol):
    name: str
    types: dict[str, str]
    interrupted: bool
    """The last process that used this store stopped in the middle of its writes, maybe (chdb:
    it never closed it; the engine died with it). Its rollups need ``repair.repair_rollups``."""
    layout: Layout
    """How tables are made here (layout.py): as written, or sharded and replicated."""

    def execute(self, sql: str) -> list[Row]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def insert_arrow(self, table: str, columns: Sequence[str], data: Any) -> None: ...

    def close(self) -> None: ...

    def open_stream(self, sql: str, block_rows: int) -> RowStream:
        """Start ``sql`` and return its rows as a stream of blocks (see ``RowStream``)."""
        ...

    def open_text_stream(self, sql: str, block_rows: int) -> TextStream:
        """Start ``sql``, whose rows are one String column, and return its values as bytes: each
        value followed by ``\\n``, as written (nothing escaped), a block at a time."""
        ...


class TextStream(Protocol):
    """A one-column query's values as bytes, a block at a time (see ``Storage.stream_text``)."""

    def fetch(self) -> bytes | None:
        """The next block's bytes (maybe empty); None when the query is done."""
        ...

    def close(self) -> None:
        """Stop the query (if still running) and release its connection."""
        ...


class RowStream(Protocol):
    """A query's rows in blocks, read as the caller asks (blocking; see ``Storage.stream``)."""

    def fetch(self) -> list[Row] | None:
        """The next block of rows, or None once the result is exhausted."""
        ...

    def close(self) -> None:
        """Stop the query (if still running) and release its connection. Idempotent."""
        ...


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d}"
    if isinstance(value, date):
        return f"{value:%Y-%m-%d}"
    return value


ARROW_MIN_ROWS = 200  # measured: below this JSONEachRow's lower fixed cost wins


class ChdbBackend:
    name = "chdb"
    types = MODERN_TYPES
    layout: Layout = SINGLE

    def __init__(self, path: Path, database: str = "analytics") -> None:
        from chdb import session  # imported here: the server backend must not need it

        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only (datadir.py)
        self._path, self._database = str(path), database
        # Present while a process has the folder open: found at start, the last one never
        # closed it (killed, crashed), and a write may have been cut between `events` and its
        # materialized views (repair.py). Written before the engine opens the folder.
        self._open_marker = path.with_name(path.name + ".open")
        self.interrupted = _marker_pid(self._open_marker) not in (None, os.getpid())
        self._open_marker.write_text(f"{os.getpid()}\n")
        # One connection per thread, not one shared session behind a lock: with a lock, every
        # INSERT (so every acknowledgement) waited for whatever query ran, and a few dashboard
        # queries in a row stalled ingestion for seconds (measured; tests/test_faults.py).
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._sessions_lock = threading.Lock()
        first = session.Session(str(path))
        first.query(f"CREATE DATABASE IF NOT EXISTS {database}")
        self._setup(first)

    def _setup(self, conn: Any) -> Any:
        conn.query(f"USE {self._database}")
        conn.query("SET output_format_json_quote_64bit_integers = 0")
        with self._sessions_lock:
            self._sessions.append(conn)
        self._local.session = conn
        return conn

    def _session(self) -> Any:
        """This thread's connection to the process's embedded engine (made on first use)."""
        conn = getattr(self._local, "session", None)
        if conn is None:
            from chdb import session

            conn = self._setup(session.Session(self._path))
        return conn

    def execute(self, sql: str) -> list[Row]:
        try:
            result = self._session().query(sql, "JSONCompact")
        except Exception as exc:
            raise StorageError(str(exc)) from exc
        raw = result.bytes()
        if not raw:
            return []
        return [tuple(row) for row in json.loads(raw)["data"]]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if len(rows) >= ARROW_MIN_ROWS:
            # Columnar through Arrow: ~10x the rows/s of JSON for large batches, but a higher
            # fixed cost, so small inserts (single events) stay on JSONEachRow.
            import pyarrow as pa

            # zip(*rows): the columns transposed in C, not one Python index per value.
            data = pa.table(dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True)))
            self.insert_arrow(table, columns, data)
            return
        names = ", ".join(columns)
        lines = "\n".join(
            json.dumps(
                {c: _json_value(v) for c, v in zip(columns, row, strict=True)},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            for row in rows
        )
        sql = f"INSERT INTO {table} ({names}) FORMAT JSONEachRow\n{lines}"
        try:
            self._session().query(sql)
        except Exception as exc:
            raise StorageError(str(exc)) from exc

    def insert_arrow(self, table: str, columns: Sequence[str], data: Any) -> None:
        """Insert a pyarrow Table (chdb reads it in place through the Python() table function)."""
        names = ", ".join(columns)
        arrow_rows = data  # the name the SQL below refers to
        sql = f"INSERT INTO {table} ({names}) SELECT {names} FROM Python(arrow_rows)"
        try:
            self._session().query(sql)
        except Exception as exc:
            raise StorageError(str(exc)) from exc
        del arrow_rows

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for conn in sessions:
            conn.close()
        self._open_marker.unlink(missing_ok=True)

    def open_stream(self, sql: str, block_rows: int) -> RowStream:
        """Stream ``sql`` on a connection of its own to the same data folder.

        chdb runs one embedded server per process (one data folder), but that server takes any
        number of connections. A streaming query is cancelled by the next statement sent on its
        connection, so it cannot share a thread's connection (the thread serves other calls
        between two fetches). A dedicated connection streams; it is closed with the stream.
        """
        return _ChdbStream(*self._send(sql, block_rows, "JSONCompactEachRow"))

    def open_text_stream(self, sql: str, block_rows: int) -> TextStream:
        # TabSeparatedRaw: each value and a newline, unescaped: the bytes ClickHouse made are
        # the bytes that go out, with no Python work per row.
        return _ChdbTextStream(*self._send(sql, block_rows, "TabSeparatedRaw"))

    def _send(self, sql: str, block_rows: int, output_format: str) -> tuple[Any, Any]:
        from chdb import session

        conn = session.Session(self._path)
        try:
            conn.query(f"USE {self._database}")
            for name, value in {**CHDB_STREAM_SETTINGS, "max_block_size": block_rows}.items():
                conn.query(f"SET {name} = {int(value)}")
            result = conn.send_query(sql, output_format)
        except Exception as exc:
            conn.close()
            raise StorageError(str(exc)) from exc
        return conn, result


# Settings of chdb's streaming connections. The engine runs inside this process, so its working
# memory is ours. Reading in sorting-key order merges every part of the range at once, holding
# decompressed blocks of every column of every part: ~300 MB over a year of a million orders
# (measured), against a few MB to sort a bounded result; so streams sort, and callers bound
# what they stream (exports read page by page). 64-bit integers come back as JSON numbers.
CHDB_STREAM_SETTINGS = {
    "optimize_read_in_order": 0,
    "output_format_json_quote_64bit_integers": 0,
}


def _marker_pid(path: Path) -> int | None:
    """The process id in an open marker; None without one (0 when unreadable)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    return int(text) if text.strip().isdigit() else 0


class _ChdbTextStream:
    """A chdb streaming result on its own connection; each fetch is one block's output bytes."""

    def __init__(self, conn: Any, result: Any) -> None:
        self._conn: Any = conn
        self._result: Any = result

    def fetch(self) -> bytes | None:
        if self._result is None:
            return None
        try:
            chunk = self._result.fetch()
        except Exception as exc:
            self.close()
            raise StorageError(str(exc)) from exc
        if chunk is None:
            self.close()
            return None
        data: bytes = chunk.bytes()
        return data

    def close(self) -> None:
        result, conn = self._result, self._conn
        self._result = self._conn = None
        if result is not None:
            with contextlib.suppress(Exception):  # already finished or failed: nothing to stop
                result.cancel()
        if conn is not None:
            conn.close()


class _ChdbStream(_ChdbTextStream):
    """A chdb streaming result on its own connection; each fetch is one block (JSON rows)."""

    def fetch(self) -> list[Row] | None:  # type: ignore[override]
        raw = super().fetch()
        if raw is None:
            return None
        if not raw.strip():
            return []
        # JSONCompactEachRow: one JSON array per line, newlines inside strings escaped; one
        # json.loads per block is ~3x faster than one per line.
        rows = json.loads(b"[" + raw.rstrip(b"\n").replace(b"\n", b",") + b"]")
        return list(map(tuple, rows))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        text = f"{value:%Y-%m-%d %H:%M:%S}"
        return text + (f".{value.microsecond // 1000:03d}" if value.microsecond else "")
    if isinstance(value, date):
        return f"{value:%Y-%m-%d}"
    return value


CLUSTER_SETTINGS: dict[str, Any] = {
    # An INSERT into a Distributed table returns once its rows are on their shards (written on
    # one replica of each), not once queued on this node's disk to be sent later.
    "insert_distributed_sync": 1,
    # Replicated tables drop a block identical to one of the last 100 inserted: two orders of
    # one currency, quarter hour and total make identical sales_15m blocks. Every row counts.
    "insert_deduplicate": 0,
    # Each shard's first replica that is up takes every read and write: a read sees what was
    # acknowledged before it, whatever replication lags; a replica still catching up (back from
    # an outage) is passed over while more than a second behind.
    "load_balancing": "in_order",
    "max_replica_delay_for_distributed_queries": 1,
    # A replica that takes longer than this to accept a connection is passed over, and the
    # error counts against it (18.16 orders replicas by errors first): at the default 50 ms a
    # busy machine moved reads to a second replica that had not yet fetched the latest writes
    # (the CI run beside other work read short figures). A replica that is down refuses at
    # once; only a hung one costs the wait.
    "connect_timeout_with_failover_ms": 2000,
    # IN and JOIN subqueries over Distributed tables are run once, whole, and sent to the shards
    # (GLOBAL), never each shard against its own part.
    "distributed_product_mode": "global",
}
"""What a cluster's client sets on every query (docs/cluster.md)."""


UNREACHABLE_CODES = frozenset({
    209,  # SOCKET_TIMEOUT: a shard (or replica) did not answer in time
    210,  # NETWORK_ERROR: a shard refused the connection
    279,  # ALL_CONNECTION_TRIES_FAILED: no replica of a shard answered
    242,  # TABLE_IS_READ_ONLY: a replicated table without ZooKeeper takes no writes
    225,  # NO_ZOOKEEPER
    999,  # KEEPER_EXCEPTION: ZooKeeper lost or unreachable
    319,  # UNKNOWN_STATUS_OF_INSERT: ZooKeeper lost during an INSERT (sent again, ids dedupe)
})  # fmt: skip
"""The server's errors that say another server is out of reach, not that the statement is
wrong: they reach callers as ``StorageUnavailable`` (503, retried), as the server itself down
does. Only a cluster (Distributed and replicated tables) raises them."""


def _server_error(exc: Exception) -> StorageError:
    if getattr(exc, "code", None) in UNREACHABLE_CODES:
        return StorageUnavailable(str(exc))
    return StorageError(str(exc))


class ServerBackend:
    name = "clickhouse"
    interrupted = False  # a server finishes or drops a whole INSERT, whatever its client does

    def __init__(self, url: str, cluster: str = "") -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("clickhouse", "tcp"):
            raise ValueError("CLICKHOUSE_URL must look like clickhouse://user:pass@host:9000/db")
        self._database = parsed.path.lstrip("/") or "analytics"
        self._params: dict[str, Any] = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 9000,
            "user": unquote(parsed.username or "default"),
            "password": unquote(parsed.password or ""),
            "connect_timeout": 3,
            "send_receive_timeout": 60,
            "settings": {"strings_encoding": "utf-8"},
        }
        # ?alt_hosts=host:port,...: other nodes to connect to when this one is down (a cluster's
        # service connects through any node; docs/cluster.md).
        alt_hosts = parse_qs(parsed.query).get("alt_hosts")
        if alt_hosts:
            self._params["alt_hosts"] = ",".join(alt_hosts)
        # Settings of every query, beside the driver's own (cluster mode only).
        self._settings: dict[str, Any] = dict(CLUSTER_SETTINGS) if cluster else {}
        self._params["settings"].update(self._settings)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self.layout = layout_for(cluster, self._database)
        admin = self._new_client(database="default")
        if not cluster:
            self._run(admin, f"CREATE DATABASE IF NOT EXISTS {self._database}")
        else:
            self._check_cluster(admin, cluster)
            # ON CLUSTER waits for every node: only when this one lacks it (a first start),
            # not at every start (a service starting while a node is down would wait minutes).
            found = f"SELECT count() FROM system.databases WHERE name = {literal(self._database)}"
            if not self._run(admin, found)[0][0]:
                self._run(
                    admin, f"CREATE DATABASE IF NOT EXISTS {self._database} ON CLUSTER {cluster}"
                )
        self.types = CLASSIC_TYPES if self._server_major() < 20 else MODERN_TYPES

    def _check_cluster(self, client: Any, cluster: str) -> None:
        rows = self._run(
            client, f"SELECT count() FROM system.clusters WHERE cluster = {literal(cluster)}"
        )
        if not rows[0][0]:
            raise ValueError(
                f"CLICKHOUSE_CLUSTER={cluster}: the server's remote_servers has no such cluster"
            )

    def _new_client(self, database: str) -> Any:
        from clickhouse_driver import Client

        client = Client(database=database, **self._params)
        with self._clients_lock:
            self._clients.append(client)
        return client

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client(self._database)
            self._local.client = client
        return client

    @staticmethod
    def _run(client: Any, sql: str, rows: Any = None, columnar: bool = False) -> Any:
        from clickhouse_driver import errors

        try:
            if rows is None:
                return client.execute(sql)
            return client.execute(sql, rows, columnar=columnar)
        except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as exc:
            client.disconnect()
            raise StorageUnavailable(str(exc)) from exc
        except errors.Error as exc:
            raise _server_error(exc) from exc

    def _server_major(self) -> int:
        version = str(self.execute("SELECT version()")[0][0])
        return int(version.split(".")[0])

    def execute(self, sql: str) -> list[Row]:
        rows = self._run(self._client(), sql)
        return [tuple(_plain(v) for v in row) for row in rows]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        self._run(self._client(), sql, [tuple(r) for r in rows])

    def insert_arrow(self, table: str, columns: Sequence[str], data: Any) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        values = [data.column(c).to_pylist() for c in columns]
        self._run(self._client(), sql, values, columnar=True)

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.disconnect()
            self._clients.clear()

    def open_stream(self, sql: str, block_rows: int) -> RowStream:
        """Stream ``sql`` on a dedicated client (a native connection carries one query at a time,
        and the per-thread clients serve other queries meanwhile), ``max_block_size`` rows per
        block from the server."""
        from clickhouse_driver import Client

        client = Client(database=self._database, **self._params)
        rows = client.execute_iter(sql, settings={"max_block_size": block_rows})
        return _ServerStream(client, rows, block_rows)

    def open_text_stream(self, sql: str, block_rows: int) -> TextStream:
        """As ``open_stream``, the values kept as the server's bytes (no decoding per row)."""
        from clickhouse_driver import Client

        params = {**self._params, "settings": {"strings_as_bytes": True, **self._settings}}
        client = Client(database=self._database, **params)
        rows = client.execute_iter(sql, settings={"max_block_size": block_rows})
        return _ServerTextStream(_ServerStream(client, rows, block_rows))


class _ServerStream:
    """clickhouse-driver's row iterator, cut into blocks; values made plain as ``execute``'s."""

    def __init__(self, client: Any, rows: Iterator[tuple[Any, ...]], block_rows: int) -> None:
        self._client: Any = client
        self._rows = rows
        self._block_rows = block_rows
        self._convert: list[int] | None = None  # indexes of date/datetime columns

    def fetch(self) -> list[Row] | None:
        from clickhouse_driver import errors

        if self._client is None:
            return None
        try:
            block = list(itertools.islice(self._rows, self._block_rows))
        except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as exc:
            self.close()
            raise StorageUnavailable(str(exc)) from exc
        except errors.Error as exc:
            self.close()
            raise _server_error(exc) from exc
        if not block:
            self.close()
            return None
        if self._convert is None:
            self._convert = [i for i, v in enumerate(block[0]) if isinstance(v, date)]
        if not self._convert:
            return block
        convert = self._convert
        out: list[Row] = []
        for row in block:
            values = list(row)
            for i in convert:
                values[i] = _plain(values[i])
            out.append(tuple(values))
        return out

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()


class _ServerTextStream:
    """One-column rows of bytes from ``_ServerStream``, each block joined into one piece."""

    def __init__(self, rows: _ServerStream) -> None:
        self._rows = rows

    def fetch(self) -> bytes | None:
        block = self._rows.fetch()
        if block is None:
            return None
        return b"".join(row[0] + b"\n" for row in block)

    def close(self) -> None:
        self._rows.close()


def open_backend(clickhouse_url: str, data_dir: Path, cluster: str = "") -> Backend:
    """The server backend when a URL is configured (the node of cluster ``cluster`` it names,
    if any), else chdb under ``data_dir/clickhouse``."""
    if clickhouse_url:
        return ServerBackend(clickhouse_url, cluster)
    if cluster:
        raise ValueError("CLICKHOUSE_CLUSTER needs CLICKHOUSE_URL (a node of the cluster)")
    return ChdbBackend(data_dir / "clickhouse")

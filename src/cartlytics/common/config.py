"""Configuration: one table of environment variables, read and checked once at start.

Every setting has a documented default (README "Configuration" is generated from the same table by
``cartlytics config``), so the embedded default runs with no environment at all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .money import READABLE as READABLE_CURRENCIES
from .upstreams import parse_upstreams


class ConfigError(ValueError):
    """A setting in the environment has a value that cannot be used."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _upstreams(raw: str) -> str:
    parse_upstreams(raw)  # checked here, for every target; the gateway reads it (upstreams.py)
    return raw


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, and its cgroup's CPU quota if it has
    one (a Kubernetes CPU limit; ``os.cpu_count`` would count the node's cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: the affinity alone
    return cores or 1


def _workers(raw: str) -> int:
    """``auto``: one worker process per usable core (none on one core), at most 8. Not one
    fewer for the event loop: during batches it uses a third of a core, and two workers on
    two cores measured 15-30 % more events/s than one (docs/decisions.md, 74)."""
    if raw.strip().lower() == "auto":
        cores = usable_cores()
        return 0 if cores <= 1 else min(8, cores)
    value = int(raw)
    if not 0 <= value <= 64:
        raise ValueError("must be auto or from 0 to 64")
    return value


def _yes_no(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ValueError("must be yes or no")


@dataclass(frozen=True)
class Setting:
    env: str
    parse: Callable[[str], Any]
    default: str
    doc: str


SETTINGS: dict[str, Setting] = {
    "data_dir": Setting(
        "ANALYTICS_DATA_DIR",
        str,
        "./data",
        "Where the embedded ClickHouse, Redis and the bootstrap key live (owner-only: 0700/0600,"
        " tightened at start).",
    ),
    "http_host": Setting("ANALYTICS_HTTP_HOST", str, "127.0.0.1", "REST gateway listen address."),
    "http_port": Setting("ANALYTICS_HTTP_PORT", _positive_int, "8080", "REST gateway port."),
    "grpc_host": Setting("ANALYTICS_GRPC_HOST", str, "127.0.0.1", "gRPC listen address."),
    "grpc_port": Setting("ANALYTICS_GRPC_PORT", _positive_int, "50051", "gRPC port."),
    "clickhouse_url": Setting(
        "CLICKHOUSE_URL",
        str,
        "",
        "Empty: embedded chdb under the data dir. Else clickhouse://user:pass@host:9000/database.",
    ),
    "clickhouse_cluster": Setting(
        "CLICKHOUSE_CLUSTER",
        str,
        "",
        "Empty: CLICKHOUSE_URL is one server. Else the name of a cluster in that server's "
        "remote_servers: replicated tables on every node behind Distributed ones "
        "(docs/cluster.md).",
    ),
    "redis_url": Setting(
        "REDIS_URL",
        str,
        "",
        "Empty: a valkey-server started by the process under the data dir. Else redis://host:6379/0.",
    ),
    "redis_restart_backoff": Setting(
        "ANALYTICS_REDIS_RESTART_BACKOFF",
        _float,
        "0.5",
        "Seconds before restarting the embedded valkey-server when it dies; doubled while it "
        "keeps dying young, up to 30.",
    ),
    "realtime_check_seconds": Setting(
        "ANALYTICS_REALTIME_CHECK_SECONDS",
        _float,
        "1",
        "How often each process checks that Redis still holds the realtime counters (else they "
        "are rebuilt from ClickHouse) and rebuilds those known to be behind.",
    ),
    "bootstrap_key": Setting(
        "ANALYTICS_BOOTSTRAP_KEY",
        str,
        "",
        "A full-scope key of the default project. Empty: generated once, kept in the data dir.",
    ),
    "default_project": Setting(
        "ANALYTICS_DEFAULT_PROJECT", str, "default", "The project the bootstrap key belongs to."
    ),
    "key_refresh_seconds": Setting(
        "ANALYTICS_KEY_REFRESH_SECONDS",
        _float,
        "2",
        "How often each process rereads the API keys from ClickHouse (a revoked key fails "
        "within this plus one read).",
    ),
    "admin_key": Setting(
        "ANALYTICS_ADMIN_KEY",
        str,
        "",
        "Key the `cartlytics keys` commands send (empty: the bootstrap key, from "
        "ANALYTICS_BOOTSTRAP_KEY or the data dir).",
    ),
    "default_currency": Setting(
        "ANALYTICS_DEFAULT_CURRENCY", str, "USD", "Currency of figures when none is asked for."
    ),
    "gateway_upstream": Setting(
        "ANALYTICS_GATEWAY_UPSTREAM",
        _upstreams,
        "",
        "Where the gateway sends gRPC: host:port, or per service "
        "ingest=host:port,metrics=host:port,export=host:port,privacy=host:port, one for each "
        "(empty: this process's gRPC port). Replicas of a service: their IP addresses joined by "
        "bars, `ingest=10.0.0.1:50051\\|10.0.0.2:50051`, balanced round-robin over the healthy "
        "ones (docs/architecture.md).",
    ),
    "gateway_local_calls": Setting(
        "ANALYTICS_GATEWAY_LOCAL_CALLS",
        _yes_no,
        "yes",
        "The gateway calls the unary methods of services in its own process directly, through "
        "the same interceptors, instead of over gRPC on loopback (docs/decisions.md, 70). "
        "no: every call over gRPC.",
    ),
    "max_body_bytes": Setting(
        "ANALYTICS_MAX_BODY_BYTES",
        _positive_int,
        "524288",
        "Largest REST request body (a batch of events is at most 500 KB of JSON).",
    ),
    "max_batch_events": Setting(
        "ANALYTICS_MAX_BATCH_EVENTS", _positive_int, "1000", "Most events in one batch request."
    ),
    "max_event_bytes": Setting(
        "ANALYTICS_MAX_EVENT_BYTES",
        _positive_int,
        "32768",
        "Largest event (its properties and context as JSON).",
    ),
    "http_max_url_bytes": Setting(
        "ANALYTICS_HTTP_MAX_URL_BYTES",
        _positive_int,
        "8190",
        "Longest REST request target (path and query string); longer is 414.",
    ),
    "http_max_query_params": Setting(
        "ANALYTICS_HTTP_MAX_QUERY_PARAMS",
        _positive_int,
        "64",
        "Most query parameters in one REST request; more is 400.",
    ),
    "http_max_header_bytes": Setting(
        "ANALYTICS_HTTP_MAX_HEADER_BYTES",
        _positive_int,
        "8190",
        "Longest REST request header name or value; longer is 431.",
    ),
    "cors_origins": Setting(
        "ANALYTICS_CORS_ORIGINS",
        str,
        "*",
        "Browser origins the REST gateway answers CORS for: * (any; keys are headers, never "
        "cookies), or comma-separated origins such as https://shop.example; empty: no CORS.",
    ),
    "http_max_headers": Setting(
        "ANALYTICS_HTTP_MAX_HEADERS",
        _positive_int,
        "100",
        "Most headers in one REST request (Envoy's default); more is 431.",
    ),
    "http_header_timeout": Setting(
        "ANALYTICS_HTTP_HEADER_TIMEOUT",
        _float,
        "10",
        "Seconds a REST connection may take to send a request's headers, or stay idle between "
        "requests, before it is closed (as Envoy's request_headers_timeout).",
    ),
    "http_body_timeout": Setting(
        "ANALYTICS_HTTP_BODY_TIMEOUT",
        _float,
        "30",
        "Seconds a REST client may take to send a request body; slower is 408.",
    ),
    "grpc_max_message_bytes": Setting(
        "ANALYTICS_GRPC_MAX_MESSAGE_BYTES",
        _positive_int,
        "4194304",
        "Largest gRPC message sent or received, by the servers and the gateway's channels.",
    ),
    "dedup_window_seconds": Setting(
        "ANALYTICS_DEDUP_WINDOW_SECONDS",
        _positive_int,
        "86400",
        "How long Redis remembers a client event id to acknowledge its retries.",
    ),
    "ingest_log": Setting(
        "ANALYTICS_INGEST_LOG",
        _yes_no,
        "yes",
        "yes: acknowledge events once they are in the ingest log on this host's disk and store"
        " them in ClickHouse from there in large blocks (docs/ingest-log.md; give the log a"
        " persistent disk); no: acknowledge once ClickHouse has stored them (one shared INSERT"
        " per flush).",
    ),
    "ingest_log_dir": Setting(
        "ANALYTICS_INGEST_LOG_DIR",
        str,
        "",
        "Folder of the ingest log (empty: `ingest-log` in ANALYTICS_DATA_DIR). It holds"
        " acknowledged events: keep it on a persistent volume.",
    ),
    "ingest_log_fsync": Setting(
        "ANALYTICS_INGEST_LOG_FSYNC",
        str,
        "always",
        "always: fsync each group of appends before acknowledging (survives a power cut);"
        " interval: fsync every ANALYTICS_INGEST_LOG_FSYNC_INTERVAL seconds; off: leave it to the"
        " OS (both survive the process being killed, not the machine going down).",
    ),
    "ingest_log_fsync_interval": Setting(
        "ANALYTICS_INGEST_LOG_FSYNC_INTERVAL",
        _float,
        "0.2",
        "Seconds between fsyncs of the ingest log with ANALYTICS_INGEST_LOG_FSYNC=interval.",
    ),
    "ingest_log_max_bytes": Setting(
        "ANALYTICS_INGEST_LOG_MAX_BYTES",
        _positive_int,
        "268435456",
        "Bytes of acknowledged events the ingest log may hold before ClickHouse has stored them;"
        " past it, ingest answers 503 (UNAVAILABLE) with a retry delay.",
    ),
    "ingest_log_linger_seconds": Setting(
        "ANALYTICS_INGEST_LOG_LINGER_SECONDS",
        _float,
        "0.3",
        "How long the ingest log writer lets a block's oldest event wait for more before it"
        " writes the block (0: at once); a read in the same process that waits for it cuts it"
        " short.",
    ),
    "ingest_log_block_rows": Setting(
        "ANALYTICS_INGEST_LOG_BLOCK_ROWS",
        _positive_int,
        "100000",
        "Most events the ingest log writer puts in one INSERT.",
    ),
    "ingest_workers": Setting(
        "ANALYTICS_INGEST_WORKERS",
        _workers,
        "auto",
        "Worker processes that parse, validate and enrich large ingest requests beside the event"
        " loop (REST bodies of 16 KiB or more, gRPC batches of 32 events or more); auto: one per"
        " usable core (CPU affinity and cgroup quota), none on a single core, at most 8; 0: all"
        " on the event loop (docs/decisions.md, 72 and 74).",
    ),
    "ingest_log_read_wait_seconds": Setting(
        "ANALYTICS_INGEST_LOG_READ_WAIT_SECONDS",
        _float,
        "10",
        "Longest a read in the ingest process waits for the log writer to store what was"
        " acknowledged before it (then it reads what ClickHouse has; 0: never waits).",
    ),
    "ip_mode": Setting(
        "ANALYTICS_IP_MODE",
        str,
        "hash",
        "hash: store a salted hash of the client IP; drop: store nothing of it.",
    ),
    "ip_salt": Setting(
        "ANALYTICS_IP_SALT",
        str,
        "",
        "Salt of the IP hash. Empty: generated once, kept in the data dir.",
    ),
    "erasure_suppression_days": Setting(
        "ANALYTICS_ERASURE_SUPPRESSION_DAYS",
        _positive_int,
        "30",
        "Days after a user erasure during which that user's new events (and those of the"
        " anonymousIds erased with them) are dropped at ingest: acknowledged, not stored"
        " (0: none). See docs/privacy.md.",
    ),
    "retention": Setting(
        "ANALYTICS_RETENTION_DAYS",
        str,
        "",
        "Days events are kept, then dropped with what they count for: `400` for every project,"
        " or `projA=30,projB=365,*=400` (`*`: the others). Empty: kept for ever. See"
        " docs/privacy.md.",
    ),
    "retention_interval_seconds": Setting(
        "ANALYTICS_RETENTION_INTERVAL_SECONDS",
        _float,
        "3600",
        "How often the privacy module applies the retention (and finishes erasures an outage"
        " left pending).",
    ),
    "people_snapshot_seconds": Setting(
        "ANALYTICS_PEOPLE_SNAPSHOT_SECONDS",
        _float,
        "30",
        "How often the privacy module checks whether the people snapshot (every linked device's"
        " first link, read by every visitor figure) is due for a rebuild. See docs/decisions.md"
        " 63.",
    ),
    "people_snapshot_changes": Setting(
        "ANALYTICS_PEOPLE_SNAPSHOT_CHANGES",
        _positive_int,
        "20000",
        "Rows of `people` and `customer_first` written since the people snapshot past which it"
        " is rebuilt (visitor and customers figures read those rows as changes per query; it is"
        " rebuilt every 10 minutes anyway while any).",
    ),
    "shutdown_grace": Setting(
        "ANALYTICS_SHUTDOWN_GRACE",
        _float,
        "10",
        "Seconds in-flight calls may take to finish after SIGTERM.",
    ),
    "gc_gen0_threshold": Setting(
        "ANALYTICS_GC_GEN0_THRESHOLD",
        _positive_int,
        "20000",
        "Allocations between two collections of Python's youngest garbage-collector generation in"
        " the server and its ingest workers, whose start-up objects are also frozen out of every"
        " collection (0: Python's default, 700, and nothing frozen; docs/decisions.md, 75).",
    ),
    "prometheus_port": Setting(
        "ANALYTICS_PROMETHEUS_PORT",
        _positive_int,
        "0",
        "Port of a Prometheus /metrics endpoint (0: none; the gateway serves /metrics anyway).",
    ),
    "rate_limit_ingest": Setting(
        "ANALYTICS_RATE_LIMIT_INGEST",
        _float,
        "1000",
        "Requests/s one API key may make to ingest calls, shared by all replicas through Redis "
        "(a batch counts as one request; 0: unlimited). See docs/rate-limits.md.",
    ),
    "rate_limit_ingest_burst": Setting(
        "ANALYTICS_RATE_LIMIT_INGEST_BURST",
        _positive_int,
        "2000",
        "Ingest requests one API key may make at once (the token bucket's size; >= 1).",
    ),
    "rate_limit_read": Setting(
        "ANALYTICS_RATE_LIMIT_READ",
        _float,
        "50",
        "Requests/s one API key may make to metrics and export calls (0: unlimited).",
    ),
    "rate_limit_read_burst": Setting(
        "ANALYTICS_RATE_LIMIT_READ_BURST",
        _positive_int,
        "100",
        "Metrics and export requests one API key may make at once (>= 1).",
    ),
    "rate_limit_admin": Setting(
        "ANALYTICS_RATE_LIMIT_ADMIN",
        _float,
        "10",
        "Requests/s one API key may make to admin calls (0: unlimited).",
    ),
    "rate_limit_admin_burst": Setting(
        "ANALYTICS_RATE_LIMIT_ADMIN_BURST",
        _positive_int,
        "20",
        "Admin requests one API key may make at once (>= 1).",
    ),
    "export_max_concurrent": Setting(
        "ANALYTICS_EXPORT_MAX_CONCURRENT",
        _positive_int,
        "4",
        "Exports one process streams at once (>= 1); one more is 429 with Retry-After. Bounds "
        "the memory exports take (docs/export.md).",
    ),
    "export_max_per_key": Setting(
        "ANALYTICS_EXPORT_MAX_PER_KEY",
        _positive_int,
        "2",
        "Exports one API key may stream at once from one process (>= 1); one more is 429 with "
        "Retry-After.",
    ),
    "log_level": Setting("ANALYTICS_LOG_LEVEL", str, "info", "debug, info, warning or error."),
    "log_format": Setting(
        "ANALYTICS_LOG_FORMAT", str, "console", "console (human) or json (one object per line)."
    ),
    "migrate_on_start": Setting(
        "ANALYTICS_MIGRATE_ON_START",
        _yes_no,
        "yes",
        "yes: apply schema migrations at start. no: only check them (a replica of many, whose"
        " schema `cartlytics migrate` applies once, as the Kubernetes Job does).",
    ),
}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    clickhouse_url: str
    clickhouse_cluster: str
    redis_url: str
    redis_restart_backoff: float
    realtime_check_seconds: float
    bootstrap_key: str
    default_project: str
    key_refresh_seconds: float
    admin_key: str
    default_currency: str
    gateway_upstream: str
    gateway_local_calls: bool
    cors_origins: str
    max_body_bytes: int
    max_batch_events: int
    max_event_bytes: int
    http_max_url_bytes: int
    http_max_query_params: int
    http_max_header_bytes: int
    http_max_headers: int
    http_header_timeout: float
    http_body_timeout: float
    grpc_max_message_bytes: int
    dedup_window_seconds: int
    ingest_log: bool
    ingest_log_dir: str
    ingest_log_fsync: str
    ingest_log_fsync_interval: float
    ingest_log_max_bytes: int
    ingest_log_linger_seconds: float
    ingest_log_block_rows: int
    ingest_workers: int
    ingest_log_read_wait_seconds: float
    ip_mode: str
    ip_salt: str
    erasure_suppression_days: int
    retention: str
    retention_interval_seconds: float
    people_snapshot_seconds: float
    people_snapshot_changes: int
    shutdown_grace: float
    gc_gen0_threshold: int
    prometheus_port: int
    rate_limit_ingest: float
    rate_limit_ingest_burst: int
    rate_limit_read: float
    rate_limit_read_burst: int
    rate_limit_admin: float
    rate_limit_admin_burst: int
    export_max_concurrent: int
    export_max_per_key: int
    log_level: str
    log_format: str
    migrate_on_start: bool

    @property
    def ingest_log_path(self) -> Path:
        """The ingest log's folder (ANALYTICS_INGEST_LOG_DIR, else in the data folder)."""
        if self.ingest_log_dir:
            return Path(self.ingest_log_dir).expanduser().resolve()
        return self.data_dir / "ingest-log"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read every setting, failing at start (not at first use) on a bad value."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            raw = env.get(setting.env, setting.default)
            try:
                values[name] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}={raw!r}: {exc}") from exc
        # Absolute, so child processes (valkey-server chdirs into its folder) agree on paths.
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
        if not 0 < values["realtime_check_seconds"] <= 60:
            raise ConfigError("ANALYTICS_REALTIME_CHECK_SECONDS must be more than 0 and at most 60")
        if not 0 < values["redis_restart_backoff"] <= 30:
            raise ConfigError("ANALYTICS_REDIS_RESTART_BACKOFF must be more than 0 and at most 30")
        if not 0 < values["key_refresh_seconds"] <= 60:
            raise ConfigError("ANALYTICS_KEY_REFRESH_SECONDS must be more than 0 and at most 60")
        for name in ("http_max_url_bytes", "http_max_header_bytes", "http_max_headers"):
            if values[name] < 1:
                raise ConfigError(f"{SETTINGS[name].env} must be at least 1")
        for name in ("http_header_timeout", "http_body_timeout"):
            if not 0 < values[name] < math.inf:
                raise ConfigError(f"{SETTINGS[name].env} must be a positive number of seconds")
        if values["grpc_max_message_bytes"] < 8 * values["max_body_bytes"]:
            # A REST body becomes one gRPC message, and JSON numbers grow up to ~6x as protobuf
            # Values (`1,` is 2 bytes, a double 11): the channel must carry what the gateway takes.
            raise ConfigError(
                "ANALYTICS_GRPC_MAX_MESSAGE_BYTES must be at least 8 x ANALYTICS_MAX_BODY_BYTES"
            )
        if values["retention_interval_seconds"] < 1:
            raise ConfigError("ANALYTICS_RETENTION_INTERVAL_SECONDS must be at least 1")
        if not 0 < values["people_snapshot_seconds"] < math.inf:
            raise ConfigError("ANALYTICS_PEOPLE_SNAPSHOT_SECONDS must be a positive number")
        try:
            from .retention import RetentionPolicy

            RetentionPolicy.parse(values["retention"])
        except ValueError as exc:
            raise ConfigError(f"ANALYTICS_RETENTION_DAYS: {exc}") from exc
        if values["ingest_log_fsync"] not in ("always", "interval", "off"):
            raise ConfigError("ANALYTICS_INGEST_LOG_FSYNC must be always, interval or off")
        if not 0 < values["ingest_log_fsync_interval"] <= 60:
            raise ConfigError("ANALYTICS_INGEST_LOG_FSYNC_INTERVAL must be more than 0, at most 60")
        if values["ingest_log_linger_seconds"] > 10:
            raise ConfigError("ANALYTICS_INGEST_LOG_LINGER_SECONDS must be at most 10")
        if not 0 <= values["ingest_log_read_wait_seconds"] <= 300:
            raise ConfigError("ANALYTICS_INGEST_LOG_READ_WAIT_SECONDS must be from 0 to 300")
        for name in ("ingest_log_max_bytes", "ingest_log_block_rows"):
            if values[name] < 1:
                raise ConfigError(f"{SETTINGS[name].env} must be at least 1")
        if values["ip_mode"] not in ("hash", "drop"):
            raise ConfigError("ANALYTICS_IP_MODE must be hash or drop")
        if values["log_format"] not in ("console", "json"):
            raise ConfigError("ANALYTICS_LOG_FORMAT must be console or json")
        for scope in ("ingest", "read", "admin"):
            if not math.isfinite(values[f"rate_limit_{scope}"]):
                raise ConfigError(f"{SETTINGS[f'rate_limit_{scope}'].env} must be a finite number")
            if values[f"rate_limit_{scope}"] > 0 and values[f"rate_limit_{scope}_burst"] < 1:
                env_name = SETTINGS[f"rate_limit_{scope}_burst"].env
                raise ConfigError(f"{env_name} must be at least 1 (a bucket must hold one call)")
        for name in ("export_max_concurrent", "export_max_per_key"):
            if values[name] < 1:
                raise ConfigError(f"{SETTINGS[name].env} must be at least 1")
        if values["default_currency"] not in READABLE_CURRENCIES:
            raise ConfigError("ANALYTICS_DEFAULT_CURRENCY must be an ISO 4217 code such as USD")
        return cls(**values)


def grpc_message_options(config: Config) -> list[tuple[str, int]]:
    """The largest gRPC message, both ways, for servers and the gateway's channels (gRPC's
    defaults are 4 MB in and unlimited out; a deliberate bound both ways)."""
    size = config.grpc_max_message_bytes
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]


def settings_table() -> str:
    """The configuration table in Markdown, for the README."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS.values():
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | {default} | {setting.doc} |")
    return "\n".join(rows)

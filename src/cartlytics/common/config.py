"""Configuration: one table of environment variables, read and checked once at start.

Every setting has a documented default (README "Configuration" is generated from the same table by
``cartlytics config``), so the embedded default runs with no environment at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


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
        "Where the embedded ClickHouse, Redis and the bootstrap key live.",
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
    "redis_url": Setting(
        "REDIS_URL",
        str,
        "",
        "Empty: a valkey-server started by the process under the data dir. Else redis://host:6379/0.",
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
    "default_currency": Setting(
        "ANALYTICS_DEFAULT_CURRENCY", str, "USD", "Currency of figures when none is asked for."
    ),
    "gateway_upstream": Setting(
        "ANALYTICS_GATEWAY_UPSTREAM",
        str,
        "",
        "Where the gateway sends gRPC: host:port, or per service "
        "ingest=host:port,metrics=host:port,export=host:port (empty: this process's gRPC port).",
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
    "dedup_window_seconds": Setting(
        "ANALYTICS_DEDUP_WINDOW_SECONDS",
        _positive_int,
        "86400",
        "How long Redis remembers a client event id to acknowledge its retries.",
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
    "shutdown_grace": Setting(
        "ANALYTICS_SHUTDOWN_GRACE",
        _float,
        "10",
        "Seconds in-flight calls may take to finish after SIGTERM.",
    ),
    "prometheus_port": Setting(
        "ANALYTICS_PROMETHEUS_PORT",
        _positive_int,
        "0",
        "Port of a Prometheus /metrics endpoint (0: none; the gateway serves /metrics anyway).",
    ),
    "log_level": Setting("ANALYTICS_LOG_LEVEL", str, "info", "debug, info, warning or error."),
    "log_format": Setting(
        "ANALYTICS_LOG_FORMAT", str, "console", "console (human) or json (one object per line)."
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
    redis_url: str
    bootstrap_key: str
    default_project: str
    default_currency: str
    gateway_upstream: str
    max_body_bytes: int
    max_batch_events: int
    max_event_bytes: int
    dedup_window_seconds: int
    ip_mode: str
    ip_salt: str
    shutdown_grace: float
    prometheus_port: int
    log_level: str
    log_format: str

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
        if values["ip_mode"] not in ("hash", "drop"):
            raise ConfigError("ANALYTICS_IP_MODE must be hash or drop")
        if values["log_format"] not in ("console", "json"):
            raise ConfigError("ANALYTICS_LOG_FORMAT must be console or json")
        if len(values["default_currency"]) != 3 or not values["default_currency"].isupper():
            raise ConfigError("ANALYTICS_DEFAULT_CURRENCY must be an ISO 4217 code such as USD")
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Config:
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Config(**current)


def settings_table() -> str:
    """The configuration table in Markdown, for the README."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS.values():
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | {default} | {setting.doc} |")
    return "\n".join(rows)

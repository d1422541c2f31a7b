"""Configuration: defaults that run with no environment, refusals at start, docs in step."""

from __future__ import annotations

from pathlib import Path

import pytest

import cartlytics.common.config as config_module
from cartlytics.common.config import Config, ConfigError, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_need_no_environment() -> None:
    config = Config.from_env({})
    assert (config.http_host, config.http_port, config.grpc_port) == ("127.0.0.1", 8080, 50051)
    assert config.data_dir == Path("data").resolve()
    assert config.clickhouse_url == "" and config.redis_url == ""
    assert config.default_currency == "USD"
    assert config.migrate_on_start is True


@pytest.mark.parametrize(("raw", "value"), [("no", False), ("False", False), ("yes", True)])
def test_migrate_on_start_reads_yes_and_no(raw: str, value: bool) -> None:
    assert Config.from_env({"ANALYTICS_MIGRATE_ON_START": raw}).migrate_on_start is value


@pytest.mark.parametrize(
    ("name", "value"),
    [("ANALYTICS_HTTP_PORT", "eighty"), ("ANALYTICS_DEFAULT_CURRENCY", "dollars"),
     ("ANALYTICS_LOG_FORMAT", "xml"), ("ANALYTICS_SHUTDOWN_GRACE", "-1"),
     ("ANALYTICS_MIGRATE_ON_START", "maybe")],
)  # fmt: skip
def test_bad_values_fail_at_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == settings_table(), "run `make docs`"


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 2), (3, 3), (8, 8), (64, 8)])
def test_auto_ingest_workers_are_one_per_usable_core_but_none_on_one(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    # On one core a worker would only add its round trip; beyond 8 the loop's own share bounds.
    monkeypatch.setattr(config_module, "usable_cores", lambda: cores)
    assert config_module._workers("auto") == workers
    assert config_module._workers(" AUTO ") == workers
    assert config_module._workers("3") == 3

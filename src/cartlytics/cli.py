"""The ``cartlytics`` command: run targets, apply migrations, print the configuration table."""

from __future__ import annotations

import argparse
import asyncio
import sys

from cartlytics.common.config import Config, ConfigError, settings_table
from cartlytics.common.logging import configure_logging
from cartlytics.common.storage import StorageError
from cartlytics.modules import TARGETS, Runtime, run_until_signalled


def _print_ready(runtime: Runtime) -> None:
    config = runtime.config
    lines = ["", "cartlytics is running."]
    if runtime.gateway_port:
        lines.append(f"  REST gateway: http://{config.http_host}:{runtime.gateway_port}")
    if runtime.grpc_port:
        lines.append(f"  gRPC:         {config.grpc_host}:{runtime.grpc_port}")
    if runtime.bootstrap_key and not config.bootstrap_key:
        lines.append(f"  API key:      {runtime.bootstrap_key}")
        lines.append(f"                (kept in {config.data_dir / 'bootstrap_key'})")
    if runtime.gateway_port:
        lines.append("  Try:")
        lines.append(
            f"    curl -H 'Authorization: Bearer <key>' "
            f"'http://{config.http_host}:{runtime.gateway_port}/analytics/sales?period=30d'"
        )
    print("\n".join(lines) + "\n", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, config: Config) -> int:
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    asyncio.run(run_until_signalled(config, targets, _print_ready))
    return 0


def _migrate(args: argparse.Namespace, config: Config) -> int:
    from cartlytics.common.storage import open_storage

    storage = open_storage(config.clickhouse_url, config.data_dir)
    try:
        applied = storage.migrate()
    finally:
        storage.close()
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


def _config(args: argparse.Namespace, config: Config) -> int:
    print(settings_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cartlytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one or more targets")
    run.add_argument(
        "--target",
        default="all",
        help=f"comma-separated targets among {', '.join(TARGETS)} (default: all)",
    )
    run.set_defaults(handler=_run)
    commands.add_parser("migrate", help="apply schema migrations and exit").set_defaults(
        handler=_migrate
    )
    commands.add_parser("config", help="print the configuration table").set_defaults(
        handler=_config
    )
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as exc:
        parser.error(str(exc))
    configure_logging(config.log_level, config.log_format)
    try:
        return int(args.handler(args, config))
    except ValueError as exc:
        print(f"cartlytics: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, StorageError) as exc:
        print(f"cartlytics: could not start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

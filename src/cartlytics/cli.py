"""The ``cartlytics`` command: run targets, apply migrations, manage API keys, print the config.

``cartlytics keys ...`` talks to a running server's AdminService over gRPC rather than to
ClickHouse: the embedded chdb folder can be opened by one process only, and the server checks
the caller's rights in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from typing import Any

from cartlytics.common.config import Config, ConfigError, settings_table
from cartlytics.common.logging import configure_logging
from cartlytics.common.runtime import Runtime
from cartlytics.common.storage import StorageError
from cartlytics.modules import TARGETS, run_until_signalled


def _print_ready(runtime: Runtime) -> None:
    config = runtime.config
    lines = ["", "cartlytics is running."]
    if runtime.gateway_port:
        lines.append(f"  REST gateway: http://{config.http_host}:{runtime.gateway_port}")
        lines.append(f"  Dashboard:    http://{config.http_host}:{runtime.gateway_port}/")
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
    from cartlytics.common.datadir import secure_data_dir
    from cartlytics.common.storage import open_storage
    from cartlytics.common.storage.migrations import Irreversible

    secure_data_dir(config.data_dir)  # the embedded store is made here on a first migrate
    storage = open_storage(config.clickhouse_url, config.data_dir, config.clickhouse_cluster)
    try:
        if args.down_to is not None:
            try:
                undone = storage.migrate_down(args.down_to)
            except Irreversible as refused:
                print(f"nothing undone: {refused}", file=sys.stderr)
                return 1
            print(f"undone migrations: {undone or 'none (at or below that version)'}")
            return 0
        if args.check:
            pending = storage.pending_migrations()
            print(f"pending migrations: {pending}" if pending else "schema up to date")
            return 1 if pending else 0
        applied = storage.migrate()
    finally:
        storage.close()
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


def _config(args: argparse.Namespace, config: Config) -> int:
    print(settings_table())
    return 0


# ---------------------------------------------------------------------------- cartlytics demo

DEMO_MARKER = "demo_loaded"


def _demo(args: argparse.Namespace, config: Config) -> int:
    """Load the demo shop into a running server (``--into``), or run the system and load it."""
    from cartlytics.demo import DemoLoadError, load

    if args.into:
        key = args.key or admin_key_or_none(config)
        if not key:
            print("cartlytics demo: --key (a key with the ingest scope) is needed", file=sys.stderr)
            return 2
        try:
            load(args.into.rstrip("/"), key, args.events, seed=args.seed)
        except DemoLoadError as exc:
            print(f"cartlytics demo: {exc}", file=sys.stderr)
            return 1
        return 0

    marker = config.data_dir / DEMO_MARKER

    def on_ready(runtime: Runtime) -> None:
        _print_ready(runtime)
        host = config.http_host if config.http_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{host}:{runtime.gateway_port}"
        key = runtime.bootstrap_key or config.bootstrap_key

        def fill() -> None:
            if marker.exists():
                print(f"The demo shop is already in {config.data_dir}.", file=sys.stderr)
            else:
                print(f"Loading the demo shop (~{args.events:,} events)...", file=sys.stderr)
                try:
                    load(url, key, args.events, seed=args.seed)
                except DemoLoadError as exc:
                    print(f"cartlytics demo: {exc}", file=sys.stderr, flush=True)
                    return
                marker.write_text(f"events={args.events} seed={args.seed}\n")
            print(
                f"\nThe demo shop is ready: open {url}/ and enter the key {key}\n"
                "(Ctrl-C stops the server; `make run` serves the same data later.)\n",
                file=sys.stderr,
                flush=True,
            )

        # The load talks to this process's gateway over HTTP: a thread, so the loop serves it.
        threading.Thread(target=fill, name="demo-load", daemon=True).start()

    asyncio.run(run_until_signalled(config, ["all"], on_ready))
    return 0


def admin_key_or_none(config: Config) -> str:
    try:
        return admin_key(config)
    except KeysError:
        return ""


# ---------------------------------------------------------------------------- cartlytics keys


class KeysError(Exception):
    """A ``cartlytics keys`` failure, already worded for the operator."""


def admin_key(config: Config) -> str:
    """ANALYTICS_ADMIN_KEY, else the bootstrap key (configured, or the file the server wrote)."""
    if config.admin_key:
        return config.admin_key
    if config.bootstrap_key:
        return config.bootstrap_key
    path = config.data_dir / "bootstrap_key"
    try:
        return path.read_text().strip()  # read only: never make a key the server does not know
    except OSError:
        raise KeysError(
            f"no key to authenticate with: set ANALYTICS_ADMIN_KEY, or ANALYTICS_DATA_DIR to the "
            f"server's data dir (no {path})"
        ) from None


def grpc_target(config: Config) -> str:
    host = config.grpc_host
    if host in ("", "0.0.0.0", "::", "[::]"):  # listening everywhere: reach it locally
        host = "127.0.0.1"
    return f"{host}:{config.grpc_port}"


def _scopes(values: list[str]) -> list[str]:
    """``--scope`` values as the proto's enum names (``SCOPE_READ``), which requests accept."""
    from cartlytics.common.keys import SCOPES_BY_NAME

    names = [n.strip().lower() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCOPES_BY_NAME]
    if unknown or not names:
        raise KeysError(
            f"--scope: {', '.join(unknown) or 'none given'}; choose among ingest, read, admin"
        )
    return [f"SCOPE_{n.upper()}" for n in sorted(set(names))]


def _describe(key: Any) -> tuple[str, ...]:
    from cartlytics.common.keys import SCOPE_NAMES

    scopes = ",".join(SCOPE_NAMES.get(s, str(s)) for s in key.scopes)
    created = key.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    revoked = key.revoke_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if key.revoked else "-"
    return (key.key_id, key.project_id, scopes, key.name or "-", created, revoked)


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("KEY ID", "PROJECT", "SCOPES", "NAME", "CREATED (UTC)", "REVOKED (UTC)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _keys(args: argparse.Namespace, config: Config) -> int:
    import grpc

    from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc

    target = args.grpc or grpc_target(config)
    try:
        metadata = (("authorization", f"Bearer {admin_key(config)}"),)
        with grpc.insecure_channel(target) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            if args.keys_command == "create":
                request = admin_pb2.CreateKeyRequest(
                    project_id=args.project, scopes=_scopes(args.scope), name=args.name
                )
                created = stub.CreateKey(request, metadata=metadata, timeout=args.timeout)
                key_id, project, scopes, name, _, _ = _describe(created.key)
                print(f"Created API key {key_id} for project {project} (scopes: {scopes}).")
                print()
                print(f"    {created.secret}")
                print()
                print(
                    "This is the only time the key is shown: store it now (only its hash is kept)."
                )
            elif args.keys_command == "list":
                listed = stub.ListKeys(
                    admin_pb2.ListKeysRequest(project_id=args.project),
                    metadata=metadata,
                    timeout=args.timeout,
                )
                print(_table([_describe(k) for k in listed.keys]))
            else:
                revoked = stub.RevokeKey(
                    admin_pb2.RevokeKeyRequest(key_id=args.key_id),
                    metadata=metadata,
                    timeout=args.timeout,
                )
                print(
                    f"Revoked API key {revoked.key.key_id} of project {revoked.key.project_id}; "
                    "refused now by this server, by every other replica within "
                    f"ANALYTICS_KEY_REFRESH_SECONDS ({config.key_refresh_seconds:g} s)."
                )
    except KeysError as exc:
        print(f"cartlytics keys: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"cannot reach the AdminService at {target} (is `cartlytics run` running?)"
        else:
            name = code.name if code is not None else "ERROR"
            message = f"{name}: {exc.details() if hasattr(exc, 'details') else exc}"
        print(f"cartlytics keys: {message}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- cartlytics users


def _users(args: argparse.Namespace, config: Config) -> int:
    """``cartlytics users erase <userId>``: PrivacyService/EraseUser on a running server."""
    import grpc

    from cartlytics.gen.analytics.privacy.v1 import privacy_pb2, privacy_pb2_grpc

    target = args.grpc or grpc_target(config)
    try:
        metadata = (("authorization", f"Bearer {admin_key(config)}"),)
        with grpc.insecure_channel(target) as channel:
            stub = privacy_pb2_grpc.PrivacyServiceStub(channel)
            request = privacy_pb2.EraseUserRequest(user_id=args.user_id, project_id=args.project)
            done = stub.EraseUser(request, metadata=metadata, timeout=args.timeout)
        finished = done.complete_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"Erased {done.events_erased} events of the user (request {done.request_id},")
        print(f"completed {finished} UTC).")
        if done.HasField("suppressed_until"):
            until = done.suppressed_until.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
            print(f"Their new events are dropped until {until} UTC.")
    except KeysError as exc:
        print(f"cartlytics users: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            message = f"cannot reach the PrivacyService at {target} (is `cartlytics run` running?)"
        else:
            name = code.name if code is not None else "ERROR"
            message = f"{name}: {exc.details() if hasattr(exc, 'details') else exc}"
        print(f"cartlytics users: {message}", file=sys.stderr)
        return 1
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
    migrate = commands.add_parser("migrate", help="apply schema migrations and exit")
    migrate.add_argument(
        "--check",
        action="store_true",
        help="apply nothing; exit 1 while migrations are pending (a Kubernetes init container)",
    )
    migrate.add_argument(
        "--down-to",
        type=int,
        metavar="VERSION",
        help="run backward every applied migration above VERSION, newest first (writers "
        "stopped: a backward may drop data); nothing runs if one of them cannot be undone",
    )
    migrate.set_defaults(handler=_migrate)
    commands.add_parser("config", help="print the configuration table").set_defaults(
        handler=_config
    )
    demo = commands.add_parser(
        "demo",
        help="run everything and load a demo shop (a year of events) for the dashboard at /",
    )
    demo.add_argument(
        "--events", type=int, default=200_000, help="about how many events (default 200000)"
    )
    demo.add_argument("--seed", type=int, default=1, help="the demo shop's random seed")
    demo.add_argument(
        "--into",
        default="",
        metavar="URL",
        help="only load into the server at this REST URL (e.g. http://127.0.0.1:8080) and exit",
    )
    demo.add_argument(
        "--key", default="", help="with --into: a key with the ingest scope (default: admin key)"
    )
    demo.set_defaults(handler=_demo)
    keys = commands.add_parser(
        "keys", help="create, list and revoke API keys (through a running server's gRPC)"
    )
    keys.add_argument(
        "--grpc",
        default="",
        metavar="HOST:PORT",
        help="the server's gRPC address (default: ANALYTICS_GRPC_HOST:ANALYTICS_GRPC_PORT)",
    )
    keys.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    keys.set_defaults(handler=_keys)
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once")
    create.add_argument(
        "--project", default="", help="the key's project (default: the admin key's own)"
    )
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="comma-separated among ingest, read, admin (repeatable)",
    )
    create.add_argument("--name", default="", help="a label: who or what uses the key")
    listing = actions.add_parser("list", help="list a project's keys (never their secrets)")
    listing.add_argument("--project", default="", help="the project (default: the admin key's own)")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the key id, as `keys list` shows it")
    for action in (create, listing, revoke):  # --grpc also after the action
        action.add_argument("--grpc", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    users = commands.add_parser(
        "users", help="erase a user's data (through a running server's gRPC; docs/privacy.md)"
    )
    users.set_defaults(handler=_users)
    user_actions = users.add_subparsers(dest="users_command", required=True)
    erase = user_actions.add_parser(
        "erase", help="erase every event of a user and of the anonymousIds linked to them"
    )
    erase.add_argument("user_id", help="the userId, as events carried it")
    erase.add_argument("--project", default="", help="the project (default: the admin key's own)")
    erase.add_argument(
        "--grpc",
        default="",
        metavar="HOST:PORT",
        help="the server's gRPC address (default: ANALYTICS_GRPC_HOST:ANALYTICS_GRPC_PORT)",
    )
    erase.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
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

"""Live stacks for the SDKs' own test suites (Go, JavaScript, Python clients).

Two ``cartlytics run`` systems on free ports, each with embedded storage, as a user starts them:

- ``main``: default settings;
- ``throttled``: ingest limited to one request a second (burst 1), so that a second call within a
  second is a real 429 with ``Retry-After`` / RetryInfo, which the SDKs must honour.

Each language gets its own project (a fresh key with the ingest and read scopes, made through the
admin API with the operator key), so that its sales figures are its own events only. The SDK
suites read where to connect from environment variables (``CARTLYTICS_TEST_*``, see
``ClientStacks.env``), and fail instead of skipping when ``CARTLYTICS_TEST_REQUIRE=1``.

Run by hand while working on an SDK::

    .venv/bin/python -m tests.client_stacks /tmp/stacks   # prints `export ...` lines, runs till ^C
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from cartlytics.gen.analytics.admin.v1 import admin_pb2, admin_pb2_grpc
from cartlytics.gen.analytics.options.v1 import options_pb2

from .servers import System, start_system

LANGUAGES = ("go", "js", "python", "browser")

THROTTLED_ENV = {
    "ANALYTICS_RATE_LIMIT_INGEST": "1",
    "ANALYTICS_RATE_LIMIT_INGEST_BURST": "1",
}


@dataclass
class ClientStacks:
    main: System
    throttled: System
    keys: dict[tuple[str, str], str]  # (stack name, language) -> key of that language's project

    def env(self, language: str) -> dict[str, str]:
        """The variables an SDK suite reads: where each stack is and the language's keys."""
        out = {"CARTLYTICS_TEST_REQUIRE": "1"}
        for name, system in (("", self.main), ("THROTTLED_", self.throttled)):
            out[f"CARTLYTICS_TEST_{name}HTTP"] = system.http_url
            out[f"CARTLYTICS_TEST_{name}GRPC"] = system.grpc_target
            stack = "throttled" if name else "main"
            out[f"CARTLYTICS_TEST_{name}KEY"] = self.keys[(stack, language)]
        return out

    def stop(self) -> None:
        for system in (self.main, self.throttled):
            system.stop()


def _create_key(system: System, project: str) -> str:
    request = admin_pb2.CreateKeyRequest(
        project_id=project,
        scopes=[options_pb2.SCOPE_INGEST, options_pb2.SCOPE_READ],
        name="sdk-tests",
    )
    with grpc.insecure_channel(system.grpc_target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply = stub.CreateKey(
            request, metadata=(("authorization", f"Bearer {system.key}"),), timeout=30
        )
    secret: str = reply.secret
    return secret


def _accepted(system: System, key: str) -> bool:
    request = urllib.request.Request(
        f"{system.http_url}/analytics/realtime", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, TimeoutError):
        return False


def _wait_until_accepted(pairs: Iterable[tuple[System, str]], timeout: float = 60) -> None:
    """A new key is usable at once, but a periodic key refresh that read the table just before
    the insert can replace the key ring without it for one interval (2 s): wait until every key
    is accepted, past two refreshes, so the suites never meet a spurious 401."""
    pairs = list(pairs)
    deadline = time.monotonic() + timeout
    for _ in range(3):
        while not all(_accepted(system, key) for system, key in pairs):
            if time.monotonic() > deadline:
                raise RuntimeError("the SDK tests' keys were not accepted in time")
            time.sleep(0.2)
        time.sleep(2.5)


def start_client_stacks(directory: Path) -> ClientStacks:
    main = start_system(directory / "main", "cak_" + secrets.token_hex(32))
    try:
        throttled = start_system(
            directory / "throttled", "cak_" + secrets.token_hex(32), extra_env=THROTTLED_ENV
        )
    except BaseException:
        main.stop()
        raise
    stacks = ClientStacks(main=main, throttled=throttled, keys={})
    try:
        run = secrets.token_hex(3)
        for stack_name, system in (("main", main), ("throttled", throttled)):
            for language in LANGUAGES:
                project = f"sdk_{language}_{run}"
                stacks.keys[(stack_name, language)] = _create_key(system, project)
        systems = {"main": main, "throttled": throttled}
        _wait_until_accepted((systems[s], key) for (s, _), key in stacks.keys.items())
    except BaseException:
        stacks.stop()
        raise
    return stacks


def main(argv: list[str]) -> int:
    directory = Path(argv[1] if len(argv) > 1 else "/tmp/cartlytics-client-stacks")
    stacks = start_client_stacks(directory)
    for language in LANGUAGES:
        print(f"# {language}")
        for name, value in stacks.env(language).items():
            print(f"export {name}={value}")
    print("# running; Ctrl-C (or SIGTERM) stops both stacks", flush=True)

    def _stop(*_: object) -> None:
        stacks.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Modules and the runtime they share: the machinery of the run targets, as dskit's ``modules``.

A ``Module`` is declared once, where its code is: each service package declares its own in its
``module.py`` (``services.ingest.module.MODULE``, ..., ``gateway.module.MODULE``), and the app
declares the process's infrastructure (storage, Redis, API keys, the gRPC server) and the ``all``
target in ``cartlytics/modules.py``, where it puts them all in one ``Registry``. The run targets
read that registry, and nothing else: no name is looked up as a method, no module is treated
apart.

A module's life has two steps, as in dskit (init functions, then services started together):

- ``init``, for every module in dependency order: build what it needs and wire it (a service adds
  its servicer to the process's gRPC server through ``Runtime.register_grpc``);
- ``start``, once every module is initialised, again in order: begin serving (the gRPC server
  serves what was registered, the REST gateway binds its port).

Either step may return a ``Stop``. The stops run in reverse, from one deadline
(``Runtime.time_left``): the last started is stopped first.

``dependencies`` are started with the module (a target pulls them in); ``after`` only orders: a
module named there is started before this one when both run, and is never pulled in (the REST
gateway starts after the gRPC server of its own process, and also runs alone in front of remote
services).

This lives in ``cartlytics.common`` so that imports go one way: the services declare their modules
against these types without importing the app, and the app imports the services to register them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from grpc import aio

from .auth import KeyRing
from .config import Config
from .local_calls import HandlerRecorder, LocalCalls

if TYPE_CHECKING:
    from grpc_health.v1 import health
    from redis.asyncio import Redis

    from .erasure import Eraser, Suppression
    from .keys import KeyRefresher
    from .realtime_rebuild import RealtimeRecovery
    from .storage import Storage

log = structlog.get_logger("cartlytics")

Stop = Callable[[], Awaitable[None]]
Step = Callable[["Runtime"], Awaitable[Stop | None]]


@dataclass(frozen=True)
class Module:
    """One component of a process: what it needs, how it starts, what stops it (see above)."""

    name: str
    dependencies: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    init: Step | None = None
    start: Step | None = None
    target: bool = False  # may be named in ``cartlytics run --target``


class Registry:
    """Every module a process may run, by name; the targets among them resolved to a start order."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        self._modules: dict[str, Module] = {}
        for module in modules:
            self.register(module)

    def register(self, module: Module) -> None:
        if module.name in self._modules:
            raise ValueError(f"module {module.name!r} registered twice")
        self._modules[module.name] = module

    @property
    def targets(self) -> tuple[str, ...]:
        """The names ``--target`` accepts, in registration order."""
        return tuple(name for name, module in self._modules.items() if module.target)

    def resolve(self, targets: Sequence[str]) -> list[Module]:
        """The modules to run for ``targets``: each after its dependencies and after what it
        names in ``after`` that runs too."""
        unknown = [t for t in targets if t not in self.targets]
        if unknown:
            raise ValueError(
                f"unknown target {unknown[0]!r}; choose from {', '.join(self.targets)}"
            )
        needed: set[str] = set()
        pending = [(name, "") for name in targets]
        while pending:
            name, wanted_by = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend((d, name) for d in self._get(name, wanted_by).dependencies)
        order: list[Module] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            module = self._get(name, visiting[-1] if visiting else "")
            if any(m.name == name for m in order):
                return
            if name in visiting:
                raise ValueError(f"modules depend on each other: {' -> '.join([*visiting, name])}")
            visiting.append(name)
            for first in (*module.dependencies, *(a for a in module.after if a in needed)):
                visit(first)
            visiting.pop()
            order.append(module)

        for target in targets:
            visit(target)
        return order

    def _get(self, name: str, wanted_by: str) -> Module:
        try:
            return self._modules[name]
        except KeyError:
            raise ValueError(
                f"module {wanted_by!r} needs {name!r}, which is not registered"
            ) from None


@dataclass
class Runtime:
    """What the running modules share. Built once per process; each module fills in its part."""

    config: Config
    storage: Storage | None = None
    redis: Redis | None = None
    redis_serving: bool = True  # False while the embedded valkey-server is down (restarting)
    keyring: KeyRing = field(default_factory=KeyRing)
    bootstrap_key: str = ""
    key_refresher: KeyRefresher | None = None
    grpc_server: aio.Server | None = None
    grpc_services: list[str] = field(default_factory=list)  # full names, as registered
    grpc_interceptors: list[aio.ServerInterceptor] = field(default_factory=list)
    handlers: HandlerRecorder | None = None  # the method handlers of grpc_services
    grpc_port: int = 0
    health: health.aio.HealthServicer | None = None
    health_names: list[str] = field(default_factory=list)  # what the gRPC server reports SERVING
    gateway_port: int = 0
    realtime_recovery: RealtimeRecovery | None = None  # one per process; see recovery()
    suppression: Suppression | None = None  # one per process; see suppression_list()
    eraser: Eraser | None = None  # the privacy module's
    stoppers: list[Stop] = field(default_factory=list)
    stopping_since: float | None = None  # time.monotonic() when the shutdown began

    # For the modules ---------------------------------------------------------------------------
    def register_grpc(self, full_name: str) -> HandlerRecorder:
        """Where to add the servicer of ``full_name`` (say ``analytics.ingest.v1.IngestService``)
        with its generated ``add_*Servicer_to_server``: the process's gRPC server, which serves
        it with reflection and health once every module is initialised, and the in-process
        gateway's ``local_calls``."""
        assert self.grpc_server is not None, "a gRPC service module depends on grpc-server"
        self.grpc_services.append(full_name)
        if self.handlers is None:
            self.handlers = HandlerRecorder(self.grpc_server)
        return self.handlers

    def local_calls(self, excluded: Collection[str] = ()) -> LocalCalls:
        """The unary methods registered so far, but those of the ``excluded`` services (full
        names), callable without gRPC through the server's interceptors (``local_calls.py``)."""
        handlers = self.handlers.handlers if self.handlers is not None else {}
        kept = {
            path: handler
            for path, handler in handlers.items()
            if path.split("/")[1] not in excluded
        }
        return LocalCalls(kept, self.grpc_interceptors)

    def require_storage(self) -> Storage:
        assert self.storage is not None, "the module depends on storage"
        return self.storage

    def on_stop(self, stop: Stop) -> None:
        """Run ``stop`` at shutdown, before what was started earlier."""
        self.stoppers.append(stop)

    def recovery(self) -> RealtimeRecovery | None:
        """The process's realtime keeper (``realtime_rebuild.py``), started on first use; None
        without Redis or storage."""
        from .realtime import RealtimeCounters
        from .realtime_rebuild import RealtimeRecovery

        if self.realtime_recovery is not None or self.redis is None or self.storage is None:
            return self.realtime_recovery
        recovery = RealtimeRecovery(
            self.redis,
            RealtimeCounters(self.redis),
            self.storage,
            interval=self.config.realtime_check_seconds,
        )
        self.realtime_recovery = recovery
        self.on_stop(cancelling(asyncio.get_running_loop().create_task(recovery.run())))
        return recovery

    def salt(self) -> bytes:
        """The server's secret salt (``ANALYTICS_IP_SALT``, else kept in the data dir): the IP
        hash's key and the erasure record's (``erasure.subject_hash``)."""
        import secrets

        from .auth import load_secret

        config = self.config
        salt, _ = load_secret(
            config.ip_salt, config.data_dir, "ip_salt", lambda: secrets.token_hex(32)
        )
        return salt.encode()

    async def suppression_list(self) -> Suppression:
        """The process's list of erased shoppers whose new events ingest drops (``erasure.py``),
        loaded now and then refreshed in the background; one per process, so that an erasure
        made here is honoured here at once."""
        from .erasure import Suppression

        if self.suppression is None:
            suppression = Suppression(self.salt(), self.config.erasure_suppression_days)
            storage = self.require_storage()
            await suppression.refresh(storage)
            self.suppression = suppression
            task = suppression.run(storage, self.config.key_refresh_seconds)
            self.on_stop(cancelling(asyncio.get_running_loop().create_task(task)))
        return self.suppression

    # Lifecycle ---------------------------------------------------------------------------------
    async def start(self, modules: Sequence[Module]) -> None:
        """Initialise ``modules`` in order, then start them in order."""
        for phase in ("init", "start"):
            for module in modules:
                run = module.init if phase == "init" else module.start
                if run is None:
                    continue
                log.debug(f"{phase} module", module=module.name)
                stop = await run(self)
                if stop is not None:
                    self.on_stop(stop)

    def time_left(self, grace: float) -> float:
        """Seconds left of ``grace`` since the shutdown began (all of it before)."""
        if self.stopping_since is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.stopping_since))

    async def stop(self) -> None:
        self.stopping_since = time.monotonic()
        while self.stoppers:
            stopper = self.stoppers.pop()
            try:
                await _watched(stopper)
            except Exception:
                log.exception("error while stopping")


STOP_REPORT_SECONDS = 5.0


async def _watched(stopper: Stop) -> None:
    """Run ``stopper``, saying which part it stops each ``STOP_REPORT_SECONDS`` it takes: a
    shutdown that hangs (and is then killed) names the part that held it."""
    started = time.monotonic()
    task = asyncio.ensure_future(stopper())
    while not task.done():
        try:
            await asyncio.wait({task}, timeout=STOP_REPORT_SECONDS)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            part = getattr(stopper, "__qualname__", repr(stopper))
            seconds = round(time.monotonic() - started, 1)
            log.warning("still stopping", part=part, seconds=seconds)
    task.result()


def cancelling(task: asyncio.Task[None]) -> Stop:
    """A stop that cancels ``task`` (a background loop) and waits for it."""

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop

"""The run targets' registry (cartlytics/modules.py, cartlytics/common/runtime.py): what each
target starts, in which order, and how the steps run and stop."""

from __future__ import annotations

import asyncio

import pytest

from cartlytics.common.config import Config
from cartlytics.common.runtime import Module, Registry, Runtime, Stop
from cartlytics.modules import MODULES, TARGETS


def _order(*targets: str) -> list[str]:
    return [m.name for m in MODULES.resolve(list(targets))]


def test_the_targets_are_the_documented_ones() -> None:
    assert TARGETS == ("all", "ingest", "metrics", "export", "admin", "privacy", "gateway")


def test_a_service_target_runs_its_dependencies_first() -> None:
    assert _order("ingest") == ["storage", "redis", "auth", "grpc-server", "ingest"]
    assert _order("export") == ["storage", "auth", "redis", "grpc-server", "export"]
    assert _order("gateway") == ["gateway"]  # alone: in front of remote services


def test_all_runs_every_service_and_the_gateway_after_the_grpc_server() -> None:
    order = _order("all")
    assert set(order) == {"storage", "redis", "auth", "grpc-server", *TARGETS}
    for name in ("ingest", "metrics", "export", "admin", "privacy", "gateway"):
        assert order.index("grpc-server") < order.index(name)
    # Listed first, the gateway still starts after the gRPC server of its process.
    order = _order("gateway", "metrics")
    assert order.index("grpc-server") < order.index("gateway")


def test_only_targets_may_be_named() -> None:
    with pytest.raises(ValueError, match="unknown target 'storage'; choose from all, ingest"):
        MODULES.resolve(["storage"])


def test_a_registry_refuses_a_cycle_a_missing_module_and_a_name_twice() -> None:
    cycle = Registry(
        [Module("a", dependencies=("b",), target=True), Module("b", dependencies=("a",))]
    )
    with pytest.raises(ValueError, match="depend on each other"):
        cycle.resolve(["a"])
    with pytest.raises(ValueError, match="'a' needs 'c'"):
        Registry([Module("a", dependencies=("c",), target=True)]).resolve(["a"])
    with pytest.raises(ValueError, match="registered twice"):
        Registry([Module("a"), Module("a")])


def test_every_module_initialises_before_any_starts_and_stops_run_in_reverse() -> None:
    seen: list[str] = []

    def step(name: str) -> Module:
        async def run(phase: str) -> Stop:
            seen.append(f"{phase} {name}")

            async def stop() -> None:
                seen.append(f"stop {phase} {name}")

            return stop

        async def init(_: Runtime) -> Stop:
            return await run("init")

        async def start(_: Runtime) -> Stop:
            return await run("start")

        return Module(name, init=init, start=start, target=True)

    registry = Registry([step("a"), step("b")])

    async def lifecycle() -> None:
        runtime = Runtime(Config.from_env({}))
        await runtime.start(registry.resolve(["a", "b"]))
        await runtime.stop()

    asyncio.run(lifecycle())
    assert seen == [
        "init a", "init b", "start a", "start b",
        "stop start b", "stop start a", "stop init b", "stop init a",
    ]  # fmt: skip


def test_a_stop_that_hangs_is_named_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown held by one part (then killed from outside) says which part held it."""
    import structlog

    from cartlytics.common import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "STOP_REPORT_SECONDS", 0.05)
    stopped: list[str] = []

    async def quick_stop() -> None:
        stopped.append("quick")

    async def slow_stop() -> None:
        await asyncio.sleep(0.3)
        stopped.append("slow")

    async def lifecycle() -> None:
        runtime = Runtime(Config.from_env({}))
        runtime.on_stop(quick_stop)
        runtime.on_stop(slow_stop)
        await runtime.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(lifecycle())
    assert stopped == ["slow", "quick"]  # the last registered stops first, each waited for
    held = [entry for entry in logs if entry["event"] == "still stopping"]
    assert held and {entry["part"] for entry in held} == {slow_stop.__qualname__}

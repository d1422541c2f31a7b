"""The server's garbage-collector settings (decision 75): what start built is frozen, the young
generation collected less often; 0 leaves Python as it is."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cartlytics.common.config import Config
from cartlytics.common.gc_tuning import tune_gc
from services.ingest.preparation import Settings
from services.ingest.workers import Preparer, WorkerSetup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_what_lives_and_collects_the_young_generation_less_often() -> None:
    _, gen1, gen2 = gc.get_threshold()
    long_lived = [object() for _ in range(1000)]  # built "at start", kept
    tune_gc(20_000)
    assert gc.get_threshold() == (20_000, gen1, gen2)
    assert gc.get_freeze_count() >= len(long_lived)
    # Garbage made after the start is still collected: a cycle goes at the next full collection.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restored_gc")
def test_zero_leaves_pythons_collector_as_it_is() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_the_default_is_the_measured_threshold_and_it_can_be_turned_off() -> None:
    assert Config.from_env({}).gc_gen0_threshold == 20_000
    assert Config.from_env({"ANALYTICS_GC_GEN0_THRESHOLD": "0"}).gc_gen0_threshold == 0


def test_ingest_workers_are_tuned_as_their_parent_says() -> None:
    """A worker process applies the threshold it is started with (its allocations are most of a
    batch's), not Python's default."""
    setup = WorkerSetup(gc_gen0_threshold=12_345)

    async def run() -> tuple[tuple[int, int, int], int, bool]:
        preparer = Preparer(Settings(b"s"), lambda: datetime.now(UTC), workers=1, setup=setup)
        try:
            pool = preparer._ensure_pool()
            threshold = await asyncio.wrap_future(pool.submit(gc.get_threshold))
            frozen = await asyncio.wrap_future(pool.submit(gc.get_freeze_count))
            parser_frozen = await asyncio.wrap_future(pool.submit(_user_agent_parser_frozen))
        finally:
            await preparer.close()
        return threshold, frozen, parser_frozen

    threshold, frozen, parser_frozen = asyncio.run(run())
    assert threshold[0] == 12_345
    assert frozen > 0  # what the worker imported at start is out of every collection
    assert parser_frozen  # and the user-agent parser it built then (its regex tables)


def _user_agent_parser_frozen() -> bool:
    """In a worker: the user-agent parser is built and out of every collected generation."""
    from services.ingest import enrichment

    parser = enrichment._parser
    return parser is not None and not any(item is parser for item in gc.get_objects())

"""The cyclic garbage collector, set for a server that allocates many short-lived objects.

CPython collects its youngest generation every 700 net allocations of tracked objects (lists,
dicts, tuples, protobuf wrappers...). A batch of 500 events allocates tens of thousands, so the
collector ran dozens of times a request, each time walking the young objects and, every tenth
and hundredth time, the older generations too: every object the process built at start (its
modules, the schema, the parsers' tables) is in the oldest one. Measured on the batch benches
(2 cores, alternated runs; docs/decisions.md, 75): 13-15 % more events/s with the young threshold
at 20,000 and the start's objects frozen (out of every collection), as Instagram's ``gc.freeze``
article describes.
Nothing here turns the collector off: cycles are still found, a little later.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger(__name__)


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what the process has built so far (call it once started, when what is alive is
    what lives as long as the process) and collect the young generation every
    ``gen0_threshold`` allocations (0: leave Python's default)."""
    if gen0_threshold <= 0:
        return
    gc.collect()  # start's garbage is not kept forever by the freeze
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    log.debug("gc tuned", gen0_threshold=gen0_threshold, frozen=gc.get_freeze_count())

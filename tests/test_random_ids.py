"""Ids drawn in bulk (cartlytics.common.random_ids): distinct, of the asked form, and never
handed out twice across a fork (a child must not repeat the ids its parent drew)."""

from __future__ import annotations

import os
import re

from cartlytics.common.random_ids import RandomIds


def test_ids_are_distinct_across_draws_and_have_their_form() -> None:
    ids = RandomIds(24, prefix="evt_", per_draw=16)
    drawn = [ids() for _ in range(100)]  # several draws
    assert len(set(drawn)) == 100
    assert all(re.fullmatch(r"evt_[0-9a-f]{24}", i) for i in drawn)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids = RandomIds(32)
    ids()  # the parent holds the rest of its draw
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without the test runner's exit handlers
        os.close(read)
        os.write(write, "".join(ids() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {ids() for _ in range(255)}  # the whole rest of the parent's draw
    assert len(child) == 10 and not child & parent

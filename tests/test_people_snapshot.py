"""The people snapshot (storage/people_snapshot.py) and the reads through it
(commerce.visitors.as_people), on both backends: every event's person is the oracle's
(tests/oracle.first_links) with no snapshot, through a fresh one, through one plus newer links
that change a device's first link, add devices or change nothing, after an invalidation, through
a lookup whose build was dropped since, and while builds follow each other; by id and hashed.
Every endpoint reads its visitors this way, so the endpoint tests cover it too;
here each state is reached on purpose instead of as the keeper happens to leave it.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.storage import Sql, Storage
from cartlytics.common.storage.current_snapshot import BASE_TABLES, CurrentSnapshot
from cartlytics.common.storage.people_snapshot import PeopleSnapshot
from tests.oracle import first_links, person

COLUMNS = ["project_id", "event_id", "event", "ts", "received_at", "user_id", "anonymous_id",
           "session_id", "visitor_id"]  # fmt: skip
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ROWS = Sql("SELECT event_id, visitor_id FROM events WHERE project_id = {project}")


class Store:
    def __init__(self, storage: Storage, project: str) -> None:
        self.storage, self.project = storage, project
        self.events: list[dict[str, Any]] = []

    def send(self, *events: tuple[int, str, str]) -> None:
        """(second, userId, anonymousId) events, stored as ingest stores them."""
        rows = []
        for second, user, anonymous in events:
            event = {
                "id": f"e{len(self.events):03d}",
                "timestamp": (AT + timedelta(seconds=second)).isoformat(),
                "userId": user,
                "anonymousId": anonymous,
            }
            self.events.append(event)
            ts = AT + timedelta(seconds=second)
            rows.append((self.project, event["id"], "page_view", ts, ts, user, anonymous, "",
                         user or anonymous))  # fmt: skip
        self.storage.insert_sync("events", COLUMNS, rows)

    def expected(self) -> dict[str, str]:
        links = first_links(self.events)
        return {str(e["id"]): person(e, links) for e in self.events}

    def read(self) -> dict[str, str]:
        relation = as_people(ROWS, ("event_id", "visitor_id"), "visitor_id")
        rows = self.storage.query_sync(relation, {"project": self.project})
        return {str(event): str(visitor) for event, visitor in rows}

    def read_hashed(self) -> dict[str, int]:
        relation = as_people(ROWS, ("event_id", "visitor_id"), "visitor_id", hashed=True)
        rows = self.storage.query_sync(relation, {"project": self.project})
        return {str(event): int(str(visitor)) for event, visitor in rows}

    def hashes(self, people: set[str]) -> dict[str, int]:
        """ClickHouse's cityHash64(project, person) of each person (what hashed reads give)."""
        rows = self.storage.query_sync(
            Sql("SELECT p, cityHash64({project}, p) FROM (SELECT arrayJoin({people}) AS p)"),
            {"project": self.project, "people": sorted(people)},
        )
        return {str(p): int(str(h)) for p, h in rows}

    def builds(self) -> list[str]:
        """The build tables in the store (any project's)."""
        rows = self.storage.query_sync(
            Sql("""
            SELECT name FROM system.tables
            WHERE database = currentDatabase() AND name LIKE 'people\\_snapshot%\\_v%'""")
        )
        return sorted(str(name) for (name,) in rows)

    def check(self, state: str) -> None:
        expected = self.expected()
        assert self.read() == expected, state
        hashes = self.hashes(set(expected.values()))
        assert self.read_hashed() == {e: hashes[p] for e, p in expected.items()}, state


def test_people_are_exact_through_every_state_of_the_snapshot(
    storage: Storage, project_id: str
) -> None:
    snapshot = PeopleSnapshot(storage, changed_rows=1)
    store = Store(storage, project_id)
    snapshot.invalidate()  # the store is shared with other tests: start from no snapshot
    assert snapshot.state().block == 0
    # d1 browses, then signs in as u1; d2 is linked to u2 and browses on; d3 stays anonymous;
    # u9 only ever signs in.
    store.send((0, "", "d1"), (10, "u1", "d1"), (15, "", "d1"), (20, "u2", "d2"), (25, "", "d2"),
               (30, "", "d3"), (40, "u9", ""))  # fmt: skip
    store.check("no snapshot: every people row read as a change")

    assert snapshot.due()
    built = snapshot.rebuild()
    assert built is not None and built.devices >= 2
    assert not snapshot.due(), "nothing newer than the snapshot"
    store.check("a fresh snapshot")

    # Newer links: an earlier one of d1 to u3 (d1 becomes u3's), a later one of d2 to u4
    # (d2 stays u2's), d3 linked at last, and a new device d4.
    store.send((5, "u3", "d1"), (50, "u4", "d2"), (60, "u5", "d3"), (70, "", "d4"),
               (71, "u6", "d4"))  # fmt: skip
    assert store.expected()["e000"] == "u3", "the case must change a device in the snapshot"
    assert snapshot.due()
    store.check("the snapshot and newer links")

    assert snapshot.rebuild() is not None
    store.check("a rebuilt snapshot")

    snapshot.invalidate()
    assert store.builds() == [], "an invalidation drops every build"
    for table in BASE_TABLES:
        assert storage.query_sync(Sql("SELECT count() FROM " + table)) == [(0,)]
    store.check("invalidated: no build")


def test_a_rebuild_overtaken_by_an_invalidation_elsewhere_is_never_current(
    storage: Storage, project_id: str
) -> None:
    """A rebuild during which another process's purge records an invalidation (and drops the
    builds it finds) is not recorded as current, and leaves no table behind."""
    snapshot = PeopleSnapshot(storage)
    store = Store(storage, project_id)
    store.send((0, "u1", "d1"))
    snapshot.invalidate()

    class Interrupted(PeopleSnapshot):
        def _run(self, sql: Sql, params: dict[str, object] | None = None) -> list[Any]:
            rows = super()._run(sql, params)
            if "INSERT INTO people_snapshot_v" in sql.text:
                # The other process records its invalidation (this process's lock is held: a
                # second PeopleSnapshot here would wait for it).
                PeopleSnapshot(storage)._record(time.time_ns(), 0, 0, 0)
            return rows

    assert Interrupted(storage).rebuild() is None
    assert store.builds() == []
    assert snapshot.state().block == 0
    store.check("after the overtaken rebuild")


def test_a_query_whose_build_was_dropped_since_its_lookup_runs_again(
    storage: Storage, project_id: str
) -> None:
    store = Store(storage, project_id)
    store.send((0, "", "d1"), (10, "u1", "d1"))
    assert PeopleSnapshot(storage).rebuild() is not None
    store.check("the first build")  # the lookup names it for a second
    looked_up = storage.snapshot.values()["snapshot_links"]
    # Another process's keeper (the same store, a lookup of its own) builds anew and drops the
    # first build, which this process's lookup still names.
    elsewhere = copy.copy(storage)
    elsewhere.snapshot = CurrentSnapshot(storage.backend.execute)
    store.send((20, "u2", "d2"))
    other = PeopleSnapshot(elsewhere)
    assert other.rebuild() is not None
    assert other.drop_superseded(now_ns=time.time_ns() + 60 * 10**9)
    assert storage.snapshot.values()["snapshot_links"] == looked_up, "still the dropped build"
    store.check("the dropped build's query, run again")
    assert storage.snapshot.values()["snapshot_links"] != looked_up


def test_reads_stay_exact_while_builds_follow_each_other(storage: Storage, project_id: str) -> None:
    """The keeper rebuilding and dropping as fast as it can while links arrive and are read:
    every read pairs one build's tables with its own block."""
    snapshot = PeopleSnapshot(storage, changed_rows=1)
    store = Store(storage, project_id)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keeper() -> None:
        while not stop.is_set():
            try:
                snapshot.rebuild()
                snapshot.drop_superseded(now_ns=time.time_ns() + 60 * 10**9)
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=keeper)
    thread.start()
    try:
        for n in range(12):
            # A device browses, then is linked; another one's earlier link arrives late.
            store.send((100 * n, "", f"c{n}"), (100 * n + 1, f"w{n}", f"c{n}"))
            if n:
                store.send((100 * (n - 1) - 1, f"early{n}", f"c{n - 1}"))
            store.check(f"round {n}")
    finally:
        stop.set()
        thread.join()
    assert not errors, errors


def test_one_query_names_one_build_while_new_ones_are_recorded(
    storage: Storage, project_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new build recorded while a query is rendered (the keeper forgets the lookup) must not
    give the query's slots two builds: it did, one slot each, and a device linked between the
    two builds was in neither (found by test_reads_stay_exact_while_builds_follow_each_other)."""
    store = Store(storage, project_id)
    store.send((0, "", "d1"), (10, "u1", "d1"))
    snapshot = PeopleSnapshot(storage)
    assert snapshot.rebuild() is not None
    looked_up = storage.snapshot.values
    given: list[dict[str, Any]] = []

    def then_a_new_build() -> dict[str, Any]:
        values = looked_up()
        given.append(values)
        store.send((20 + len(given), f"u{len(given) + 1}", f"d{len(given) + 1}"))
        assert snapshot.rebuild() is not None  # recorded, and the lookup forgotten
        return values

    monkeypatch.setattr(storage.snapshot, "values", then_a_new_build)
    text = storage.render(
        as_people(ROWS, ("event_id", "visitor_id"), "visitor_id"), {"project": project_id}
    )
    # Every slot of the query holds the first lookup's build and block: one build only.
    versions = set(re.findall(r"people_snapshot(?:_links)?_v(\d+)", text))
    assert len(versions) == 1, versions
    first = given[0]
    assert first["snapshot_links"].text in text
    assert re.findall(r"\) > (\d+)", text) == [str(first["snapshot_block"])]

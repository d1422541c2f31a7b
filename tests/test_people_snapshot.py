"""The people snapshot (storage/people_snapshot.py) and the reads through it
(commerce.visitors.as_people), on both backends: every event's person is the oracle's
(tests/oracle.first_links) with no snapshot, through a fresh one, through one plus newer links
that change a device's first link, add devices or change nothing, and after an invalidation; by
id and hashed. Every endpoint reads its visitors this way, so the endpoint tests cover it too;
here each state is reached on purpose instead of as the keeper happens to leave it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cartlytics.common.commerce.visitors import as_people
from cartlytics.common.storage import Sql, Storage
from cartlytics.common.storage.people_snapshot import TABLES, PeopleSnapshot
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
    for table in TABLES:
        assert storage.query_sync(Sql("SELECT count() FROM " + table)) == [(0,)]
    store.check("invalidated: an empty snapshot")


def test_a_rebuild_after_an_invalidation_elsewhere_is_not_swapped_in(
    storage: Storage, project_id: str
) -> None:
    """A rebuild that sees an invalidation recorded after it began (another process's purge)
    drops its table instead of swapping in links the purge may have removed."""
    snapshot = PeopleSnapshot(storage)
    store = Store(storage, project_id)
    store.send((0, "u1", "d1"))
    snapshot.invalidate()

    class Interrupted(PeopleSnapshot):
        def _run(self, sql: Sql, params: dict[str, object] | None = None) -> list[Any]:
            rows = super()._run(sql, params)
            if "INSERT INTO people_snapshot_next" in sql.text:
                # Another process's invalidation records block 0 first (this process's lock is
                # held: a second PeopleSnapshot here would wait for it).
                PeopleSnapshot(storage)._record(0, 0)
            return rows

    assert Interrupted(storage).rebuild() is None
    for table in TABLES:
        assert storage.query_sync(Sql("SELECT count() FROM " + table)) == [(0,)]
    assert snapshot.state().block == 0
    store.check("after the dropped rebuild")

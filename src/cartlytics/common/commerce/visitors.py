"""Visitors as people: an anonymousId stitched to the user it was first seen with.

../shared/spec/semantics.md: an event carrying both ``userId`` and ``anonymousId`` links that
anonymousId to that userId; the first link of an anonymousId (by time, then event id) wins, later
links to other users are recorded (``identity_links`` keeps every pair) and not merged. An event's
visitor is then its userId; else the user its anonymousId is linked to, whenever the link happened
(before or after the event); else its anonymousId; else its sessionId.

Stored rows carry ``visitor_id`` as ingest wrote it (userId, else anonymousId, else sessionId),
which never changes; the person is resolved when reading: a ``visitor_id`` that is a linked
anonymousId reads as its user. So a link made today counts yesterday's anonymous browsing as the
user's, and an erased link (or one of an erased user) stops doing so, with no stored row rewritten.
The ids share one namespace, as they already did for ``visitor_id``: an anonymousId that equals
some userId (or sessionId) is the same visitor.

``PEOPLE`` is the exact lookup (one row per linked anonymousId of {project}: ``linked_id``,
``linked_user``, from the ``people`` rollup). Joining it per query meant building a hash of every
linked device per request (at 10M events, 200k devices: the funnel 3x slower); so ``as_people``
reads it in two parts instead (decision 63), exact at every moment:

- the snapshot: Join-engine tables (hash tables ClickHouse keeps built) of every device's first
  link as ``people`` held it up to one of its insert blocks, keyed by ``cityHash64(project,
  anonymousId)``: ``{snapshot_people}`` (the person's hash) and ``{snapshot_links}`` (the id,
  checked against the row's, and the user). Each build has tables of its own, never changed
  (``cartlytics.common.storage.people_snapshot``); ``Storage`` fills these slots and
  ``{snapshot_block}`` with one build's tables and block (``storage.current_snapshot``); every
  purge (erasure, retention) drops the builds;
- ``CHANGES``: the ``people`` rows of later inserts (their part's highest block number above
  ``{snapshot_block}``), a small hash built per query;

and a device's first link is the earlier of the two (a link first seen after the snapshot may be
earlier than the one it holds). No build yet (a new store): the fixed empty tables and block 0,
every row a change.
"""

from __future__ import annotations

from collections.abc import Sequence

from cartlytics.common.storage.sql import Sql


def user_of(key: str) -> str:
    """The SQL of a link key's user: what follows its third space (rollups.LINK_KEY)."""
    return f"arrayStringConcat(arraySlice(splitByChar(' ', {key}), 4), ' ')"


def snapshot_get(table: str, column: str) -> str:
    """The SQL of ``column`` of the snapshot's ``table`` slot (``snapshot_people`` or
    ``snapshot_links``) for the row's ``visitor_hash``: its default ('' or 0) when the build has
    no such device. The table is named unqualified: ClickHouse 18.16's joinGet reads only the
    current database's tables."""
    return f"joinGet('{{{table}}}', '{column}', visitor_hash)"


# Per anonymousId of {project} with a link: the user of its first link, by (time, event id).
PEOPLE = Sql(f"""
    SELECT anonymous_id AS linked_id, {user_of("minMerge(first_link)")} AS linked_user
    FROM people
    WHERE project_id = {{project}}
    GROUP BY anonymous_id
""")


# The devices of {project} whose person is not the snapshot's: in ``people`` parts written after
# the snapshot (a part's name is partition_minblock_maxblock_level[_mutation]; a merge of old and
# new parts is read whole, which is exact, and the keeper rebuilds when these grow), their first
# link among those rows, kept when the snapshot has none for the device or a later one. Small: a
# hash table of it is built per query, keyed like the snapshot.
CHANGES = Sql(f"""
    SELECT visitor_hash, stored_visitor AS changed_id, {user_of("changed_key")} AS changed_user,
           cityHash64({{project}}, changed_user) AS changed_person
    FROM (
        SELECT anonymous_id AS stored_visitor, minMerge(first_link) AS changed_key,
               cityHash64({{project}}, anonymous_id) AS visitor_hash
        FROM people
        WHERE project_id = {{project}}
          AND toUInt64(splitByChar('_', _part)[3]) > {{snapshot_block}}
        GROUP BY anonymous_id
    )
    WHERE {snapshot_get("snapshot_links", "snapshot_id")} != stored_visitor
       OR changed_key < {snapshot_get("snapshot_links", "snapshot_key")}""")
# The same, hashed people only (ClickHouse 18.16 copies every column of a joined relation).
CHANGED_PEOPLE = Sql("SELECT visitor_hash, changed_person FROM ({changes})").fill(changes=CHANGES)


# The hashed person of a row of ``joined_people``: the changes' person, else the snapshot's, else
# the row's own id (hashed).
HASHED_PERSON = (
    "if(changed_person != 0, changed_person,"
    " if(snapshot_person != 0, snapshot_person, visitor_hash))"
)


def joined_people(rows: Sql, columns: Sequence[str], visitor: str) -> Sql:
    """A FROM clause over ``rows`` (a relation with ``columns``, among them ``visitor``) whose
    rows also have ``visitor_hash``, ``snapshot_person`` and ``changed_person``, from which
    HASHED_PERSON is the person, hashed as ``as_people(..., hashed=True)`` gives it. For a
    query that groups by the person in the same SELECT (or one ARRAY JOIN away): one subquery
    layer fewer than ``as_people``, and each layer costs ClickHouse's planner milliseconds."""
    if visitor not in columns:
        raise ValueError(f"{visitor!r} is not among the columns {columns!r}")
    kept = [c for c in columns if c != visitor]
    inner = ", ".join(
        [
            *kept,
            "cityHash64({project}, " + visitor + ") AS visitor_hash",
            f"{snapshot_get('snapshot_people', 'snapshot_person')} AS snapshot_person",
        ]
    )
    return (
        Sql(f"""(SELECT {inner} FROM ({{people_rows}})) AS known
    ANY LEFT JOIN ({{changes}}) AS changes USING visitor_hash""")
        .fill(changes=CHANGED_PEOPLE)
        .fill(people_rows=rows)
    )


def as_people(rows: Sql, columns: Sequence[str], visitor: str, hashed: bool = False) -> Sql:
    """``rows`` (a relation with ``columns``, among them the visitor column ``visitor``; the
    query has a ``{project}`` value) with the same columns, one row per row, ``visitor`` now
    holding the person: the user its id is linked to, else the id itself.

    ``hashed``: the person as ``cityHash64(project, person)`` (UInt64) instead of its id, for
    figures that only count or group people: carried, grouped and counted several times faster
    than strings (decision 63 has the measures, and the odds of two people sharing a hash: the
    same as a hash of the snapshot matching an unlinked id, which this mode does not check)."""
    if visitor not in columns:
        raise ValueError(f"{visitor!r} is not among the columns {columns!r}")
    # The snapshot is read with joinGet (a lookup in the build's hash table per row) and the
    # changes with one join: each subquery or join layer costs ClickHouse's planner milliseconds
    # per query, more than looking up a month of rows (decision 63).
    if hashed:
        outer = ", ".join(f"{HASHED_PERSON} AS {visitor}" if c == visitor else c for c in columns)
        return Sql(f"\n    SELECT {outer}\n    FROM ") + joined_people(rows, columns, visitor)
    # A row of the snapshot or the changes counts only when it is this very device's.
    kept = [c for c in columns if c != visitor]
    found = [
        f"{visitor} AS stored_visitor",
        f"{snapshot_get('snapshot_links', 'snapshot_id')} AS snapshot_id",
        f"{snapshot_get('snapshot_links', 'snapshot_user')} AS snapshot_user",
    ]
    person = (
        "multiIf(changed_id = stored_visitor, changed_user,"
        " snapshot_id = stored_visitor, snapshot_user, stored_visitor)"
    )
    hashing = "cityHash64({project}, " + visitor + ") AS visitor_hash"
    inner = ", ".join([*kept, hashing, *found])
    outer = ", ".join(f"{person} AS {visitor}" if c == visitor else c for c in columns)
    return (
        Sql(f"""
    SELECT {outer}
    FROM (SELECT {inner} FROM ({{people_rows}})) AS known
    ANY LEFT JOIN ({{changes}}) AS changes USING visitor_hash""")
        .fill(changes=CHANGES)
        .fill(people_rows=rows)
    )

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

``PEOPLE`` is the lookup (one row per linked anonymousId of {project}: ``linked_id``,
``linked_user``, from the ``people`` rollup), joined per query (``ANY LEFT JOIN``: a hash of it
built once per query); ``as_people`` puts it in front of any relation with a visitor column,
looking up only that relation's ids when it is small. Every visitor-based figure reads its
visitors through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cartlytics.common.storage.sql import EMPTY, Sql

# Per anonymousId of {project} with a link: the user of its first link, by (time, event id);
# {among}: `` AND anonymous_id IN (...)`` to look up only those ids, or nothing (every one).
_PEOPLE = Sql("""
    SELECT anonymous_id AS linked_id,
           arrayStringConcat(arraySlice(splitByChar(' ', minMerge(first_link)), 4), ' ')
               AS linked_user
    FROM people
    WHERE project_id = {project}{among}
    GROUP BY anonymous_id
""")
PEOPLE = _PEOPLE.fill(among=EMPTY)


def people_among(ids: Sql) -> Sql:
    """``PEOPLE`` for the anonymousIds of ``ids`` (a one-column relation) only."""
    return _PEOPLE.fill(among=Sql(" AND anonymous_id IN ({people_ids})").fill(people_ids=ids))


def as_people(rows: Sql, columns: Sequence[str], visitor: str, among: Sql | None = None) -> Sql:
    """``rows`` (a relation with ``columns``, among them the visitor column ``visitor``) with the
    same columns, one row per row, ``visitor`` now holding the person: the user its id is linked
    to, else the id itself.

    Only some ids are looked up (the lookup of every linked device of a big shop costs more than
    the join): by default the visitor ids of ``rows`` (reads ``rows`` twice: for small relations);
    ``among``, a one-column relation holding at least every anonymousId stored as a visitor id in
    ``rows`` (e.g. the anonymousIds of its events without a userId: a row with a userId has it as
    its visitor, which no lookup changes); ``EMPTY``: every linked device."""
    if visitor not in columns:
        raise ValueError(f"{visitor!r} is not among the columns {columns!r}")
    kept = [c for c in columns if c != visitor]
    inner = ", ".join([*kept, f"{visitor} AS stored_visitor"])
    outer = ", ".join(
        f"if(linked_user != '', linked_user, stored_visitor) AS {visitor}" if c == visitor else c
        for c in columns
    )
    if among is None:
        among = Sql(f"SELECT {visitor} FROM ({{people_rows}})")
    return (
        Sql(f"""
    SELECT {outer}
    FROM (SELECT {inner} FROM ({{people_rows}})) AS visits
    ANY LEFT JOIN (
        SELECT linked_id AS stored_visitor, linked_user FROM ({{people}})
    ) AS people USING stored_visitor""")
        .fill(people=people_among(among) if among else PEOPLE)
        .fill(people_rows=rows)
    )

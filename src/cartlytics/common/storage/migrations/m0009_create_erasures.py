"""9: ``erasures``, the record of user erasures, ``erasure_scope``, the work of one in progress,
and ``retention_runs`` (docs/privacy.md).

``erasures`` keeps who asked (the admin key's id), when, and how many events went, never the
erased ids in clear: ``subject`` and ``anonymous`` are keyed hashes (HMAC-SHA256 with the
server's salt, ``cartlytics.common.erasure.subject_hash``). A request is inserted as ``pending``
before anything is deleted and again as ``done`` (a higher ``version``) once every table and Redis
are clean; a process finds the pending ones at start and finishes them.

``erasure_scope`` holds, only while a request is pending, what the deletion needs to be run again
after a crash: the userId and its anonymousIds (in clear: the events themselves still hold them
then), the erased event ids and the products whose names are recomputed. Its rows are deleted
when the request is done.

``retention_runs`` records each retention run of a project (``cartlytics.common.retention``):
pending before anything is dropped, done after, so that a run cut by a crash is finished.

Backward drops the three (the record of past erasures goes with them).
"""

from __future__ import annotations

from ..sql import Sql
from .migration import Migration

MIGRATION = Migration(
    9,
    "create_erasures",
    (
        Sql("""
        CREATE TABLE IF NOT EXISTS erasures (
            project_id String,
            request_id String,
            subject String,
            anonymous Array(String),
            requested_by String,
            requested_at DateTime('UTC'),
            state String,
            events UInt64,
            completed_at DateTime('UTC'),
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY (project_id, request_id)
        """),
        Sql("""
        CREATE TABLE IF NOT EXISTS erasure_scope (
            request_id String,
            kind String,
            value String
        ) ENGINE = MergeTree
        ORDER BY (request_id, kind, value)
        """),
        # One row per retention run of a project up to a cutoff: pending before anything is
        # dropped, done (a higher version) after (cartlytics.common.retention).
        Sql("""
        CREATE TABLE IF NOT EXISTS retention_runs (
            project_id String,
            cutoff DateTime('UTC'),
            started_at DateTime('UTC'),
            state String,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY (project_id, cutoff)
        """),
    ),
    backward=(
        Sql("DROP TABLE IF EXISTS retention_runs"),
        Sql("DROP TABLE IF EXISTS erasure_scope"),
        Sql("DROP TABLE IF EXISTS erasures"),
    ),
)

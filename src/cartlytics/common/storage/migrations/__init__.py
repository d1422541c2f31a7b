"""Versioned schema migrations: one file per migration, applied in order and recorded in
``schema_migrations`` (the runner: ``Storage.migrate`` and ``Storage.migrate_down``).

Each file ``mNNNN_<name>.py`` holds one ``MIGRATION``: its version (NNNN) and name, its forward
statements, and its backward statements where it can have one (``backward=None``: none, e.g. the
first, which creates the tables holding the events themselves). ``MIGRATIONS`` (``registry.py``)
lists them in order: a new migration is a new file and a line there. A migration applied anywhere
is never edited in a way that changes what it does (stores have it recorded as done).

Statements are ``Sql``: DDL picks types per backend through slots filled at rendering
(``{datetime}``: DateTime64(3) where the server has it, DateTime on ClickHouse 18.16; ``{dict}``:
LowCardinality(String) or String; ``{mutations_sync}``: an ALTER that rewrites data waits for it
where that is a background mutation (ClickHouse 26); 18.16 rewrites within the ALTER itself and
has no SETTINGS clause there). Queries must not depend on which. A literal ``{`` followed by a
lowercase name and ``}`` in DDL text would be read as a slot: none is.

Materialized views are created, backfilled and replaced from their one definition in
``cartlytics.common.commerce.rollups`` (its docstring says how a definition changes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sql import Sql
from .migration import CLASSIC_TYPES, MODERN_TYPES, Irreversible, Migration, type_slots

if TYPE_CHECKING:
    from .registry import MIGRATIONS

__all__ = [
    "CLASSIC_TYPES",
    "MIGRATIONS",
    "MODERN_TYPES",
    "SCHEMA_MIGRATIONS",
    "Irreversible",
    "Migration",
    "check_unique",
    "type_slots",
]


def __getattr__(name: str) -> object:
    # MIGRATIONS is read on first use: the migration files build views from
    # cartlytics.common.commerce.rollups, which itself imports this package's parent (for Sql);
    # loading them when `backends` imports the types here would make that a cycle.
    if name == "MIGRATIONS":
        from .registry import MIGRATIONS

        return MIGRATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SCHEMA_MIGRATIONS = Sql(
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version UInt32, name String, applied_at DateTime('UTC')) "
    "ENGINE = MergeTree ORDER BY version"
)
"""What ran: one row per migration applied (its row is deleted when it is run backward)."""


def check_unique(migrations: tuple[Migration, ...] | None = None) -> None:
    if migrations is None:
        from .registry import MIGRATIONS as every

        migrations = every
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions) or versions != sorted(versions):
        raise RuntimeError(f"migration versions must be unique and ascending: {versions}")

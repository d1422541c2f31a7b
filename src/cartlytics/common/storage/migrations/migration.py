"""The ``Migration`` type, and the backend types its DDL slots take."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..sql import Sql, render

# Backend capabilities that DDL may use (``Backend.types``), by the backend's own names.
MODERN_TYPES = {
    "DateTime": "DateTime64(3, 'UTC')",
    "Dict": "LowCardinality(String)",
    "MutationsSync": " SETTINGS mutations_sync = 2",
    # An Atomic database (chdb, servers from 20.x) keeps a dropped table's files for minutes
    # unless the DROP says SYNC; an Ordinary one (18.16) drops them at once and has no SYNC.
    "DropSync": " SYNC",
}
CLASSIC_TYPES = {
    "DateTime": "DateTime('UTC')",
    "Dict": "String",
    "MutationsSync": "",
    "DropSync": "",
}


def type_slots(types: Mapping[str, str]) -> dict[str, Sql]:
    """The DDL slots (``{datetime}``, ``{dict}``, ``{mutations_sync}``, ``{drop_sync}``) for a
    backend's ``types``."""
    return {
        "datetime": Sql(types["DateTime"]),
        "dict": Sql(types["Dict"]),
        "mutations_sync": Sql(types["MutationsSync"]),
        "drop_sync": Sql(types["DropSync"]),
    }


@dataclass(frozen=True)
class Migration:
    """One schema change: its version (the order it runs in, and what ``schema_migrations``
    records), its name, and its statements each way."""

    version: int
    name: str
    statements: tuple[Sql, ...]
    """Forward: what applying it runs, in order."""
    repair_after: tuple[str, ...] = ()
    """Rollups to make whole for the last minutes once applied (repair.py steps): for a migration
    that replaces a materialized view, which missed the INSERTs other replicas made meanwhile."""
    backward: tuple[Sql, ...] | None = None
    """What undoes it, in order (run by ``Storage.migrate_down``); None: it cannot be undone."""

    def render(self, types: Mapping[str, str]) -> list[str]:
        """The forward statements as a backend with these ``types`` runs them."""
        return _render(self.statements, types)

    def render_backward(self, types: Mapping[str, str]) -> list[str]:
        """The backward statements, rendered as ``render`` does; Irreversible without them."""
        if self.backward is None:
            raise Irreversible(self.version)
        return _render(self.backward, types)


def _render(statements: tuple[Sql, ...], types: Mapping[str, str]) -> list[str]:
    slots = type_slots(types)
    return [render(statement, slots) for statement in statements]


class Irreversible(RuntimeError):
    """Running backward would pass a migration that has no backward statements."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"migration {version} has no backward statements: no version below {version} can be"
            " reached backward"
        )
        self.version = version

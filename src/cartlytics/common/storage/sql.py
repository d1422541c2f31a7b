"""SQL composed one way: trusted ``Sql`` fragments with ``{name}`` slots, values as literals.

Two kinds of thing go into a query, and they have different types:
- ``Sql``: text written in this codebase (a query, a clause, a column expression from the
  catalogue). Nothing from a request is ever wrapped in ``Sql``.
- values (str, int, datetime, tuple, ...): whatever a request supplies; ``render`` writes each as a
  ClickHouse literal, escaped here and only here.

``render(query, params)`` fills every ``{name}`` slot of ``query``: a ``Sql`` parameter is inlined
(its own slots filled from the same ``params``), any other parameter is rendered as a literal. So
optional clauses and shared sub-queries are ``Sql`` parameters, never ``str.replace`` or
``string.Template`` on SQL text. ``Sql.fill(name=fragment)`` puts fragments into slots ahead of
``render`` (only fragments: values wait for ``render``), for a definition used in several places
with different pieces (the commerce model's order rule over two tables, say). The same
rendering serves both backends (the 18.16 server has no server-side query parameters).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\b": "\\b",
    "\f": "\\f",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
    "\0": "\\0",
    "\a": "\\a",
    "\v": "\\v",
}


class Sql:
    """A piece of SQL written in this codebase, with ``{name}`` slots for ``render`` to fill.

    Compose with ``+``, ``Sql.join`` and ``Sql`` parameters; never from request text.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __add__(self, other: Sql) -> Sql:
        if not isinstance(other, Sql):
            return NotImplemented
        return Sql(self.text + other.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sql) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Sql({self.text!r})"

    def __bool__(self) -> bool:
        return bool(self.text.strip())

    @staticmethod
    def join(separator: str, parts: Iterable[Sql]) -> Sql:
        """``parts`` joined by the fixed ``separator`` (", ", " AND ", ...)."""
        return Sql(separator.join(part.text for part in parts))

    def __contains__(self, text: str) -> bool:
        """Whether ``text`` occurs in this fragment's text (for checks and tests)."""
        return text in self.text

    def slots(self) -> set[str]:
        """The names of this fragment's own ``{name}`` slots."""
        return set(_PLACEHOLDER.findall(self.text))

    def fill(self, **parts: Sql) -> Sql:
        """This fragment with the named slots filled by other fragments now (the others stay,
        for ``render``): how one definition is used in several places with different pieces,
        e.g. the same order rule over two tables. Only ``Sql`` fills a slot here; a value waits
        for ``render``. Naming a slot the fragment does not have is an error (a typo)."""
        for name, part in parts.items():
            if not isinstance(part, Sql):
                raise TypeError(f"slot {name!r} takes a Sql fragment, not {type(part).__name__}")
        missing = set(parts) - self.slots()
        if missing:
            raise KeyError(f"no slot {sorted(missing)} in this fragment")

        def substitute(match: re.Match[str]) -> str:
            part = parts.get(match.group(1))
            return match.group(0) if part is None else part.text

        return Sql(_PLACEHOLDER.sub(substitute, self.text))


EMPTY: Final = Sql("")
"""The fragment for an optional clause that does not apply."""


def when(condition: bool, fragment: Sql) -> Sql:
    """``fragment`` if ``condition``, else nothing: an optional clause."""
    return fragment if condition else EMPTY


def exact_sum(expression: str) -> str:
    """SQL summing an integer ``expression`` in Decimal128, which cannot wrap (Int64's sum wraps
    past 2^63 silently). Read back as a number: ``int()`` of what the backend gives (an int or a
    Decimal)."""
    return f"sum(toDecimal128({expression}, 0))"


def decimal_text(expression: str) -> str:
    """SQL writing a Decimal128 ``expression`` (a whole number) as exact decimal text.

    Not ``toString``: ClickHouse 18.16 garbles the digits of a Decimal128 from 10^21 up (NUL
    bytes in place of digits). Written as two Int64 halves instead, below and above 10^18, which
    both backends print right (up to 9.2 * 10^36, far beyond any sum of amounts)."""
    d = f"({expression})"
    high = f"toInt64(intDiv({d}, 1000000000000000000))"
    low = f"toInt64({d} - toDecimal128({high}, 0) * toDecimal128(1000000000000000000, 0))"
    padded_low = f"substring(toString(abs({low}) + 1000000000000000000), 2)"
    return f"if({high} = 0, toString({low}), concat(toString({high}), {padded_low}))"


def literal(value: Any, datetime64: bool = False) -> str:
    """Render one Python value as a ClickHouse literal.

    ``datetime64``: render datetimes as DateTime64(3) (servers whose tables use it). Comparing a
    DateTime64 column with a DateTime constant makes ClickHouse 26 skip parts wrongly (its min-max
    index rounds), so the constant must have the column's type.
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("only finite floats can be rendered")
        return repr(value)
    if isinstance(value, str):
        return "'" + "".join(_ESCAPES.get(c, c) for c in value) + "'"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware")
        utc = value.astimezone(UTC)
        if datetime64:
            millis = utc.microsecond // 1000
            return f"toDateTime64('{utc:%Y-%m-%d %H:%M:%S}.{millis:03d}', 3, 'UTC')"
        return f"toDateTime('{utc:%Y-%m-%d %H:%M:%S}', 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value:%Y-%m-%d}')"
    if isinstance(value, tuple):
        # A tuple renders as a parenthesised list, the form `x IN (...)` takes on every server
        # version (18.16 refuses an array there).
        if not value:
            raise ValueError("an empty tuple has no SQL form; skip the IN instead")
        return "(" + ", ".join(literal(item, datetime64) for item in value) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item, datetime64) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as SQL")


_MAX_DEPTH = 16  # fragments nest a few levels; deeper means a fragment that contains itself


def render(sql: Sql, params: Mapping[str, Any] | None = None, datetime64: bool = False) -> str:
    """The text of ``sql`` with every ``{name}`` slot filled from ``params``: a ``Sql`` value
    inlined (its slots filled in turn), any other value as its literal. A slot without a
    parameter is an error, as is a value slot's text being read as a slot (it never is: literals
    are not scanned again)."""
    if not isinstance(sql, Sql):
        # Only trusted SQL is a Sql; text from anywhere else must arrive as a parameter value.
        raise TypeError(f"a query is a Sql fragment, not {type(sql).__name__}")
    values = params or {}

    def fill(text: str, depth: int) -> str:
        if depth > _MAX_DEPTH:
            raise ValueError("SQL fragments nest too deep (a fragment containing itself?)")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise KeyError(f"no value for SQL parameter {name!r}")
            value = values[name]
            if isinstance(value, Sql):
                return fill(value.text, depth + 1)
            return literal(value, datetime64)

        return _PLACEHOLDER.sub(substitute, text)

    return fill(sql.text, 0)


Row = tuple[Any, ...]

"""AIP-127 / google.api.http path templates: parse once, match request paths.

The gateway must route exactly as Envoy's grpc_json_transcoder (grpc-httpjson-transcoding) does,
so the matching rules below follow that library rather than a regex of our own:

- the query string is not part of the match, trailing slashes are ignored;
- literals are compared with the raw (still percent-encoded) path segment;
- a variable bound to one segment is fully percent-decoded, a variable spanning several
  segments (`{name=shelves/*/books/*}` or `**`) keeps reserved characters such as `%2F` encoded,
  so that a decoded value can never invent path structure;
- a custom verb (`:verb`) is a suffix of the last segment.

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "PathTemplate",
    "PathTemplateError",
    "Segment",
    "SegmentKind",
    "Variable",
    "percent_decode",
    "split_path",
]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 6570 reserved characters: kept percent-encoded in multi-segment variables (as Envoy does).
_RESERVED = frozenset(b"!#$&'()*+,/:;=?@[]")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class PathTemplateError(ValueError):
    """An annotation's path template does not follow the google.api.http grammar."""


class SegmentKind(IntEnum):
    """Segment kinds, ordered by precedence: a literal beats `*`, which beats `**` (as Envoy)."""

    LITERAL = 0
    SINGLE = 1
    MULTI = 2


@dataclass(frozen=True, slots=True)
class Segment:
    """One template segment: a literal, `*` or `**`."""

    kind: SegmentKind
    literal: str = ""


@dataclass(frozen=True, slots=True)
class Variable:
    """A `{field.path=...}` capture over segments [start, end) of the template."""

    field_path: tuple[str, ...]
    start: int
    end: int
    multi: bool
    """True when the variable spans several segments or `**`: reserved characters stay encoded."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template; `match` returns the variables' values or None."""

    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Parse `text`, raising PathTemplateError on anything the grammar does not allow."""
        parser = _Parser(text)
        segments, variables, verb = parser.parse()
        return cls(text, tuple(segments), tuple(variables), verb)

    @property
    def precedence(self) -> tuple[int, ...]:
        """Sort key: templates with literals where others have wildcards win (Envoy's trie)."""
        return (*(int(s.kind) for s in self.segments), 0 if self.verb else 1)

    def match(self, parts: list[str]) -> dict[tuple[str, ...], str] | None:
        """Match raw path parts (see `split_path`); return field path -> decoded value."""
        if self.verb:
            if not parts or not parts[-1].endswith(":" + self.verb):
                return None
            parts = [*parts[:-1], parts[-1][: -len(self.verb) - 1]]
        ends = _match_segments(self.segments, 0, parts, 0)
        if ends is None:
            return None
        bindings: dict[tuple[str, ...], str] = {}
        for var in self.variables:
            start = ends[var.start - 1] if var.start else 0
            stop = ends[var.end - 1]
            bindings[var.field_path] = "/".join(
                percent_decode(p, keep_reserved=var.multi) for p in parts[start:stop]
            )
        return bindings


def split_path(path: str) -> list[str]:
    """Split a raw request path (query excluded) into segments, dropping trailing slashes."""
    parts = path.split("/")[1:] if path.startswith("/") else path.split("/")
    while parts and not parts[-1]:
        parts.pop()
    return parts


def percent_decode(text: str, *, keep_reserved: bool = False) -> str:
    """Decode %XX escapes as UTF-8; with keep_reserved, escapes of reserved characters stay.

    Raises UnicodeDecodeError when the decoded bytes are not UTF-8 (proto strings must be).
    """
    if "%" not in text:
        return text
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("%") and i + 2 < len(raw) and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            byte = int(raw[i + 1 : i + 3], 16)
            if not (keep_reserved and byte in _RESERVED):
                out.append(byte)
                i += 3
                continue
        out.append(raw[i])
        i += 1
    return out.decode("utf-8")


def _match_segments(
    segments: tuple[Segment, ...], si: int, parts: list[str], pi: int
) -> list[int] | None:
    """Backtracking match; returns, per segment, the index of the part after it."""
    if si == len(segments):
        return [] if pi == len(parts) else None
    seg = segments[si]
    if seg.kind is SegmentKind.MULTI:
        # `**` takes zero or more parts, greedily, leaving enough for the rest of the template.
        for stop in range(len(parts), pi - 1, -1):
            rest = _match_segments(segments, si + 1, parts, stop)
            if rest is not None:
                return [stop, *rest]
        return None
    if pi >= len(parts):
        return None
    if seg.kind is SegmentKind.LITERAL and parts[pi] != seg.literal:
        return None
    if seg.kind is SegmentKind.SINGLE and not parts[pi]:
        return None
    rest = _match_segments(segments, si + 1, parts, pi + 1)
    return None if rest is None else [pi + 1, *rest]


class _Parser:
    """Recursive-descent parser over the template text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def parse(self) -> tuple[list[Segment], list[Variable], str]:
        if not self.text.startswith("/"):
            raise self._error("must start with '/'")
        self.pos = 1
        self._segments(in_variable=False)
        verb = ""
        if self._peek() == ":":
            self.pos += 1
            verb = self._literal()
        if self.pos != len(self.text):
            raise self._error(f"unexpected {self.text[self.pos]!r}")
        for i, seg in enumerate(self.segments):
            if seg.kind is SegmentKind.MULTI and i != len(self.segments) - 1:
                raise self._error("'**' must be the last segment")
        return self.segments, self.variables, verb

    def _segments(self, *, in_variable: bool) -> None:
        while True:
            self._segment(in_variable=in_variable)
            if self._peek() != "/":
                return
            self.pos += 1

    def _segment(self, *, in_variable: bool) -> None:
        if self.text.startswith("**", self.pos):
            self.pos += 2
            self.segments.append(Segment(SegmentKind.MULTI))
        elif self._peek() == "*":
            self.pos += 1
            self.segments.append(Segment(SegmentKind.SINGLE))
        elif self._peek() == "{":
            if in_variable:
                raise self._error("nested variables are not allowed")
            self._variable()
        else:
            self.segments.append(Segment(SegmentKind.LITERAL, self._literal()))

    def _variable(self) -> None:
        self.pos += 1  # "{"
        names = [self._ident()]
        while self._peek() == ".":
            self.pos += 1
            names.append(self._ident())
        start = len(self.segments)
        if self._peek() == "=":
            self.pos += 1
            self._segments(in_variable=True)
        else:
            self.segments.append(Segment(SegmentKind.SINGLE))
        if self._peek() != "}":
            raise self._error("expected '}'")
        self.pos += 1
        end = len(self.segments)
        multi = end - start > 1 or self.segments[end - 1].kind is SegmentKind.MULTI
        self.variables.append(Variable(tuple(names), start, end, multi))

    def _ident(self) -> str:
        found = _IDENT.match(self.text, self.pos)
        if found is None:
            raise self._error("expected a field name")
        self.pos = found.end()
        return found.group()

    def _literal(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in "/{}*:=":
            self.pos += 1
        if self.pos == start:
            raise self._error("expected a literal segment")
        return self.text[start : self.pos]

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _error(self, why: str) -> PathTemplateError:
        return PathTemplateError(f"path template {self.text!r} at {self.pos}: {why}")

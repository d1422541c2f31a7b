"""SQL composed one way (cartlytics.common.storage.sql): trusted ``Sql`` fragments with ``{name}``
slots, every other value a literal. No running system needed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cartlytics.common.storage.sql import EMPTY, Sql, render, when


def test_a_value_is_a_literal_never_a_slot() -> None:
    query = Sql("SELECT * FROM t WHERE a = {a} AND b = {b}")
    # A value holding slot syntax or quotes is rendered as one escaped literal: its {x} is text,
    # not a slot (no KeyError for x), and the quote cannot close the literal.
    text = render(query, {"a": "{b}", "b": "x' OR 1 = 1 --"})
    assert text == "SELECT * FROM t WHERE a = '{b}' AND b = 'x\\' OR 1 = 1 --'"
    assert render(Sql("{v}"), {"v": "{missing}"}) == "'{missing}'"
    assert render(Sql("{v}"), {"v": "back\\slash\nline"}) == "'back\\\\slash\\nline'"


def test_other_values_render_as_literals() -> None:
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    params = {"n": 5, "t": moment, "ids": ("a", "b"), "flag": True}
    assert render(Sql("{n} {ids} {flag}"), params) == "5 ('a', 'b') 1"
    assert render(Sql("{t}"), params) == "toDateTime('2026-03-01 12:30:00', 'UTC')"
    with pytest.raises(TypeError):
        render(Sql("{x}"), {"x": object()})


def test_a_missing_slot_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nowhere"):
        render(Sql("SELECT {nowhere}"), {"other": 1})
    # Also inside a fragment given as a parameter.
    with pytest.raises(KeyError, match="inner"):
        render(Sql("SELECT {part}"), {"part": Sql("{inner}")})


def test_nested_fragments_fill_from_the_same_parameters() -> None:
    inner = Sql("x = {value}")
    outer = Sql("SELECT 1 WHERE {condition} AND y IN ({sub})")
    sub = Sql("SELECT y FROM t WHERE {condition}")
    text = render(outer, {"condition": inner, "sub": sub, "value": "it's"})
    assert text == "SELECT 1 WHERE x = 'it\\'s' AND y IN (SELECT y FROM t WHERE x = 'it\\'s')"


def test_a_fragment_containing_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="nest too deep"):
        render(Sql("{loop}"), {"loop": Sql("({loop})")})


def test_when_gives_the_fragment_or_nothing() -> None:
    query = Sql("SELECT * FROM t WHERE a = 1{currency_filter}")
    clause = Sql(" AND currency = {currency}")
    assert when(True, clause) is clause
    assert when(False, clause) is EMPTY
    on = {"currency_filter": when(True, clause), "currency": "EUR"}
    off = {"currency_filter": when(False, clause)}  # no value needed for an absent clause
    assert render(query, on) == "SELECT * FROM t WHERE a = 1 AND currency = 'EUR'"
    assert render(query, off) == "SELECT * FROM t WHERE a = 1"
    assert not EMPTY


def test_fill_puts_fragments_in_now_and_leaves_values_for_render() -> None:
    rule = Sql("SELECT min(ts) FROM {rows} WHERE p = {project}{which}")
    filled = rule.fill(rows=Sql("orders"), which=Sql(" AND c = {currency}"))
    assert filled == Sql("SELECT min(ts) FROM orders WHERE p = {project} AND c = {currency}")
    assert filled.slots() == {"project", "currency"}
    # A fragment's text is not scanned again by fill: its own slots stay for render.
    assert Sql("{a}").fill(a=Sql("{a}")) == Sql("{a}")
    with pytest.raises(TypeError):
        rule.fill(rows="orders")  # type: ignore[arg-type]  # a str is not trusted SQL
    with pytest.raises(KeyError):
        rule.fill(typo=Sql("x"))


def test_composition() -> None:
    parts = [Sql("a = {a}"), Sql("b = 1")]
    joined = Sql("WHERE ") + Sql.join(" AND ", parts)
    assert joined.text == "WHERE a = {a} AND b = 1"
    assert "b = 1" in joined
    assert render(joined, {"a": 2}) == "WHERE a = 2 AND b = 1"
    with pytest.raises(TypeError):
        joined + "x"  # type: ignore[operator]


def test_plain_text_is_not_a_query() -> None:
    # Only code's own Sql reaches ClickHouse: a str (say, text that came with a request) is refused
    # before anything runs, even with no slot in it.
    with pytest.raises(TypeError, match="a query is a Sql fragment, not str"):
        render("SELECT 1", {})  # type: ignore[arg-type]

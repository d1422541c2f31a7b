"""The storage layer on both backends: migrations, literal rendering, round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cartlytics.common.storage import Sql, Storage, literal, render
from cartlytics.common.storage.migrations import MIGRATIONS


def test_migrations_are_recorded_and_idempotent(storage: Storage) -> None:
    assert storage.migrate() == []  # the fixture applied them already
    versions = [row[0] for row in storage.query_sync(Sql("SELECT version FROM schema_migrations"))]
    assert sorted(versions) == [m.version for m in MIGRATIONS]


HOSTILE = [
    "plain",
    "it's",
    "back\\slash",
    "'; DROP TABLE events; --",
    "\\'; SELECT 1; --",
    "new\nline\ttab\0nul",
    "unicode ☃ ü 漢字",
    "{project}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_round_trip_as_values(storage: Storage, value: str) -> None:
    rows = storage.query_sync(Sql("SELECT {v} AS v, length({v})"), {"v": value})
    assert rows == [(value, len(value.encode()))]


def test_events_round_trip(storage: Storage, project_id: str) -> None:
    ts = datetime(2024, 1, 15, 10, 35, 0, tzinfo=UTC)
    columns = ["project_id", "event_id", "event", "ts", "received_at", "total", "currency", "page"]
    storage.insert_sync(
        "events", columns, [(project_id, "evt_1", "order_completed", ts, ts, 6578, "USD", "/x'y")]
    )
    rows = storage.query_sync(
        Sql(
            "SELECT event_id, toString(toDate(ts)), total, currency, page, toUnixTimestamp(ts) "
            "FROM events WHERE project_id = {p}"
        ),
        {"p": project_id},
    )
    assert rows == [("evt_1", "2024-01-15", 6578, "USD", "/x'y", int(ts.timestamp()))]


def test_literals() -> None:
    assert literal(True) == "1"
    assert literal(-3) == "-3"
    assert literal("a'b") == "'a\\'b'"
    assert literal(["a", 1]) == "['a', 1]"
    assert literal(("a", "b'")) == "('a', 'b\\'')"
    assert literal(("a",)) == "('a')"
    with pytest.raises(ValueError):
        literal(())
    assert literal(datetime(2024, 1, 1, tzinfo=UTC)) == "toDateTime('2024-01-01 00:00:00', 'UTC')"
    with pytest.raises(ValueError):
        literal(datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        literal(float("nan"))
    with pytest.raises(KeyError):
        render(Sql("SELECT {missing}"), {})


@pytest.mark.parametrize("count", [1, 199, 200, 1500])
def test_inserts_of_every_size_round_trip(storage: Storage, project_id: str, count: int) -> None:
    """Small inserts go as JSON, large ones as Arrow on chdb: both must store the same values."""
    base = datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    columns = ["project_id", "order_id", "event_id", "line", "ts", "visitor_id", "currency",
               "product_id", "name", "category", "price", "quantity"]  # fmt: skip
    rows = [
        (project_id, f"o{n}", f"e{n}", n % 7, base, "v", "EUR", f"p{n}", "Näme, \"x\"", "c\n2",
         n * 1000, n + 1)
        for n in range(count)
    ]  # fmt: skip
    storage.insert_sync("order_items", columns, rows)
    got = storage.query_sync(
        Sql(
            "SELECT count(), sum(price), sum(quantity), sum(line), any(name), any(category), "
            "toUnixTimestamp(min(ts)) FROM order_items WHERE project_id = {p}"
        ),
        {"p": project_id},
    )
    assert got == [(
        count, sum(n * 1000 for n in range(count)), sum(n + 1 for n in range(count)),
        sum(n % 7 for n in range(count)), 'Näme, "x"', "c\n2", int(base.timestamp()),
    )]  # fmt: skip


def test_time_bounds_are_exact_around_sub_second_events(storage: Storage, project_id: str) -> None:
    """Regression: on ClickHouse 26 a DateTime constant against a DateTime64 column made the
    min-max index skip a one-row part (an event acknowledged a moment ago was not found)."""
    ts = datetime(2026, 3, 5, 10, 0, 52, 684000, tzinfo=UTC)
    storage.insert_sync("orders", ["project_id", "order_id", "event_id", "ts", "total", "currency"],
                        [(project_id, "o", "e", ts, 1, "USD")])  # fmt: skip
    sql = Sql("SELECT count() FROM orders WHERE project_id = {p} AND ts >= {lo} AND ts < {hi}")
    whole = ts.replace(microsecond=0)
    for lo, hi, expected in [
        (whole, whole + timedelta(seconds=1), 1),
        (whole - timedelta(minutes=15), whole + timedelta(seconds=1), 1),
        (whole + timedelta(seconds=1), whole + timedelta(seconds=2), 0),
    ]:
        assert storage.query_sync(sql, {"p": project_id, "lo": lo, "hi": hi}) == [(expected,)]

"""GET /analytics/funnel against the running system, compared with the plain-Python oracle.

The oracle tries every chain of events (tests/oracle_metrics.py); the service uses ClickHouse's
windowFunnel, whose handling of same-second events differs between 18.16 and 26. The shared
dataset has same-second consecutive events on purpose, and test_funnel_same_second pins them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import oracle_metrics as om
from tests.servers import System

PATH = "/analytics/funnel"

CASES: list[list[tuple[str, str]]] = [
    [],  # defaults: 30d, the purchase funnel, 86400 s, UTC
    [("period", "7d")],
    [("period", "90d"), ("window", "600")],
    [("period", "90d"), ("window", "1")],
    [("period", "90d"), ("steps", "page_view,search,product_view")],
    [("period", "90d"), ("steps", "page_view"), ("steps", "add_to_cart,order_completed")],
    [("period", "12m"), ("steps", "product_view, order_completed"), ("timezone", "Asia/Tokyo")],
    [
        ("period", "30d"),
        ("steps", "checkout_started,order_completed"),
        ("window", "300"),
        ("timezone", "America/Los_Angeles"),
    ],
    [("period", "90d"), ("steps", "add_to_cart,remove_from_cart"), ("window", "2592000")],
    [
        ("period", "3m"),
        (
            "steps",
            "page_view,search,product_view,add_to_cart,remove_from_cart,"
            "checkout_started,order_completed",
        ),
        ("timezone", "Asia/Kolkata"),
    ],
    [("period", "90d"), ("steps", "search,page_view")],
    [("period", "1d")],
    [("period", "90d"), ("steps", "signup,activation")],  # custom events nobody sent
]


def _expected(system: System, params: list[tuple[str, str]]) -> Any:
    values = dict(params)
    steps = [
        piece.strip() for key, value in params if key == "steps" for piece in value.split(",")
    ] or om.DEFAULT_STEPS

    def expect(now: datetime) -> dict[str, Any]:
        return om.funnel(
            om.stored_events(system),
            period=values.get("period", "30d"),
            steps=steps,
            window_seconds=int(values.get("window", "86400")),
            zone=ZoneInfo(values.get("timezone", "UTC")),
            now=now,
        )

    return expect


def _ids(params: list[tuple[str, str]]) -> str:
    return "-".join(v.replace(",", "+").replace(" ", "") for _, v in params) or "defaults"


@pytest.mark.parametrize("params", CASES, ids=_ids)
def test_funnel_matches_oracle(system: System, params: list[tuple[str, str]]) -> None:
    got = om.check(system, PATH, params, _expected(system, params))
    if ("period", "90d") in params and ("steps", "signup,activation") not in params:
        assert got["stages"][0]["count"] > 0


def test_funnel_dataset_has_same_second_steps(system: System) -> None:
    """Visitors with two different events in the same second exist in the dataset, so the
    cases above (page_view, search, product_view) cover steps done in one second."""
    seconds: dict[tuple[str, int], set[str]] = {}
    for event in om.stored_events(system):
        key = (om.visitor(event), int(om.timestamp(event).timestamp()))
        seconds.setdefault(key, set()).add(event["event"])
    pairs = [names for names in seconds.values() if len(names) >= 2]
    assert any({"page_view", "search"} <= names for names in pairs)
    assert any({"page_view", "product_view"} <= names for names in pairs)


def _event(event_id: str, name: str, who: str, ts: datetime) -> dict[str, Any]:
    return {"id": event_id, "event": name, "userId": who, "timestamp": om.iso(ts), "properties": {}}


def test_funnel_same_second_and_window(system: System) -> None:
    """Custom events ft_* exist only here: hand-computed figures, and the oracle agrees."""
    t = (datetime.now(UTC) - timedelta(days=1, hours=3)).replace(microsecond=0)
    s = timedelta(seconds=1)
    batches = [
        # ft_v1: all three steps in one second, sent (and stored) in reverse order.
        [_event("ft_01", "ft_c", "ft_v1", t)],
        [_event("ft_02", "ft_b", "ft_v1", t)],
        [_event("ft_03", "ft_a", "ft_v1", t)],
        # ft_v2: step 2 one second before step 1: only step 1.
        [_event("ft_04", "ft_b", "ft_v2", t - s), _event("ft_05", "ft_a", "ft_v2", t)],
        # ft_v3: steps 2 and 3 exactly 10 s after step 1: inside a 10 s window, not a 9 s one.
        [
            _event("ft_06", "ft_a", "ft_v3", t),
            _event("ft_07", "ft_b", "ft_v3", t + 10 * s),
            _event("ft_08", "ft_c", "ft_v3", t + 10 * s),
        ],
        # ft_v4: step 3 before step 2: reaches step 2 only.
        [
            _event("ft_09", "ft_a", "ft_v4", t),
            _event("ft_10", "ft_c", "ft_v4", t + s),
            _event("ft_11", "ft_b", "ft_v4", t + 2 * s),
        ],
        # ft_v5: a later step 1 starts a new window.
        [
            _event("ft_12", "ft_a", "ft_v5", t),
            _event("ft_13", "ft_a", "ft_v5", t + 100 * s),
            _event("ft_14", "ft_b", "ft_v5", t + 105 * s),
        ],
    ]
    for batch in batches:
        om.send(system, batch)
    steps = [("period", "7d"), ("steps", "ft_a,ft_b,ft_c")]
    ten = {
        "stages": [
            {"name": "ft_a", "count": 5, "rate": 100.0},
            {"name": "ft_b", "count": 4, "rate": 80.0},
            {"name": "ft_c", "count": 2, "rate": 50.0},
        ],
        "conversionRate": 40.0,
    }
    om.check(system, PATH, [*steps, ("window", "10")], lambda now: ten)
    nine = {
        "stages": [
            {"name": "ft_a", "count": 5, "rate": 100.0},
            {"name": "ft_b", "count": 3, "rate": 60.0},
            {"name": "ft_c", "count": 1, "rate": 33.3},
        ],
        "conversionRate": 20.0,
    }
    om.check(system, PATH, [*steps, ("window", "9")], lambda now: nine)
    for window, expected in (("10", ten), ("9", nine)):
        params = [*steps, ("window", window)]
        assert _expected(system, params)(datetime.now(UTC)) == expected
    # Reversed: ft_b then ft_a, no earlier. ft_v1 (same second) and ft_v2 (a one second after
    # b) reach step 2; ft_v3, ft_v4 and ft_v5 did ft_a only before their ft_b.
    reverse = {
        "stages": [
            {"name": "ft_b", "count": 5, "rate": 100.0},
            {"name": "ft_a", "count": 2, "rate": 40.0},
        ],
        "conversionRate": 40.0,
    }
    reverse_params = [("period", "7d"), ("steps", "ft_b,ft_a")]
    om.check(system, PATH, reverse_params, lambda now: reverse)
    assert _expected(system, reverse_params)(datetime.now(UTC)) == reverse
    # Standard events show their display name; after an empty step, rates and conversion are 0.
    empty = {
        "stages": [
            {"name": "ft_b", "count": 5, "rate": 100.0},
            {"name": "Searches", "count": 0, "rate": 0.0},
            {"name": "ft_c", "count": 0, "rate": 0.0},
        ],
        "conversionRate": 0.0,
    }
    om.check(system, PATH, [("period", "7d"), ("steps", "ft_b,search,ft_c")], lambda now: empty)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([("steps", "page_view")], "steps"),
        ([("steps", "a,b,c,d,e,f,g,h,i")], "steps"),
        ([("steps", "page_view,Order_Completed")], "steps"),
        ([("steps", "page_view,,order_completed")], "steps"),
        ([("steps", "page_view,page_view")], "steps"),
        ([("steps", "page_view"), ("steps", "page_view")], "steps"),
        ([("window", "-5")], "window"),
        ([("window", "2592001")], "window"),
        ([("period", "25m")], "period"),
        ([("timezone", "Mars/Olympus")], "timezone"),
    ],
)
def test_funnel_refuses_bad_parameters(
    system: System, params: list[tuple[str, str]], field: str
) -> None:
    om.assert_refused(system, PATH, params, field)

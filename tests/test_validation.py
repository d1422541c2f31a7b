"""Event validation rules, on plain data (no gRPC, no storage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cartlytics.common.errors import FieldViolation
from services.ingest.validation import IncomingEvent, ValidEvent, compact_json, validate

NOW = datetime(2024, 1, 15, 10, 36, tzinfo=UTC)


def _check(event: str, props: dict[str, Any], **fields: Any) -> ValidEvent | list[FieldViolation]:
    fields.setdefault("user_id", "user_xyz789")
    return validate(IncomingEvent(event=event, properties=props, **fields), NOW, lambda: "evt_new")


def _fields(outcome: ValidEvent | list[FieldViolation]) -> list[str]:
    assert isinstance(outcome, list), "expected a refusal"
    return [v.field for v in outcome]


VALID = [
    ("page_view", {"page": "/products/shirts", "referrer": "https://google.com"}),
    ("product_view", {"productId": "p1", "name": "T-Shirt", "price": 2999, "currency": "USD"}),
    ("product_view", {"productId": "prod_abc123"}),
    ("add_to_cart", {"productId": "p", "variantId": "v", "quantity": 2}),
    ("remove_from_cart", {"productId": "p", "quantity": 1}),
    ("checkout_started", {"cartId": "c", "total": 6578, "itemCount": 3}),
    ("order_completed", {"orderId": "o", "total": 6578, "currency": "USD", "items": 3}),
    ("search", {"query": "shirt", "resultCount": 0}),
    ("wishlist_added", {"anything": {"goes": [1, 2]}}),
]  # fmt: skip


@pytest.mark.parametrize(("event", "props"), VALID)
def test_valid_events_pass(event: str, props: dict[str, Any]) -> None:
    outcome = _check(event, props)
    assert isinstance(outcome, ValidEvent), outcome
    assert outcome.id == "evt_new"
    assert outcome.timestamp == NOW


INVALID = [
    ("page_view", {}, "properties.page"),
    ("page_view", {"page": 3}, "properties.page"),
    ("product_view", {}, "properties.productId"),
    ("product_view", {"productId": "p", "price": 29.99}, "properties.price"),
    ("product_view", {"productId": "p", "price": -1}, "properties.price"),
    ("product_view", {"productId": "p", "price": "2999"}, "properties.price"),
    ("product_view", {"productId": "p", "currency": "usd"}, "properties.currency"),
    ("add_to_cart", {"productId": "p", "quantity": 0}, "properties.quantity"),
    ("add_to_cart", {"productId": "p", "quantity": 1.5}, "properties.quantity"),
    ("remove_from_cart", {"quantity": 1}, "properties.productId"),
    ("checkout_started", {"total": True}, "properties.total"),
    ("checkout_started", {"itemCount": -2}, "properties.itemCount"),
    ("order_completed", {"total": 1, "currency": "USD"}, "properties.orderId"),
    ("order_completed", {"orderId": "o", "currency": "USD"}, "properties.total"),
    ("order_completed", {"orderId": "o", "total": 1}, "properties.currency"),
    ("order_completed", {"orderId": "o", "total": 1, "currency": "ABC"}, "properties.currency"),
    ("order_completed", {"orderId": "", "total": 1, "currency": "USD"}, "properties.orderId"),
    ("search", {}, "properties.query"),
    ("search", {"query": "q", "resultCount": -1}, "properties.resultCount"),
    ("Bad-Name", {}, "event"),
    ("", {}, "event"),
]  # fmt: skip


@pytest.mark.parametrize(("event", "props", "field"), INVALID)
def test_each_rule_names_its_field(event: str, props: dict[str, Any], field: str) -> None:
    assert _fields(_check(event, props)) == [field]


def test_page_may_come_from_context() -> None:
    outcome = _check("page_view", {}, context={"page": "/checkout"})
    assert isinstance(outcome, ValidEvent)
    assert outcome.page == "/checkout"


def test_line_items_are_checked_one_by_one() -> None:
    props: dict[str, Any] = {
        "orderId": "o",
        "total": 100,
        "currency": "EUR",
        "products": [
            {"productId": "a", "price": 50, "quantity": 2, "name": "A", "category": "c"},
            {"productId": "b", "price": -5, "quantity": 0},
        ],
    }
    assert _fields(_check("order_completed", props)) == [
        "properties.products[1].price",
        "properties.products[1].quantity",
    ]
    props["products"] = props["products"][:1]
    outcome = _check("order_completed", props)
    assert isinstance(outcome, ValidEvent)
    assert [(i.product_id, i.price, i.quantity) for i in outcome.line_items] == [("a", 50, 2)]


def test_a_visitor_is_required() -> None:
    assert _fields(_check("search", {"query": "q"}, user_id="")) == ["userId"]
    outcome = _check("search", {"query": "q"}, user_id="", anonymous_id="anon")
    assert isinstance(outcome, ValidEvent)
    assert outcome.visitor_id == "anon"


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The client's clock is 2 hours fast: it says the event happened at 12:30, sent at 12:35.
    outcome = _check(
        "search",
        {"query": "q"},
        timestamp=NOW + timedelta(hours=2) - timedelta(minutes=5),
        sent_at=NOW + timedelta(hours=2),
    )
    assert isinstance(outcome, ValidEvent)
    assert outcome.timestamp == NOW - timedelta(minutes=5)


def test_time_limits() -> None:
    future = _check("search", {"query": "q"}, timestamp=NOW + timedelta(hours=1, seconds=1))
    assert _fields(future) == ["timestamp"]
    old = _check("search", {"query": "q"}, timestamp=NOW - timedelta(days=367))
    assert _fields(old) == ["timestamp"]
    edge = _check("search", {"query": "q"}, timestamp=NOW - timedelta(days=365))
    assert isinstance(edge, ValidEvent)


def test_client_ids_are_kept_and_checked() -> None:
    outcome = _check("search", {"query": "q"}, id="evt_client-1")
    assert isinstance(outcome, ValidEvent)
    assert outcome.id == "evt_client-1"
    assert _fields(_check("search", {"query": "q"}, id="bad id")) == ["id"]


def test_oversized_event_is_refused() -> None:
    assert _fields(_check("wishlist_added", {"blob": "x" * 40_000})) == ["properties"]


def _size(value: Any) -> int:
    """The size rule's measure: json.dumps' default text (docs/semantics.md, "Limits")."""
    import json

    return len(json.dumps(value))


@pytest.mark.parametrize("limit", [64, 200, 1_000, 32_768])
@pytest.mark.parametrize(
    "content",
    [
        "a",  # ASCII: one character either way
        "\U0001f600",  # astral: 1 character compact, 12 as json.dumps escapes it
        "é",  # BMP: 1 compact, 6 escaped
    ],
)
def test_the_size_rule_is_exact_at_its_boundary(limit: int, content: str) -> None:
    """An event is refused exactly when properties and context, printed as json.dumps prints
    them, exceed the limit: at the boundary, with separators and escaped characters, and where
    the compact text is far shorter than the printed one."""
    context = {"page": {"path": "/x"}}

    def props_of(repeat: int) -> dict[str, Any]:
        return {"productId": "p", "s": content * repeat, "list": [1, {"k": "v"}]}

    # Around the repeat count where the printed size passes the limit, and none at all.
    boundary = (limit - _size(props_of(0)) - _size(context)) // (_size(content) - 2)
    for repeat in [0, *range(max(0, boundary - 3), boundary + 4)]:
        props = props_of(repeat)
        outcome = validate(
            IncomingEvent(event="product_view", user_id="u", properties=props, context=context),
            NOW,
            lambda: "evt_new",
            max_event_bytes=limit,
        )
        refused = isinstance(outcome, list) and "properties" in _fields(outcome)
        assert refused == (_size(props) + _size(context) > limit), (limit, repeat)
        if not refused:
            assert isinstance(outcome, ValidEvent)
            assert outcome.properties_json == json_text(props)


def json_text(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 1, "b": [1, 2.5, -0.0, 1e20, 1e-7, float("nan"), float("inf"), -float("inf")]},
        {"é": "ü 漢 \U0001f600", "lone": "\ud800", "ctl": '\n\t\x00"\\/'},
        {"deep": [[[{"x": None, "y": True, "z": False}]]], "big": 10**40, "neg": -(2**63)},
        {1: "int key", "s": "x" * 1000},
    ],
)
def test_compact_json_is_json_dumps_compact_text(value: dict[Any, Any]) -> None:
    """The stored text is exactly what json.dumps prints with these options (the fast encoder
    must not change a stored byte)."""
    import json

    assert compact_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_compact_json_refuses_what_json_dumps_refuses() -> None:
    import json

    for value in ({"x": object()}, {"s": {1, 2}}):
        with pytest.raises(TypeError):
            json.dumps(value)
        with pytest.raises(TypeError):
            compact_json(value)


def test_the_realtime_part_of_an_event_and_of_its_row_agree_field_by_field() -> None:
    """The counters read an event's realtime part from the ValidEvent (prepared here) or from
    its stored row (records from elsewhere): both name each field as the event does."""
    from services.ingest.enrichment import enrich
    from services.ingest.rows import event_row, realtime_of, realtime_of_row

    now = datetime.now(UTC)
    incoming = [
        IncomingEvent(event="page_view", user_id="u1", anonymous_id="a1",
                      properties={"page": "/p"}),
        IncomingEvent(event="order_completed", anonymous_id="a2", session_id="s2",
                      properties={"orderId": "o1", "total": 1250, "currency": "EUR"}),
        IncomingEvent(event="product_view", user_id="u3", session_id="s3",
                      properties={"productId": "x"}),
    ]  # fmt: skip
    for event in incoming:
        valid = validate(event, now, lambda: "evt_1")
        assert isinstance(valid, ValidEvent)
        row = event_row("p", valid, enrich(valid.properties, valid.context, ip_salt=b"s" * 32))
        part = realtime_of(valid)
        assert realtime_of_row(row) == part
        expected = {
            "event_id": "evt_1",
            "event": event.event,
            "ts": valid.timestamp,
            "visitor_id": event.user_id or event.anonymous_id or event.session_id,
            "page": "/p" if event.event == "page_view" else "",
            "order_id": "o1" if event.event == "order_completed" else "",
            "total": 1250 if event.event == "order_completed" else 0,
            "currency": "EUR" if event.event == "order_completed" else "",
            "user_id": event.user_id,
            "anonymous_id": event.anonymous_id,
        }
        assert part._asdict() == expected


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"productId": "   "}, [("properties.productId", "must not be empty")]),
        ({"productId": ""}, [("properties.productId", "must not be empty")]),
        ({"productId": "p" * 2048}, []),  # at the limit
        (
            {"productId": "p" * 2049},
            [("properties.productId", "must be at most 2048 characters")],
        ),
        (
            {"productId": " " * 2049},
            [
                ("properties.productId", "must not be empty"),
                ("properties.productId", "must be at most 2048 characters"),
            ],
        ),
        ({"productId": 7}, [("properties.productId", "must be a string")]),
        ({"productId": "p", "quantity": 1}, []),
        ({"productId": "p", "quantity": 10**6}, []),
        ({"productId": "p", "quantity": 0}, [("properties.quantity", "must be at least 1")]),
        (
            {"productId": "p", "quantity": 10**6 + 1},
            [("properties.quantity", "must be at most 1000000")],
        ),
        ({"productId": "p", "quantity": 2.0}, []),
        ({"productId": "p", "quantity": True}, [("properties.quantity", "must be a number")]),
    ],
)
def test_a_propertys_rules_at_their_edges(props: dict[str, Any], expected: list[Any]) -> None:
    """Each rule of a string and a count property, at and past its edge (the usual values are
    checked first; the rules must read the same either way)."""
    outcome = _check("add_to_cart", props)
    if not expected:
        assert isinstance(outcome, ValidEvent)
        return
    assert isinstance(outcome, list)
    assert [(v.field, v.description) for v in outcome] == expected

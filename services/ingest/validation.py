"""Validation of incoming events: the standard events of the API and custom ones.

Plain Python over plain data, so the rules are testable without gRPC. Every refusal names the field
(its path inside the event, e.g. ``properties.total``) and the rule it broke.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from cartlytics.common.errors import FieldViolation
from cartlytics.common.money import is_currency

CUSTOM_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
# Numeric limits (docs/semantics.md "Numbers"), chosen with the storage and wire types:
# - an amount (total, price) is at most 10^12 minor units (10 billion USD, 1 trillion JPY), so a
#   line's price * quantity (at most 10^18) fits Int64 and sums of a real shop's amounts stay far
#   below 2^53, the largest whole number a JSON number (a double) holds exactly. Sums are done in
#   Decimal128 anyway and a figure above 2^53 is an explicit error, never a rounded double.
# - a line's quantity is at most 10^6 (order_items.quantity is UInt32);
# - counts a store reports (items, itemCount, resultCount) fit an int32;
# - any other number must be finite, and a whole one within +-(2^53 - 1): every number travels
#   as a double (google.protobuf.Struct) and is stored as JSON text.
MAX_AMOUNT = 10**12
MAX_QUANTITY = 10**6
MAX_COUNT = 2**31 - 1
MAX_SAFE_INTEGER = 2**53 - 1
MAX_ID_LENGTH = 256
MAX_EVENT_BYTES = 32 * 1024
MAX_FUTURE = timedelta(hours=1)
MAX_AGE = timedelta(days=366)
FUTURE_RULE = "must not be more than 1 hour in the future"
AGE_RULE = "must not be more than 366 days old"


@dataclass(slots=True)
class IncomingEvent:
    """An event as the client sent it (wire types already decoded)."""

    event: str
    id: str = ""
    user_id: str = ""
    anonymous_id: str = ""
    session_id: str = ""
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    decode_violations: list[FieldViolation] = field(default_factory=list)
    """What could not even be decoded from the wire (e.g. a Timestamp out of range)."""
    numbers_checked: bool = False
    """Every number in ``properties`` and ``context`` is already known to be finite and within
    +-(2^53 - 1) (the REST parser checks while it walks them), so validation need not walk them
    again for the number rule."""


@dataclass(frozen=True)
class LineItem:
    product_id: str
    name: str
    category: str
    price: int
    quantity: int


class ValidEvent(NamedTuple):
    """An event that passed every rule, with its typed commerce fields extracted. Immutable; a
    NamedTuple rather than a frozen dataclass, whose __init__ sets each of these fields through
    object.__setattr__ (a fifth of validating an event)."""

    id: str
    event: str
    timestamp: datetime
    received_at: datetime
    user_id: str
    anonymous_id: str
    session_id: str
    visitor_id: str
    order_id: str
    total: int
    currency: str
    product_id: str
    page: str
    properties: dict[str, Any]
    context: dict[str, Any]
    line_items: tuple[LineItem, ...]
    client_id: bool  # the id came from the client (so a retry may repeat it)
    # ``properties`` as compact JSON (the text stored), made once while checking the size.
    properties_json: str = ""


class _Checker:
    """Collects violations for one event's properties."""

    def __init__(self, props: dict[str, Any]) -> None:
        self.props = props
        self.violations: list[FieldViolation] = []

    def fail(self, name: str, rule: str) -> None:
        self.violations.append(FieldViolation(name, rule))

    def string(self, key: str, required: bool = False, base: str = "properties") -> str:
        value = self.props.get(key)
        if type(value) is str and value and len(value) <= MAX_ID_LENGTH * 8:
            # The usual case, checked first: no name made for a rule not broken.
            if required and not value.strip():
                self.fail(f"{base}.{key}", "must not be empty")
            return value
        name = f"{base}.{key}"
        if value is None:
            if required:
                self.fail(name, "is required")
            return ""
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return ""
        if required and not value.strip():
            self.fail(name, "must not be empty")
        if len(value) > MAX_ID_LENGTH * 8:
            self.fail(name, f"must be at most {MAX_ID_LENGTH * 8} characters")
        return value

    def integer(
        self,
        key: str,
        *,
        minimum: int,
        maximum: int = MAX_COUNT,
        required: bool = False,
        base: str = "properties",
    ) -> int | None:
        value = self.props.get(key)
        if type(value) is int and minimum <= value <= maximum:  # the usual case, checked first
            return value
        name = f"{base}.{key}"
        if value is None:
            if required:
                self.fail(name, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, "must be a number")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(name, "must be a finite number")
            return None
        if isinstance(value, float) and not value.is_integer():
            self.fail(name, "must be a whole number")
            return None
        number = int(value)
        if number < minimum:
            self.fail(name, f"must be at least {minimum}")
            return None
        if number > maximum:
            self.fail(name, f"must be at most {maximum}")
            return None
        return number

    def amount(self, key: str, required: bool = False) -> int | None:
        """Money: a non-negative whole number of minor units (cents)."""
        before = len(self.violations)
        value = self.integer(key, minimum=0, maximum=MAX_AMOUNT, required=required)
        if len(self.violations) > before and self.violations[-1].description.startswith("must be"):
            last = self.violations.pop()
            self.fail(last.field, f"{last.description} (an amount in minor units, e.g. 2999)")
        return value

    def currency(self, key: str, required: bool = False) -> str:
        value = self.string(key, required=required)
        if value and not is_currency(value):
            self.fail(f"properties.{key}", "must be an ISO 4217 currency code such as USD")
            return ""
        return value


def _line_items(checker: _Checker) -> tuple[LineItem, ...]:
    raw = checker.props.get("products")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        checker.fail("properties.products", "must be a list of line items")
        return ()
    if len(raw) > 1000:
        checker.fail("properties.products", "must have at most 1000 line items")
        return ()
    items = []
    for index, item in enumerate(raw):
        base = f"properties.products[{index}]"
        if not isinstance(item, dict):
            checker.fail(base, "must be an object")
            continue
        sub = _Checker(item)
        product_id = sub.string("productId", required=True, base=base)
        name = sub.string("name", base=base)
        category = sub.string("category", base=base)
        price = sub.integer("price", minimum=0, maximum=MAX_AMOUNT, required=True, base=base)
        quantity = sub.integer(
            "quantity", minimum=1, maximum=MAX_QUANTITY, required=True, base=base
        )
        checker.violations.extend(sub.violations)
        if not sub.violations and price is not None and quantity is not None:
            items.append(LineItem(product_id, name, category, price, quantity))
    return tuple(items)


def _page_view(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("page")
    c.string("referrer")
    if "page" not in c.props and not isinstance(ctx.get("page"), str):
        c.fail("properties.page", "is required (or context.page)")


def _product_view(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("productId", required=True)
    c.string("name")
    c.amount("price")
    c.currency("currency")


def _add_to_cart(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("productId", required=True)
    c.string("variantId")
    c.integer("quantity", minimum=1, maximum=MAX_QUANTITY)
    c.amount("price")
    c.currency("currency")


def _remove_from_cart(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("productId", required=True)
    c.integer("quantity", minimum=1, maximum=MAX_QUANTITY)


def _checkout_started(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("cartId")
    c.amount("total")
    c.integer("itemCount", minimum=0)
    c.currency("currency")


def _order_completed(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("orderId", required=True)
    c.amount("total", required=True)
    c.currency("currency", required=True)
    c.integer("items", minimum=0)


def _search(c: _Checker, ctx: dict[str, Any]) -> None:
    c.string("query", required=True)
    c.integer("resultCount", minimum=0)


STANDARD_EVENTS: dict[str, Callable[[_Checker, dict[str, Any]], None]] = {
    "page_view": _page_view,
    "product_view": _product_view,
    "add_to_cart": _add_to_cart,
    "remove_from_cart": _remove_from_cart,
    "checkout_started": _checkout_started,
    "order_completed": _order_completed,
    "search": _search,
}


NUMBER_RULE = (
    f"must be a finite number between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER} "
    "(beyond, a JSON number is not exact)"
)
MAX_NUMBER_VIOLATIONS = 10


def _bad_number(item: Any) -> bool:
    return (
        isinstance(item, float | int)
        and not isinstance(item, bool)
        and not (math.isfinite(item) and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER)
    )


def _any_bad_number(value: Any) -> bool:
    # Exact types first (decoded JSON holds nothing else), then the general checks; this runs
    # over every value of every event.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif _bad_number(item):
            return True
    return False


def _check_numbers(base: str, value: Any, violations: list[FieldViolation]) -> None:
    """Every number anywhere in ``value`` (properties or context) is finite and within
    +-(2^53 - 1): numbers travel as doubles and are stored as JSON text, so nothing beyond is
    exact, and an infinity or NaN has no JSON form at all. Iterative: nesting depth is the
    client's choice."""
    if not _any_bad_number(value):
        return  # the usual case: no path strings built
    found = 0
    stack: list[tuple[str, Any]] = [(base, value)]
    while stack and found < MAX_NUMBER_VIOLATIONS:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}", child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
        elif _bad_number(item):
            violations.append(FieldViolation(path, NUMBER_RULE))
            found += 1


def _check_identity(incoming: IncomingEvent, violations: list[FieldViolation]) -> None:
    user_id, anonymous_id = incoming.user_id, incoming.anonymous_id
    if len(user_id) > MAX_ID_LENGTH:
        violations.append(FieldViolation("userId", _ID_LENGTH_RULE))
    if len(anonymous_id) > MAX_ID_LENGTH:
        violations.append(FieldViolation("anonymousId", _ID_LENGTH_RULE))
    if len(incoming.session_id) > MAX_ID_LENGTH:
        violations.append(FieldViolation("sessionId", _ID_LENGTH_RULE))
    if not user_id and not anonymous_id:
        violations.append(FieldViolation("userId", "userId or anonymousId is required"))
    if incoming.id and not CLIENT_ID.match(incoming.id):
        violations.append(
            FieldViolation("id", "must be 1-64 characters of letters, digits, '_', '.', ':', '-'")
        )


_ID_LENGTH_RULE = f"must be at most {MAX_ID_LENGTH} characters"


def _event_time(
    incoming: IncomingEvent, received_at: datetime, violations: list[FieldViolation]
) -> datetime:
    """Event time, corrected for client clock skew when ``sentAt`` is given."""
    if incoming.timestamp is None:
        return received_at
    timestamp = incoming.timestamp
    if incoming.sent_at is not None:
        # Checked as a skew first: the corrected time of a sentAt centuries away from the
        # timestamp is no representable date (an OverflowError, once a 500).
        skew = incoming.sent_at - incoming.timestamp
        if skew < -MAX_FUTURE:
            violations.append(FieldViolation("timestamp", FUTURE_RULE))
            return received_at
        if skew > MAX_AGE:
            violations.append(FieldViolation("timestamp", AGE_RULE))
            return received_at
        timestamp = received_at - skew
    if timestamp > received_at + MAX_FUTURE:
        violations.append(FieldViolation("timestamp", FUTURE_RULE))
    elif timestamp < received_at - MAX_AGE:
        violations.append(FieldViolation("timestamp", AGE_RULE))
    return timestamp


def _compact_encoder() -> Callable[[Any, int], Any] | None:
    """CPython's C encoder, made once: ``json.dumps`` builds a JSONEncoder and a C encoder on
    every call whenever it is given options (two thirds of its time for an event's properties).
    No circular-reference markers: decoded JSON (or a Struct) cannot hold a cycle, and the C
    encoder still stops at the interpreter's recursion limit."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator: json.dumps then
        return None
    plain = json.JSONEncoder()
    encoder: Callable[[Any, int], Any] = make(
        None, plain.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    return encoder


_COMPACT = _compact_encoder()


def compact_json(value: Any) -> str:
    """The JSON text stored for ``properties`` and ``context``: ``json.dumps(value,
    ensure_ascii=False, separators=(",", ":"))``, the same text, faster."""
    if not value and type(value) is dict:  # most contexts, some properties: no encoder call
        return "{}"
    if _COMPACT is None:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "".join(_COMPACT(value, 0))


def _too_large(properties_json: str, incoming: IncomingEvent, max_event_bytes: int) -> bool:
    """The size rule: ``properties`` and ``context`` as ``json.dumps`` prints them by default
    (", " and ": " between items, non-ASCII characters as \\u escapes) take more than
    ``max_event_bytes`` characters. That text is at most 12 characters for each character of the
    compact one (an escaped astral character; a separator gains one), so it is printed only
    when the compact text is long enough for the rule to matter."""
    compact = len(properties_json) + len(compact_json(incoming.context))
    if compact * 12 <= max_event_bytes:
        return False
    size = len(json.dumps(incoming.properties)) + len(json.dumps(incoming.context))
    return size > max_event_bytes


def validate(
    incoming: IncomingEvent,
    received_at: datetime,
    new_id: Callable[[], str],
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> ValidEvent | list[FieldViolation]:
    """Return the valid event, or every rule it broke."""
    violations: list[FieldViolation] = list(incoming.decode_violations)
    name = incoming.event
    if not name:
        violations.append(FieldViolation("event", "is required"))
    elif name not in STANDARD_EVENTS and not CUSTOM_EVENT.match(name):
        violations.append(
            FieldViolation("event", "must be a standard event or match ^[a-z][a-z0-9_]{0,63}$")
        )
    _check_identity(incoming, violations)
    timestamp = _event_time(incoming, received_at, violations)
    properties_json = compact_json(incoming.properties)
    if _too_large(properties_json, incoming, max_event_bytes):
        violations.append(
            FieldViolation("properties", f"event must be at most {max_event_bytes} bytes")
        )
    checker = _Checker(incoming.properties)
    rules = STANDARD_EVENTS.get(name)
    if rules is not None:
        rules(checker, incoming.context)
    line_items = _line_items(checker) if name == "order_completed" else ()
    violations.extend(checker.violations)
    if not incoming.numbers_checked:
        # The general number rule, for the fields the event's own rules did not already refuse.
        numbers: list[FieldViolation] = []
        _check_numbers("properties", incoming.properties, numbers)
        _check_numbers("context", incoming.context, numbers)
        if numbers:
            named = {v.field for v in checker.violations}
            violations.extend(v for v in numbers if v.field not in named)
    if violations:
        return violations
    props = incoming.properties
    page = props.get("page") if name == "page_view" else None
    if not isinstance(page, str) or not page:
        context_page = incoming.context.get("page")
        page = context_page if isinstance(context_page, str) else ""
    total = props.get("total")
    product_id = props.get("productId")
    # Positional: built by keyword, a NamedTuple binds its 18 arguments by name (one per event).
    return ValidEvent(
        incoming.id or new_id(),  # id
        name,  # event
        timestamp.astimezone(UTC),  # timestamp
        received_at,
        incoming.user_id,
        incoming.anonymous_id,
        incoming.session_id,
        incoming.user_id or incoming.anonymous_id or incoming.session_id,  # visitor_id
        str(props.get("orderId") or "") if name == "order_completed" else "",  # order_id
        int(total) if isinstance(total, int | float) and not isinstance(total, bool) else 0,
        str(props.get("currency") or ""),  # currency
        product_id if isinstance(product_id, str) else "",  # product_id
        page,
        props,  # properties
        incoming.context,
        line_items,
        bool(incoming.id),  # client_id
        properties_json,
    )

"""The gateway's compiled JSON printer (gateway/json_printer.py) prints every message the API
defines exactly as protobuf's own ``json_format.MessageToDict`` (with
``always_print_fields_with_no_presence``) does: random messages of every type, every field kind
(int64 as text, doubles with infinities and NaN, enums, bytes, maps, Timestamps, Structs),
fields set, unset and set to their defaults."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor, json_format
from google.protobuf.message_factory import GetMessageClass

from cartlytics.common.catalog import FILES
from gateway.json_printer import message_to_dict, message_to_json_value

_FD = descriptor.FieldDescriptor
_WELL_KNOWN = "google.protobuf."


def _message_types() -> Iterator[descriptor.Descriptor]:
    seen: set[str] = set()

    def walk(message_type: descriptor.Descriptor) -> Iterator[descriptor.Descriptor]:
        if message_type.full_name in seen or message_type.GetOptions().map_entry:
            return
        seen.add(message_type.full_name)
        yield message_type
        for nested in message_type.nested_types:
            yield from walk(nested)

    for file in FILES:
        for message_type in file.message_types_by_name.values():
            yield from walk(message_type)


MESSAGE_TYPES = sorted(_message_types(), key=lambda m: m.full_name)


def _scalar(field: Any, rng: random.Random) -> Any:
    kind = field.cpp_type
    if kind == _FD.CPPTYPE_STRING:
        if field.type == _FD.TYPE_BYTES:
            return rng.randbytes(rng.randint(0, 6))
        return rng.choice(["", "a", "prod_1", "é ü 漢", "x" * 20])
    if kind == _FD.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if kind in (_FD.CPPTYPE_INT64,):
        return rng.choice([0, 1, -1, 2**53 + 1, -(2**63), 2**63 - 1, rng.randint(-999, 999)])
    if kind == _FD.CPPTYPE_UINT64:
        return rng.choice([0, 1, 2**53 + 1, 2**64 - 1])
    if kind == _FD.CPPTYPE_INT32:
        return rng.choice([0, -1, 2**31 - 1, -(2**31), rng.randint(-99, 99)])
    if kind == _FD.CPPTYPE_UINT32:
        return rng.choice([0, 1, 2**32 - 1])
    if kind in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
        return rng.choice([0.0, -0.0, 1.5, 6578.0, 1e300 if kind == _FD.CPPTYPE_DOUBLE else 1e30,
                           math.inf, -math.inf, math.nan, 0.1, -2.25])  # fmt: skip
    if kind == _FD.CPPTYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        if not field.enum_type.is_closed and rng.random() < 0.2:
            return 999  # a number an open enum does not define
        return rng.choice(numbers)
    raise AssertionError(f"unhandled field kind {kind}")


def _json_value(rng: random.Random, depth: int) -> Any:
    kinds = ["null", "number", "string", "bool"] + (["struct", "list"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "number":
        return rng.choice([0, 3, -7.5, 2**52, 1e20])
    if kind == "string":
        return rng.choice(["", "s", "ü"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "struct":
        return {f"k{i}": _json_value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    if kind == "list":
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return None


def _fill(message: Any, rng: random.Random, depth: int = 0) -> None:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        seconds = [0, 1_768_473_300, 253_402_300_799, -62_135_596_800, -1, 86_399]
        message.seconds = rng.choice(seconds)
        message.nanos = rng.choice([0, 1_000_000, 123_456_000, 999_999_999])
        return
    if name == "google.protobuf.Struct":
        message.update({f"f{i}": _json_value(rng, depth) for i in range(rng.randint(0, 4))})
        return
    if name.startswith(_WELL_KNOWN):
        return  # other well-known types: left empty (printed by json_format in both)
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue  # unset: a default, or absent when it has presence
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            key_field = field.message_type.fields_by_name["key"]
            target = getattr(message, field.name)
            for _ in range(rng.randint(0, 3)):
                key = _scalar(key_field, rng)
                if value_field.message_type is not None:
                    if depth < 3:
                        _fill(target[key], rng, depth + 1)
                else:
                    target[key] = _scalar(value_field, rng)
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(rng.randint(0, 3)):
                if field.message_type is not None:
                    if depth < 3:
                        _fill(target.add(), rng, depth + 1)
                else:
                    target.append(_scalar(field, rng))
        elif field.message_type is not None:
            if depth < 3:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(child, rng, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, rng))


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda m: m.full_name)
def test_prints_what_json_format_prints(message_type: descriptor.Descriptor) -> None:
    rng = random.Random(message_type.full_name)
    cls = GetMessageClass(message_type)
    for _ in range(60):
        message = cls()
        _fill(message, rng)
        try:
            reference = json_format.MessageToDict(
                message, always_print_fields_with_no_presence=True
            )
        except json_format.SerializeToJsonError:
            with pytest.raises(json_format.SerializeToJsonError):
                message_to_dict(message)
            with pytest.raises(json_format.SerializeToJsonError):
                message_to_json_value(message)
            continue
        assert message_to_dict(message) == reference  # NaN prints as the text "NaN"
        # What the gateway answers: whole doubles as integers, by a walk over json_format's
        # output (the gateway's former code), and with the same types (6578, not 6578.0).
        answered = message_to_json_value(message)
        expected = _whole_as_ints(reference)
        assert answered == expected
        assert json.dumps(answered) == json.dumps(_in_order(expected, answered))


def _whole_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_as_ints(v) for v in value]
    return value


def _in_order(value: Any, like: Any) -> Any:
    """``value`` with its keys in ``like``'s order (the printer's: declaration order)."""
    if isinstance(value, dict) and isinstance(like, dict):
        return {k: _in_order(value[k], like[k]) for k in like}
    if isinstance(value, list) and isinstance(like, list):
        return [_in_order(v, w) for v, w in zip(value, like, strict=True)]
    return value


def test_the_api_has_the_field_kinds_the_comparison_is_about() -> None:
    """The random messages above reach int64s, doubles, enums, repeated messages, Timestamps and
    Structs: the comparison would prove little over strings alone."""
    kinds = {
        (field.cpp_type, field.message_type.full_name if field.message_type else "")
        for message_type in MESSAGE_TYPES
        for field in message_type.fields
    }
    cpp_types = {kind for kind, _ in kinds}
    assert {
        _FD.CPPTYPE_INT64,
        _FD.CPPTYPE_DOUBLE,
        _FD.CPPTYPE_ENUM,
        _FD.CPPTYPE_MESSAGE,
    } <= cpp_types
    assert (_FD.CPPTYPE_MESSAGE, "google.protobuf.Timestamp") in kinds
    assert (_FD.CPPTYPE_MESSAGE, "google.protobuf.Struct") in kinds

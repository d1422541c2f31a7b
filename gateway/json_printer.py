"""Protobuf's JSON mapping of response messages, compiled once per message type.

``json_format.MessageToDict`` decides, for every field of every message it prints, what kind of
field it is and how to print it, by walking descriptors in Python. A batch acknowledgement of 500
events (500 nested messages of four fields) spent ~11% of the server's CPU there (py-spy, REST
batches), and the gateway then walked the result once more to print whole doubles as integers.
Here those decisions are taken once per message type: each type gets a function generated for
its fields (as ``dataclasses`` generates ``__init__``), which reads plain fields directly and
calls a converter only where the mapping changes the value.

``message_to_dict`` gives MessageToDict's output with ``always_print_fields_with_no_presence``
(what the gateway prints: proto3 scalars, repeated fields and maps always; fields with presence
only when set), except that keys come in declaration order (MessageToDict puts the set fields
first, then the unset ones). ``message_to_json_value`` also prints whole doubles below 2^53 as
integers (6578.0 -> 6578: amounts are whole minor units), as the gateway answers.
tests/test_json_printer.py compares both with json_format on random messages of every type the
API defines. ``Any`` and the wrapper types are printed by json_format itself.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from keyword import iskeyword
from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from cartlytics.common.timestamps import timestamp_json

Printer = Callable[[Any], Any]
# Descriptors, typed loosely: protobuf's stubs tell the upb and the pure-Python classes apart.
MessageType = Any
Field = Any

_SECONDS_MIN, _SECONDS_MAX = -62_135_596_800, 253_402_300_799  # 0001-01-01 to 9999-12-31
MAX_SAFE_INTEGER = 2**53

_FD = descriptor.FieldDescriptor
_INT64 = (_FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT64)
_FLOATS = (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE)
# Printed as they are: no conversion call in the generated code.
_AS_IS = (_FD.CPPTYPE_INT32, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_BOOL)
_TEXT_METHODS = ("google.protobuf.Duration", "google.protobuf.FieldMask")
_DELEGATED = (
    "google.protobuf.Any",
    "google.protobuf.BoolValue",
    "google.protobuf.BytesValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.StringValue",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
)


def message_to_dict(message: Message) -> Any:
    """``json_format.MessageToDict(message, always_print_fields_with_no_presence=True)``."""
    return _PLAIN.printer_for(message.DESCRIPTOR)(message)


def message_to_json_value(message: Message) -> Any:
    """``message_to_dict``, whole doubles (below 2^53 in size) as integers."""
    return _WHOLE_AS_INT.printer_for(message.DESCRIPTOR)(message)


def whole_numbers_as_ints(value: Any) -> Any:
    """6578.0 -> 6578 (recursively), for doubles holding whole minor units; exact below 2^53."""
    if isinstance(value, float):
        return _whole_as_int(value)
    if isinstance(value, dict):
        return {k: whole_numbers_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers_as_ints(v) for v in value]
    return value


def _whole_as_int(value: float) -> int | float:
    if value.is_integer() and abs(value) < MAX_SAFE_INTEGER:
        return int(value)
    return value


def _timestamp(message: Any) -> Any:
    """``Timestamp.ToJsonString``, the date and time of each second made once: a batch's
    acknowledgements share a few seconds (ToJsonString built a datetime for each)."""
    seconds, nanos = message.seconds, message.nanos
    if not (_SECONDS_MIN <= seconds <= _SECONDS_MAX and 0 <= nanos < 1_000_000_000):
        return message.ToJsonString()  # raises ValueError, as json_format does
    return timestamp_json(seconds, nanos)


def _text(message: Any) -> Any:
    return message.ToJsonString()


def _same(value: Any) -> Any:
    return value


class _Printers:
    """The printers of one flavour of the mapping (whole doubles as they are, or as ints)."""

    def __init__(self, whole_as_int: bool) -> None:
        self._number: Printer = _whole_as_int if whole_as_int else _same
        # Keyed by the descriptor itself: the gateway may hold the same type from two pools
        # (the generated modules, a descriptor set), which need not agree.
        self._printers: dict[MessageType, Printer] = {}
        delegated: Printer = self._delegated_as_ints if whole_as_int else self._delegated
        self._special: dict[str, Printer] = {
            **{name: _text for name in _TEXT_METHODS},
            **{name: delegated for name in _DELEGATED},
            "google.protobuf.Timestamp": _timestamp,
            "google.protobuf.Struct": self._struct,
            "google.protobuf.Value": self._value,
            "google.protobuf.ListValue": self._list,
        }

    def printer_for(self, message_type: MessageType) -> Printer:
        """The compiled printer of ``message_type`` (made on first use, then kept)."""
        found = self._printers.get(message_type)
        if found is not None:
            return found
        return self._compile(message_type)

    @staticmethod
    def _delegated(message: Message) -> Any:
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)

    @classmethod
    def _delegated_as_ints(cls, message: Message) -> Any:
        return whole_numbers_as_ints(cls._delegated(message))

    def _value(self, message: Any) -> Any:
        kind = message.WhichOneof("kind")
        if kind is None or kind == "null_value":
            return None
        if kind == "number_value":
            number = message.number_value
            if math.isinf(number) or math.isnan(number):
                # MessageToDict refuses these too (they would read back as strings).
                raise json_format.SerializeToJsonError(f"cannot print {number} as a Value")
            return self._number(number)
        if kind == "string_value":
            return message.string_value
        if kind == "bool_value":
            return message.bool_value
        if kind == "struct_value":
            return self._struct(message.struct_value)
        return self._list(message.list_value)

    def _struct(self, message: Any) -> Any:
        fields = message.fields
        return {key: self._value(fields[key]) for key in fields}

    def _list(self, message: Any) -> Any:
        return [self._value(item) for item in message.values]

    def _compile(self, message_type: MessageType) -> Printer:
        special = self._special.get(message_type.full_name)
        if special is not None:
            self._printers[message_type] = special
            return special
        namespace: dict[str, Any] = {}
        lines = ["def print_message(m):", "    out = {}"]
        for index, field in enumerate(message_type.fields):
            # A field named like a Python keyword is only reachable through getattr.
            value = f"getattr(m, {field.name!r})" if iskeyword(field.name) else f"m.{field.name}"
            convert = self._field_printer(field)
            if convert is not _same:
                namespace[f"c{index}"] = convert
                value = f"c{index}({value})"
            line = f"out[{field.json_name!r}] = {value}"
            if field.has_presence:
                lines += [f"    if m.HasField({field.name!r}):", f"        {line}"]
            else:
                lines.append(f"    {line}")
        lines.append("    return out")
        # Generated from descriptor names (identifiers, so safe as attribute names) and repr()'d
        # JSON names; the same technique as dataclasses' generated methods.
        exec("\n".join(lines), namespace)
        printer: Printer = namespace["print_message"]
        self._printers[message_type] = printer
        return printer

    def _field_printer(self, field: Field) -> Printer:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_printer = self._single(field.message_type.fields_by_name["value"])
            map_key: Callable[[Any], str] = (
                (lambda key: "true" if key else "false")
                if key_field.cpp_type == _FD.CPPTYPE_BOOL
                else str
            )
            return lambda mapping: {map_key(key): value_printer(mapping[key]) for key in mapping}
        single = self._single(field)
        if field.is_repeated:
            if single is _same:
                return list
            if field.cpp_type == _FD.CPPTYPE_MESSAGE:
                # A batch's acknowledgements are hundreds of one message type: its printer is
                # looked up once per list, not once per element through ``single``.
                message_type = field.message_type
                return lambda values: [*map(self.printer_for(message_type), values)]
            return lambda values: [single(value) for value in values]
        return single

    def _single(self, field: Field) -> Printer:
        """How one value of ``field`` prints (json_format's _FieldToJsonObject, decided once)."""
        cpp_type = field.cpp_type
        if cpp_type == _FD.CPPTYPE_MESSAGE:
            message_type = field.message_type
            # Looked up at print time: the type may be the one being compiled (recursion).
            return lambda value: self.printer_for(message_type)(value)
        if cpp_type == _FD.CPPTYPE_ENUM:
            return _enum_printer(field)
        if cpp_type == _FD.CPPTYPE_STRING:
            if field.type == _FD.TYPE_BYTES:
                return lambda value: base64.b64encode(value).decode("utf-8")
            return _same  # already a str
        if cpp_type in _AS_IS:
            return _same
        if cpp_type in _INT64:
            return str
        if cpp_type in _FLOATS:
            shortest = cpp_type == _FD.CPPTYPE_FLOAT
            number = self._number

            def floating(value: float) -> Any:
                if math.isinf(value):
                    return "-Infinity" if value < 0 else "Infinity"
                if math.isnan(value):
                    return "NaN"
                return number(type_checkers.ToShortestFloat(value) if shortest else value)

            return floating
        return _same


def _enum_printer(field: Field) -> Printer:
    """Enum values print as json_format prints them (their name, or a json_name option),
    computed once per value by json_format itself; a number the enum does not define goes to
    json_format too (a number for an open enum, an error for a closed one)."""
    reference = json_format._Printer(always_print_fields_with_no_presence=True)  # type: ignore[attr-defined]
    names = {
        value.number: reference._FieldToJsonObject(field, value.number)
        for value in field.enum_type.values
    }

    def enum(number: int) -> Any:
        if number in names:
            return names[number]
        return reference._FieldToJsonObject(field, number)

    return enum


_PLAIN = _Printers(whole_as_int=False)
_WHOLE_AS_INT = _Printers(whole_as_int=True)

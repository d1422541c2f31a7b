from cartlytics_protos.analytics.options.v1 import options_pb2 as _options_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExportDataRequest(_message.Message):
    __slots__ = ("type", "period", "format", "currency", "timezone", "to")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    type: str
    period: str
    format: str
    currency: str
    timezone: str
    to: str
    def __init__(self, type: _Optional[str] = ..., period: _Optional[str] = ..., format: _Optional[str] = ..., currency: _Optional[str] = ..., timezone: _Optional[str] = ..., to: _Optional[str] = ..., **kwargs) -> None: ...

from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_INGEST: _ClassVar[Scope]
    SCOPE_READ: _ClassVar[Scope]
    SCOPE_ADMIN: _ClassVar[Scope]
SCOPE_UNSPECIFIED: Scope
SCOPE_INGEST: Scope
SCOPE_READ: Scope
SCOPE_ADMIN: Scope
REQUIRED_SCOPE_FIELD_NUMBER: _ClassVar[int]
required_scope: _descriptor.FieldDescriptor
HTTP_SUCCESS_CODE_FIELD_NUMBER: _ClassVar[int]
http_success_code: _descriptor.FieldDescriptor
JSON_BODY_SCHEMA_FIELD_NUMBER: _ClassVar[int]
json_body_schema: _descriptor.FieldDescriptor
JSON_RESPONSE_SCHEMA_FIELD_NUMBER: _ClassVar[int]
json_response_schema: _descriptor.FieldDescriptor

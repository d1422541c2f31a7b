"""gRPC server reflection in both versions: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection (1.85) ships only v1alpha, while current clients (grpcurl, grpcui, Postman,
gRPC's own CLIs) ask for v1 first. v1 is the same protocol under a new package name: every
message, field number and type is unchanged, so the v1alpha servicer answers a v1 call byte for
byte; only the method's path differs. The v1 descriptor file is added to the default pool (made
from v1alpha's, with the package renamed) so that a client can describe the v1 service too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE: str = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file descriptor under v1's file name and package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, _V1_PACKAGE
    proto.ClearField("options")  # v1alpha's own: java/go packages, and `deprecated`

    def renamed(type_name: str) -> str:
        old = f".{_V1ALPHA_PACKAGE}."
        return (
            f".{_V1_PACKAGE}." + type_name[len(old) :] if type_name.startswith(old) else type_name
        )

    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # messages only (setting "" would mark a scalar)
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return proto


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(_v1_file().SerializeToString())


def enable_reflection(service_names: Iterable[str], server: aio.Server) -> list[str]:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and themselves.

    Returns every service name listed.
    """
    _add_v1_descriptor(descriptor_pool.Default())
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
    return names

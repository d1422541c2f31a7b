"""The REST bindings of the descriptor set, read as the gateways read them (tests' view)."""

from __future__ import annotations

from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2


def http_bindings(descriptor_set: Path) -> dict[str, tuple[str, str]]:
    """``/<package>.<Service>/<Method>`` -> (verb, path) of each RPC with a google.api.http rule."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    bound: dict[str, tuple[str, str]] = {}
    for file in fds.file:
        if not file.package.startswith("analytics."):
            continue
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                rule = options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb:
                    path = f"/{file.package}.{service.name}/{method.name}"
                    bound[path] = (verb, getattr(rule, verb))
    return bound

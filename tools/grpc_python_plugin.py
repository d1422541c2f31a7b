"""A protoc plugin (CodeGeneratorRequest on stdin, CodeGeneratorResponse on stdout) that runs
grpcio-tools' bundled gRPC Python generator, which grpcio-tools offers only inside its protoc.

Used by buf.gen.yaml through tools/protoc-gen-grpc_python.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "set.pb"
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = Path(tmp) / "out"
        out.mkdir()
        args = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={out}",
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed"
        for path in sorted(out.rglob("*.py")):
            generated = response.file.add()
            generated.name = str(path.relative_to(out))
            generated.content = path.read_text()
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()

"""Generate Python code, type stubs and the descriptor set from proto/.

Usage: python tools/gen_protos.py [OUT_DIR]   (default: src/cartlytics/gen, and then
docs/openapi.json through tools/gen_openapi.py)

protoc writes `from analytics.ingest.v1 import ...`; `analytics` is an unrelated PyPI package, so
the imports are rewritten to live under `cartlytics.gen`, the one place generated code lives.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GOOGLEAPIS_DIR = ROOT / "third_party" / "googleapis"
WELL_KNOWN_DIR = Path(grpc_tools.__file__).parent / "_proto"
DEFAULT_OUT = ROOT / "src" / "cartlytics" / "gen"
DESCRIPTOR_SET = "analytics.pb"
# Error detail types our services attach; Envoy's transcoder needs them to print errors as JSON.
EXTRA_DESCRIPTORS = ("google/rpc/error_details.proto", "google/rpc/status.proto")
_IMPORT = re.compile(r"^(from|import) analytics(\.| )", re.MULTILINE)


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    includes = [f"-I{PROTO_DIR}", f"-I{GOOGLEAPIS_DIR}", f"-I{WELL_KNOWN_DIR}"]
    code = [
        "protoc",
        *includes,
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    descriptors = [
        "protoc",
        *includes,
        f"--descriptor_set_out={out_dir / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
        *protos,
        *EXTRA_DESCRIPTORS,
    ]
    if protoc.main(code) != 0 or protoc.main(descriptors) != 0:
        raise SystemExit("protoc failed")
    for path in sorted(out_dir.rglob("*.py*")):
        text = _IMPORT.sub(
            lambda m: f"{m.group(1)} cartlytics.gen.analytics{m.group(2)}", path.read_text()
        )
        path.write_text(text)
    for package in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (package / "__init__.py").touch()
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/ by tools/gen_protos.py (make gen). Do not edit."""\n'
    )


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    generate(out)
    if out == DEFAULT_OUT:
        # docs/openapi.json is derived from the descriptor set just written; a fresh interpreter
        # so that it reads the regenerated code.
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_openapi.py")], check=True)
        # The Envoy ConfigMap embeds the descriptor set (deploy/k8s/gateway-config.yaml).
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_k8s.py")], check=True)

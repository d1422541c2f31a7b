"""Generate the code of every language from proto/ with one `buf generate` (buf.gen.yaml).

Usage: python tools/gen_protos.py [--root DIR]

Without --root the generated trees are written into this checkout, then docs/openapi.json and the
Kubernetes ConfigMap that embeds the descriptor set are refreshed. With --root they are written
under DIR at the same relative paths (the staleness tests compare the two).

What is written where (GENERATED_TREES):
- src/cartlytics/gen: the server's Python code, type stubs and the descriptor set;
- clients/python/protos/src/cartlytics_protos: the same Python code for the `cartlytics-protos`
  distribution, installable without the server;
- clients/go/gen: Go messages and gRPC stubs at the protos' go_package paths;
- clients/js/src/gen: TypeScript messages (protoc-gen-es) with their JSON types.

protoc's Python writes `from analytics.ingest.v1 import ...`; `analytics` is an unrelated PyPI
package, so the imports are rewritten to live under each distribution's own package.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools
import yaml
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GOOGLEAPIS_DIR = ROOT / "third_party" / "googleapis"
WELL_KNOWN_DIR = Path(grpc_tools.__file__).parent / "_proto"
DESCRIPTOR_SET = "analytics.pb"
# Error detail types our services attach; Envoy's transcoder needs them to print errors as JSON.
EXTRA_DESCRIPTORS = ("google/rpc/error_details.proto", "google/rpc/status.proto")
_IMPORT = re.compile(r"^(from|import) analytics(\.| )", re.MULTILINE)

SERVER_PYTHON = Path("src/cartlytics/gen")
CLIENT_PYTHON = Path("clients/python/protos/src/cartlytics_protos")
GO = Path("clients/go/gen")
TYPESCRIPT = Path("clients/js/src/gen")
# Python packages the generated modules are moved under, by tree.
PYTHON_PACKAGES = {SERVER_PYTHON: "cartlytics.gen", CLIENT_PYTHON: "cartlytics_protos"}
GENERATED_TREES = (SERVER_PYTHON, CLIENT_PYTHON, GO, TYPESCRIPT)
PLUGINS_HINT = "the code generators are missing: run `make tools` (Go plugins and npm packages)"


def _buf() -> str:
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if not found:
        raise SystemExit("buf is installed with the dev dependencies (buf-bin): run `make venv`")
    return found


def _run_buf_generate(scratch: Path) -> None:
    """Run buf.gen.yaml with every `out` moved under ``scratch`` (relative plugin paths kept)."""
    template = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    for plugin in template["plugins"]:
        local = plugin.get("local")
        if local and not (ROOT / local).exists():
            raise SystemExit(f"{local} not found: {PLUGINS_HINT}")
        plugin["out"] = str(scratch / plugin["out"])
    result = subprocess.run(
        [_buf(), "generate", "--template", yaml.safe_dump(template)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"buf generate failed:\n{result.stdout}{result.stderr}")


def _python_tree(generated: Path, out_dir: Path, package: str) -> None:
    shutil.copytree(generated, out_dir)
    for path in sorted(out_dir.rglob("*.py*")):
        text = _IMPORT.sub(
            lambda m: f"{m.group(1)} {package}.analytics{m.group(2)}", path.read_text()
        )
        path.write_text(text)
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/ by tools/gen_protos.py (make gen). Do not edit."""\n'
    )
    (out_dir / "py.typed").touch()


def _descriptor_set(out_file: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{GOOGLEAPIS_DIR}",
        f"-I{WELL_KNOWN_DIR}",
        f"--descriptor_set_out={out_file}",
        "--include_imports",
        "--include_source_info",
        *protos,
        *EXTRA_DESCRIPTORS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed writing the descriptor set")


def generate(root: Path) -> None:
    """Write every GENERATED_TREES entry under ``root``, replacing what was there."""
    with tempfile.TemporaryDirectory(prefix="cartlytics-gen-") as tmp:
        scratch = Path(tmp)
        _run_buf_generate(scratch)
        for tree in GENERATED_TREES:
            if (root / tree).exists():
                shutil.rmtree(root / tree)
        for tree, package in PYTHON_PACKAGES.items():
            _python_tree(scratch / "build/gen/python", root / tree, package)
        _descriptor_set(root / SERVER_PYTHON / DESCRIPTOR_SET)
        for tree in (GO, TYPESCRIPT):
            shutil.copytree(scratch / tree, root / tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="where the trees go (default: here)"
    )
    root = parser.parse_args().root.resolve()
    generate(root)
    if root == ROOT:
        # docs/openapi.json is derived from the descriptor set just written; a fresh interpreter
        # so that it reads the regenerated code.
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_openapi.py")], check=True)
        # The Envoy ConfigMap embeds the descriptor set (deploy/k8s/gateway-config.yaml).
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_k8s.py")], check=True)


if __name__ == "__main__":
    main()

"""The generated clients build in their own languages: Go vets, TypeScript type-checks, and the
Python stubs distribution imports on its own (without the server's package).

The SDKs over them are tested against live stacks in tests/test_clients_live.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_go_code_builds_and_vets() -> None:
    if shutil.which("go") is None:
        pytest.fail("go is needed for clients/go (installed on these machines)")
    _run(["go", "vet", "./..."], ROOT / "clients" / "go")


def test_typescript_code_type_checks() -> None:
    tsc = ROOT / "clients" / "js" / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "run `make tools` (npm ci in clients/js)"
    _run([str(tsc), "-p", "tsconfig.json", "--noEmit"], ROOT / "clients" / "js")


def test_python_stubs_install_and_work_on_their_own(tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    _run([*pip, str(ROOT / "clients" / "python" / "protos")], tmp_path)
    script = (
        "import sys\n"
        "from cartlytics_protos.analytics.metrics.v1 import metrics_pb2, metrics_pb2_grpc\n"
        "assert 'cartlytics' not in sys.modules, 'the stubs must not need the server package'\n"
        "request = metrics_pb2.GetSalesRequest(period='30d')\n"
        "assert metrics_pb2.GetSalesRequest.FromString(request.SerializeToString()) == request\n"
        "assert metrics_pb2_grpc.MetricsServiceStub\n"
    )
    # -S: site-packages' .pth files (the editable `cartlytics` install) are not read; the venv's
    # protobuf and grpcio are reached through PYTHONPATH, beside the installed stubs.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{site}"}
    _run([sys.executable, "-S", "-c", script], tmp_path, env=env)

"""The contracts: lint, generated code in step with proto/, and every RPC declaring its scope."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cartlytics.common import catalog
from cartlytics.gen.analytics.options.v1 import options_pb2
from tests.descriptors import http_bindings

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "src" / "cartlytics" / "gen"


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every language's code generated afresh from proto/ (one `buf generate`)."""
    root = tmp_path_factory.mktemp("regenerated")
    gen = [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--root", str(root)]
    subprocess.run(gen, check=True)
    return root


# tools/gen_protos.py's GENERATED_TREES: every language's generated code.
GENERATED_TREES = (
    "src/cartlytics/gen",
    "clients/python/protos/src/cartlytics_protos",
    "clients/go/gen",
    "clients/js/src/gen",
)


@pytest.mark.parametrize("tree", GENERATED_TREES)
def test_generated_code_is_up_to_date(tree: str, regenerated: Path) -> None:
    committed, fresh = _tree(ROOT / tree), _tree(regenerated / tree)
    assert sorted(committed) == sorted(fresh), f"{tree}: run `make gen` and commit the result"
    stale = [name for name in committed if committed[name] != fresh[name]]
    assert not stale, f"stale generated files in {tree} (run `make gen`): {stale}"


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf, "buf is installed with the dev dependencies (buf-bin)"
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_declares_a_scope() -> None:
    methods = catalog.methods()
    # the spec's nine, IngestService/Ping (a no-op), the typed (gRPC-only) TrackEvent and
    # BatchTrackEvents, AdminService's three and PrivacyService/EraseUser
    assert len(methods) == 16
    missing = [
        path for path, info in methods.items() if info.scope == options_pb2.SCOPE_UNSPECIFIED
    ]
    assert not missing, f"RPCs without (analytics.options.v1.required_scope): {missing}"


SPEC_PATHS = {
    ("post", "/analytics/event"),
    ("post", "/analytics/event/batch"),
    ("get", "/analytics/sales"),
    ("get", "/analytics/products"),
    ("get", "/analytics/customers"),
    ("get", "/analytics/funnel"),
    ("get", "/analytics/realtime"),
    ("post", "/analytics/query"),
    ("get", "/analytics/export"),
    ("get", "/analytics/ping"),  # IngestService/Ping: the no-op benchmarks compare with
    ("delete", "/analytics/users/{user_id}"),  # PrivacyService/EraseUser (docs/privacy.md)
}


def test_every_documented_rest_path_is_bound_in_the_descriptor_set() -> None:
    bound = http_bindings(GEN / "analytics.pb")
    # Every RPC has a google.api.http binding but AdminService's: it is gRPC only (docs/keys.md).
    admin = {p for p in catalog.methods() if p.startswith("/analytics.admin.v1.AdminService/")}
    assert len(admin) == 3 and not admin & set(bound), "AdminService must have no REST binding"
    # The typed ingest RPCs are gRPC only too: REST bodies go to their *Json twins, which take
    # the raw body and parse each event on its own (one odd event does not refuse a batch).
    typed = {f"/analytics.ingest.v1.IngestService/{m}" for m in ("TrackEvent", "BatchTrackEvents")}
    assert not typed & set(bound), "the typed ingest RPCs must have no REST binding"
    assert set(bound) == set(catalog.methods()) - admin - typed, "every public RPC has a binding"
    assert set(bound.values()) == SPEC_PATHS


def test_track_event_declares_201() -> None:
    info = catalog.methods()["/analytics.ingest.v1.IngestService/TrackEventJson"]
    assert info.http_success_code == 201

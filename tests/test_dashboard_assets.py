"""The committed dashboard build is the build of the committed sources.

`make dashboard` (dashboard/build.mjs) writes gateway/dashboard_assets/build-info.json: a hash of
every input of the build (dashboard/build.mjs, package.json, package-lock.json, tsconfig.json and
everything under dashboard/src) and a hash of each built file. This test recomputes both, without
Node: a source changed without a rebuild, or a built file edited by hand, fails here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from gateway.dashboard import ASSETS_DIR

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboard"
FIXED_INPUTS = ("build.mjs", "package.json", "package-lock.json", "tsconfig.json")


def _inputs(root: Path) -> list[str]:
    """The build's inputs as build.mjs lists them: relative to dashboard/, sorted by bytes."""
    sources = [p.relative_to(root).as_posix() for p in (root / "src").rglob("*")]
    files = [*FIXED_INPUTS, *(p for p in sources if (root / p).is_file())]
    return sorted(files, key=lambda path: path.encode())


def sources_hash(root: Path = DASHBOARD) -> str:
    digest = hashlib.sha256()
    for path in _inputs(root):
        data = (root / path).read_bytes()
        digest.update(f"{path}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def _build_info() -> dict[str, object]:
    info: dict[str, object] = json.loads((ASSETS_DIR / "build-info.json").read_text())
    return info


def test_the_built_assets_are_built_from_the_current_sources() -> None:
    assert _build_info()["sources"] == sources_hash(), (
        "dashboard/ changed since gateway/dashboard_assets was built: run `make dashboard` "
        "and commit gateway/dashboard_assets"
    )


def test_the_built_files_are_the_build_output() -> None:
    files = _build_info()["files"]
    assert isinstance(files, dict) and set(files) == {"app.js", "app.css", "index.html"}
    for name, expected in files.items():
        actual = hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest()
        assert actual == expected, f"{name} differs from what the build wrote: rebuild it"


def test_the_page_names_its_assets_with_the_sources_hash() -> None:
    page = (ASSETS_DIR / "index.html").read_text()
    short = sources_hash()[:16]
    assert f"/dashboard/app.js?v={short}" in page and f"/dashboard/app.css?v={short}" in page


def test_the_hash_covers_every_source(tmp_path: Path) -> None:
    """A change anywhere under src/ changes the hash (so the first test can fail); on a copy."""
    copy = tmp_path / "dashboard"
    shutil.copytree(DASHBOARD, copy, ignore=shutil.ignore_patterns("node_modules"))
    assert sources_hash(copy) == sources_hash()
    (copy / "src" / "styles.css").write_bytes((copy / "src" / "styles.css").read_bytes() + b"\n")
    assert sources_hash(copy) != sources_hash()
    (copy / "src" / "new.ts").write_text("export {};\n")
    assert sources_hash(copy) != sources_hash()

"""The dashboard page: `GET /` and its assets under `/dashboard/`, served from the built files in
`gateway/dashboard_assets/` (made by `make dashboard` from `dashboard/`, committed so that the
server needs no Node).

Only a fixed list of files is served, read once at start; the page reads the public API from
the same origin with the key the user enters (docs/dashboard.md). The headers keep it to its own
origin: a Content-Security-Policy that allows only this origin's scripts, styles and requests, no
framing, no referrer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["ASSETS_DIR", "PATHS", "install"]

ASSETS_DIR = Path(__file__).resolve().parent / "dashboard_assets"

# URL path -> (file, content type, cache policy). index.html names the assets with the sources'
# hash (`app.js?v=<hash>`), so a new build is fetched at once while the assets may be cached.
_FILES: dict[str, tuple[str, str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8", "no-cache"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8", "public, max-age=3600"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8", "public, max-age=3600"),
}
PATHS = tuple(_FILES)

_SECURITY_HEADERS = {
    # uPlot sets element styles from script (CSSOM), which style-src does not restrict.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    cache_control: str

    async def handle(self, request: web.Request) -> web.Response:
        headers = {
            "Content-Type": self.content_type,
            "Cache-Control": self.cache_control,
            **_SECURITY_HEADERS,
        }
        return web.Response(body=self.body, headers=headers)


def install(app: web.Application, directory: Path = ASSETS_DIR) -> bool:
    """Add the dashboard's routes (before the API's catch-all); False, and no route, when the
    built files are missing (a package built without them): `/` then stays the API's 404."""
    assets: dict[str, _Asset] = {}
    for path, (name, content_type, cache) in _FILES.items():
        try:
            body = (directory / name).read_bytes()
        except OSError:
            return False
        assets[path] = _Asset(body, content_type, cache)
    for path, asset in assets.items():
        app.router.add_get(path, asset.handle)
    return True

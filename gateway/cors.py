"""CORS for the REST gateway: storefronts and dashboards on other origins call it from browsers.

Keys travel in the `Authorization` header, never in cookies, so answering `*` exposes nothing a
page could not already send: the default lets every origin in (as Plausible's and PostHog's ingest
endpoints do); `ANALYTICS_CORS_ORIGINS` narrows it to a list, or turns CORS off when empty.
Credentials (cookies) are never allowed. The same policy is in gateway/envoy.yaml (docs/envoy.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from .status import error_body

ALLOWED_HEADERS = "authorization, content-type, x-request-id"
EXPOSED_HEADERS = "content-disposition, retry-after, x-request-id"
ALLOWED_METHODS = "GET, POST, OPTIONS"
MAX_AGE_SECONDS = "86400"  # a day: browsers cap it lower anyway (Chromium: 2 h)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which browser origins may call the gateway: any (`*`), a list, or none (empty)."""

    any_origin: bool
    origins: frozenset[str]

    @classmethod
    def parse(cls, setting: str) -> CorsPolicy:
        """`*`, or comma-separated origins (`https://shop.example,https://admin.example`)."""
        items = [item.strip().rstrip("/") for item in setting.split(",") if item.strip()]
        return cls(any_origin="*" in items, origins=frozenset(i for i in items if i != "*"))

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allow_origin(self, origin: str | None) -> str | None:
        """The `Access-Control-Allow-Origin` value for a request from ``origin``, or None."""
        if not origin:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    def install(self, app: web.Application) -> None:
        """Answer preflights, and mark every response (streamed ones too) for allowed origins."""
        if not self.enabled:
            return
        app.middlewares.insert(0, self._preflight)
        app.on_response_prepare.append(self._mark)

    @web.middleware
    async def _preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = request.headers.get("Origin")
        if self.allow_origin(origin) is None:
            message = f"origin {(origin or '(none)')[:200]} is not allowed (ANALYTICS_CORS_ORIGINS)"
            body = error_body(grpc.StatusCode.PERMISSION_DENIED, message)
            return web.Response(status=403, body=body, content_type="application/json")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": MAX_AGE_SECONDS,
            },
        )

    async def _mark(self, request: web.Request, response: web.StreamResponse) -> None:
        allowed = self.allow_origin(request.headers.get("Origin"))
        if not self.any_origin:
            response.headers["Vary"] = "Origin"
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        if request.method != "OPTIONS":
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

"""Bearer-token authentication (API_TOKEN): /api/v2 and the internal routes (peers, placement) always, the
comfyui-api routes too with API_TOKEN_SCOPE=all. /health, /ready, /health/comfyui[/{i}], /drain[/{i}],
/metrics, /docs and /api/v2/health stay open.

The token is compared in constant time; a missing or wrong one gets 401 in the route family's error shape
(v2: `{"error": {"code": "unauthorized", ...}}`), with no WWW-Authenticate header (as the contract's proxy).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from comfyui_sidecar.v2.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/health", "/ready", "/health/comfyui", "/drain", "/metrics", "/api/v2/health"})
"""Probes, the preStop hook and scrapes: the kubelet and Prometheus send no token."""
OPEN_PREFIXES = ("/health/comfyui/", "/drain/", "/docs/")
"""The same per local ComfyUI (`/health/comfyui/1`, `/drain/1`), and the docs."""
V2_PREFIXES = ("/api/v2/", "/internal/")


def needs_token(path: str, scope: str) -> bool:
    if path in OPEN_PATHS or path == "/docs" or path.startswith(OPEN_PREFIXES):
        return False
    return path.startswith(V2_PREFIXES) or scope == "all"


def bearer_matches(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def unauthorized(path: str) -> web.Response:
    message = "a valid 'Authorization: Bearer <token>' header is required"
    if path.startswith(V2_PREFIXES):
        return error_response(401, "unauthorized", message)
    return web.json_response({"statusCode": 401, "error": "Unauthorized", "message": message}, status=401)


def middleware(token: str | None, scope: str) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            token
            and needs_token(request.path, scope)
            and not bearer_matches(request.headers.get("Authorization"), token)
        ):
            return unauthorized(request.path)
        return await handler(request)

    return authenticate

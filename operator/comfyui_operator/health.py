"""A minimal /healthz server for the time the operator is a standby (waiting for the Lease).

kopf serves the liveness endpoint only while it runs; without this a standby replica would fail its liveness
probe and be restarted over and over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

STANDBY_BODY = {"status": "standby", "detail": "waiting for the leader-election Lease"}


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response(STANDBY_BODY)


@asynccontextmanager
async def standby_health(port: int, host: str = "0.0.0.0") -> AsyncIterator[None]:  # noqa: S104 - probe port
    """Serve GET /healthz on `port` (0 = do nothing) until the context exits, then free the port."""
    if not port:
        yield
        return
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()

"""Assembly of Comfy API v2 into the sidecar app: routes (registered before start), the objects built at
start (peers, claims, assets, runner), and the retention loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from comfyui_sidecar.cluster.claims import ROUTE as CLAIMS_ROUTE
from comfyui_sidecar.cluster.claims import Claims
from comfyui_sidecar.cluster.client import PeerClient
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.comfy_pool import ComfyPool
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.openapi import documented
from comfyui_sidecar.previews import PreviewFrame
from comfyui_sidecar.prompt_status import prompt_status
from comfyui_sidecar.settings import Settings
from comfyui_sidecar.v2 import docs, routes_assets, routes_jobs
from comfyui_sidecar.v2.assets import AssetStore
from comfyui_sidecar.v2.context import V2, V2_KEY
from comfyui_sidecar.v2.errors import V2Error, error_response
from comfyui_sidecar.v2.runner import JobRunner

log = logging.getLogger(__name__)
RETENTION_INTERVAL_S = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TASKS = web.AppKey("v2_tasks", list)
_SESSION = web.AppKey("v2_peer_session", aiohttp.ClientSession)


@documented(docs.HEALTH)
async def health(request: web.Request) -> web.Response:
    """Liveness of the v2 surface (open; does not ask ComfyUI)."""
    return web.json_response({"status": "healthy"})


@documented(docs.CLAIM)
async def claims_route(request: web.Request) -> web.Response:
    return await request.app[V2_KEY].claims.handle(request)


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """V2Error -> the error envelope; unknown /api/v2 routes and methods -> 404/405 in the envelope."""
    if not request.path.startswith("/api/v2"):
        return await handler(request)
    try:
        return await handler(request)
    except V2Error as error:
        return error.response()
    except web.HTTPNotFound:
        return error_response(404, "not_found", f"no route {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as error:
        message = f"{request.method} is not allowed on {request.path}"
        response = error_response(405, "method_not_allowed", message)
        response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))
        return response


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v2/health", health, allow_head=False),
        *routes_jobs.routes(),
        *routes_assets.routes(),
        web.put(CLAIMS_ROUTE, claims_route),
        web.delete(CLAIMS_ROUTE, claims_route),
        web.get("/prompt/{id}", prompt_status, allow_head=False),
    ]


async def start(
    app: web.Application,
    *,
    settings: Settings,
    comfy: ComfyPool,
    store: JobStore,
    metrics: Metrics,
    queue_full: Callable[[], bool],
    draining: Callable[[], bool],
) -> V2:
    peers = Peers(
        settings.self_name,
        static=settings.static_peers(),
        dns_name=settings.peers_dns,
        port=settings.peer_port,
        refresh_s=settings.peer_refresh_s,
    )
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=settings.peer_timeout_s)
    )
    app[_SESSION] = session
    client = PeerClient(
        peers,
        session,
        token=settings.token(),
        timeout_s=settings.peer_timeout_s,
        connect_timeout_s=settings.peer_connect_timeout_s,
    )
    assets = AssetStore(
        settings.input_dir,
        owner=settings.self_name,
        key=settings.tag_key(),
        retention_s=settings.job_retention_s,
        max_bytes=settings.asset_max_bytes,
    )
    await asyncio.to_thread(assets.reset)
    # outputs of an earlier process of this sidecar: their jobs died with it
    await asyncio.to_thread(shutil.rmtree, settings.output_dir / routes_jobs.OUTPUT_FOLDER, True)
    runner = JobRunner(
        comfy=comfy,
        store=store,
        assets=assets,
        peers=peers,
        client=client,
        key=settings.tag_key(),
        output_dir=settings.output_dir,
        temp_dirs=settings.comfy_temp_dirs,
        prompt_timeout_s=settings.prompt_timeout_s,
        output_max_bytes=settings.output_max_bytes,
    )
    comfy.listeners.append(store.on_comfy_event)

    def preview(frame: PreviewFrame) -> None:
        store.on_preview(frame.prompt_id, frame.node_id, frame.content_type, frame.data)

    comfy.set_on_preview(preview)
    v2 = V2(
        settings=settings,
        store=store,
        runner=runner,
        assets=assets,
        peers=peers,
        client=client,
        claims=Claims(peers, client),
        metrics=metrics,
        queue_full=queue_full,
        draining=draining,
        max_body_bytes=settings.max_body_bytes,
    )
    app[V2_KEY] = v2
    await peers.refresh()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_retention(v2)), loop.create_task(runner.enforce_timeouts())]
    if settings.peers_dns:
        tasks.append(loop.create_task(peers.run()))
    app[_TASKS] = tasks
    return v2


DOWNLOAD_LINGER_S = 10.0


async def linger_for_downloads(store: JobStore, deadline: float) -> None:
    """Draining: a v2 job that just finished here has outputs only this pod holds, and its client fetches
    them after its next poll; keep serving until DOWNLOAD_LINGER_S after the last one (within `deadline`)."""
    last = max((r.completed or 0.0 for r in store.records() if r.origin == "v2" and r.outputs), default=0.0)
    wait = min(last + DOWNLOAD_LINGER_S - time.time(), deadline - time.monotonic())
    if wait > 0:
        log.info("drain: serving the outputs of recently finished v2 jobs for %.0f s more", wait)
        await asyncio.sleep(wait)


def sweep(v2: V2) -> None:
    """One retention pass: expired jobs and their outputs, expired assets, the gauges."""
    v2.runner.delete_files(v2.store.expire())
    v2.assets.expire(v2.store.assets_in_use())
    update_gauges(v2)


def update_gauges(v2: V2) -> None:
    for state, count in v2.store.counts().items():
        v2.metrics.jobs.labels(state=state).set(count)
    v2.metrics.asset_bytes.labels(kind="upload").set(v2.assets.bytes_held)
    held = sum(o.size_bytes for r in v2.store.records() if r.origin == "v2" for o in r.outputs)
    v2.metrics.asset_bytes.labels(kind="output").set(held)


async def _retention(v2: V2) -> None:
    while True:
        await asyncio.sleep(RETENTION_INTERVAL_S)
        try:
            sweep(v2)
        except Exception:
            log.exception("the retention pass failed")


async def stop(app: web.Application) -> None:
    for task in app.get(_TASKS, []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if V2_KEY in app:
        await app[V2_KEY].runner.close()
    if _SESSION in app:
        await app[_SESSION].close()

"""The router's aiohttp application: its own routes (health, readiness, metrics, activity, the held-job copies
of the other routers), /api/v2 and the comfyui-api routes, and the background loops (placement polls,
dispatch of held jobs, discovery of the other routers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from comfyui_sidecar import auth
from comfyui_sidecar.cluster.client import PeerClient
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.v2 import ids
from comfyui_sidecar.v2.wiring import envelope
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from comfyui_router import activity as activity_routes
from comfyui_router.activity import Activity
from comfyui_router.dispatch import Dispatcher
from comfyui_router.forward import Forwarder
from comfyui_router.held import HeldStore, Journal
from comfyui_router.held_sync import HeldSync
from comfyui_router.metrics import RouterMetrics
from comfyui_router.replicas import ReplicaSet
from comfyui_router.routes_api import ApiRoutes
from comfyui_router.routes_v2 import V2Routes
from comfyui_router.routing import Router, refusal
from comfyui_router.settings import RouterSettings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTER_KEY = web.AppKey("router", Router)
STATE_KEY = web.AppKey("router_state", dict)
OPEN_PATHS = frozenset({activity_routes.ROUTE})


def family(path: str) -> str:
    if path == "/prompt":
        return "prompt"
    if path == "/api/v2/jobs":
        return "v2_submit"
    if path.startswith("/api/v2/jobs/"):
        return "v2_job"
    if path.startswith("/api/v2/"):
        return "v2_other"
    if path in ("/health", "/ready", "/metrics", "/activity") or path.startswith("/internal/"):
        return "router"
    return "other"


def observe(metrics: RouterMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = family(request.path)
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception as error:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = refusal(
                "v2" if request.path.startswith("/api/v2") else "api",
                500,
                "internal_error",
                f"router error: {type(error).__name__}",
            )
        metrics.requests.labels(family=kind, code=str(response.status)).inc()
        return response

    return middleware


def authenticate(token: str | None, scope: str) -> Middleware:
    """The sidecars' bearer-token check (the router answers held jobs itself); /activity stays open."""
    checked = auth.middleware(token, scope)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        return await checked(request, handler)

    return middleware


def create_app(settings: RouterSettings) -> web.Application:
    metrics = RouterMetrics()
    token = settings.token()
    key = settings.tag_key()
    replica_discovery = Peers(
        f"router:{settings.self_name}",
        static=settings.static_replicas(),
        dns_name=settings.replicas_dns,
        port=settings.replica_port,
        refresh_s=settings.peer_refresh_s,
    )
    routers = Peers(
        settings.self_name,
        static=settings.static_peers(),
        dns_name=settings.peers_dns,
        port=settings.peer_port,
        refresh_s=settings.peer_refresh_s,
    )
    placeholder: aiohttp.ClientSession = None  # type: ignore[assignment]  # set at startup
    replica_client = PeerClient(
        replica_discovery, placeholder, token=token, timeout_s=settings.peer_timeout_s
    )
    router_client = PeerClient(routers, placeholder, token=token, timeout_s=settings.peer_timeout_s)
    replicas = ReplicaSet(
        replica_discovery,
        PeerClient(replica_discovery, placeholder, token=token, timeout_s=min(5.0, settings.replica_lost_s)),
        interval_s=settings.placement_interval_s,
        lost_s=settings.replica_lost_s,
        discovery_every_s=settings.peer_refresh_s,
    )
    replicas.on_lost = lambda name: metrics.lost.inc()
    held = HeldStore(
        max_jobs=settings.max_held_jobs,
        max_bytes=settings.max_held_bytes,
        hold_timeout_s=settings.hold_timeout_s,
        retention_s=settings.job_retention_s,
        journal=Journal(settings.hold_dir) if settings.hold_dir else None,
    )
    activity = Activity(
        held=lambda: {job.id for job in held.held()},
        replicas_ready=lambda: sum(1 for view in replicas.views() if view.usable),
        busy_seen=lambda: replicas.busy_seen,
    )
    forwarder = Forwarder(placeholder)
    router = Router(settings, replicas, forwarder, held, activity, metrics)
    sync = HeldSync(
        held, routers, router_client, lambda job_id: ids.decode(key, job_id, kinds=("job",)) is not None
    )
    dispatcher = Dispatcher(router=router, sync=sync, routers=routers, replica_client=replica_client, key=key)
    v2 = V2Routes(router, dispatcher, key, settings.self_name)
    api = ApiRoutes(router)

    app = web.Application(
        client_max_size=settings.max_body_size_mb * 1024 * 1024,
        middlewares=[observe(metrics), authenticate(token, settings.api_token_scope), envelope],
    )
    app[ROUTER_KEY] = router
    state: dict[str, bool] = {"draining": False}
    app[STATE_KEY] = state

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def ready(request: web.Request) -> web.Response:
        ok = not state["draining"]
        return web.json_response({"status": "ready" if ok else "not ready"}, status=200 if ok else 503)

    async def metrics_route(request: web.Request) -> web.Response:
        views = replicas.views()
        metrics.replicas.labels(state="ready").set(sum(1 for view in views if view.usable))
        metrics.replicas.labels(state="known").set(len(views))
        metrics.held.set(len(held.held()))
        data = generate_latest(metrics.registry) + generate_latest(REGISTRY)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes(
        [
            web.get("/health", health, allow_head=False),
            web.get("/ready", ready, allow_head=False),
            web.get("/metrics", metrics_route, allow_head=False),
            *activity_routes.routes(activity, router_client),
            *sync.routes(),
            *v2.routes(),
            *api.routes(),
        ]
    )
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.peer_timeout_s),
        )
        app[_SESSION] = session
        for user in (replica_client, router_client, replicas.client, forwarder):
            user.session = session
        journaled = held.load_journal()
        await routers.refresh()
        copied = await sync.pull()
        if journaled or copied:
            log.info("held jobs: %d from the journal, %d updated from the other routers", journaled, copied)
        await replicas.poll_once()
        loop = asyncio.get_running_loop()
        tasks.extend([loop.create_task(replicas.run()), loop.create_task(dispatcher.run())])
        if settings.peers_dns:
            tasks.append(loop.create_task(routers.run()))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if _SESSION in app:
            await app[_SESSION].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


_SESSION = web.AppKey("router_session", aiohttp.ClientSession)

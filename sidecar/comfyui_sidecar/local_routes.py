"""Routes about the pod's local ComfyUIs: the probe and the preStop drain of each ComfyUI container (the
operator's per-GPU mode runs one per GPU), and the placement state the router reads.

The handlers reach the app's parts through one `LocalContext` (set by the app at start-up), so this module
does not import the app.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from comfyui_sidecar.comfy_pool import ComfyPool, Member
from comfyui_sidecar.lifecycle import State
from comfyui_sidecar.models import VERSION
from comfyui_sidecar.openapi import Operation, documented
from comfyui_sidecar.placement import PLACEMENT_PATH, ComfyUIPlacement, Placement
from comfyui_sidecar.settings import Settings

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.25
COMFYUI_STATE = {
    "type": "object",
    "properties": {"version": {"type": "string"}, "comfyui": {"type": "string"}},
}
DRAINED = {"type": "object", "properties": {"drained": {"type": "boolean"}}}


@dataclass
class LocalContext:
    settings: Settings
    pool: ComfyPool
    state: State
    is_ready: Callable[[], bool]
    queue_depth: Callable[[], int]
    cached_models: Callable[[], list[str]]
    drain_pod: Callable[[], Awaitable[bool]]
    """The pod-wide drain (GET /drain): /ready 503, DRAIN_DELAY_S, then every accepted prompt and job."""


LOCAL_KEY = web.AppKey("local_comfyuis", LocalContext)


def placement(ctx: LocalContext) -> Placement:
    return Placement(
        pod=ctx.settings.pod_name or socket.gethostname(),
        ready=ctx.is_ready(),
        draining=ctx.state.draining,
        queue_depth=ctx.queue_depth(),
        max_queue_depth=ctx.settings.max_queue_depth,
        comfyuis=[
            ComfyUIPlacement(
                index=m.index, up=m.up, queue_depth=m.queue_depth(), loaded_models=m.models.names()
            )
            for m in ctx.pool.members
        ],
        cached_models=ctx.cached_models(),
    )


def _member(request: web.Request) -> Member | web.Response:
    """The ComfyUI named by the path's index, or a 404 answer."""
    pool = request.app[LOCAL_KEY].pool
    text = request.match_info["index"]
    if not text.isdigit() or int(text) >= len(pool.members):
        message = f"no local ComfyUI {text[:20]!r}: this pod has {len(pool.members)} (0-based)"
        return web.json_response({"error": message, "location": "index"}, status=404)
    return pool.members[int(text)]


@documented(
    Operation(
        "Whether local ComfyUI {index} answers now and its warmup has not failed (its container's probes)",
        {
            200: (COMFYUI_STATE, "it answers"),
            404: ({"type": "object"}, "no such ComfyUI"),
            503: (COMFYUI_STATE, "it does not answer"),
        },
    )
)
async def comfyui_health(request: web.Request) -> web.Response:
    member = _member(request)
    if isinstance(member, web.Response):
        return member
    timeout_s = request.app[LOCAL_KEY].settings.comfyui_probe_timeout_s
    up = not member.warmup_failed and await member.client.ping(timeout_s=timeout_s)
    return web.json_response(
        {"version": VERSION, "comfyui": "up" if up else "down"}, status=200 if up else 503
    )


@documented(
    Operation(
        "The preStop hook of ComfyUI {index}'s container: no new prompts for it, wait for its own",
        {200: (DRAINED, "drained (or grace over)"), 404: ({"type": "object"}, "no such ComfyUI")},
    )
)
async def drain_comfyui(request: web.Request) -> web.Response:
    member = _member(request)
    if isinstance(member, web.Response):
        return member
    drained = await drain_member(request.app[LOCAL_KEY], member)
    return web.json_response({"version": VERSION, "drained": drained})


async def drain_member(ctx: LocalContext, member: Member) -> bool:
    """One ComfyUI container is stopping. When all of the pod's are (the pod is being removed, each
    container's preStop hook calls this at once), this is the pod-wide drain. When only this one is (the
    kubelet restarts it after failed probes), the others take the new prompts and this waits for the prompts
    already dispatched to it, at most SHUTDOWN_GRACE_PERIOD_S. It is not dispatched to afterwards while others
    are up; when it connects again it takes prompts again."""
    member.draining = True
    log.info("drain: ComfyUI %d is stopping; no new prompts for it", member.index)
    if not ctx.pool.all_draining:
        await asyncio.sleep(ctx.settings.drain_delay_s)  # the other containers' hooks arrive meanwhile
    if ctx.pool.all_draining:
        drained = await ctx.drain_pod()
    else:
        drained = await _wait_dispatched(member, ctx.settings.shutdown_grace_period_s)
    member.stopped = True
    return drained


async def _wait_dispatched(member: Member, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while member.queued:
        if time.monotonic() >= deadline:
            log.warning("drain: prompts still running on ComfyUI %d after %.0f s", member.index, timeout_s)
            return False
        await asyncio.sleep(IDLE_POLL_S)
    return True


@documented(
    Operation(
        "Where this pod's models and queue are (for the router): readiness, queues, models per ComfyUI",
        {200: (Placement, "the placement state")},
    )
)
async def placement_route(request: web.Request) -> web.Response:
    return web.json_response(placement(request.app[LOCAL_KEY]).model_dump())


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health/comfyui/{index}", comfyui_health),
        web.get("/drain/{index}", drain_comfyui),
        web.get(PLACEMENT_PATH, placement_route),
    ]

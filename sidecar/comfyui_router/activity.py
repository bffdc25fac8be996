"""Whether the instance has work, for scaling to zero and back: `GET /activity` (open, counts only).

The operator reads it through the instance's Service (any router) and scales the replicas to zero after
`spec.scaling.idleTimeoutSeconds` without work, and up again as soon as a job waits. The router that answers
adds the other routers' own figures (`?scope=local` on each), so one call sees the whole instance.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from comfyui_sidecar.cluster.client import PeerClient
from pydantic import BaseModel, Field

ROUTE = "/activity"


class ActivityReport(BaseModel):
    """What the operator decides on (the operator parses the same fields)."""

    held: int = Field(ge=0, description="v2 jobs held for a replica (each counted once).")
    waiting: int = Field(ge=0, description="comfyui-api and other requests waiting for a replica.")
    inflight: int = Field(ge=0, description="requests a replica is answering now.")
    idle_seconds: float = Field(ge=0, description="seconds since the last sign of work; 0 while there is.")
    routers: int = Field(ge=1, description="routers that answered.")
    replicas_ready: int = Field(ge=0, description="replicas that take jobs now (the most any router sees).")


class Activity:
    def __init__(
        self,
        *,
        held: Callable[[], set[str]],
        replicas_ready: Callable[[], int],
        busy_seen: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._held = held
        self._replicas_ready = replicas_ready
        self._busy_seen = busy_seen
        self.clock = clock
        self.waiting = 0
        self.inflight = 0
        self._last = clock()
        """The start counts as activity: a restarted router never reports a long idle time it did not see."""

    def touch(self) -> None:
        self._last = self.clock()

    def idle_seconds(self) -> float:
        if self.waiting or self.inflight or self._held():
            return 0.0
        last = max(self._last, self._busy_seen())
        return max(0.0, self.clock() - last)

    def local(self) -> dict[str, Any]:
        """This router's figures; held jobs as digests of their ids (copies on several routers count once,
        and the open route names no job)."""
        return {
            "held_ids": sorted(hashlib.sha256(job_id.encode()).hexdigest()[:16] for job_id in self._held()),
            "waiting": self.waiting,
            "inflight": self.inflight,
            "idle_seconds": round(self.idle_seconds(), 3),
            "replicas_ready": self._replicas_ready(),
        }


def merge(parts: list[dict[str, Any]]) -> ActivityReport:
    """The instance's figures from each router's own (held jobs are copied to every router: counted once)."""
    held: set[str] = set()
    for part in parts:
        held.update(str(item) for item in part.get("held_ids", []))
    return ActivityReport(
        held=len(held),
        waiting=sum(int(part.get("waiting", 0)) for part in parts),
        inflight=sum(int(part.get("inflight", 0)) for part in parts),
        idle_seconds=min(float(part.get("idle_seconds", 0.0)) for part in parts),
        routers=len(parts),
        replicas_ready=max(int(part.get("replicas_ready", 0)) for part in parts),
    )


def routes(activity: Activity, routers: PeerClient) -> list[web.RouteDef]:
    async def report(request: web.Request) -> web.Response:
        own = activity.local()
        if request.query.get("scope") == "local":
            return web.json_response(own)
        parts = [own]
        for answer in await routers.scatter("GET", ROUTE, params={"scope": "local"}):
            if answer.status == 200 and isinstance(answer.body, dict):
                parts.append(answer.body)
        return web.json_response(merge(parts).model_dump())

    return [web.get(ROUTE, report, allow_head=False)]

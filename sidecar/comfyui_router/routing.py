"""Sending a request to the best replica: choose (choice.py), try in order, wait while none is ready.

- A replica that can not be reached, or answers 429 (queue full) or 503 (stopping) before it took the job,
  is skipped for the next one in the order (a streamed body is only re-sent when it was never sent).
- While no replica is ready (scaled to zero, starting, all replaced) the request waits, at most
  HOLD_TIMEOUT_S and counted against MAX_HELD_JOBS (then 503 / 429). While replicas run but all have a full
  queue, it gets their 429 at once.
- A replica that goes away while it has the request: 502 with what happened (the outcome is unknown).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from comfyui_sidecar.v2.errors import error_response

from comfyui_router.activity import Activity
from comfyui_router.choice import Decision, rank, round_robin, saturated
from comfyui_router.forward import Broken, Forwarder, ReplicaGone, Rewrite, Unreachable, request_headers
from comfyui_router.held import HeldFull, HeldStore
from comfyui_router.metrics import RouterMetrics
from comfyui_router.replicas import Replica, ReplicaSet
from comfyui_router.settings import RouterSettings

log = logging.getLogger(__name__)
Family = Literal["api", "v2"]
RETRIED_STATUSES = frozenset({429, 503})
RECENT_JOBS = 256
"""How many of the latest jobs make up the demand for each model."""


def refusal(
    family: Family, status: int, code: str, message: str, retry_after: int | None = None
) -> web.Response:
    """An answer of the router itself in the shape of the route family (v2 envelope or comfyui-api)."""
    if family == "v2":
        return error_response(status, code, message, retry_after=retry_after)
    if status == 429:
        body: dict[str, Any] = {"error": message}
    else:
        body = {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Router:
    settings: RouterSettings
    replicas: ReplicaSet
    forwarder: Forwarder
    held: HeldStore
    activity: Activity
    metrics: RouterMetrics

    def __post_init__(self) -> None:
        self._turns = itertools.count()
        self._recent: collections.deque[frozenset[str]] = collections.deque(maxlen=RECENT_JOBS)

    def decide(self, models: set[str]) -> Decision:
        views = self.replicas.views()
        if self.settings.routing_policy == "round_robin":
            return round_robin(views, next(self._turns))
        demand = collections.Counter(model for used in self._recent for model in used)
        return rank(views, models, affinity_max_queue=self.settings.affinity_max_queue, demand=demand)

    def routed(self, models: set[str]) -> None:
        """A job using `models` went to a replica (the demand the choice weighs)."""
        if models:
            self._recent.append(frozenset(models))

    async def wait_for_replica(self, models: set[str], family: Family) -> Decision | web.Response:
        """A non-empty decision, or the answer: 429 when all replicas are full or too much waits, 503 when no
        replica became ready within HOLD_TIMEOUT_S."""
        decision = self.decide(models)
        if decision.order:
            return decision
        retry = self.settings.retry_after_s
        if saturated(self.replicas.views()):
            return refusal(family, 429, "queue_full", "every replica's queue is full; retry later", retry)
        try:
            self.held.admit(0, self.activity.waiting)
        except HeldFull as error:
            self.metrics.refused.inc()
            return refusal(family, 429, "queue_full", f"no replica is ready and {error}", retry)
        deadline = time.monotonic() + self.settings.hold_timeout_s
        self.activity.waiting += 1
        self.metrics.waiting.inc()
        try:
            while time.monotonic() < deadline:
                await self.replicas.changed(deadline - time.monotonic())
                decision = self.decide(models)
                if decision.order:
                    return decision
                if saturated(self.replicas.views()):
                    return refusal(family, 429, "queue_full", "every replica's queue is full", retry)
        finally:
            self.activity.waiting -= 1
            self.metrics.waiting.dec()
        return refusal(
            family,
            503,
            "deployment_not_ready",
            f"no replica became ready within {self.settings.hold_timeout_s:g} s",
            retry,
        )

    async def send(
        self,
        request: web.Request,
        family: Family,
        *,
        models: set[str],
        body: Any,
        resendable: bool,
        path_qs: str | None = None,
        headers_dropped: tuple[str, ...] = (),
        before_send: Callable[[Replica], None] | None = None,
    ) -> web.StreamResponse:
        """Forward `request` (with `body`) to the best replica for `models`, waiting for one if needed."""
        self.activity.touch()
        chosen = await self.wait_for_replica(models, family)
        if isinstance(chosen, web.StreamResponse):
            return chosen
        headers = request_headers(request, drop=headers_dropped)
        refused: tuple[int, bytes, dict[str, str]] | None = None
        for name in chosen.order:
            replica = self.replicas.get(name)
            if replica is None:
                continue
            if before_send is not None:
                before_send(replica)
            self.activity.inflight += 1
            token = replica.dispatched(models, self.replicas.clock())  # counted at once: a burst spreads
            try:
                try:
                    upstream = await self.forwarder.open(
                        replica, request.method, path_qs or str(request.rel_url), headers, body
                    )
                except Unreachable as error:
                    replica.refused(token)
                    self.metrics.failed.labels(reason="unreachable").inc()
                    log.info("%s; trying the next replica", error)
                    continue
                if upstream.status in RETRIED_STATUSES and resendable:
                    replica.refused(token)
                    refused = (upstream.status, await upstream.read(), dict(upstream.headers))
                    upstream.release()
                    continue
                replica.settle(token, queued=upstream.status in (201, 202), now=self.replicas.clock())
                self.routed(models)
                self.metrics.decisions.labels(reason=chosen.reason).inc()
                return await self.forwarder.relay(request, replica, upstream)
            except ReplicaGone as error:
                self.metrics.failed.labels(reason="gone").inc()
                return refusal(family, 502, "upstream_unreachable", f"{error}; the outcome is unknown")
            except Broken as error:
                self.metrics.failed.labels(reason="broken").inc()
                return refusal(family, 502, "upstream_unreachable", f"{error}; the outcome is unknown")
            finally:
                self.activity.inflight -= 1
                self.activity.touch()
        if refused is not None:
            status, raw, upstream_headers = refused
            kept = {k: v for k, v in upstream_headers.items() if k in ("Content-Type", "Retry-After")}
            return web.Response(status=status, body=raw, headers=kept)
        return refusal(family, 503, "upstream_unreachable", "no replica could be reached; retry")

    async def to_replica(
        self,
        request: web.Request,
        replica: Replica,
        family: Family,
        *,
        path_qs: str | None = None,
        rewrite: Rewrite | None = None,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        """Forward to one given replica (the owner of an id); 503 when it does not answer."""
        self.activity.touch()
        headers = request_headers(request, drop=("Content-Encoding",) if body is not None else ())
        if body is None and request.can_read_body:
            body = request.content  # type: ignore[assignment]
        self.activity.inflight += 1
        try:
            upstream = await self.forwarder.open(
                replica, request.method, path_qs or str(request.rel_url), headers, body
            )
            return await self.forwarder.relay(request, replica, upstream, rewrite)
        except (Unreachable, ReplicaGone, Broken) as error:
            return refusal(family, 503, "upstream_unreachable", f"the pod that owns this id: {error}")
        finally:
            self.activity.inflight -= 1
            self.activity.touch()

    async def first_success(
        self, request: web.Request, replicas: list[Replica], body: bytes
    ) -> web.StreamResponse:
        """Ask each replica in turn; the first 200, else the last answer (e.g. interrupt an unknown id)."""
        headers = request_headers(request, drop=("Content-Encoding",))
        last: web.Response = refusal("api", 503, "upstream_unreachable", "no replica could be reached")
        for replica in replicas:
            try:
                upstream = await self.forwarder.open(
                    replica, request.method, str(request.rel_url), headers, body
                )
            except (Unreachable, ReplicaGone, Broken):
                continue
            if upstream.status == 200:
                return await self.forwarder.relay(request, replica, upstream)
            raw = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k == "Content-Type"}
            last = web.Response(status=upstream.status, body=raw, headers=kept)
            upstream.release()
        return last


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

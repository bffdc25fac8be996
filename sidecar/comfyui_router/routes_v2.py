"""/api/v2 through the router.

- `POST /jobs`: the workflow's models choose the replica; with no replica ready the job is held (201,
  `queued`) and dispatched later (dispatch.py).
- Anything with a job, asset or output id goes to the replica that owns the id (ids name their owner pod).
  A held id is answered by the router itself until its job runs, then by the replica, rewritten to the held
  id. An id whose owner is gone reads as `expired` (`job_lost`), as the sidecars answer it.
- Everything else (uploads, lists, hashes) goes to the least-loaded replica, which asks its peers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from comfyui_sidecar import request_body
from comfyui_sidecar.logs import bind_job
from comfyui_sidecar.placement import workflow_models
from comfyui_sidecar.request_body import BodyError
from comfyui_sidecar.v2 import ids, schemas
from comfyui_sidecar.v2 import render as v2_render
from comfyui_sidecar.v2.errors import V2Error, invalid_request, not_found
from comfyui_sidecar.v2.events import HEADERS, frame
from comfyui_sidecar.v2.links import External, external
from comfyui_sidecar.v2.workflow import check_submit

from comfyui_router.choice import saturated
from comfyui_router.dispatch import Dispatcher
from comfyui_router.held import HeldFull, HeldJob, render, rewriter, status_event
from comfyui_router.routing import Router, json_bytes

log = logging.getLogger(__name__)
API = "/api/v2"
_BODY_CODES = {408: "request_timeout", 413: "payload_too_large"}


@dataclass
class V2Routes:
    router: Router
    dispatcher: Dispatcher
    key: bytes
    self_name: str

    @property
    def settings(self) -> Any:
        return self.router.settings

    def ext(self, request: web.Request) -> External:
        return external(
            request.headers,
            request.scheme,
            public_base_url=self.settings.public_base_url,
            trust_forwarded=self.settings.trust_forwarded_headers,
        )

    # ---- submit -------------------------------------------------------------------------------------------
    async def submit(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request_body.read_body(request, self.settings.body_limits)
            data = request_body.decode_json(raw, self.settings.body_limits)
        except BodyError as error:
            raise V2Error(
                error.status, _BODY_CODES.get(error.status, "invalid_request"), error.message
            ) from None
        if not isinstance(data, dict):
            raise invalid_request("the body must be a JSON object")
        try:
            body = schemas.SubmitRequest.model_validate(data)
        except ValueError as error:
            raise invalid_request(str(error).splitlines()[0]) from None
        labels = check_submit(body)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not schemas.IDEMPOTENCY_KEY.match(key):
            raise invalid_request("Idempotency-Key must be 1-255 printable ASCII characters")
        models = workflow_models(body.workflow)
        if self.router.decide(models).order:
            return await self.router.send(
                request,
                "v2",
                models=models,
                body=bytes(raw),
                resendable=True,
                headers_dropped=("Content-Encoding",),
            )
        return await self._hold(request, body, labels=labels, key=key, models=models, size=len(raw))

    async def _hold(
        self,
        request: web.Request,
        body: schemas.SubmitRequest,
        *,
        labels: dict[str, str],
        key: str | None,
        models: set[str],
        size: int,
    ) -> web.Response:
        retry = self.settings.retry_after_s
        if saturated(self.router.replicas.views()):
            raise V2Error(429, "queue_full", "every replica's queue is full", retry_after=retry)
        if len(labels) >= schemas.MAX_LABELS:
            raise V2Error(
                422,
                "metadata_invalid",
                f"no replica is ready: a held job may carry at most {schemas.MAX_LABELS - 1} labels "
                "(the router adds one)",
            )
        if key is not None and self.router.held.with_key(key) is not None:
            raise V2Error(422, "idempotency_key_reuse", "this Idempotency-Key was already used")
        try:
            self.router.held.admit(size, self.router.activity.waiting)
        except HeldFull as error:
            self.router.metrics.refused.inc()
            raise V2Error(429, "queue_full", f"no replica is ready and {error}", retry_after=retry) from None
        now = time.time()
        job = HeldJob(
            id=ids.mint(self.key, "job", self.self_name, round(now * 1000)),
            created=round(now, 3),
            updated=round(now, 3),
            workflow=body.workflow,
            extra_data=body.extra_data.model_dump() if body.extra_data is not None else None,
            labels=labels,
            idempotency_key=key,
            models=sorted(models),
            size=size,
        )
        self.router.activity.touch()
        bind_job(job.id)
        log.info("no replica is ready: job held (%d held)", len(self.router.held.held()) + 1)
        await self.dispatcher.change(job)
        self.dispatcher.wake.set()
        stored = self.router.held.get(job.id) or job
        body_out = render(stored, self.router.held.position(stored), self.ext(request), self.retention)
        return web.Response(body=json_bytes(body_out), status=201, content_type="application/json")

    @property
    def retention(self) -> float:
        return float(self.settings.job_retention_s)

    # ---- one job ------------------------------------------------------------------------------------------
    async def job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        bind_job(job_id)
        action = request.match_info.get("action", "")
        held = self.router.held.get(job_id)
        if held is not None and held.status == "dispatched" and held.real_id:
            return await self._as_real(request, held.id, held.real_id)
        if held is not None:
            return await self._held_answer(request, held, action)
        parsed = ids.decode(self.key, job_id, kinds=("job",))
        if parsed is None:
            raise not_found("job")
        replica = self.router.replicas.get(parsed.owner)
        if replica is not None and not replica.gone.is_set():
            return await self.router.to_replica(request, replica, "v2")
        real = (
            await self.dispatcher.find(job_id) if parsed.owner not in self.router.replicas.replicas else None
        )
        if real is not None:
            return await self._as_real(request, job_id, real)
        if time.time() < parsed.created_ms / 1000 + self.retention:
            if action in ("workflow", "events"):
                raise not_found("job")
            lost = v2_render.lost_job(job_id, parsed.created_ms, self.retention, self.ext(request))
            return web.Response(body=json_bytes(lost), content_type="application/json")
        raise not_found("job")

    async def _as_real(self, request: web.Request, held_id: str, real_id: str) -> web.StreamResponse:
        """The replica's answer about `real_id`, as the answer about `held_id`."""
        parsed = ids.decode(self.key, real_id, kinds=("job",))
        replica = self.router.replicas.get(parsed.owner) if parsed else None
        if replica is None or replica.gone.is_set() or parsed is None:
            if request.path.endswith(("/workflow", "/events")):
                raise not_found("job")
            created = self.router.held.get(held_id)
            created_ms = round(created.created * 1000) if created else (parsed.created_ms if parsed else 0)
            lost = v2_render.lost_job(held_id, created_ms, self.retention, self.ext(request))
            return web.Response(body=json_bytes(lost), content_type="application/json")
        path = request.rel_url.path.replace(held_id, real_id)
        return await self.router.to_replica(
            request, replica, "v2", path_qs=path, rewrite=rewriter(real_id, held_id)
        )

    async def _held_answer(self, request: web.Request, job: HeldJob, action: str) -> web.StreamResponse:
        if action == "workflow":
            workflow = schemas.JobWorkflow(workflow=job.workflow or {}, format="api").dump()
            return web.Response(body=json_bytes(workflow), content_type="application/json")
        if action == "cancel" and job.status == "held":
            changed = job.model_copy(update={"status": "canceled", "updated": round(time.time(), 3)})
            await self.dispatcher.change(changed)
            job = self.router.held.get(job.id) or changed
            if job.status == "dispatched" and job.real_id:
                return await self._as_real(request, job.id, job.real_id)
        if action == "events":
            return await self._held_events(request, job)
        shown = render(job, self.router.held.position(job), self.ext(request), self.retention)
        return web.Response(body=json_bytes(shown), content_type="application/json")

    async def _held_events(self, request: web.Request, job: HeldJob) -> web.StreamResponse:
        """`status` now and on each change; the stream ends when the job leaves the router (dispatched: the
        client's SDK polls the job, then reconnects to the replica's stream through the router)."""
        response = web.StreamResponse(status=200, headers=HEADERS)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        sent: tuple[str, int | None] | None = None
        last_write = time.monotonic()
        heartbeat = float(self.settings.event_heartbeat_s)
        try:
            while True:
                current = self.router.held.get(job.id)
                if current is None or current.status == "dispatched":
                    break
                position = self.router.held.position(current)
                if sent != (current.status, position):
                    sent = (current.status, position)
                    await response.write(frame("status", status_event(current, position)))
                    last_write = time.monotonic()
                    if current.status != "held":
                        break
                elif time.monotonic() - last_write >= heartbeat:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
                await asyncio.sleep(0.2)
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    # ---- everything else ----------------------------------------------------------------------------------
    async def by_asset_id(self, request: web.Request) -> web.StreamResponse:
        parsed = ids.decode(self.key, request.match_info["asset_id"], kinds=("asset", "output"))
        if parsed is None:
            raise not_found("asset")
        replica = self.router.replicas.get(parsed.owner)
        if replica is not None and not replica.gone.is_set():
            return await self.router.to_replica(request, replica, "v2")
        raise not_found("asset")

    async def anywhere(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == f"{API}/jobs" and not self.router.decide(set()).order:
            return self._held_list(request)
        body = request.content if request.can_read_body else None
        return await self.router.send(request, "v2", models=set(), body=body, resendable=body is None)

    def _held_list(self, request: web.Request) -> web.Response:
        """No replica runs: the jobs the routers hold (one page, newest first)."""
        wanted = {k[len("metadata[") : -1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        jobs = [
            job
            for job in self.router.held.jobs.values()
            if job.status != "dispatched" and all(job.labels.get(k) == v for k, v in wanted.items())
        ]
        jobs.sort(key=lambda job: job.created, reverse=True)
        items = [
            schemas.JobListItem(
                id=job.id,
                status=render(job, None, self.ext(request), self.retention)["status"],
                create_time=schemas.utc(job.created),
                update_time=schemas.utc(job.updated),
                metadata=dict(job.labels),
            ).dump()
            for job in jobs[: _limit(request)]
        ]
        return web.Response(body=json_bytes({"jobs": items}), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{API}/health", self.health, allow_head=False),
            web.post(f"{API}/jobs", self.submit),
            web.get(f"{API}/jobs/{{job_id}}", self.job, allow_head=False),
            web.get(f"{API}/jobs/{{job_id}}/{{action:workflow|events}}", self.job, allow_head=False),
            web.post(f"{API}/jobs/{{job_id}}/{{action:cancel}}", self.job),
            web.route("*", f"{API}/assets/{{asset_id:(ast|out)_[a-z0-9]+}}", self.by_asset_id),
            web.route("*", f"{API}/assets/{{asset_id:(ast|out)_[a-z0-9]+}}/content", self.by_asset_id),
            web.route("*", f"{API}/{{tail:.*}}", self.anywhere),
        ]


def _limit(request: web.Request) -> int:
    try:
        return max(1, min(100, int(request.query.get("limit", "20"))))
    except ValueError:
        return 20

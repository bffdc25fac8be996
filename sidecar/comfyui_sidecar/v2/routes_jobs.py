"""/api/v2/jobs handlers: submit, get, list, workflow, cancel, events (thin: logic lives in the store,
runner, claims and render modules)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

from aiohttp import web
from comfyui_sidecar.cluster.claims import ClaimsUnavailable
from comfyui_sidecar.job_records import JobRecord
from comfyui_sidecar.logs import bind_job
from comfyui_sidecar.openapi import documented
from comfyui_sidecar.v2 import docs, ids, render, schemas
from comfyui_sidecar.v2.context import V2, V2_KEY, locate, read_json
from comfyui_sidecar.v2.errors import V2Error, invalid_request, not_found
from comfyui_sidecar.v2.events import EventStream
from comfyui_sidecar.v2.links import HOP_HEADER
from comfyui_sidecar.v2.workflow import check_submit, isolate_outputs

DEFAULT_LIMIT = 20
OUTPUT_FOLDER = "api-v2"
"""Outputs of job <nonce> go to <output dir>/api-v2/<nonce hex>/."""
MAX_LIMIT = 100


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _job_body(v2: V2, request: web.Request, record: JobRecord) -> dict[str, Any]:
    return render.job(v2.key, record, v2.ext(request), v2.store.queue_position(record))


@documented(docs.SUBMIT)
async def submit(request: web.Request) -> web.Response:
    v2 = request.app[V2_KEY]
    body = await read_json(request, schemas.SubmitRequest)
    labels = check_submit(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not schemas.IDEMPOTENCY_KEY.match(key):
        raise invalid_request("Idempotency-Key must be 1-255 printable ASCII characters")
    retry = v2.settings.retry_after_s
    if v2.draining():
        raise V2Error(429, "deployment_not_ready", "this pod is shutting down; retry", retry_after=retry)
    if v2.queue_full():
        raise V2Error(429, "queue_full", "the queue of this pod is full (MAX_QUEUE_DEPTH)", retry_after=retry)
    try:
        claim = await v2.claims.claim(key) if key is not None else None
    except ClaimsUnavailable as error:
        raise V2Error(503, "upstream_unreachable", str(error)) from None
    if key is not None and claim is None:
        raise V2Error(422, "idempotency_key_reuse", "this Idempotency-Key was already used")
    try:
        graph, used = await v2.runner.place_inputs(body.workflow)
        created = round(time.time(), 3)
        nonce = os.urandom(10)
        job_id = ids.mint(v2.key, "job", v2.peers.self_name, round(created * 1000), nonce=nonce)
        bind_job(job_id)
        graph = isolate_outputs(graph, f"{OUTPUT_FOLDER}/{nonce.hex()}")
        record = v2.store.new_record(
            job_id, "v2", v2.runner.new_comfy_id(), graph, created=created, metadata=labels, assets=used
        )
        v2.runner.release_inputs(used)
        extra = body.extra_data.model_dump() if body.extra_data is not None else None
        try:
            await v2.runner.start(record, graph, extra_data=extra)
        except BaseException:
            v2.store.discard(record)
            raise
    except V2Error as error:
        if claim is not None and error.status < 500:
            await v2.claims.release(claim)  # a definite refusal: the key may be used again
        raise
    return _json(_job_body(v2, request, record), 201)


@documented(docs.GET)
async def get_job(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    record = await _local_or_answer(v2, request)
    if isinstance(record, web.StreamResponse):
        return record
    return _json(_job_body(v2, request, record))


async def _local_or_answer(v2: V2, request: web.Request) -> JobRecord | web.StreamResponse:
    """The local record of the job in the path, or the answer for it: forwarded, expired, or 404."""
    job_id = request.match_info["job_id"]
    where = await locate(v2, request, job_id, ("job",), "job")
    if where.where == "remote":
        return await v2.forward(request, where.url)
    record = v2.store.get_v2(job_id) if where.where == "local" else None
    if record is not None:
        return record
    lost = where.where == "lost" and v2.within_retention(where.parsed.created_ms)
    if lost or (where.where == "local" and v2.lost_here(where.parsed)):
        if request.path.endswith(("/workflow", "/events")):
            raise V2Error(404, "not_found", "the pod that ran this job is gone; the job reads as expired")
        return _json(
            render.lost_job(job_id, where.parsed.created_ms, v2.settings.job_retention_s, v2.ext(request))
        )
    raise not_found("job")


@documented(docs.WORKFLOW)
async def get_workflow(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    record = await _local_or_answer(v2, request)
    if isinstance(record, web.StreamResponse):
        return record
    return _json(schemas.JobWorkflow(workflow=json.loads(record.graph or b"{}"), format="api").dump())


@documented(docs.CANCEL)
async def cancel(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    record = await _local_or_answer(v2, request)
    if isinstance(record, web.StreamResponse):
        return record
    await v2.runner.cancel(record)
    return _json(_job_body(v2, request, record))


@documented(docs.EVENTS)
async def events(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    record = await _local_or_answer(v2, request)
    if isinstance(record, web.StreamResponse):
        return record
    if v2.streams >= v2.settings.max_event_streams:
        raise V2Error(
            429,
            "too_many_streams",
            "too many open event streams on this pod",
            retry_after=v2.settings.retry_after_s,
        )
    v2.streams += 1
    v2.metrics.event_streams.inc()
    try:
        stream = EventStream(
            v2.store, record, key=v2.key, ext=v2.ext(request), heartbeat_s=v2.settings.event_heartbeat_s
        )
        return await stream.serve(request)
    finally:
        v2.streams -= 1
        v2.metrics.event_streams.dec()


# ---- list --------------------------------------------------------------------------------------------------
def _list_query(v2: V2, request: web.Request) -> tuple[int, ids.Cursor | None, dict[str, str]]:
    query = request.query
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise invalid_request("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_request(f"limit must be between 1 and {MAX_LIMIT}")
    cursor = None
    if query.get("cursor"):
        cursor = ids.decode_cursor(v2.key, query["cursor"])
        if cursor is None:
            raise V2Error(400, "invalid_cursor", "this cursor was not issued by this instance")
    labels: dict[str, str] = {}
    for name, value in query.items():
        if name.startswith("metadata[") and name.endswith("]"):
            label = name[len("metadata[") : -1]
            if not schemas.LABEL_KEY.match(label) or label in labels:
                raise V2Error(400, "invalid_metadata_filter", f"bad metadata filter {name!r}")
            labels[label] = value
        elif name.startswith("metadata"):
            raise V2Error(400, "invalid_metadata_filter", f"bad metadata filter {name!r}")
    if len(labels) > schemas.MAX_LABEL_FILTERS:
        raise V2Error(400, "invalid_metadata_filter", f"at most {schemas.MAX_LABEL_FILTERS} metadata filters")
    return limit, cursor, labels


def _sort_key(item: dict[str, Any]) -> tuple[int, str]:
    created = datetime.fromisoformat(str(item["create_time"]))
    return round(created.timestamp() * 1000), str(item["id"])


@documented(docs.LIST)
async def list_jobs(request: web.Request) -> web.Response:
    """Newest first across every peer: each peer pages its own jobs after the cursor; the pages merge."""
    v2 = request.app[V2_KEY]
    limit, cursor, labels = _list_query(v2, request)
    records, more = v2.store.list_v2(cursor, limit, labels)
    items = [render.list_item(record) for record in records]
    if HOP_HEADER not in request.headers:
        for answer in await v2.client.scatter("GET", "/api/v2/jobs", params=dict(request.query)):
            if answer.status == 200 and isinstance(answer.body, dict):
                items += [item for item in answer.body.get("jobs", []) if isinstance(item, dict)]
                more = more or bool(answer.body.get("next_cursor"))
    items.sort(key=_sort_key, reverse=True)
    more = more or len(items) > limit
    page = items[:limit]
    body: dict[str, Any] = {"jobs": page}
    if more and page:
        created_ms, last_id = _sort_key(page[-1])
        body["next_cursor"] = ids.encode_cursor(v2.key, ids.Cursor(created_ms, last_id))
    return _json(body)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v2/jobs", submit),
        web.get("/api/v2/jobs", list_jobs, allow_head=False),
        web.get("/api/v2/jobs/{job_id}", get_job, allow_head=False),
        web.get("/api/v2/jobs/{job_id}/workflow", get_workflow, allow_head=False),
        web.post("/api/v2/jobs/{job_id}/cancel", cancel),
        web.get("/api/v2/jobs/{job_id}/events", events, allow_head=False),
    ]

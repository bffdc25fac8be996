"""`GET /prompt/{id}` for comfyui-api clients: the state of a prompt from the shared job store, on any pod.

The comfyui-api id is the caller's, so it names no pod: a pod that does not hold it asks its peers. Answer:
`{"id", "status", "queue_position", "progress", "created_at", "started_at", "completed_at", "error"}` with the
v2 status names (queued, running, canceling, succeeded, failed, canceled), or 404 `{"error": ...}`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from comfyui_sidecar.job_records import JobRecord
from comfyui_sidecar.openapi import documented
from comfyui_sidecar.v2 import docs, render, schemas
from comfyui_sidecar.v2.context import V2_KEY
from comfyui_sidecar.v2.links import HOP_HEADER


def body(record: JobRecord, position: int | None) -> dict[str, Any]:
    progress = render.progress(record)
    return {
        "id": record.id,
        "status": record.status,
        "queue_position": position,
        "progress": progress.dump() if progress is not None else None,
        "created_at": schemas.utc(record.created).isoformat().replace("+00:00", "Z"),
        "started_at": schemas.utc(record.started).isoformat().replace("+00:00", "Z")
        if record.started
        else None,
        "completed_at": (
            schemas.utc(record.completed).isoformat().replace("+00:00", "Z") if record.completed else None
        ),
        "error": record.error.message if record.error else None,
    }


@documented(docs.PROMPT_STATUS)
async def prompt_status(request: web.Request) -> web.Response:
    v2 = request.app[V2_KEY]
    request_id = request.match_info["id"]
    record = v2.store.get_prompt(request_id)
    if record is not None:
        return web.json_response(body(record, v2.store.queue_position(record)))
    if HOP_HEADER not in request.headers:
        for answer in await v2.client.scatter("GET", f"/prompt/{quote(request_id, safe='')}"):
            if answer.status == 200 and isinstance(answer.body, dict):
                return web.json_response(answer.body)
    return web.json_response({"error": f"no prompt with id {request_id}", "location": "id"}, status=404)

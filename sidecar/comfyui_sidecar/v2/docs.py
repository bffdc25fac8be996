"""The OpenAPI operations of /api/v2 (attached to the handlers with `openapi.documented`)."""

from __future__ import annotations

from typing import Any

from comfyui_sidecar.openapi import Operation, Schema
from comfyui_sidecar.v2 import schemas

ERROR = schemas.ErrorEnvelope
_MEANING = {
    400: "invalid request, cursor or metadata filter",
    401: "no or a wrong bearer token",
    404: "no such id (never minted here, or past its retention)",
    408: "the body did not arrive in time",
    409: "hash mismatch / asset in use",
    413: "too large (body, or the asset store of the pod is full)",
    415: "not application/json",
    422: "invalid_workflow, workflow_format_ui, missing_asset, idempotency_key_reuse or metadata_invalid",
    429: "queue_full, deployment_not_ready or too_many_streams; see Retry-After",
    500: "ComfyUI did not take the job (upstream_error)",
    503: "the pod that owns the id does not answer (upstream_unreachable)",
}


def errors(*codes: int) -> dict[int, tuple[Schema | None, str]]:
    return {code: (ERROR, _MEANING[code]) for code in codes}


def operation(summary: str, ok: dict[int, tuple[Any, str]], *codes: int, request: Any = None) -> Operation:
    return Operation(summary, {**ok, **errors(401, *codes)}, request=request)


JOB = {200: (schemas.Job, "the job")}
ASSET = {200: (schemas.Asset, "the asset")}
SUBMIT = operation(
    "Submit a workflow (Idempotency-Key: single use, 24 h, across replicas)",
    {201: (schemas.Job, "queued")},
    400,
    408,
    413,
    415,
    422,
    429,
    500,
    503,
    request=schemas.SubmitRequest,
)
LIST = operation(
    "Jobs of every replica, newest first (limit, cursor, metadata[key]=value)",
    {200: (schemas.JobList, "one page")},
    400,
)
GET = operation("The job (its owner answers, through any replica)", JOB, 404, 503)
WORKFLOW = operation("The executed graph", {200: (schemas.JobWorkflow, "graph")}, 404, 503)
CANCEL = operation("Cancel (idempotent): canceling, or the terminal state", JOB, 404, 503)
EVENTS = Operation(
    "Server-Sent Events: status, progress, preview, output; ends after the terminal status",
    {200: (None, "text/event-stream"), **errors(401, 404, 429, 503)},
    content_type="text/event-stream",
)
UPLOAD = operation(
    "Upload (multipart: content_type, file_path, expected_hash, file)",
    {201: (schemas.Asset, "new bytes"), 200: (schemas.Asset, "bytes this pod already held")},
    409,
    413,
    422,
)
FROM_HASH = operation(
    "A new asset over bytes held by any replica",
    {201: (schemas.Asset, "minted"), 200: (schemas.Asset, "the same file_path existed")},
    400,
    404,
    request=schemas.FromHashRequest,
)
BY_HASH = Operation(
    "Are these bytes held by any replica? (HEAD or GET)", {200: (None, "yes"), 404: (None, "no")}
)
ASSET_GET = operation("Asset or output metadata", ASSET, 404, 503)
ASSET_DELETE = operation("Delete an asset or an output", {204: (None, "deleted")}, 404, 409, 503)
CONTENT = Operation(
    "The bytes (Range: bytes=a-b gives 206)",
    {200: (None, "the bytes"), 206: (None, "a range"), **errors(401, 404, 503)},
    content_type="application/octet-stream",
)
HEALTH = Operation("Liveness of /api/v2 (open, does not ask ComfyUI)", {200: ({"type": "object"}, "healthy")})
CLAIM = Operation(
    "Internal (between replicas): claim or release an idempotency key digest",
    {201: (None, "claimed"), 204: (None, "released"), 409: (None, "already claimed"), **errors(401)},
)
PROMPT_STATUS = Operation(
    "State of a comfyui-api prompt by request id, on any replica (queued, running, succeeded...)",
    {200: ({"type": "object"}, "the prompt"), 404: ({"type": "object"}, "unknown id")},
)

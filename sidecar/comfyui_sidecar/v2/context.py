"""What the /api/v2 handlers share, and where an id's owner is (this pod, a peer, or gone)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from comfyui_sidecar import request_body
from comfyui_sidecar.cluster.claims import Claims
from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.request_body import BodyError
from comfyui_sidecar.v2 import ids
from comfyui_sidecar.v2.assets import AssetStore
from comfyui_sidecar.v2.errors import V2Error, invalid_request, not_found
from comfyui_sidecar.v2.links import HOP_HEADER, External, external
from comfyui_sidecar.v2.runner import JobRunner
from comfyui_sidecar.v2.settings import ApiSettings
from pydantic import BaseModel, ValidationError


@dataclass
class V2:
    settings: ApiSettings
    store: JobStore
    runner: JobRunner
    assets: AssetStore
    peers: Peers
    client: PeerClient
    claims: Claims
    metrics: Metrics
    queue_full: Callable[[], bool]
    draining: Callable[[], bool]
    max_body_bytes: int
    streams: int = 0

    @property
    def key(self) -> bytes:
        return self.settings.tag_key()

    def ext(self, request: web.Request) -> External:
        return external(
            request.headers,
            request.scheme,
            public_base_url=self.settings.public_base_url,
            trust_forwarded=self.settings.trust_forwarded_headers,
        )

    def within_retention(self, created_ms: int) -> bool:
        return time.time() < created_ms / 1000 + self.settings.job_retention_s

    def lost_here(self, parsed: ids.ParsedId) -> bool:
        """An id of this peer from before this process started: its record died with the old process."""
        return parsed.created_ms < self.store.started * 1000 and self.within_retention(parsed.created_ms)

    async def forward(self, request: web.Request, url: str) -> web.StreamResponse:
        try:
            response = await self.client.forward(request, url, self.ext(request))
        except PeerUnreachable as error:
            self.metrics.forwarded.labels(result="unreachable").inc()
            raise V2Error(
                503, "upstream_unreachable", f"the pod that owns this id did not answer ({error})"
            ) from None
        self.metrics.forwarded.labels(result="ok").inc()
        return response


V2_KEY = web.AppKey("v2", V2)

Where = Literal["local", "remote", "lost"]


@dataclass(frozen=True)
class Located:
    where: Where
    parsed: ids.ParsedId
    url: str = ""


async def locate(
    v2: V2, request: web.Request, raw_id: str, kinds: tuple[ids.Kind, ...], what: str
) -> Located:
    """Where the thing an id names lives; 404 for an id this instance never minted."""
    parsed = ids.decode(v2.key, raw_id, kinds=kinds)
    if parsed is None:
        raise not_found(what)
    if parsed.owner == v2.peers.self_name:
        return Located("local", parsed)
    if HOP_HEADER in request.headers:  # sent here by a peer that thinks we own it: we do not
        return Located("lost", parsed)
    url = await v2.peers.find(parsed.owner)
    return Located("remote", parsed, url) if url is not None else Located("lost", parsed)


_BODY_CODES = {408: "request_timeout", 413: "payload_too_large"}


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """A JSON object body (the sidecar's one JSON reader, request_body) validated by `model`; 400
    invalid_request, or 408/413/415 for a slow, large or non-JSON body."""
    try:
        data = await request_body.read_json(request)
    except BodyError as error:
        raise V2Error(error.status, _BODY_CODES.get(error.status, "invalid_request"), error.message) from None
    if not isinstance(data, dict):
        raise invalid_request("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors(include_url=False)[:3]
        ]
        raise invalid_request("; ".join(problems)) from None

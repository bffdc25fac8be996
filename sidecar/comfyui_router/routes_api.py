"""The comfyui-api routes through the router, and every other route.

- `POST /prompt`: the prompt's models choose the replica (sync, async and webhook prompts alike: the router
  relays whatever the sidecar answers); while no replica is ready the request waits (HOLD_TIMEOUT_S).
- `POST /interrupt` and `GET /prompt/{id}`: to the replica the router sent that prompt id to; an id it did not
  route goes to every replica in turn (interrupt) or to any replica, which asks its peers (status).
- Anything else (`/models`, `/download`, `/docs`, unknown routes): the least-loaded replica.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

from aiohttp import web
from comfyui_sidecar import request_body
from comfyui_sidecar.logs import bind_job
from comfyui_sidecar.placement import workflow_models
from comfyui_sidecar.request_body import BodyError
from comfyui_sidecar.responses import body_error_response

from comfyui_router.replicas import Replica
from comfyui_router.routing import Router

MAX_REMEMBERED = 10_000


@dataclass
class ApiRoutes:
    router: Router
    routed: collections.OrderedDict[str, str] = field(default_factory=collections.OrderedDict)
    """prompt id -> the replica it was sent to (the newest MAX_REMEMBERED)."""

    def remember(self, prompt_id: object, replica: Replica) -> None:
        if isinstance(prompt_id, str) and prompt_id:
            self.routed[prompt_id] = replica.name
            self.routed.move_to_end(prompt_id)
            while len(self.routed) > MAX_REMEMBERED:
                self.routed.popitem(last=False)

    def _known(self, prompt_id: str) -> Replica | None:
        name = self.routed.get(prompt_id)
        replica = self.router.replicas.get(name) if name else None
        return replica if replica is not None and not replica.gone.is_set() else None

    async def _read(self, request: web.Request) -> tuple[bytes, object] | web.Response:
        """The body (decoded) and its JSON (None when it is not JSON: the sidecar then says what is wrong)."""
        try:
            raw = bytes(await request_body.read_body(request, self.router.settings.body_limits))
        except BodyError as error:
            return body_error_response(error)
        try:
            return raw, json.loads(raw)
        except ValueError:
            return raw, None

    async def prompt(self, request: web.Request) -> web.StreamResponse:
        read = await self._read(request)
        if isinstance(read, web.Response):
            return read
        raw, data = read
        nodes = data.get("prompt") if isinstance(data, dict) else None
        models = workflow_models(nodes) if isinstance(nodes, dict) else set()
        prompt_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(prompt_id, str) and prompt_id:
            bind_job(prompt_id)
        return await self.router.send(
            request,
            "api",
            models=models,
            body=raw,
            resendable=True,
            headers_dropped=("Content-Encoding",),
            before_send=lambda replica: self.remember(prompt_id, replica),
        )

    async def interrupt(self, request: web.Request) -> web.StreamResponse:
        read = await self._read(request)
        if isinstance(read, web.Response):
            return read
        raw, data = read
        prompt_id = data.get("id") if isinstance(data, dict) else None
        known = self._known(prompt_id) if isinstance(prompt_id, str) else None
        if known is not None:
            return await self.router.to_replica(request, known, "api", body=raw)
        serving = [v.name for v in self.router.replicas.views() if v.serving]
        replicas = [r for r in map(self.router.replicas.get, serving) if r is not None]
        if not replicas:
            return await self.router.send(request, "api", models=set(), body=raw, resendable=True)
        return await self.router.first_success(request, replicas, raw)

    async def prompt_status(self, request: web.Request) -> web.StreamResponse:
        known = self._known(request.match_info["id"])
        if known is not None:
            return await self.router.to_replica(request, known, "api")
        return await self.anywhere(request)

    async def anywhere(self, request: web.Request) -> web.StreamResponse:
        body = request.content if request.can_read_body else None
        return await self.router.send(request, "api", models=set(), body=body, resendable=body is None)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/prompt", self.prompt),
            web.post("/interrupt", self.interrupt),
            web.get("/prompt/{id}", self.prompt_status, allow_head=False),
            web.route("*", "/{tail:.*}", self.anywhere),
        ]

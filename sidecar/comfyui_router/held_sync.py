"""Every router of an instance keeps every held job: each change is sent to the other routers (PUT, with the
API token when auth is on), and a router that starts reads the others' copies (GET) after its journal.

The other routers are found like the sidecars find their peers (`PEERS` / `PEERS_DNS`: the instance's headless
`<name>-router-peers` Service). Copies merge by state (a later state wins, see `held.HeldJob.newer_than`),
so the order in which changes arrive does not matter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers
from pydantic import ValidationError

from comfyui_router.held import HeldJob, HeldStore

log = logging.getLogger(__name__)
ROUTE = "/internal/router/held"
PUBLISH_TIMEOUT_S = 3.0


class HeldSync:
    def __init__(
        self, store: HeldStore, peers: Peers, client: PeerClient, valid_id: Callable[[str], bool]
    ) -> None:
        self.store = store
        self.valid_id = valid_id
        self.peers = peers
        self.client = client
        self.on_change: Callable[[HeldJob, HeldJob | None], None] = lambda new, old: None
        """Called with (new copy, previous copy) whenever a copy from another router changed the store."""

    async def _send(self, name: str, url: str, job: HeldJob) -> bool:
        try:
            status, _ = await self.client.call(
                url, "PUT", f"{ROUTE}/{job.id}", json_body=job.model_dump(mode="json")
            )
        except PeerUnreachable as error:
            log.info("held job %s not copied to router %s: %s", job.id, name, error)
            return False
        return status in (200, 204)

    async def publish(self, job: HeldJob) -> int:
        """Send `job` to every other router; the number that took it."""
        others = self.peers.others()
        if not others:
            return 0
        sends = [self._send(name, url, job) for name, url in sorted(others.items())]
        try:
            results = await asyncio.wait_for(asyncio.gather(*sends), timeout=PUBLISH_TIMEOUT_S)
        except TimeoutError:
            return 0
        return sum(results)

    async def pull(self) -> int:
        """Merge the other routers' copies; how many changed the store."""
        changed = 0
        for answer in await self.client.scatter("GET", ROUTE):
            if answer.status != 200 or not isinstance(answer.body, list):
                continue
            for item in answer.body:
                changed += self._merge(item)
        return changed

    def _merge(self, item: object) -> int:
        try:
            job = HeldJob.model_validate(item)
        except ValidationError:
            return 0
        if not self.valid_id(job.id):
            return 0
        before = self.store.get(job.id)
        if not self.store.put(job):
            return 0
        self.on_change(job, before)
        return 1

    # ---- the internal routes ------------------------------------------------------------------------------
    async def handle_put(self, request: web.Request) -> web.Response:
        try:
            item = await request.json()
        except ValueError:
            return web.Response(status=400, text="not JSON")
        if not isinstance(item, dict) or item.get("id") != request.match_info["job_id"]:
            return web.Response(status=400, text="the body is not the held job of this path")
        if not self._merge(item) and self.store.get(request.match_info["job_id"]) is None:
            return web.Response(status=400, text="not a held job")
        return web.Response(status=204)

    async def handle_list(self, request: web.Request) -> web.Response:
        return web.json_response([job.model_dump(mode="json") for job in self.store.jobs.values()])

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put(ROUTE + "/{job_id}", self.handle_put),
            web.get(ROUTE, self.handle_list, allow_head=False),
        ]

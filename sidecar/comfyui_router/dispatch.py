"""Held v2 jobs go to a replica as soon as one is ready, oldest first.

One router dispatches each held job: the router that minted its id while it is among the live routers (those
that answer GET /health, asked every LIVENESS_S), else the live router ranked first for the id
(rendezvous). Two routers may still try at once (a router that just started and does not see the others
yet): the job's Idempotency-Key makes the second submit fail with `idempotency_key_reuse` on the replicas,
and that router then finds the job by its label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from comfyui_sidecar.cluster.claims import digest, ranked
from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.logs import job_scope
from comfyui_sidecar.v2 import ids

from comfyui_router.held import LABEL, HeldJob, HeldStore
from comfyui_router.held_sync import HeldSync
from comfyui_router.replicas import ReplicaSet
from comfyui_router.routing import Router

log = logging.getLogger(__name__)
JOBS = "/api/v2/jobs"
TICK_S = 1.0
LIVENESS_S = 2.0


def submit_body(job: HeldJob) -> dict[str, Any]:
    body: dict[str, Any] = {"workflow": job.workflow, "metadata": {**job.labels, LABEL: job.id}}
    if job.extra_data:
        body["extra_data"] = job.extra_data
    return body


def _error(body: Any, status: int) -> dict[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return {"code": error["code"], "message": str(error.get("message", ""))}
    return {"code": "upstream_error", "message": f"the replica refused the job ({status})"}


class Dispatcher:
    def __init__(
        self,
        *,
        router: Router,
        sync: HeldSync,
        routers: Peers,
        replica_client: PeerClient,
        key: bytes,
    ) -> None:
        self.router = router
        self.store: HeldStore = router.held
        self.replicas: ReplicaSet = router.replicas
        self.sync = sync
        self.routers = routers
        self.client = replica_client
        self.key = key
        self.wake = asyncio.Event()
        self.alive: list[str] = [routers.self_name]
        self._alive_at = -LIVENESS_S
        sync.on_change = self.copy_changed

    async def _refresh_alive(self) -> None:
        """The routers that answer now (this one always does)."""
        now = time.monotonic()
        if now - self._alive_at < LIVENESS_S:
            return
        self._alive_at = now
        answers = await self.sync.client.scatter("GET", "/health")
        self.alive = sorted({self.routers.self_name, *(a.name for a in answers if a.status == 200)})

    def mine(self, job: HeldJob) -> bool:
        parsed = ids.decode(self.key, job.id, kinds=("job",))
        alive = self.alive
        if parsed is not None and parsed.owner in alive:
            return parsed.owner == self.routers.self_name
        return ranked(digest(job.id), alive)[0] == self.routers.self_name

    async def change(self, job: HeldJob) -> None:
        """Store a new state of a held job here and on the other routers."""
        before = self.store.get(job.id)
        if self.store.put(job):
            self.router.metrics.held.set(len(self.store.held()))
            await self.sync.publish(job)
            await self._after(job, before)

    def copy_changed(self, job: HeldJob, before: HeldJob | None) -> None:
        self.router.metrics.held.set(len(self.store.held()))
        task = asyncio.get_running_loop().create_task(self._after(job, before))
        task.add_done_callback(lambda done: done.exception() if not done.cancelled() else None)
        if job.status == "held":
            self.wake.set()

    async def _after(self, job: HeldJob, before: HeldJob | None) -> None:
        """A cancel that lost the race against the dispatch goes to the replica."""
        if job.status == "dispatched" and before is not None and before.status == "canceled":
            await self.cancel_real(job)

    async def cancel_real(self, job: HeldJob) -> None:
        owner = ids.decode(self.key, job.real_id or "", kinds=("job",))
        replica = self.replicas.get(owner.owner) if owner else None
        if replica is None:
            return
        with contextlib.suppress(PeerUnreachable):
            await self.client.call(replica.url, "POST", f"{JOBS}/{job.real_id}/cancel")

    async def find(self, held_id: str) -> str | None:
        """The replica job carrying the label of `held_id`, asked of every replica."""
        params = {f"metadata[{LABEL}]": held_id, "limit": "1"}
        for answer in await self.client.scatter("GET", JOBS, params=params):
            jobs = answer.body.get("jobs") if answer.status == 200 and isinstance(answer.body, dict) else None
            if jobs and isinstance(jobs[0], dict) and isinstance(jobs[0].get("id"), str):
                return str(jobs[0]["id"])
        return None

    async def dispatch(self, job: HeldJob) -> bool:
        """Try the replicas in the routing order; True when the job left the held state."""
        decision = self.router.decide(set(job.models))
        headers = {"Idempotency-Key": job.idempotency_key or job.id}
        for name in decision.order:
            replica = self.replicas.get(name)
            current = self.store.get(job.id)
            if replica is None or current is None or current.status != "held":
                return current is None or (current.status != "held")
            try:
                status, body = await self.client.call(
                    replica.url, "POST", JOBS, json_body=submit_body(job), headers=headers
                )
            except PeerUnreachable:
                continue
            now = time.time()
            if status == 201 and isinstance(body, dict) and isinstance(body.get("id"), str):
                replica.dispatched(set(job.models), self.replicas.clock())
                self.router.routed(set(job.models))
                self.router.metrics.decisions.labels(reason=decision.reason).inc()
                log.info("held job runs on replica %s as %s", name, body["id"])
                await self.change(self._dispatched(current, str(body["id"]), now))
                return True
            if status in (429, 503) or status >= 500:
                continue
            error = _error(body, status)
            if error["code"] == "idempotency_key_reuse":
                real = await self.find(job.id)
                if real is not None:
                    await self.change(self._dispatched(current, real, now))
                    return True
            log.info("held job refused by replica %s: %s", name, error)
            await self.change(current.model_copy(update={"status": "failed", "error": error, "updated": now}))
            return True
        return False

    @staticmethod
    def _dispatched(job: HeldJob, real_id: str, now: float) -> HeldJob:
        return job.model_copy(update={"status": "dispatched", "real_id": real_id, "updated": now})

    async def run_once(self) -> None:
        if self.store.held():
            await self._refresh_alive()
        for failed in self.store.expire(time.time()):
            with job_scope(failed.id):
                log.info("held job failed: %s", (failed.error or {}).get("message"))
            await self.sync.publish(failed)
        for job in self.store.held():
            if not self.mine(job):
                continue
            with job_scope(job.id):
                dispatched = await self.dispatch(job)
            if not dispatched:
                break  # no replica takes jobs now: the rest wait too
        self.router.metrics.held.set(len(self.store.held()))

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("dispatching held jobs failed")
            self.wake.clear()
            changed = asyncio.ensure_future(self.replicas.changed(TICK_S))
            woken = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
            for task in (changed, woken):
                task.cancel()

"""The replicas the router sends jobs to, and what each one holds: discovery (a static list or the DNS records
of the instance's headless `<name>-peers` Service) and a poll of every replica's `GET /internal/placement`.

Between two polls the router counts its own dispatches: a job sent to a replica adds to its queue until a
report made after it. And what matters for the next job is what the replica will hold when that job's
turn comes, not what it holds now: with ComfyUI's default cache a ComfyUI keeps only the models of the prompt
it ran last, so a replica with one ComfyUI "holds" the models of the last job the router sent there (until a
report made after it shows the replica idle, or PENDING_TTL_S passes); with several ComfyUIs, the models of
every job the router sent there count, beside those reported. So a burst of jobs for one model
follows the first one, and jobs for another model do not take a replica whose queue ends with that model.

A replica that leaves discovery, or does not answer its poll for REPLICA_LOST_S, is gone: its `gone` event
fires, and every request the router is forwarding to it fails at once (502) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.placement import Placement
from pydantic import ValidationError

from comfyui_router.choice import ReplicaView

log = logging.getLogger(__name__)
PLACEMENT_PATH = "/internal/placement"
PENDING_TTL_S = 60.0


@dataclass
class Replica:
    name: str
    url: str
    report: Placement | None = None
    last_answer: float = 0.0
    """monotonic time of the last answered poll (0: never)."""
    dispatches: list[float] = field(default_factory=list)
    pending: dict[str, float] = field(default_factory=dict)
    """model -> when the router last sent a job using it here."""
    last_sent: tuple[float, frozenset[str]] | None = None
    """(token, models) of the last job the router sent here, while it may still be queued."""
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> ReplicaView:
        report = self.report
        if report is None or self.gone.is_set():
            return ReplicaView(self.name, ready=False, comfyuis_up=0)
        up = [comfy for comfy in report.comfyuis if comfy.up]
        loaded = {model for comfy in up for model in comfy.loaded_models}
        queued = report.queue_depth + len(self.dispatches)
        if len(up) > 1:
            loaded |= set(self.pending)
        elif self.last_sent is not None:
            loaded = set(self.last_sent[1])  # what the one ComfyUI holds once its queue has run
        return ReplicaView(
            name=self.name,
            ready=report.ready,
            draining=report.draining,
            queue_depth=queued,
            max_queue_depth=report.max_queue_depth,
            comfyuis_up=len(up),
            loaded=frozenset(loaded),
            cached=frozenset(report.cached_models),
        )

    def dispatched(self, models: set[str], now: float) -> float:
        """A job sent now: counted in the queue until a report made after it; returns its token."""
        self.dispatches.append(now)
        for model in models:
            self.pending[model] = now
        self.last_sent = (now, frozenset(models))
        return now

    def settle(self, token: float, *, queued: bool, now: float) -> None:
        """The replica answered the job sent at `token`: still queued there (accepted: counted until a report
        made after the answer), or not (done, refused, failed: no longer counted)."""
        with contextlib.suppress(ValueError):
            self.dispatches.remove(token)
        if queued:
            self.dispatches.append(now)

    def refused(self, token: float) -> None:
        """The job sent at `token` never reached the replica, or it refused it (queue full, stopping)."""
        with contextlib.suppress(ValueError):
            self.dispatches.remove(token)
        if self.last_sent is not None and self.last_sent[0] == token:
            self.last_sent = None

    def reported(self, report: Placement, asked_at: float, now: float) -> None:
        """A poll sent at `asked_at` answered: the report counts every dispatch made before it."""
        self.report = report
        self.last_answer = now
        self.dispatches = [at for at in self.dispatches if at >= asked_at]
        loaded = {model for comfy in report.comfyuis if comfy.up for model in comfy.loaded_models}
        idle = report.queue_depth == 0
        self.pending = {
            model: at
            for model, at in self.pending.items()
            if model not in loaded and now - at < PENDING_TTL_S and not (idle and at < asked_at)
        }
        if self.last_sent is not None:
            at = self.last_sent[0]
            if now - at >= PENDING_TTL_S or (idle and at < asked_at):
                self.last_sent = None


class ReplicaSet:
    def __init__(
        self,
        discovery: Peers,
        client: PeerClient,
        *,
        interval_s: float,
        lost_s: float,
        discovery_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.client = client
        self.interval_s = interval_s
        self.lost_s = lost_s
        self.discovery_every_s = discovery_every_s
        self._discovered_at: float | None = None
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        self._tick = asyncio.Event()
        self.busy_seen = 0.0
        """monotonic time a replica last reported queued or running work."""
        self.on_lost: Callable[[str], None] = lambda name: None

    def views(self) -> list[ReplicaView]:
        return [replica.view() for replica in self.replicas.values()]

    def get(self, name: str) -> Replica | None:
        return self.replicas.get(name)

    async def changed(self, timeout_s: float) -> None:
        """Return after the next poll round (or `timeout_s`)."""
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tick.wait(), timeout=max(0.0, timeout_s))

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _lose(self, replica: Replica, why: str) -> None:
        if not replica.gone.is_set():
            log.warning("replica %s is gone (%s): requests it was answering fail now", replica.name, why)
            replica.gone.set()
            self.on_lost(replica.name)

    def _sync_discovery(self) -> None:
        found = self.discovery.map
        for name in list(self.replicas):
            if name not in found:
                self._lose(self.replicas.pop(name), "no longer discovered")
        for name, url in found.items():
            if name not in self.replicas:
                self.replicas[name] = Replica(name, url)

    async def _poll(self, replica: Replica) -> None:
        asked_at = self.clock()
        try:
            status, body = await self.client.call(replica.url, "GET", PLACEMENT_PATH)
            report = Placement.model_validate(body) if status == 200 else None
        except (PeerUnreachable, ValidationError) as error:
            log.debug("placement of %s: %s", replica.name, error)
            report = None
        now = self.clock()
        if report is None:
            silent_since = replica.last_answer or asked_at
            if replica.report is not None and now - silent_since >= self.lost_s:
                self._lose(replica, f"no answer for {now - silent_since:.0f} s")
            return
        if replica.gone.is_set():
            replica.gone = asyncio.Event()  # it answers again: a new incarnation
        replica.reported(report, asked_at, now)
        if report.queue_depth > 0:
            self.busy_seen = now

    async def poll_once(self) -> None:
        now = self.clock()
        if self._discovered_at is None or now - self._discovered_at >= self.discovery_every_s:
            self._discovered_at = now
            await self.discovery.refresh()
        self._sync_discovery()
        await asyncio.gather(*(self._poll(replica) for replica in list(self.replicas.values())))
        self._notify()

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.poll_once()
            except Exception:
                log.exception("the placement poll failed")
            await asyncio.sleep(max(0.05, self.interval_s - (self.clock() - started)))

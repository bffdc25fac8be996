"""The pod's local ComfyUIs behind one interface, and which one runs each prompt.

A pod runs one ComfyUI, or one per GPU (`COMFYUI_URLS`, the operator's per-GPU mode); each has its own
`ComfyClient` (websocket, waiters) and `ComfyActivity` (what it did, the models it holds). The prompt flow and
the v2 runner talk to the pool as they talked to the one client: `queue` picks a ComfyUI, later calls with the
same prompt id go to the one that took it.

Dispatch (`choose`, pure): first the ComfyUIs in the best state (connected, not draining, warm), then the one
that will hold the most of the prompt's models when the prompt runs (`LoadedModels.expected`: what it holds,
or what the prompts already queued on it leave there), unless its queue is more than `DISPATCH_QUEUE_SLACK`
longer than the shortest, then the shortest queue, then the one holding the fewest models (it evicts least:
different models spread over the GPUs), then the lowest index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from comfyui_sidecar.activity import ComfyActivity
from comfyui_sidecar.comfy_client import ComfyClient, Execution
from comfyui_sidecar.loaded_models import LoadedModels
from comfyui_sidecar.loaders import LoaderTable, loader_table
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.outputs import OutputRef
from comfyui_sidecar.placement import held_models, workflow_models
from comfyui_sidecar.previews import PreviewFrame
from comfyui_sidecar.settings import Settings

log = logging.getLogger(__name__)

ROUTES_KEPT = 10_000
"""Prompt id -> ComfyUI entries kept after a prompt ended (its outputs and history are read afterwards)."""


@dataclass(frozen=True)
class Candidate:
    """One ComfyUI as dispatch sees it. `tier`: 0 best (see `Member.tier`)."""

    index: int
    tier: int
    queue: int
    models: frozenset[str]


def choose(candidates: Sequence[Candidate], wanted: Collection[str], slack: int) -> int:
    """The index of the ComfyUI that runs a prompt needing `wanted` models (see the module's docstring)."""
    tier = min(c.tier for c in candidates)
    best = [c for c in candidates if c.tier == tier]
    shortest = min(c.queue for c in best)

    def key(c: Candidate) -> tuple[int, int, int, int]:
        matches = len(held_models(wanted, c.models)) if c.queue <= shortest + slack else 0
        return -matches, c.queue, len(c.models), c.index

    return min(best, key=key).index


@dataclass
class Member:
    """One local ComfyUI."""

    index: int
    client: ComfyClient
    activity: ComfyActivity
    models: LoadedModels
    temp_dir: Path
    warm: bool = False
    """The warmup ran on it since it (re)connected (or there is none)."""
    draining: bool = False
    """Its container is being stopped (GET /drain/{index}): other ComfyUIs first."""
    stopped: bool = False
    """Its drain finished: ComfyUI is about to stop; only when no other is left."""
    warmup_failed: bool = False
    """The warmup failed on it every time (with several ComfyUIs): its probe fails, so the kubelet restarts
    that container; the others keep serving."""
    queued: dict[str, frozenset[str]] = field(default_factory=dict)
    """Prompts dispatched here and not finished, in order, with their models."""

    @property
    def up(self) -> bool:
        return self.client.connected.is_set()

    def queue_depth(self) -> int:
        return max(len(self.queued), self.client.queue_remaining)

    def tier(self) -> int:
        if not self.up:
            return 5 if self.stopped else 4
        if self.stopped:
            return 3
        if self.draining:
            return 2
        return 0 if self.warm else 1

    def candidate(self) -> Candidate:
        expected = self.models.expected(list(self.queued.values()))
        return Candidate(self.index, self.tier(), self.queue_depth(), frozenset(expected))


class ComfyPool:
    def __init__(self, members: Sequence[Member], loaders: LoaderTable, *, slack: int) -> None:
        if not members:
            raise ValueError("a pool needs at least one ComfyUI")
        self.members = list(members)
        self.loaders = loaders
        self.slack = slack
        self.listeners: list[Callable[[Mapping[str, Any]], None]] = []
        """Called with every parsed message of every ComfyUI (the job store)."""
        for member in self.members:
            member.client.listeners = self.listeners
        self._routes: OrderedDict[str, int] = OrderedDict()

    # ---- dispatch ------------------------------------------------------------------------------------------
    def choose(self, prompt: Mapping[str, Any]) -> int:
        wanted = workflow_models(prompt, self.loaders)
        return choose([m.candidate() for m in self.members], wanted, self.slack)

    async def queue(
        self,
        prompt: Mapping[str, Any],
        prompt_id: str,
        *,
        timeout_s: float | None = None,
        extra_data: Mapping[str, Any] | None = None,
        target: int | None = None,
    ) -> int:
        """Register and queue the prompt on ComfyUI `target` (default: `choose`); its index. Raises as
        `ComfyClient.queue`; the caller `forget`s the prompt id in every case."""
        index = target if target is not None else self.choose(prompt)
        member = self.members[index]
        member.client.register(prompt_id)
        member.queued[prompt_id] = frozenset(workflow_models(prompt, self.loaders))
        self._routes[prompt_id] = index
        self._routes.move_to_end(prompt_id)
        while len(self._routes) > ROUTES_KEPT:
            self._routes.popitem(last=False)
        if len(self.members) > 1:
            ahead = len(member.queued) - 1
            message = "prompt goes to ComfyUI %d (%d ahead of it; ComfyUI prompt id %s)"
            log.info(message, index, ahead, prompt_id)
        await member.client.queue(prompt, prompt_id, timeout_s=timeout_s, extra_data=extra_data)
        return index

    def index_of(self, prompt_id: str) -> int | None:
        return self._routes.get(prompt_id)

    def _client(self, prompt_id: str) -> ComfyClient | None:
        index = self._routes.get(prompt_id)
        return None if index is None else self.members[index].client

    # ---- one prompt ---------------------------------------------------------------------------------------
    async def wait(self, prompt_id: str, timeout_s: float) -> Execution:
        return await self.members[self._routes[prompt_id]].client.wait(prompt_id, timeout_s)

    def forget(self, prompt_id: str) -> None:
        index = self._routes.get(prompt_id)
        if index is not None:
            self.members[index].client.forget(prompt_id)
            self.members[index].queued.pop(prompt_id, None)

    async def cancel(self, prompt_id: str) -> bool:
        client = self._client(prompt_id)
        return client is not None and await client.cancel(prompt_id)

    async def cancel_detail(self, prompt_id: str) -> str:
        client = self._client(prompt_id)
        return "absent" if client is None else await client.cancel_detail(prompt_id)

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        return await (self._client(prompt_id) or self.members[0].client).history(prompt_id)

    async def view(self, ref: OutputRef) -> bytes:
        return await self.members[ref.comfyui].client.view(ref)

    # ---- the pod ------------------------------------------------------------------------------------------
    async def models(self) -> dict[str, list[str]]:
        """Model files per folder: every ComfyUI of the pod sees the same model directories."""
        member = next((m for m in self.members if m.up), self.members[0])
        return await member.client.models()

    async def ping_all(self, timeout_s: float) -> bool:
        """Every local ComfyUI answers (each within `timeout_s`)."""
        answers = await asyncio.gather(*(m.client.ping(timeout_s=timeout_s) for m in self.members))
        return all(answers)

    @property
    def queue_remaining(self) -> int:
        return sum(m.client.queue_remaining for m in self.members)

    def temp_dir(self, index: int) -> Path:
        return self.members[index].temp_dir

    @property
    def serving(self) -> bool:
        """Some ComfyUI is connected and warm."""
        return any(m.up and m.warm for m in self.members)

    @property
    def all_draining(self) -> bool:
        return all(m.draining for m in self.members)

    def set_on_event(self, handler: Callable[[Mapping[str, Any]], None] | None) -> None:
        for member in self.members:
            member.client.on_event = handler

    def set_skipped_prefixes(self, prefixes: tuple[str, ...]) -> None:
        for member in self.members:
            member.client.skipped_prefixes = prefixes

    def set_on_preview(self, handler: Callable[[PreviewFrame], None]) -> None:
        """Preview frames without a prompt id (ComfyUI's older frame type) name the prompt ComfyUI runs."""
        for member in self.members:

            def labelled(frame: PreviewFrame, member: Member = member) -> None:
                if frame.prompt_id is None and member.activity.running is not None:
                    frame = dataclasses.replace(frame, prompt_id=member.activity.running)
                handler(frame)

            member.client.on_preview = labelled


def build_pool(settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> ComfyPool:
    """One client per local ComfyUI (`Settings.comfy_urls`), each watched for metrics and loaded models."""
    loaders = loader_table(settings.extra_model_loaders)
    members = []
    for index, (url, temp_dir) in enumerate(zip(settings.comfy_urls, settings.comfy_temp_dirs, strict=True)):
        models = LoadedModels(settings.loaded_models_max)
        activity = ComfyActivity(metrics, loaders, models)
        client = ComfyClient(
            url,
            session,
            heartbeat_s=settings.ws_heartbeat_s,
            reconnect_max_s=settings.ws_reconnect_max_s,
            lost_timeout_s=settings.comfyui_lost_timeout_s,
            history_poll_s=settings.history_poll_interval_s,
            on_queue_depth=functools.partial(metrics.queue_depth_changed, source=index),
            observer=activity,
        )
        members.append(Member(index, client, activity, models, temp_dir))
    return ComfyPool(members, loaders, slack=settings.dispatch_queue_slack)

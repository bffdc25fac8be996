"""System webhooks (contract 3.7): ComfyUI's websocket events forwarded, signed, to SYSTEM_WEBHOOK_URL.

Body: {"event": "comfy.<type>", "data": <the whole websocket message>, "metadata": {...}}, with ComfyUI's
prompt ids replaced by the API request ids while a prompt is in flight. `metadata` holds every
SYSTEM_META_<key> environment variable as <key>. `storage.*` names are accepted (upstream's), but nothing
emits them yet; the cache would do so through `SystemEvents.emit`.

Events wait in one bounded queue (SYSTEM_WEBHOOK_QUEUE_MAX) and one worker delivers them in order, so a target
that is down costs a fixed amount of memory: when the queue is full the oldest event is dropped (counted, and
logged once per burst of drops).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from comfyui_sidecar.webhooks import WebhookSender

log = logging.getLogger(__name__)

COMFY_EVENTS = frozenset(
    {
        "status",
        "progress",
        "progress_state",
        "executing",
        "execution_start",
        "execution_cached",
        "executed",
        "execution_success",
        "execution_interrupted",
        "execution_error",
    }
)
STORAGE_EVENTS = frozenset({"file_downloaded", "file_uploaded", "file_deleted"})
META_PREFIX = "SYSTEM_META_"


def parse_events(text: str) -> frozenset[str]:
    """Names from SYSTEM_WEBHOOK_EVENTS: 'all' or a comma list ('comfy.'/'storage.' prefixes allowed)."""
    if text.strip() == "all":
        return COMFY_EVENTS | STORAGE_EVENTS
    names = set()
    for raw in text.split(","):
        name = raw.strip().removeprefix("comfy.").removeprefix("storage.")
        if not name:
            continue
        if name not in COMFY_EVENTS | STORAGE_EVENTS:
            raise ValueError(f"unknown event {raw.strip()!r} in SYSTEM_WEBHOOK_EVENTS")
        names.add(name)
    return frozenset(names)


def metadata_from(environ: Mapping[str, str]) -> dict[str, str]:
    return {key[len(META_PREFIX) :]: value for key, value in environ.items() if key.startswith(META_PREFIX)}


def rewrite_ids(message: Mapping[str, Any], to_api_id: Callable[[str], str | None]) -> dict[str, Any]:
    """A copy of a websocket message with ComfyUI prompt ids replaced by request ids (where known)."""
    out: dict[str, Any] = copy.deepcopy(dict(message))
    data = out.get("data")
    if not isinstance(data, dict):
        return out
    api_id = to_api_id(str(data.get("prompt_id")))
    if api_id is not None:
        data["prompt_id"] = api_id
    nodes = data.get("nodes")
    if isinstance(nodes, dict):
        for node in nodes.values():
            if isinstance(node, dict) and "prompt_id" in node:
                node_api_id = to_api_id(str(node["prompt_id"]))
                if node_api_id is not None:
                    node["prompt_id"] = node_api_id
    return out


class SystemEvents:
    def __init__(
        self,
        url: str,
        events: frozenset[str],
        metadata: Mapping[str, str],
        sender: WebhookSender,
        to_api_id: Callable[[str], str | None],
        *,
        max_pending: int = 1000,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.events = events
        self.metadata = dict(metadata)
        self.sender = sender
        self.to_api_id = to_api_id
        self.max_pending = max_pending
        self.dropped = 0
        self._on_drop = on_drop
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._worker: asyncio.Task[bool] | None = None
        self._dropping = False

    def on_comfy_event(self, message: Mapping[str, Any]) -> None:
        kind = str(message.get("type"))
        if kind in self.events:
            self.emit(f"comfy.{kind}", rewrite_ids(message, self.to_api_id))

    def emit(self, event: str, data: Any) -> None:
        """Queue one signed system webhook for the background worker (storage events use this too)."""
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "system webhook queue full (%d events): dropping the oldest until it drains",
                    self.max_pending,
                )
        self._queue.append({"event": event, "data": data, "metadata": self.metadata})
        if self._worker is None or self._worker.done():
            self._worker = self.sender.track(self._deliver_queued())

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _deliver_queued(self) -> bool:
        while self._queue:
            payload = self._queue.popleft()
            try:
                await self.sender.deliver_v2(self.url, payload)
            except Exception:  # never let one bad event stop the worker
                log.exception("system webhook %s could not be sent", payload["event"])
        self._dropping = False
        return True

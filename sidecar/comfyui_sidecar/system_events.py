"""System webhooks (contract 3.7): ComfyUI's websocket events forwarded, signed, to SYSTEM_WEBHOOK_URL.

Body: {"event": "comfy.<type>", "data": <the whole websocket message>, "metadata": {...}}, with ComfyUI's
prompt ids replaced by the API request ids while a prompt is in flight. `metadata` holds every
SYSTEM_META_<key> environment variable as <key>. Storage events (`storage.*`) are the cache's to emit through
`SystemEvents.emit`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from comfyui_sidecar.webhooks import WebhookSender

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
    ) -> None:
        self.url = url
        self.events = events
        self.metadata = dict(metadata)
        self.sender = sender
        self.to_api_id = to_api_id

    def on_comfy_event(self, message: Mapping[str, Any]) -> None:
        kind = str(message.get("type"))
        if kind in self.events:
            self.emit(f"comfy.{kind}", rewrite_ids(message, self.to_api_id))

    def emit(self, event: str, data: Any) -> None:
        """Send one signed system webhook in the background (storage events use this too)."""
        self.sender.send_v2(self.url, {"event": event, "data": data, "metadata": self.metadata})

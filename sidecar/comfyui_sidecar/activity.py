"""What ComfyUI did, counted from its websocket: prompts finished by result, and model loads.

A model load is a model-loader node (the loader table of `loaders.py`, with EXTRA_MODEL_LOADERS) that ComfyUI
ran. ComfyUI sends `executing {"node": id}` only for nodes it runs; a loader whose output it still holds from
an earlier prompt is listed in `execution_cached` instead and not run, so it reads no model file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from comfyui_sidecar.metrics import EXECUTION_RESULTS, Metrics

MAX_TRACKED_PROMPTS = 10_000
"""Prompts whose loader nodes are remembered until ComfyUI reports their end; the oldest go first beyond
it, so prompts ComfyUI refused, or whose end was missed during a reconnect, do not grow the table forever."""

_FINISH_EVENTS = {f"execution_{result}": result for result in EXECUTION_RESULTS}


def loader_nodes(prompt: Mapping[str, Any], loader_classes: Collection[str]) -> dict[str, str]:
    """{node id: class} of the prompt's model-loader nodes."""
    found: dict[str, str] = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if isinstance(class_type, str) and class_type in loader_classes:
            found[str(node_id)] = class_type
    return found


class ComfyActivity:
    """Fed by the ComfyUI client: `sending` before each prompt is posted, `event` per websocket message."""

    def __init__(self, metrics: Metrics, loader_classes: Collection[str]) -> None:
        self._metrics = metrics
        self._loader_classes = frozenset(loader_classes)
        self._loaders: dict[str, dict[str, str]] = {}

    def sending(self, prompt_id: str, prompt: Mapping[str, Any]) -> None:
        loaders = loader_nodes(prompt, self._loader_classes)
        if not loaders:
            return
        self._loaders[prompt_id] = loaders
        while len(self._loaders) > MAX_TRACKED_PROMPTS:
            del self._loaders[next(iter(self._loaders))]

    def event(self, kind: str, data: Mapping[str, Any]) -> None:
        prompt_id = str(data.get("prompt_id"))
        if kind == "executing":
            loader = self._loaders.get(prompt_id, {}).get(str(data.get("node")))
            if loader is not None:
                self._metrics.model_loads.labels(loader=loader).inc()
        elif kind in _FINISH_EVENTS:
            self._metrics.executions.labels(result=_FINISH_EVENTS[kind]).inc()
            self._loaders.pop(prompt_id, None)

    @property
    def tracked(self) -> int:
        return len(self._loaders)

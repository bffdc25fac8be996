"""What one ComfyUI did, from its websocket: prompts finished by result, model loads, the models it holds.

A model load is a model-loader node (the loader table of `loaders.py`, with EXTRA_MODEL_LOADERS) that ComfyUI
ran. ComfyUI sends `executing {"node": id}` only for nodes it runs; a loader whose output it still holds from
an earlier prompt is listed in `execution_cached` instead and not run, so it reads no model file. When a
prompt ends, the models of its loaders that ran to completion or came from the cache go to `LoadedModels`
(the inference of what ComfyUI holds, `loaded_models.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyui_sidecar.loaded_models import LoadedModels
from comfyui_sidecar.loaders import LoaderTable
from comfyui_sidecar.metrics import EXECUTION_RESULTS, Metrics
from comfyui_sidecar.placement import loader_models

MAX_TRACKED_PROMPTS = 10_000
"""Prompts remembered until ComfyUI reports their end; the oldest go first beyond it, so prompts ComfyUI
refused, or whose end was missed during a reconnect, do not grow the table forever."""

_FINISH_EVENTS = {f"execution_{result}": result for result in EXECUTION_RESULTS}


def loader_nodes(prompt: Mapping[str, Any], loader_classes: Collection[str]) -> dict[str, str]:
    """{node id: class} of the prompt's model-loader nodes."""
    found: dict[str, str] = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if isinstance(class_type, str) and class_type in loader_classes:
            found[str(node_id)] = class_type
    return found


@dataclass
class _Run:
    loaders: dict[str, str]
    models: dict[str, set[str]]
    cached: set[str] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)

    def used(self, completed: Collection[str]) -> tuple[set[str], set[str]]:
        """(models of loaders cached or run to completion, models of cached loaders)."""
        cached = set().union(*(self.models.get(node, set()) for node in self.cached))
        done = set().union(*(self.models.get(node, set()) for node in completed))
        return cached | done, cached


class ComfyActivity:
    """Fed by one ComfyUI client: `sending` before each prompt is posted, `event` per websocket message."""

    def __init__(self, metrics: Metrics, loaders: LoaderTable, models: LoadedModels | None = None) -> None:
        self._metrics = metrics
        self._loaders = loaders
        self._runs: dict[str, _Run] = {}
        self.models = models
        self.running: str | None = None
        """The prompt ComfyUI runs now (from `execution_start` to its end), if known."""

    def sending(self, prompt_id: str, prompt: Mapping[str, Any]) -> None:
        self._runs[prompt_id] = _Run(
            loader_nodes(prompt, self._loaders), loader_models(prompt, self._loaders)
        )
        while len(self._runs) > MAX_TRACKED_PROMPTS:
            del self._runs[next(iter(self._runs))]

    def event(self, kind: str, data: Mapping[str, Any]) -> None:
        prompt_id = str(data.get("prompt_id"))
        run = self._runs.get(prompt_id)
        if kind == "execution_start":
            self.running = prompt_id
        elif kind == "execution_cached" and run is not None:
            run.cached.update(str(node) for node in data.get("nodes") or [])
        elif kind == "executing":
            node = data.get("node")
            if node is None and self.running == prompt_id:
                self.running = None
            loader = run.loaders.get(str(node)) if run is not None else None
            if loader is not None and run is not None:
                run.ran.add(str(node))
                self._metrics.model_loads.labels(loader=loader).inc()
        elif kind in _FINISH_EVENTS:
            self._metrics.executions.labels(result=_FINISH_EVENTS[kind]).inc()
            if self.running == prompt_id:
                self.running = None
            self._runs.pop(prompt_id, None)
            if run is not None and self.models is not None:
                executed = data.get("executed")
                completed = run.ran if kind == "execution_success" else {str(n) for n in executed or []}
                self.models.prompt_finished(*run.used(completed & run.ran))

    def connection_lost(self) -> None:
        """The websocket dropped: events may be missed, and ComfyUI may restart with an empty cache."""
        self.running = None
        if self.models is not None:
            self.models.reset()

    @property
    def tracked(self) -> int:
        return len(self._runs)

"""The records of the job store: one job, its progress, outputs, failure, a live subscriber (pure data)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from comfyui_sidecar.v2.schemas import TERMINAL, JobStatus, OutputType

Origin = Literal["prompt", "v2"]
"""Who accepted the job: the comfyui-api routes (`POST /prompt`) or Comfy API v2."""


@dataclass
class OutputFile:
    """One output of a job: a file ComfyUI wrote (output or temp folder), or a text value (`text`)."""

    index: int
    node_id: str
    name: str
    kind: OutputType
    content_type: str
    size_bytes: int
    created: float
    subfolder: str = ""
    folder: str = "output"
    text: str | None = None
    comfyui: int = 0
    """The local ComfyUI that wrote it: temp files are in that ComfyUI's own temp directory."""

    @property
    def file_key(self) -> tuple[str, str, str] | None:
        if self.text is not None:
            return None
        folder = self.folder if self.folder == "output" else f"{self.folder}:{self.comfyui}"
        return (folder, self.subfolder, self.name)


@dataclass
class Failure:
    """Why a job failed (`JobError` in v2 answers)."""

    code: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    traceback: str | None = None


@dataclass
class ProgressState:
    """Node counts plus the current node's sampler steps; `value` is their weighted fraction."""

    nodes_total: int
    done: set[str] = field(default_factory=set)
    current: str | None = None
    current_class: str | None = None
    step: int | None = None
    steps: int | None = None
    complete: bool = False

    @property
    def nodes_done(self) -> int:
        return self.nodes_total if self.complete else min(len(self.done), self.nodes_total)

    def value(self) -> float:
        if self.complete:
            return 1.0
        if self.nodes_total <= 0:
            return 0.0
        fraction = 0.0
        if self.current is not None and self.current not in self.done and self.step and self.steps:
            fraction = min(1.0, self.step / self.steps)
        return max(0.0, min(1.0, (self.nodes_done + fraction) / self.nodes_total))

    def finish(self) -> None:
        self.complete = True
        self.current = self.current_class = None
        self.step = self.steps = None


@dataclass(frozen=True)
class Preview:
    node_id: str
    content_type: str
    data: bytes


class Watcher:
    """One live subscriber of a job (an event stream). Status changes and outputs queue up in order; progress
    and previews are coalesced to the latest one, so a slow reader never holds more than a few items."""

    MAX_QUEUED = 1000

    def __init__(self) -> None:
        self._items: collections.deque[tuple[str, Any]] = collections.deque(maxlen=self.MAX_QUEUED)
        self.wake = asyncio.Event()

    def push(self, kind: str, payload: Any = None) -> None:
        if kind in ("progress", "preview"):
            self._items = collections.deque(
                (item for item in self._items if item[0] != kind), maxlen=self.MAX_QUEUED
            )
        self._items.append((kind, payload))
        self.wake.set()

    def drain(self) -> list[tuple[str, Any]]:
        items = list(self._items)
        self._items.clear()
        self.wake.clear()
        return items


@dataclass(eq=False)
class JobRecord:
    id: str
    origin: Origin
    comfy_id: str
    created: float
    expires: float
    classes: Mapping[str, str]
    """node id -> class_type: all progress messages need (the graph itself is kept only as `graph`)."""
    metadata: dict[str, str] = field(default_factory=dict)
    graph: bytes = b""
    """The executed graph as JSON (v2 jobs, for GET /workflow): far smaller than the parsed dicts."""
    status: JobStatus = "queued"
    started: float | None = None
    completed: float | None = None
    updated: float = 0.0
    seq: int = 0
    progress: ProgressState = field(default_factory=lambda: ProgressState(0))
    outputs: list[OutputFile] = field(default_factory=list)
    error: Failure | None = None
    preview: Preview | None = None
    assets: frozenset[str] = frozenset()
    """Asset ids and blob hashes (hex) the job's inputs use: not deleted before it ends."""
    cancel_requested: bool = False
    timed_out: bool = False
    """Interrupted by the sidecar for running longer than PROMPT_TIMEOUT_S."""
    in_comfy: bool = False
    """True once ComfyUI accepted the prompt (a cancel must then go through ComfyUI)."""
    comfyui: int = 0
    """The local ComfyUI that runs it (several with the operator's per-GPU mode)."""
    watchers: set[Watcher] = field(default_factory=set)
    position: int | None = None
    """The last queue position announced to watchers."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def notify(self, kind: str, payload: Any = None) -> None:
        for watcher in self.watchers:
            watcher.push(kind, payload)


def node_classes(workflow: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(node_id): str(node["class_type"])
        for node_id, node in workflow.items()
        if isinstance(node, Mapping) and "class_type" in node
    }

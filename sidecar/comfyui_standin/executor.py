"""The prompt queue and its single worker: runs prompts node by node and emits ComfyUI's websocket events."""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from comfyui_standin import graph
from comfyui_standin.nodes import (
    NODES,
    Environment,
    InterruptProcessing,
    NodeContext,
    NodeOutput,
    estimated_pixels,
    is_output_class,
)

log = logging.getLogger("comfyui_standin")
MAX_HISTORY = 10_000
PREVIEW_EVENT = "__preview__"
"""Outbox name of a binary preview frame: data {"image": JPEG bytes, "metadata": {...}}."""
PREVIEW_SIZE = 512
QUICK_PIXELS = 256 * 256
# (event, data, sid): sid None means every socket.
Send = Callable[[str, dict[str, Any], str | None], None]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class CachedNode:
    output: NodeOutput


@dataclass
class PromptRun:
    """Mutable state of the prompt being executed."""

    item: QueueItem
    client_id: str | None
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)


class Executor:
    def __init__(
        self,
        env: Environment,
        send: Send,
        exec_delay: float = 0.0,
        previews: bool = False,
        *,
        model_load_delay: float = 0.0,
        cache_lru: int = 0,
    ) -> None:
        self.env = env
        self.send = send
        self.exec_delay = exec_delay
        self.previews = previews
        self.model_load_delay = model_load_delay
        self.cache_lru = cache_lru
        self.model_loads = 0
        """Model-loader nodes that really ran (not served from the execution cache)."""
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self.running: QueueItem | None = None
        self.current_node: str | None = None  # the node being executed, for clients that reconnect
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.cache: dict[str, CachedNode] = {}
        self.interrupt = threading.Event()
        self._free_pending = False
        self.completed = 0

    # ------------------------------------------------------------ queue

    def queue_remaining(self) -> int:
        return len(self._heap) + (1 if self.running is not None else 0)

    def status_data(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}

    def _queue_updated(self) -> None:
        self.send("status", self.status_data(), None)

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item.number, next(self._seq), item))
        self._queue_updated()
        self._wakeup.set()

    def pending(self) -> list[QueueItem]:
        return [entry[2] for entry in sorted(self._heap)]

    def delete(self, prompt_ids: set[str]) -> None:
        kept = [entry for entry in self._heap if entry[2].prompt_id not in prompt_ids]
        if len(kept) != len(self._heap):
            self._heap = kept
            heapq.heapify(self._heap)
            self._queue_updated()

    def clear(self) -> None:
        self._heap = []
        self._queue_updated()

    def request_interrupt(self, prompt_id: str | None = None) -> None:
        if prompt_id is None or (self.running is not None and self.running.prompt_id == prompt_id):
            self.interrupt.set()

    def free(self, free_memory: bool) -> None:
        if not free_memory:
            return
        if self.running is None:
            self.cache.clear()
        else:
            self._free_pending = True

    # ------------------------------------------------------------ worker

    async def run_forever(self) -> None:
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            _, _, item = heapq.heappop(self._heap)
            self.running = item
            self._queue_updated()
            try:
                await self.execute(item)
            except Exception:  # never let the worker die; the prompt is recorded as failed
                log.exception("stand-in worker crashed on prompt %s", item.prompt_id)
            finally:
                self.running = None
                self.current_node = None
                if self._free_pending:
                    self.cache.clear()
                    self._free_pending = False
                self.completed += 1
                self._queue_updated()
                client_id = item.extra_data.get("client_id")
                if client_id is not None:
                    self.send("executing", {"node": None, "prompt_id": item.prompt_id}, client_id)

    def _message(self, run: PromptRun, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        data = {**data, "timestamp": now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self.send(event, data, run.client_id)

    def _progress(
        self,
        run: PromptRun,
        node_id: str,
        state: str,
        value: float | None = None,
        maximum: float | None = None,
    ) -> None:
        entry = run.progress.get(node_id)
        if entry is None:
            entry = {
                "value": 0,
                "max": 1,
                "state": "pending",
                "node_id": node_id,
                "prompt_id": run.item.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            run.progress[node_id] = entry
        entry["state"] = state
        if state == "finished":
            entry["value"] = entry["max"]
        if value is not None:
            entry["value"] = value
        if maximum is not None:
            entry["max"] = maximum
        nodes = {nid: dict(e) for nid, e in run.progress.items()}
        self.send("progress_state", {"prompt_id": run.item.prompt_id, "nodes": nodes}, run.client_id)

    async def execute(self, item: QueueItem) -> None:
        """Run one prompt, emitting ComfyUI's events, and record its history entry."""
        self.interrupt.clear()
        run = PromptRun(item, item.extra_data.get("client_id"))
        self._message(run, "execution_start", {"prompt_id": item.prompt_id})
        failed = True
        try:
            failed = await self._run_nodes(run)
        except Exception as ex:  # a bug or an unexpected graph: still a well-formed error for the client
            log.exception("stand-in failed to run prompt %s", item.prompt_id)
            self._message(run, "execution_error", self._error_data(run, None, None, [], {}, ex))
        if not failed:
            self._message(run, "execution_success", {"prompt_id": item.prompt_id})
        self._record_history(run, failed)

    def _changed(self, prompt: dict[str, Any]) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for node_id, node in prompt.items():
            is_changed = NODES[node["class_type"]].is_changed
            if is_changed is not None:
                changed[node_id] = is_changed(self.env, node.get("inputs") or {})
        return changed

    async def _run_nodes(self, run: PromptRun) -> bool:
        """Execute the prompt's nodes in ComfyUI's order; True when it failed or was interrupted."""
        prompt = run.item.prompt
        sigs = graph.signatures(prompt, self._changed(prompt))
        self._prune_cache(set(sigs.values()))
        cached = {nid for nid, sig in sigs.items() if sig in self.cache}
        cached_list = [nid for nid in prompt if nid in cached]
        self._message(run, "execution_cached", {"nodes": cached_list, "prompt_id": run.item.prompt_id})
        output_nodes = {nid for nid, node in prompt.items() if is_output_class(node["class_type"])}
        executed: list[str] = []
        for node_id in graph.execution_order(prompt, run.item.outputs, cached, output_nodes):
            sig = sigs[node_id]
            if sig in self.cache:
                self._emit_cached(run, node_id, self.cache[sig].output)
                continue
            if not await self._run_node_events(run, node_id, sigs, executed):
                return True
            executed.append(node_id)
        return False

    def _prune_cache(self, wanted: set[str]) -> None:
        """Before a prompt runs, as ComfyUI's caches do: the classic cache keeps only the outputs this prompt
        can reuse (a model loaded by an earlier prompt and not used by this one is dropped); with
        `--cache-lru N` the N most recently used outputs stay, this prompt's reusable ones first."""
        if self.cache_lru <= 0:
            self.cache = {sig: entry for sig, entry in self.cache.items() if sig in wanted}
            return
        reused = {sig: self.cache.pop(sig) for sig in list(self.cache) if sig in wanted}
        room = max(0, self.cache_lru - len(reused))
        others = list(self.cache.items())[len(self.cache) - room :] if room else []
        self.cache = {**dict(others), **reused}

    async def _run_node_events(
        self, run: PromptRun, node_id: str, sigs: dict[str, str], executed: list[str]
    ) -> bool:
        """Run one node with its events; False (after the error event) when it failed or was interrupted."""
        prompt_id = run.item.prompt_id
        node = run.item.prompt[node_id]
        class_type = node["class_type"]
        self.current_node = node_id
        self._progress(run, node_id, "running", 0.0, 1.0)
        if run.client_id is not None:
            executing = {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
            self.send("executing", executing, run.client_id)
        inputs = self._resolve_inputs(node, sigs)
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def report(value: int, maximum: int) -> None:
            if threading.get_ident() == loop_thread:
                self._report_progress(run, node_id, value, maximum)
            else:
                loop.call_soon_threadsafe(self._report_progress, run, node_id, value, maximum)

        def preview(image: Image.Image) -> None:
            data = preview_jpeg(image)
            metadata = {
                "node_id": node_id,
                "prompt_id": prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            message = {"image": data, "metadata": metadata}
            if threading.get_ident() == loop_thread:
                self.send(PREVIEW_EVENT, message, run.client_id)
            else:
                loop.call_soon_threadsafe(self.send, PREVIEW_EVENT, message, run.client_id)

        ctx = NodeContext(
            self.env,
            run.item.prompt,
            self.interrupt,
            report,
            self.exec_delay,
            preview if self.previews else None,
        )
        try:
            if self._is_quick(class_type, inputs):
                output = self._run_node(ctx, class_type, inputs)
            else:
                output = await asyncio.to_thread(self._run_node, ctx, class_type, inputs)
        except InterruptProcessing:
            data = {
                "prompt_id": prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(executed),
            }
            self._message(run, "execution_interrupted", data, broadcast=True)
            return False
        except Exception as ex:
            self._message(
                run, "execution_error", self._error_data(run, node_id, class_type, executed, inputs, ex)
            )
            return False
        self.cache[sigs[node_id]] = CachedNode(output)
        if output.ui is not None:
            run.ui[node_id] = output.ui
            if run.client_id is not None:
                done = {"node": node_id, "display_node": node_id, "output": output.ui, "prompt_id": prompt_id}
                self.send("executed", done, run.client_id)
        self._progress(run, node_id, "finished")
        return True

    @staticmethod
    def _error_data(  # noqa: PLR0917 - mirrors the fields of ComfyUI's execution_error
        run: PromptRun,
        node_id: str | None,
        class_type: str | None,
        executed: list[str],
        inputs: dict[str, Any],
        ex: Exception,
    ) -> dict[str, Any]:
        return {
            "prompt_id": run.item.prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "executed": list(executed),
            "exception_message": f"{ex}\n",
            "exception_type": getattr(ex, "comfy_type", type(ex).__name__),
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {name: [_format_value(v)] for name, v in inputs.items()},
            "current_outputs": list(run.item.prompt),
        }

    def _emit_cached(self, run: PromptRun, node_id: str, output: NodeOutput) -> None:
        if output.ui is not None:
            run.ui[node_id] = output.ui
        if run.client_id is not None:
            self.send(
                "executed",
                {
                    "node": node_id,
                    "display_node": node_id,
                    "output": output.ui,
                    "prompt_id": run.item.prompt_id,
                },
                run.client_id,
            )
        self._progress(run, node_id, "finished")

    def _report_progress(self, run: PromptRun, node_id: str, value: int, maximum: int) -> None:
        self._progress(run, node_id, "running", value, maximum)
        self.send(
            "progress",
            {"value": value, "max": maximum, "prompt_id": run.item.prompt_id, "node": node_id},
            run.client_id,
        )

    def _resolve_inputs(self, node: dict[str, Any], sigs: dict[str, str]) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        for name, value in (node.get("inputs") or {}).items():
            if graph.is_link(value):
                source = self.cache[sigs[value[0]]].output.values
                resolved[name] = source[value[1]]
            else:
                resolved[name] = value
        return resolved

    def _is_quick(self, class_type: str, inputs: dict[str, Any]) -> bool:
        """Small work runs on the event loop: a thread hop costs more than encoding a small PNG."""
        node = NODES[class_type]
        if self.exec_delay > 0 or node.reports_progress or class_type == "StandinSleep":
            return False
        if node.loads_model and self.model_load_delay > 0:
            return False
        return estimated_pixels(self.env, inputs) <= QUICK_PIXELS

    def _run_node(self, ctx: NodeContext, class_type: str, inputs: dict[str, Any]) -> NodeOutput:
        node = NODES[class_type]
        if node.loads_model:
            self.model_loads += 1
            if self.model_load_delay > 0:
                ctx.sleep(self.model_load_delay)
        if self.exec_delay > 0 and not node.reports_progress:
            ctx.sleep(self.exec_delay)
        ctx.check_interrupt()
        return NODES[class_type].function(ctx, inputs)

    def _record_history(self, run: PromptRun, failed: bool) -> None:
        item = run.item
        self.history[item.prompt_id] = {
            "prompt": item.as_list(),
            "outputs": dict(run.ui),
            "status": {
                "status_str": "error" if failed else "success",
                "completed": not failed,
                "messages": run.messages,
            },
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in run.ui
            },
        }
        self.history.move_to_end(item.prompt_id)
        while len(self.history) > MAX_HISTORY:
            self.history.popitem(last=False)


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def preview_jpeg(image: Image.Image) -> bytes:
    """A preview as ComfyUI's latent previewer sends it: JPEG, at most PREVIEW_SIZE pixels a side."""
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()

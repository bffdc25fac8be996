"""The pod's job store: every prompt this sidecar accepted (comfyui-api `POST /prompt` and Comfy API v2 jobs),
with its state, progress, outputs and live subscribers.

One store is shared by both APIs, so backpressure (`active_count`), `GET /prompt/{id}`, the v2 job routes and
the `comfyui_api_jobs` metric all read the same records. ComfyUI's websocket events update running jobs
(`on_comfy_event`, `on_preview`); the flows that run prompts record the terminal state (`finish`), since they
also see timeouts, lost connections and history fallbacks. Bookkeeping only: no HTTP and no file access.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from comfyui_sidecar.job_records import (
    Failure,
    JobRecord,
    OutputFile,
    Preview,
    ProgressState,
    Watcher,
    node_classes,
)
from comfyui_sidecar.v2.ids import Cursor
from comfyui_sidecar.v2.schemas import JobStatus

DescribeOutputs = Callable[[JobRecord, str, Mapping[str, Any]], list[OutputFile]]
"""Turns one `executed` message's `output` of a node into output records (stat-ing the files)."""

STATES: tuple[JobStatus, ...] = (
    "queued",
    "running",
    "succeeded",
    "canceling",
    "canceled",
    "failed",
    "expired",
)


class JobStore:
    def __init__(self, *, retention_s: float, max_jobs: int) -> None:
        self.retention_s = retention_s
        self.max_jobs = max_jobs
        self._v2: dict[str, JobRecord] = {}
        self._prompts: dict[str, JobRecord] = {}
        self._by_comfy: dict[str, JobRecord] = {}
        self._seq = itertools.count(1)
        self._file_refs: Counter[tuple[str, str, str]] = Counter()
        self.describe_outputs: DescribeOutputs | None = None
        self._changed = asyncio.Event()
        self.started = time.time()
        """When this store (this sidecar process) started: older jobs named after this peer were lost."""

    # ---- records -------------------------------------------------------------------------------------------
    def new_record(
        self,
        job_id: str,
        origin: str,
        comfy_id: str,
        workflow: Mapping[str, Any],
        *,
        created: float | None = None,
        metadata: dict[str, str] | None = None,
        assets: Iterable[str] = (),
    ) -> JobRecord:
        now = round(created if created is not None else time.time(), 3)  # milliseconds, as ids and lists
        classes = node_classes(workflow)
        record = JobRecord(
            id=job_id,
            origin="v2" if origin == "v2" else "prompt",
            comfy_id=comfy_id,
            created=now,
            expires=now + self.retention_s,
            classes=classes,
            metadata=dict(metadata or {}),
            graph=json.dumps(workflow, separators=(",", ":")).encode() if origin == "v2" else b"",
            updated=now,
            seq=next(self._seq),
            progress=ProgressState(len(classes)),
            assets=frozenset(assets),
        )
        table = self._v2 if record.origin == "v2" else self._prompts
        old = table.get(job_id)
        if old is not None:
            self._drop(old)
        table[job_id] = record
        self._by_comfy[comfy_id] = record
        self._announce_positions()
        return record

    def get_v2(self, job_id: str) -> JobRecord | None:
        return self._v2.get(job_id)

    def get_prompt(self, request_id: str) -> JobRecord | None:
        return self._prompts.get(request_id)

    def by_comfy(self, comfy_id: str) -> JobRecord | None:
        return self._by_comfy.get(comfy_id)

    def records(self) -> Iterable[JobRecord]:
        return itertools.chain(self._v2.values(), self._prompts.values())

    def active_count(self) -> int:
        """Jobs accepted and not finished: the depth that MAX_QUEUE_DEPTH limits."""
        return sum(1 for record in self.records() if not record.terminal)

    def counts(self) -> dict[str, int]:
        """Jobs by state (the comfyui_api_jobs gauge)."""
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        for record in self.records():
            counts[record.status] += 1
        return counts

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no job is active (within `timeout_s`); for draining on shutdown."""
        deadline = time.monotonic() + timeout_s
        while self.active_count():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        return True

    def assets_in_use(self) -> set[str]:
        return {asset for record in self.records() if not record.terminal for asset in record.assets}

    # ---- queue positions -----------------------------------------------------------------------------------
    def _queued(self) -> list[JobRecord]:
        return sorted((r for r in self.records() if r.status == "queued"), key=lambda r: r.seq)

    def queue_position(self, record: JobRecord) -> int | None:
        """1-based place among this pod's queued jobs (the running one is not counted)."""
        if record.status != "queued":
            return None
        return 1 + sum(1 for other in self._queued() if other.seq < record.seq)

    def _announce_positions(self) -> None:
        for position, record in enumerate(self._queued(), start=1):
            if record.position != position:
                record.position = position
                record.notify("status", ("queued", position))

    # ---- transitions ---------------------------------------------------------------------------------------
    def _touch(self, record: JobRecord) -> None:
        record.updated = time.time()

    def mark_running(self, record: JobRecord) -> None:
        if record.status != "queued":
            return
        record.status = "running"
        record.started = record.started or time.time()
        record.position = None
        self._touch(record)
        record.notify("status", ("running", None))
        self._announce_positions()

    def mark_canceling(self, record: JobRecord, *, started: bool = False) -> None:
        """A cancel was asked for; a running job (or one ComfyUI started, `started`) reads `canceling`."""
        record.cancel_requested = True
        if record.status == "running" or (started and record.status == "queued"):
            record.started = record.started or time.time()
            record.status = "canceling"
            self._touch(record)
            record.notify("status", ("canceling", None))

    def finish(self, record: JobRecord, status: JobStatus, error: Failure | None = None) -> None:
        """Record a terminal state (once); watchers get it after every output already announced."""
        if record.terminal:
            return
        record.status = status
        record.error = error
        record.completed = time.time()
        record.preview = None  # the latest preview only matters while the job runs
        if status == "succeeded":
            record.progress.finish()
            record.notify("progress")
        record.position = None
        self._touch(record)
        self._changed.set()
        record.notify("status", (status, None))
        self._announce_positions()

    def add_outputs(self, record: JobRecord, outputs: Iterable[OutputFile]) -> list[OutputFile]:
        """Append outputs not seen yet (same file or same text of the same node); return the new ones."""
        known = {(o.node_id, o.file_key or o.text) for o in record.outputs}
        added = []
        for output in outputs:
            identity = (output.node_id, output.file_key or output.text)
            if identity in known:
                continue
            known.add(identity)
            output.index = len(record.outputs)
            record.outputs.append(output)
            if output.file_key is not None:
                self._file_refs[output.file_key] += 1
            added.append(output)
            record.notify("output", output)
        if added:
            self._touch(record)
        return added

    def remove_output(self, record: JobRecord, output: OutputFile) -> bool:
        """Forget one output; True when no other job refers to its file any more (so it may be deleted)."""
        if output not in record.outputs:
            return False
        record.outputs.remove(output)
        return self._release_file(output)

    def _release_file(self, output: OutputFile) -> bool:
        key = output.file_key
        if key is None:
            return False
        self._file_refs[key] -= 1
        if self._file_refs[key] <= 0:
            del self._file_refs[key]
            return True
        return False

    # ---- subscribers ---------------------------------------------------------------------------------------
    def watch(self, record: JobRecord) -> Watcher:
        watcher = Watcher()
        record.watchers.add(watcher)
        return watcher

    def unwatch(self, record: JobRecord, watcher: Watcher) -> None:
        record.watchers.discard(watcher)

    # ---- ComfyUI's websocket -------------------------------------------------------------------------------
    def on_comfy_event(self, event: Mapping[str, Any]) -> None:
        """Apply one websocket message to the job it names (non-terminal updates only)."""
        data = event.get("data")
        if not isinstance(data, Mapping):
            return
        record = self._by_comfy.get(str(data.get("prompt_id")))
        if record is None or record.terminal:
            return
        kind = event.get("type")
        progress = record.progress
        if kind == "execution_start":
            self.mark_running(record)
        elif kind == "execution_cached":
            progress.done.update(str(node) for node in data.get("nodes") or [])
            record.notify("progress")
        elif kind == "executing":
            self.mark_running(record)
            node = data.get("node")
            if progress.current is not None:
                progress.done.add(progress.current)
            if node is not None:
                progress.current = str(node)
                progress.current_class = record.classes.get(progress.current)
                progress.step = progress.steps = None
            record.notify("progress")
        elif kind == "progress":
            value, maximum = data.get("value"), data.get("max")
            if isinstance(value, (int, float)) and isinstance(maximum, (int, float)) and maximum > 0:
                progress.step, progress.steps = int(value), int(maximum)
                record.notify("progress")
        elif kind == "execution_error":
            record.error = failure_from_error(record, data)
        elif kind == "executed":
            progress.done.add(str(data.get("node")))
            output = data.get("output")
            if self.describe_outputs is not None and record.origin == "v2" and isinstance(output, Mapping):
                self.add_outputs(record, self.describe_outputs(record, str(data.get("node")), output))
            record.notify("progress")

    def running_records(self) -> list[JobRecord]:
        """Jobs ComfyUI runs now (one per local ComfyUI at most)."""
        return [r for r in self.records() if r.status in ("running", "canceling")]

    def running_record(self) -> JobRecord | None:
        return next(iter(self.running_records()), None)

    def on_preview(self, prompt_id: str | None, node_id: str | None, content_type: str, data: bytes) -> None:
        """A preview image from ComfyUI: by prompt id when it says (metadata frames), else the running job."""
        record = self._by_comfy.get(prompt_id) if prompt_id else self.running_record()
        if record is None or record.terminal:
            return
        record.preview = Preview(node_id or record.progress.current or "", content_type, data)
        record.notify("preview", record.preview)

    # ---- listing and retention -----------------------------------------------------------------------------
    def list_v2(
        self, after: Cursor | None, limit: int, labels: Mapping[str, str]
    ) -> tuple[list[JobRecord], bool]:
        """Newest first, strictly after the cursor, with every label; (page, more after it)."""

        def key(record: JobRecord) -> tuple[int, str]:
            return round(record.created * 1000), record.id

        matching = [
            record
            for record in self._v2.values()
            if all(record.metadata.get(k) == v for k, v in labels.items())
            and (after is None or key(record) < (after.created_ms, after.job_id))
        ]
        matching.sort(key=key, reverse=True)
        return matching[:limit], len(matching) > limit

    def expire(self, now: float | None = None) -> list[OutputFile]:
        """Drop records past retention (and the oldest finished ones beyond MAX_RETAINED_JOBS); return the
        output files no remaining job refers to, for the caller to delete."""
        now = now if now is not None else time.time()
        doomed = [r for r in self.records() if r.terminal and r.expires <= now]
        finished = sorted((r for r in self.records() if r.terminal and r.expires > now), key=lambda r: r.seq)
        excess = len(self._v2) + len(self._prompts) - len(doomed) - self.max_jobs
        doomed += finished[: max(0, excess)]
        files: list[OutputFile] = []
        for record in doomed:
            files += self._drop(record)
        return files

    def discard(self, record: JobRecord) -> None:
        """Forget a job that never reached ComfyUI (its submit failed)."""
        self._drop(record)
        self._announce_positions()

    def expire_early(self, record: JobRecord) -> list[OutputFile]:
        """A finished job whose outputs must go now (output budget): it reads `expired` until its deadline."""
        files = [o for o in list(record.outputs) if self.remove_output(record, o)]
        if record.status != "expired":
            record.status = "expired"
            record.error = Failure("outputs_evicted", "the outputs were deleted early to free disk space")
            self._touch(record)
        return files

    def _drop(self, record: JobRecord) -> list[OutputFile]:
        table = self._v2 if record.origin == "v2" else self._prompts
        if table.get(record.id) is record:
            del table[record.id]
        if self._by_comfy.get(record.comfy_id) is record:
            del self._by_comfy[record.comfy_id]
        files = [o for o in record.outputs if self._release_file(o)]
        record.outputs = []
        if not record.terminal:
            record.status = "expired"
        record.notify("status", ("expired", None))
        return files


def failure_from_error(record: JobRecord, data: Mapping[str, Any]) -> Failure:
    """ComfyUI's `execution_error` message as a job failure (node, class, message, traceback)."""
    node = data.get("node_id")
    class_type = data.get("node_type")
    trace = data.get("traceback")
    message = str(data.get("exception_message") or "").strip() or "the node failed"
    exception_type = data.get("exception_type")
    return Failure(
        code="node_execution_error",
        message=f"{exception_type}: {message}" if exception_type else message,
        node_id=str(node) if node is not None else None,
        class_type=str(class_type) if class_type is not None else None,
        traceback="".join(str(line) for line in trace) if isinstance(trace, list) else None,
    )

"""Running v2 jobs on this pod's ComfyUI: place their input assets, queue them, watch them to the end, cancel.

A job is queued on ComfyUI with a fresh UUID as prompt id and the sidecar's websocket client id, so the job
store sees its events. One background task per job waits for the outcome (the same waiter the comfyui-api
routes use: websocket, history fallback, timeout, lost ComfyUI) and records the terminal state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.comfy_client import ComfyError, ComfyRejected
from comfyui_sidecar.comfy_pool import ComfyPool
from comfyui_sidecar.job_records import Failure, JobRecord, OutputFile
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.outputs import OUTPUT_TYPES, content_type_for, is_safe_relative
from comfyui_sidecar.v2 import ids
from comfyui_sidecar.v2.assets import AssetError, AssetStore
from comfyui_sidecar.v2.errors import V2Error
from comfyui_sidecar.v2.schemas import OutputType
from comfyui_sidecar.v2.workflow import AssetRef, find_refs, node_errors, substitute

log = logging.getLogger(__name__)
QUEUE_TIMEOUT_S = 30.0
MAX_ASSET_BYTES = 1024**4


def output_kind(key: str, content_type: str) -> OutputType:
    if key == "latents" or content_type == "application/x-latent":
        return "latent"
    major = content_type.split("/", maxsplit=1)[0]
    if major in ("image", "video", "audio", "text"):
        return major  # type: ignore[return-value]
    return "file"


class JobRunner:
    def __init__(
        self,
        *,
        comfy: ComfyPool,
        store: JobStore,
        assets: AssetStore,
        peers: Peers,
        client: PeerClient,
        key: bytes,
        output_dir: Path,
        temp_dirs: Sequence[Path],
        prompt_timeout_s: float,
        output_max_bytes: int = 0,
    ) -> None:
        self.comfy = comfy
        self.store = store
        self.assets = assets
        self.peers = peers
        self.client = client
        self.key = key
        self.output_dir = output_dir
        self.temp_dirs = list(temp_dirs)
        """Each local ComfyUI's temp directory (`OutputFile.comfyui` picks one)."""
        self.prompt_timeout_s = prompt_timeout_s
        self.output_max_bytes = output_max_bytes
        self._tasks: set[asyncio.Task[None]] = set()
        store.describe_outputs = self.describe_outputs

    # ---- inputs -------------------------------------------------------------------------------------------
    async def place_inputs(self, workflow: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The graph with core/ASSET references replaced by input file names, and the asset ids and blob
        hashes it uses (marked busy in the asset store until `release_inputs`). 422 missing_asset names
        every reference that does not resolve."""
        refs = find_refs(workflow)
        names: dict[str, str] = {}
        used: set[str] = set()
        missing: list[str] = []
        for ref in refs:
            if ref.id is None:
                missing.append("(malformed reference)")
                continue
            if ref.id in names:
                continue
            placed = await self._place(ref)
            if placed is None:
                missing.append(ref.id)
            else:
                names[ref.id], hex_digest = placed
                used.update({ref.id, hex_digest})
                self.assets.busy[hex_digest] += 1
        if missing:
            self.release_inputs(used)
            raise V2Error(
                422,
                "missing_asset",
                f"{len(missing)} asset reference(s) do not resolve: {', '.join(missing[:5])}",
                {"missing_ids": missing},
            )
        return (substitute(workflow, names) if refs else dict(workflow)), used

    def release_inputs(self, used: set[str]) -> None:
        """The job record now holds them (or the submit failed)."""
        for name in used:
            if name in self.assets.busy:
                self.assets.busy[name] -= 1
                if self.assets.busy[name] <= 0:
                    del self.assets.busy[name]

    async def _place(self, ref: AssetRef) -> tuple[str, str] | None:
        assert ref.id is not None
        parsed = ids.decode(self.key, ref.id, kinds=("asset", "output"))
        if parsed is None:
            return None
        if parsed.owner == self.peers.self_name:
            hex_digest, name = await self._local_blob(ref.id, parsed)
        else:
            hex_digest, name = await self._remote_blob(ref.id, parsed)
        if hex_digest is None:
            return None
        return self.assets.materialize(hex_digest, ref.file_path or name), hex_digest

    async def _local_blob(self, asset_id: str, parsed: ids.ParsedId) -> tuple[str | None, str]:
        if parsed.kind == "asset":
            record = self.assets.get(asset_id)
            return (record.hex, record.file_path) if record else (None, "")
        job = self.store.get_v2(ids.encode(self.key, parsed.job()))
        item = next((o for o in job.outputs if o.index == parsed.index), None) if job else None
        if item is None:
            return None, ""
        writer = self.assets.writer(MAX_ASSET_BYTES)
        try:
            if item.text is not None:
                writer.write(item.text.encode())
            else:
                path = self.file_path(item)
                if path is None or not path.is_file():
                    writer.discard()
                    return None, ""
                writer.write(await asyncio.to_thread(path.read_bytes))
            writer.finish()
        except BaseException:
            writer.discard()
            raise
        return writer.hex, item.name

    async def _remote_blob(self, asset_id: str, parsed: ids.ParsedId) -> tuple[str | None, str]:
        url = await self.peers.find(parsed.owner)
        if url is None:
            return None, ""
        try:
            status, meta = await self.client.call(url, "GET", f"/api/v2/assets/{asset_id}")
            if status != 200 or not isinstance(meta, dict):
                return None, ""
            name = str(meta.get("file_path") or "")
            known = str(meta.get("hash") or "").removeprefix("blake3:")
            if known and self.assets.has_blob(known):
                return known, name
            writer = self.assets.writer(MAX_ASSET_BYTES)
            try:
                status = await self.client.download(url, f"/api/v2/assets/{asset_id}/content", writer)
                if status != 200:
                    writer.discard()
                    return None, ""
                writer.finish()
            except BaseException:
                writer.discard()
                raise
        except (PeerUnreachable, AssetError) as error:
            log.info("could not fetch asset %s from peer %s: %s", asset_id, parsed.owner, error)
            return None, ""
        return writer.hex, name or f"{parsed.kind}.bin"

    # ---- outputs ------------------------------------------------------------------------------------------
    def root(self, item: OutputFile) -> Path:
        """The directory of an output file: the shared output directory, or its ComfyUI's temp directory."""
        if item.folder == "output":
            return self.output_dir
        return self.temp_dirs[item.comfyui] if item.comfyui < len(self.temp_dirs) else self.temp_dirs[0]

    def file_path(self, item: OutputFile) -> Path | None:
        root = self.root(item)
        if not is_safe_relative(item.subfolder) or not is_safe_relative(item.name) or "/" in item.name:
            return None
        return root / item.subfolder / item.name if item.subfolder else root / item.name

    def describe_outputs(
        self, record: JobRecord, node_id: str, output: Mapping[str, Any]
    ) -> list[OutputFile]:
        """Output records for one node's `output` map (files are stat-ed for their size)."""
        now = time.time()
        items: list[OutputFile] = []
        for key, values in output.items():
            if not isinstance(values, list):
                continue
            for value in values:
                if isinstance(value, str):
                    name = f"{node_id}_{key}_{len(items)}.txt"
                    size = len(value.encode())
                    items.append(OutputFile(0, node_id, name, "text", "text/plain", size, now, text=value))
                    continue
                if not isinstance(value, Mapping) or not isinstance(value.get("filename"), str):
                    continue
                folder = str(value.get("type") or "output")
                if folder not in OUTPUT_TYPES:
                    continue
                item = OutputFile(
                    0,
                    node_id,
                    value["filename"],
                    "file",
                    content_type_for(value["filename"]),
                    0,
                    now,
                    subfolder=str(value.get("subfolder") or ""),
                    folder=folder,
                    comfyui=record.comfyui,
                )
                item.kind = output_kind(key, item.content_type)
                path = self.file_path(item)
                with contextlib.suppress(OSError):
                    item.size_bytes = path.stat().st_size if path is not None else 0
                items.append(item)
        return items

    def delete_files(self, files: Sequence[OutputFile]) -> None:
        """Delete output files, and their job's subfolder once it is empty."""
        for item in files:
            path = self.file_path(item)
            if path is None:
                continue
            path.unlink(missing_ok=True)
            root = self.root(item)
            parent = path.parent
            while parent != root and parent.is_relative_to(root):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def _enforce_output_budget(self, newest: JobRecord) -> None:
        """Over OUTPUT_MAX_BYTES: the oldest finished jobs expire early; the job that just finished stays
        (its client has not fetched its outputs yet), even if it alone is over."""
        if self.output_max_bytes <= 0:
            return
        finished = sorted(
            (r for r in self.store.records() if r.origin == "v2" and r.terminal and r is not newest),
            key=lambda r: r.seq,
        )
        held = sum(o.size_bytes for r in self.store.records() if r.origin == "v2" for o in r.outputs)
        for record in finished:
            if held <= self.output_max_bytes:
                break
            held -= sum(o.size_bytes for o in record.outputs)
            self.delete_files(self.store.expire_early(record))

    # ---- queue, watch, cancel ------------------------------------------------------------------------------
    async def start(
        self, record: JobRecord, graph: Mapping[str, Any], *, extra_data: Mapping[str, Any] | None = None
    ) -> None:
        """Queue the job on ComfyUI and watch it. 422 invalid_workflow when ComfyUI refuses it; 500
        upstream_error when ComfyUI does not answer (the caller then drops the job). `extra_data` (the
        partner-node key) goes to ComfyUI only; it is not kept."""
        comfy_id = record.comfy_id
        record.comfyui = self.comfy.choose(graph)  # before queueing: its outputs may be reported at once
        try:
            await self.comfy.queue(
                graph, comfy_id, timeout_s=QUEUE_TIMEOUT_S, extra_data=extra_data, target=record.comfyui
            )
        except ComfyRejected as error:
            self.comfy.forget(comfy_id)
            raise V2Error(
                422, "invalid_workflow", error.message, {"node_errors": node_errors(error.body)}
            ) from None
        except ComfyError as error:
            self.comfy.forget(comfy_id)
            with contextlib.suppress(Exception):
                await self.comfy.cancel(comfy_id)
            raise V2Error(500, "upstream_error", f"ComfyUI did not take the job: {error.message}") from None
        record.in_comfy = True
        task = asyncio.get_running_loop().create_task(self._watch(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if record.cancel_requested:  # canceled while ComfyUI was taking it
            await self.comfy.cancel(comfy_id)

    async def _watch(self, record: JobRecord) -> None:
        try:
            # PROMPT_TIMEOUT_S counts from the start of execution (enforce_timeouts); the wait itself is
            # bounded by the job's retention, however long it queues
            execution = await self.comfy.wait(record.comfy_id, max(1.0, record.expires - time.time()))
        except ComfyError as error:
            self.store.finish(record, *self._failure(record, error))
            return
        except asyncio.CancelledError:
            self.store.finish(record, "failed", Failure("sidecar_shutdown", "the sidecar stopped"))
            raise
        finally:
            self.comfy.forget(record.comfy_id)
        for node_id, output in execution.outputs.items():
            if isinstance(output, Mapping):
                self.store.add_outputs(record, self.describe_outputs(record, str(node_id), output))
        self.store.finish(record, "succeeded")
        self._enforce_output_budget(record)

    async def enforce_timeouts(self, interval_s: float = 1.0) -> None:
        """Interrupt v2 jobs that have been running longer than PROMPT_TIMEOUT_S (a background task)."""
        while True:
            await asyncio.sleep(interval_s)
            for record in self.store.running_records():
                if record.origin != "v2" or record.timed_out or record.started is None:
                    continue
                if time.time() - record.started > self.prompt_timeout_s:
                    record.timed_out = True
                    with contextlib.suppress(Exception):
                        await self.comfy.cancel(record.comfy_id)

    def _failure(self, record: JobRecord, error: ComfyError) -> tuple[Any, Failure | None]:
        if record.timed_out:
            limit = f"{self.prompt_timeout_s:g} s"
            return "failed", Failure("timeout", f"the job ran longer than PROMPT_TIMEOUT_S ({limit})")
        if error.message == "Prompt execution interrupted":
            if record.cancel_requested:
                return "canceled", None
            return "failed", Failure("interrupted", "the prompt was interrupted")
        if record.error is not None and error.comfy_error:
            return "failed", record.error
        code = {504: "timeout", 502: "comfyui_unavailable", 503: "sidecar_shutdown"}.get(
            error.status, "failed"
        )
        if error.comfy_error:
            detail = error.comfy_error
            return "failed", Failure(
                "node_execution_error",
                error.message,
                node_id=str(detail.get("node_id")) if detail.get("node_id") is not None else None,
                class_type=str(detail.get("node_type")) if detail.get("node_type") is not None else None,
            )
        return "failed", Failure(code, error.message)

    async def cancel(self, record: JobRecord) -> None:
        """Ask ComfyUI to stop the job: a pending one is dequeued (canceled at once), a running one is
        interrupted (canceling until ComfyUI confirms; a job that finishes first keeps its own outcome)."""
        if record.terminal:
            return
        self.store.mark_canceling(record)
        if not record.in_comfy:
            self.store.finish(record, "canceled")
            return
        outcome = await self.comfy.cancel_detail(record.comfy_id)
        if outcome == "dequeued":
            self.store.finish(record, "canceled")
        elif outcome == "interrupting":
            self.store.mark_canceling(record, started=True)

    def new_comfy_id(self) -> str:
        return str(uuid.uuid4())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

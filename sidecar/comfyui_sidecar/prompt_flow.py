"""One prompt from request to delivery: prepare (rewrite, inputs, fetches), run on ComfyUI, collect, deliver.

HTTP handlers stay thin: they call `prepare` and then `run` (synchronous answer) or `run_in_background`
(202 answer; results go to webhooks or uploads).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comfyui_sidecar.comfy_client import ComfyError, ComfyRejected, OutputMissing
from comfyui_sidecar.comfy_pool import ComfyPool
from comfyui_sidecar.convert import ImageTooLarge, convert_image
from comfyui_sidecar.fetching import Credential, Fetcher, FetchError, apply_fetched, describe_failure
from comfyui_sidecar.job_records import Failure
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.jsonbody import Base64List, Base64Str, b64decode_sliced
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.logs import bind_job
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.models import PromptRequest
from comfyui_sidecar.outputs import OutputFile, OutputRef, content_type_for, is_safe_relative, output_refs
from comfyui_sidecar.rewriting import (
    InlineFile,
    RewriteError,
    RewriteOptions,
    finish_directories,
    invalid_base64,
    rewrite_prompt,
)
from comfyui_sidecar.settings import Settings
from comfyui_sidecar.targets import TargetRefused, check_targets, upload_targets
from comfyui_sidecar.uploads import Uploader, UploadError
from comfyui_sidecar.webhooks import WebhookSender

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
_SECRET_FIELDS = frozenset(
    {"token", "password", "header_value", "query_value", "secret_access_key", "session_token"}
)
THREAD_THRESHOLD = 512 * 1024
DISCARD_HISTORY_TIMEOUT_S = 5.0
FINISHED_IDS_KEPT = 10_000


class PrepareError(Exception):
    """A request refused before queueing: 400 {error, location} (or the fetcher's status)."""

    def __init__(self, message: str, location: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.status = status


@dataclass
class Prepared:
    request: PromptRequest
    prompt: dict[str, Any]
    output_nodes: list[str]
    started: float
    preprocess_ms: int
    cleanup: contextlib.AsyncExitStack
    comfy_prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    target: int | None = None
    """The local ComfyUI that must run it (the warmup of each one); None: the pool chooses."""


@dataclass
class Delivered:
    images: list[str] | Base64List
    """Upload URLs, or the files themselves (encoded as base64 when the body is written)."""
    filenames: list[str]
    stats: dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def js_key_order(keys: Iterable[str]) -> list[str]:
    """Keys as JavaScript orders an object's own keys: integer-like keys ascending, then the rest in order."""
    keys = list(keys)
    numeric = sorted((k for k in keys if k.isdigit() and (k == "0" or not k.startswith("0"))), key=int)
    chosen = set(numeric)
    return numeric + [k for k in keys if k not in chosen]


def ordered_prompt(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """Node ids in JavaScript key order (integer-like first); nodes as {inputs, class_type, _meta}."""
    result: dict[str, Any] = {}
    for key in js_key_order(prompt):
        node = prompt[key]
        out = {"inputs": node["inputs"], "class_type": node["class_type"]}
        meta = node.get("_meta")
        if meta is not None:
            out["_meta"] = meta
        result[key] = out
    return result


def redact_credentials(credentials: Sequence[Credential]) -> list[dict[str, Any]]:
    result = []
    for credential in credentials:
        auth = credential.auth.model_dump(exclude_none=True)
        result.append(
            {
                "url_pattern": credential.url_pattern,
                "auth": {k: (REDACTED if k in _SECRET_FIELDS else v) for k, v in auth.items()},
            }
        )
    return result


def echo(request: PromptRequest, prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The validated request in schema order, with the rewritten prompt and secrets redacted."""
    body: dict[str, Any] = {"prompt": ordered_prompt(prompt), "id": request.id}
    if request.webhook is not None:
        body["webhook"] = request.webhook
    if request.webhook_v2 is not None:
        body["webhook_v2"] = request.webhook_v2
    if request.convert_output is not None:
        body["convert_output"] = request.convert_output.model_dump(exclude_none=True)
    if request.credentials is not None:
        body["credentials"] = redact_credentials(request.credentials)
    if request.s3 is not None:
        body["s3"] = request.s3.model_dump(by_alias=True)
    if request.hf_upload is not None:
        body["hf_upload"] = request.hf_upload.model_dump(by_alias=True)
    if request.http_upload is not None:
        body["http_upload"] = request.http_upload.model_dump(by_alias=True)
    return body


def is_async(request: PromptRequest) -> bool:
    """202 answers: any webhook, or an upload block with async true (contract 3.5)."""
    if request.webhook or request.webhook_v2:
        return True
    upload = upload_targets(request).chosen
    return bool(upload and upload.async_)


def confined(root: Path, relpath: str) -> Path | None:
    """`root/relpath` when it stays inside root after resolving symlinks, else None."""
    if not is_safe_relative(relpath):
        return None
    base = root.resolve()
    path = (base / relpath).resolve()
    return path if path.is_relative_to(base) else None


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def _decode(item: InlineFile) -> bytes:
    """An inline input's bytes, decoded slice by slice so the event loop keeps serving other requests."""
    try:
        return await b64decode_sliced(item.encoded)
    except ValueError:
        error = invalid_base64(item.message_prefix, item.location)
        raise PrepareError(error.message, error.location) from None


class PromptService:
    def __init__(
        self,
        settings: Settings,
        comfy: ComfyPool,
        fetcher: Fetcher,
        webhooks: WebhookSender,
        metrics: Metrics,
        *,
        uploader: Uploader | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.uploader = uploader
        self.jobs = jobs or JobStore(
            retention_s=settings.job_retention_s, max_jobs=settings.max_retained_jobs
        )
        """The pod's job store, shared with Comfy API v2: every prompt is a job there too."""
        self.comfy = comfy
        self.fetcher = fetcher
        self.webhooks = webhooks
        self.metrics = metrics
        self.rewrite_options = RewriteOptions(
            prepend_filenames=settings.prepend_filenames, loaders=loader_table(settings.extra_model_loaders)
        )
        self.comfy_ids: dict[str, str] = {}
        self.api_ids: dict[str, str] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        """Ids of the last FINISHED_IDS_KEPT delivered prompts (a re-sent one gets a clear 409)."""
        self.running: set[str] = set()
        """Request ids from `prepare` until the prompt ends (a second prompt with one of them gets 409)."""
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._background: set[asyncio.Task[None]] = set()

    # ---- accounting ----------------------------------------------------------------------------------------
    def _enter(self, request_id: str) -> None:
        self.running.add(request_id)
        self.inflight += 1
        self.idle.clear()
        self.metrics.inflight.set(self.inflight)

    def _leave(self, request_id: str) -> None:
        self.running.discard(request_id)
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self.idle.set()

    # ---- preparation ---------------------------------------------------------------------------------------
    async def prepare(self, request: PromptRequest, started: float) -> Prepared:
        """Rewrite, check local inputs, write inline files, fetch URLs. Raises PrepareError (and sends
        prompt.failed to the request's webhook, a fix of upstream; not for a duplicate id, whose webhook
        belongs to the prompt already running)."""
        bind_job(request.id)
        if request.id in self.running:
            raise PrepareError(f"a prompt with id {request.id} is already running", "id", 409)
        await self._check_targets(request)
        self._enter(request.id)
        stack = contextlib.AsyncExitStack()
        raw = {k: n.model_dump(by_alias=True, exclude_none=True) for k, n in request.prompt.items()}
        record = self.jobs.new_record(request.id, "prompt", str(uuid.uuid4()), raw)
        try:
            prepared = await self._prepare(request, started, stack)
            prepared.comfy_prompt_id = record.comfy_id
        except PrepareError as error:
            await stack.aclose()
            self._leave(request.id)
            self.jobs.finish(record, "failed", Failure("rejected", error.message))
            self._send_failed(request, raw, error.message)
            self.metrics.prompt_duration.labels(outcome="rejected").observe(time.monotonic() - started)
            raise
        except BaseException:
            await stack.aclose()
            self._leave(request.id)
            self.jobs.finish(record, "failed", Failure("internal_error", "the prompt could not be prepared"))
            raise
        return prepared

    async def _check_targets(self, request: PromptRequest) -> None:
        try:
            await check_targets(request, self.webhooks, self.uploader)
        except TargetRefused as error:
            raise PrepareError(error.message, error.location) from None

    def _uploader(self) -> Uploader:
        if self.uploader is None:
            raise UploadError("uploads are not enabled on this sidecar")
        return self.uploader

    async def _prepare(
        self, request: PromptRequest, started: float, stack: contextlib.AsyncExitStack
    ) -> Prepared:
        raw = {
            node_id: node.model_dump(by_alias=True, exclude_none=True)
            for node_id, node in request.prompt.items()
        }
        try:
            rewritten = rewrite_prompt(raw, request.id, self.rewrite_options)
        except RewriteError as error:
            raise PrepareError(error.message, error.location) from None
        input_dir = self.settings.input_dir
        for local in rewritten.local_inputs:
            path = confined(input_dir, local.relpath)
            if path is None:
                raise PrepareError(
                    f"{local.message_prefix}: file is outside the input directory", local.location
                )
            if not path.is_file():
                raise PrepareError(
                    f"{local.message_prefix}: no such file in the input directory: {local.relpath}",
                    local.location,
                )
        if rewritten.inline_files:
            # registered before writing, so a write that fails part way leaves no file behind
            stack.callback(self._remove_inline, rewritten.inline_files)
            decoded = [(item.relpath, await _decode(item)) for item in rewritten.inline_files]
            await asyncio.to_thread(self._write_inline, decoded)
        try:
            resolved = await stack.enter_async_context(
                self.fetcher.pin(rewritten.fetches, request.credentials or [])
            )
        except FetchError as error:
            message, location = describe_failure(error)
            raise PrepareError(message, location, error.status) from None
        prompt = apply_fetched(rewritten.prompt, resolved) if resolved else rewritten.prompt
        if rewritten.directories:
            prompt = finish_directories(prompt, rewritten.directories)
        preprocess_ms = int((time.monotonic() - started) * 1000)
        return Prepared(request, prompt, rewritten.output_nodes, started, preprocess_ms, stack)

    def _write_inline(self, files: Sequence[tuple[str, bytes]]) -> None:
        for relpath, data in files:
            path = confined(self.settings.input_dir, relpath)
            if path is None:
                raise PrepareError("inline file name escapes the input directory", "prompt")
            try:
                write_atomic(path, data)
            except OSError as error:
                raise PrepareError(
                    f"Could not write an inline input to the input directory: {error.strerror or error}",
                    "prompt",
                    500,
                ) from None

    def _remove_inline(self, files: Sequence[InlineFile]) -> None:
        for item in files:
            with contextlib.suppress(OSError):
                (self.settings.input_dir / item.relpath).unlink()
        for folder in {item.relpath.split("/")[0] for item in files if "/" in item.relpath}:
            with contextlib.suppress(OSError):
                (self.settings.input_dir / folder).rmdir()

    # ---- running -------------------------------------------------------------------------------------------
    async def run(self, prepared: Prepared) -> Delivered:
        """Run a prepared prompt; return the result.
        Raises ComfyError, ComfyRejected, UploadError or ImageTooLarge."""
        outcome = "failed"
        failure: Failure | None = Failure("failed", "the prompt failed")
        try:
            result = await self._execute_and_deliver(prepared)
            outcome, failure = "success", None
            self._remember_finished(prepared.request.id)
            return result
        except ComfyError as error:
            outcome = {504: "timeout", 502: "unreachable"}.get(error.status, "failed")
            failure = Failure(outcome, error.message)
            raise
        except ComfyRejected as error:
            outcome = "rejected"
            failure = Failure("invalid_workflow", error.message)
            raise
        except UploadError as error:
            failure = Failure("upload_failed", str(error))
            raise
        finally:
            await prepared.cleanup.aclose()
            self.metrics.prompt_duration.labels(outcome=outcome).observe(time.monotonic() - prepared.started)
            self._leave(prepared.request.id)
            self._record_end(prepared, failure)

    def _record_end(self, prepared: Prepared, failure: Failure | None) -> None:
        record = self.jobs.by_comfy(prepared.comfy_prompt_id)
        if record is None:
            return
        if failure is None:
            self.jobs.finish(record, "succeeded")
        elif record.cancel_requested and "interrupted" in failure.message:
            self.jobs.finish(record, "canceled")
        else:
            self.jobs.finish(record, "failed", failure)

    def _remember_finished(self, request_id: str) -> None:
        self.finished[request_id] = None
        self.finished.move_to_end(request_id)
        while len(self.finished) > FINISHED_IDS_KEPT:
            self.finished.popitem(last=False)

    def run_in_background(self, prepared: Prepared) -> None:
        task = asyncio.get_running_loop().create_task(self._background_run(prepared))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_run(self, prepared: Prepared) -> None:
        request = prepared.request
        try:
            delivered = await self.run(prepared)
        except (ComfyError, ComfyRejected, UploadError, ImageTooLarge) as error:
            message = getattr(error, "message", str(error))
            log.warning("prompt %s failed: %s", request.id, message)
            self._send_failed(request, prepared.prompt, message)
            return
        except Exception as error:
            log.exception("prompt %s failed unexpectedly", request.id)
            self._send_failed(request, prepared.prompt, f"Internal error: {type(error).__name__}")
            return
        if request.webhook_v2:
            payload = {"type": "prompt.complete", "timestamp": iso_now(), **echo(request, prepared.prompt)}
            payload.update(images=delivered.images, filenames=delivered.filenames, stats=delivered.stats)
            self.webhooks.send_v2(request.webhook_v2, payload)

    async def _execute_and_deliver(self, prepared: Prepared) -> Delivered:
        request = prepared.request
        comfy_id = prepared.comfy_prompt_id
        self.comfy_ids[request.id] = comfy_id
        self.api_ids[comfy_id] = request.id
        refs: list[OutputRef] = []
        try:
            try:
                index = await self.comfy.queue(
                    prepared.prompt,
                    comfy_id,
                    timeout_s=self.settings.prompt_timeout_s,
                    target=prepared.target,
                )
                execution = await self.comfy.wait(comfy_id, self.settings.prompt_timeout_s)
            finally:
                self.comfy.forget(comfy_id)
                self.comfy_ids.pop(request.id, None)
                self.api_ids.pop(comfy_id, None)
            refs = output_refs(execution.outputs, js_key_order(prepared.prompt), index)
            try:
                files = await self.read_outputs(refs)
            except OutputMissing as missing:
                if request.id in self.finished:
                    raise ComfyError(
                        409,
                        f"a prompt with id {request.id} already finished and its outputs were delivered; "
                        f"{missing.message.split(': ', 1)[1]}",
                    ) from None
                raise
            round_trip_ms = self._elapsed_ms(prepared)
            files = await self._convert(files, request)
        except ComfyRejected:
            raise  # never queued: no outputs
        except BaseException as error:
            # 502: ComfyUI is unreachable (its history too) or its /view failed (the outputs are known)
            reachable = not (isinstance(error, ComfyError) and error.status == 502)
            await self._discard_outputs(comfy_id, refs, ask_history=reachable)
            raise
        if sum(len(f.data) for f in files) > THREAD_THRESHOLD:
            await asyncio.to_thread(self.delete_outputs, refs)
        else:  # a thread hand-off costs more than a few small unlinks
            self.delete_outputs(refs)
        postprocess_end = self._elapsed_ms(prepared)
        stats: dict[str, Any] = {
            "comfy_execution": execution.stats(),
            "preprocess_time": prepared.preprocess_ms,
            "comfy_round_trip_time": round_trip_ms - prepared.preprocess_ms,
            "postprocess_time": postprocess_end - round_trip_ms,
        }
        if request.webhook:
            self._send_legacy(request, prepared.prompt, files, stats)
            images: list[str] | Base64List = []
        elif upload_targets(request).chosen is not None:
            images = await self._uploader().upload(files, upload_targets(request))
        else:
            images = Base64List([f.data for f in files])
        total_ms = self._elapsed_ms(prepared)
        stats["upload_time"] = total_ms - postprocess_end
        stats["total_time"] = total_ms
        return Delivered(images, [f.filename for f in files], stats)

    @staticmethod
    def _elapsed_ms(prepared: Prepared) -> int:
        return int((time.monotonic() - prepared.started) * 1000)

    def _output_path(self, ref: OutputRef) -> Path | None:
        temp_dirs = self.settings.comfy_temp_dirs
        temp = temp_dirs[ref.comfyui] if ref.comfyui < len(temp_dirs) else self.settings.temp_dir
        root = self.settings.output_dir if ref.type == "output" else temp
        if not is_safe_relative(ref.subfolder) or not is_safe_relative(ref.filename) or "/" in ref.filename:
            return None
        return root / ref.subfolder / ref.filename if ref.subfolder else root / ref.filename

    async def read_outputs(self, refs: Sequence[OutputRef]) -> list[OutputFile]:
        """Read each output from the shared directory, or through ComfyUI's /view when it is not there."""
        files = []
        for ref in refs:
            path = self._output_path(ref)
            data: bytes | None = None
            if path is not None:
                try:
                    size = path.stat().st_size
                    data = (
                        await asyncio.to_thread(path.read_bytes)
                        if size > THREAD_THRESHOLD
                        else path.read_bytes()
                    )
                except OSError:
                    data = None
            if data is None:
                data = await self.comfy.view(ref)
            files.append(OutputFile(ref.filename, data, content_type_for(ref.filename)))
        return files

    async def _discard_outputs(
        self, comfy_id: str, known: Sequence[OutputRef], *, ask_history: bool = True
    ) -> None:
        """Best effort, never raising: remove what a prompt that ended without delivery wrote (the outputs
        already known, and those its ComfyUI history entry lists: a failed, timed-out or interrupted prompt
        may have saved some)."""
        refs = list(known)
        if ask_history:
            try:
                async with asyncio.timeout(DISCARD_HISTORY_TIMEOUT_S):
                    entry = await self.comfy.history(comfy_id)
                outputs = entry.get("outputs") if entry is not None else None
                if isinstance(outputs, Mapping):
                    refs += output_refs(outputs, [], self.comfy.index_of(comfy_id) or 0)
            except Exception as error:  # ComfyUI not answering: only the known outputs can go
                log.info("could not list the outputs of failed prompt %s: %s", comfy_id, type(error).__name__)
        with contextlib.suppress(Exception):
            self.delete_outputs(refs)

    def delete_outputs(self, refs: Sequence[OutputRef]) -> None:
        for ref in refs:
            path = self._output_path(ref)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _convert(self, files: list[OutputFile], request: PromptRequest) -> list[OutputFile]:
        convert = request.convert_output
        if convert is None:
            return files
        result = []
        for file in files:
            try:
                result.append(
                    await asyncio.to_thread(convert_image, file, convert, self.settings.convert_max_pixels)
                )
            except (OSError, ValueError) as error:
                log.warning("convert_output skipped %s: %s", file.filename, error)
                result.append(file)
        return result

    # ---- webhooks ------------------------------------------------------------------------------------------
    def _send_legacy(
        self,
        request: PromptRequest,
        prompt: Mapping[str, Any],
        files: Sequence[OutputFile],
        stats: dict[str, Any],
    ) -> None:
        assert request.webhook is not None
        ordered = ordered_prompt(prompt)
        stats = copy.deepcopy(stats)  # the caller adds upload_time/total_time later; legacy stats lack them
        for file in files:
            payload = {
                "event": "output.complete",
                "image": Base64Str(file.data),
                "id": request.id,
                "filename": file.filename,
                "prompt": ordered,
                "stats": stats,
            }
            self.webhooks.send_legacy(request.webhook, payload)

    def _send_failed(self, request: PromptRequest, prompt: Mapping[str, Any], message: str) -> None:
        if request.webhook_v2:
            payload = {
                "type": "prompt.failed",
                "timestamp": iso_now(),
                "id": request.id,
                "prompt": ordered_prompt(prompt),
                "error": message,
            }
            self.webhooks.send_v2(request.webhook_v2, payload)
        elif request.webhook:
            legacy = {
                "event": "prompt.failed",
                "id": request.id,
                "prompt": ordered_prompt(prompt),
                "error": message,
            }
            self.webhooks.send_legacy(request.webhook, legacy)

    # ---- interrupt / shutdown ------------------------------------------------------------------------------
    def api_id_for(self, comfy_prompt_id: str) -> str | None:
        """The request id (or v2 job id) of an in-flight ComfyUI prompt id (for system webhooks)."""
        known = self.api_ids.get(comfy_prompt_id)
        if known is None:
            record = self.jobs.by_comfy(comfy_prompt_id)
            known = record.id if record is not None and not record.terminal else None
        return known

    async def interrupt(self, request_id: str) -> bool:
        comfy_id = self.comfy_ids.get(request_id)
        if comfy_id is None:
            return False
        record = self.jobs.by_comfy(comfy_id)
        if record is not None:
            self.jobs.mark_canceling(record)
        return await self.comfy.cancel(comfy_id)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when every accepted prompt finished within `timeout_s`."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

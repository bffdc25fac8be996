"""The connection to ComfyUI: HTTP calls plus one websocket (reconnect, heartbeat) that completes prompts.

Every prompt is queued with our websocket `client_id` and a prompt id we choose, so its waiter exists before
any event can arrive. A waiter ends by exactly one of: `execution_success` (or the final `executing` with
`node: null`), `execution_error` / `execution_interrupted`, a `/history` check (periodic fallback and after
each reconnect), the per-prompt timeout (504), or ComfyUI staying unreachable for COMFYUI_LOST_TIMEOUT_S
(502). So a dropped websocket never leaves a request hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from comfyui_sidecar.outputs import OutputRef
from comfyui_sidecar.previews import FEATURE_FLAGS, PreviewFrame, parse_preview

log = logging.getLogger(__name__)


# Frequent messages the sidecar does not use (the job store reads `progress` and `execution_cached`), skipped
# before parsing when ComfyUI's json.dumps layout is seen, unless system webhooks want them.
IGNORABLE_EVENTS = ("progress_state",)
_IGNORED_PREFIXES = tuple(f'{{"type": "{name}"' for name in IGNORABLE_EVENTS)
CONTROL_TIMEOUT_S = 10.0
"""Bound on control calls to ComfyUI (cancel, outputs from /history, reconcile after a reconnect), so a
ComfyUI that stopped answering HTTP cannot hold a request or the websocket task."""
VIEW_READ_TIMEOUT_S = 60.0
"""Longest silence while an output is read through /view (the whole file may take longer)."""


class ComfyError(Exception):
    """ComfyUI could not run a prompt. `status` is the HTTP status the client gets."""

    def __init__(self, status: int, message: str, comfy_error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.comfy_error = comfy_error


class OutputMissing(ComfyError):
    """ComfyUI reported an output file that neither the output directory nor its /view has: usually an
    identical prompt served from ComfyUI's execution cache, which writes no file again."""

    def __init__(self, filename: str) -> None:
        super().__init__(
            502,
            f"ComfyUI reported output {filename}, but the file does not exist: ComfyUI serves an identical "
            "prompt from its cache without writing its files again; send it with a new id",
        )
        self.filename = filename


class ComfyRejected(Exception):
    """ComfyUI refused the prompt at queueing time (validation): 400 with its node_errors."""

    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.message = message
        self.body = body


@dataclass
class Execution:
    """What the websocket (or history) told us about one prompt."""

    prompt_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    start: int | None = None
    end: int | None = None
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs_complete: bool = True
    """False when events may have been missed (websocket reconnected): outputs must come from /history."""

    def stats(self) -> dict[str, Any]:
        start = self.start or 0
        end = self.end or start
        return {"start": start, "end": end, "duration": max(0, end - start), "nodes": self.nodes}


def error_from_event(data: Mapping[str, Any]) -> ComfyError:
    """A ComfyError carrying ComfyUI's node id, class and exception message from an `execution_error`."""
    detail = {
        key: data.get(key)
        for key in ("node_id", "node_type", "exception_type", "exception_message")
        if data.get(key) is not None
    }
    message = str(data.get("exception_message", "")).strip()
    text = f"ComfyUI failed on node {data.get('node_id')} ({data.get('node_type')}): "
    text += f"{data.get('exception_type', 'error')}: {message}"
    return ComfyError(500, text, detail)


def result_from_history(prompt_id: str, entry: Mapping[str, Any]) -> Execution | ComfyError | None:
    """Execution for a finished history entry, ComfyError for a failed one, None while unfinished."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    events = {name: data for name, data in messages if isinstance(data, dict)}
    if (
        status.get("status_str") == "error"
        or "execution_error" in events
        or "execution_interrupted" in events
    ):
        if "execution_error" in events:
            return error_from_event(events["execution_error"])
        return ComfyError(500, "Prompt execution interrupted")
    if not status.get("completed"):
        return None
    execution = Execution(prompt_id, outputs=dict(entry.get("outputs") or {}))
    execution.start = events.get("execution_start", {}).get("timestamp")
    execution.end = events.get("execution_success", {}).get("timestamp")
    return execution


class Observer(Protocol):
    """Told what ComfyUI does (metrics): each prompt as it is sent, each websocket message with a dict."""

    def sending(self, prompt_id: str, prompt: Mapping[str, Any]) -> None: ...

    def event(self, kind: str, data: Mapping[str, Any]) -> None: ...


@dataclass
class _Waiter:
    execution: Execution
    future: asyncio.Future[Execution]
    queued: bool = False
    """True once ComfyUI accepted the prompt: only then does its absence mean ComfyUI lost it."""


class ComfyClient:
    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        heartbeat_s: float,
        reconnect_max_s: float,
        lost_timeout_s: float,
        history_poll_s: float,
        on_queue_depth: Callable[[int], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.queue_remaining = 0
        self.connected = asyncio.Event()
        self._heartbeat_s = heartbeat_s
        self._reconnect_max_s = reconnect_max_s
        self._lost_timeout_s = lost_timeout_s
        self._history_poll_s = history_poll_s
        self._on_queue_depth = on_queue_depth
        self._on_connection = on_connection
        self.on_event = on_event
        self.listeners: list[Callable[[Mapping[str, Any]], None]] = []
        """Called with every parsed message after `on_event` (the job store)."""
        self.on_preview: Callable[[PreviewFrame], None] | None = None
        self._observer = observer
        self.skipped_prefixes = _IGNORED_PREFIXES
        self._waiters: dict[str, _Waiter] = {}
        self._closing = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    # ---- HTTP ----------------------------------------------------------------------------------------------
    async def ping(self, timeout_s: float = 2.0) -> bool:
        """True when ComfyUI answers `GET /prompt`."""
        try:
            async with self.session.get(
                f"{self.base_url}/prompt", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def queue(
        self,
        prompt: Mapping[str, Any],
        prompt_id: str,
        *,
        timeout_s: float | None = None,
        extra_data: Mapping[str, Any] | None = None,
    ) -> None:
        """POST /prompt with our client_id and prompt id. Raises ComfyRejected (400) or ComfyError (502, or
        504 when ComfyUI does not answer within `timeout_s`)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        if self._observer is not None:  # before the POST: ComfyUI may run the prompt before it answers
            self._observer.sending(prompt_id, prompt)
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.post(f"{self.base_url}/prompt", json=body) as response:
                    text = await response.text()
                    if response.status == 200:
                        waiter = self._waiters.get(prompt_id)
                        if waiter is not None:
                            waiter.queued = True
                        return
        except TimeoutError:
            raise ComfyError(504, f"ComfyUI did not accept the prompt within {timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise ComfyError(502, f"ComfyUI is unreachable: {type(error).__name__}") from None
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        if response.status == 400:
            raise ComfyRejected(_rejection_message(parsed), parsed)
        raise ComfyError(502, f"Failed to queue prompt: ComfyUI answered {response.status}: {text[:500]}")

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        async with self.session.get(f"{self.base_url}/history/{prompt_id}") as response:
            response.raise_for_status()
            data = await response.json()
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue_state(self) -> tuple[set[str], set[str]]:
        """(running ids, pending ids) from GET /queue."""
        async with self.session.get(f"{self.base_url}/queue") as response:
            response.raise_for_status()
            data = await response.json()

        def ids(items: Any) -> set[str]:
            return {str(item[1]) for item in items or [] if isinstance(item, list) and len(item) > 1}

        return ids(data.get("queue_running")), ids(data.get("queue_pending"))

    async def queued_ids(self) -> set[str]:
        running, pending = await self.queue_state()
        return running | pending

    async def cancel(self, prompt_id: str) -> bool:
        """Stop a prompt (see `cancel_detail`); False when it was neither pending nor running, or ComfyUI did
        not answer within CONTROL_TIMEOUT_S."""
        return await self.cancel_detail(prompt_id) in ("dequeued", "interrupting")

    async def cancel_detail(self, prompt_id: str) -> str:
        """Stop a prompt as ComfyUI allows it per prompt: remove it from the queue when pending (`/interrupt`
        only reaches the running prompt) -> "dequeued", its waiter ends as interrupted; `POST /interrupt
        {prompt_id}` when running -> "interrupting" (ComfyUI then sends `execution_interrupted`). "absent"
        when it is in neither list, "failed" when ComfyUI does not answer."""
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                running, pending = await self.queue_state()
                if prompt_id in pending:
                    async with self.session.post(
                        f"{self.base_url}/queue", json={"delete": [prompt_id]}
                    ) as response:
                        await response.read()
                    await self.interrupt(prompt_id)  # in case it started in between
                    waiter = self._waiters.get(prompt_id)
                    if waiter is not None:
                        _settle(waiter, ComfyError(500, "Prompt execution interrupted"))
                    return "dequeued"
                if prompt_id not in running:
                    return "absent"
                return "interrupting" if await self.interrupt(prompt_id) else "failed"
        except (aiohttp.ClientError, ValueError, TimeoutError):
            return "failed"

    async def interrupt(self, prompt_id: str) -> bool:
        try:
            async with self.session.post(
                f"{self.base_url}/interrupt", json={"prompt_id": prompt_id}
            ) as response:
                await response.read()
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def view(self, ref: OutputRef) -> bytes:
        """An output through ComfyUI's /view; 502 when ComfyUI fails, or is silent for VIEW_READ_TIMEOUT_S."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        timeout = aiohttp.ClientTimeout(sock_connect=CONTROL_TIMEOUT_S, sock_read=VIEW_READ_TIMEOUT_S)
        try:
            async with self.session.get(f"{self.base_url}/view", params=params, timeout=timeout) as response:
                if response.status == 404:
                    raise OutputMissing(ref.filename)
                if response.status != 200:
                    raise ComfyError(
                        502, f"ComfyUI could not return output {ref.filename}: HTTP {response.status}"
                    )
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ComfyError(
                502, f"ComfyUI could not return output {ref.filename}: {type(error).__name__}"
            ) from None

    async def models(self) -> dict[str, list[str]]:
        """Every model folder with its files; TimeoutError after CONTROL_TIMEOUT_S in all."""
        async with asyncio.timeout(CONTROL_TIMEOUT_S):
            return await self._models()

    async def _models(self) -> dict[str, list[str]]:
        async with self.session.get(f"{self.base_url}/models") as response:
            response.raise_for_status()
            folders = await response.json()
        result: dict[str, list[str]] = {}
        for folder in sorted(str(name) for name in folders):
            if folder == "custom_nodes":
                continue
            async with self.session.get(f"{self.base_url}/models/{folder}") as response:
                result[folder] = (
                    [str(name) for name in await response.json()] if response.status == 200 else []
                )
        return result

    # ---- waiting ------------------------------------------------------------------------------------------
    def register(self, prompt_id: str) -> None:
        """Create the waiter before queueing, so no event can be missed."""
        future: asyncio.Future[Execution] = asyncio.get_running_loop().create_future()
        execution = Execution(prompt_id, outputs_complete=self.connected.is_set())
        self._waiters[prompt_id] = _Waiter(execution, future)

    def forget(self, prompt_id: str) -> None:
        waiter = self._waiters.pop(prompt_id, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.cancel()

    async def wait(self, prompt_id: str, timeout_s: float) -> Execution:
        """Wait for a registered prompt; ComfyError on failure, 504 after `timeout_s`."""
        waiter = self._waiters[prompt_id]
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self.cancel(prompt_id)
                    raise ComfyError(504, f"Prompt did not finish within {timeout_s:g} s (PROMPT_TIMEOUT_S)")
                done, _ = await asyncio.wait({waiter.future}, timeout=min(remaining, self._history_poll_s))
                if done:
                    execution = waiter.future.result()
                    if not execution.outputs_complete:
                        execution = await self._outputs_from_history(execution)
                    return execution
                # A ComfyUI that stopped answering HTTP must not hold the wait past its deadline, nor past
                # the websocket settling the waiter (e.g. the lost-connection 502).
                check = asyncio.ensure_future(self._check_history(prompt_id, waiter))
                racing: set[asyncio.Future[Any]] = {waiter.future, check}
                try:
                    await asyncio.wait(
                        racing,
                        timeout=deadline - time.monotonic(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    check.cancel()
        finally:
            self._waiters.pop(prompt_id, None)

    async def _outputs_from_history(self, execution: Execution) -> Execution:
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                entry = await self.history(execution.prompt_id)
        except TimeoutError:
            raise ComfyError(502, "ComfyUI did not return the outputs from its history in time") from None
        except (aiohttp.ClientError, ValueError) as error:
            raise ComfyError(502, f"Could not read outputs from ComfyUI history: {error}") from None
        if entry is not None:
            execution.outputs = dict(entry.get("outputs") or {})
        return execution

    async def _check_history(self, prompt_id: str, waiter: _Waiter, *, lost_if_absent: bool = False) -> None:
        try:
            entry = await self.history(prompt_id)
            if entry is None:
                if lost_if_absent and waiter.queued and prompt_id not in await self.queued_ids():
                    _settle(
                        waiter, ComfyError(502, "ComfyUI lost the prompt (it restarted while running it)")
                    )
                return
        except (aiohttp.ClientError, ValueError, TimeoutError):
            return
        result = result_from_history(prompt_id, entry)
        if result is None:
            return
        if isinstance(result, Execution):
            result.start = waiter.execution.start or result.start
            result.nodes = waiter.execution.nodes
        _settle(waiter, result)

    # ---- websocket ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep one websocket open until `close()`; reconcile waiters after reconnects."""
        backoff = 0.05
        lost_since: float | None = None
        while not self._closing:
            try:
                async with self.session.ws_connect(
                    f"{self.base_url}/ws?clientId={self.client_id}", heartbeat=self._heartbeat_s
                ) as ws:
                    self._ws = ws
                    await ws.send_json(FEATURE_FLAGS)
                    backoff = 0.05
                    if lost_since is not None:
                        # bounded: waiters left unchecked still poll /history until their own deadline
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                                await self._reconcile()
                    lost_since = None
                    self._set_connected(True)
                    await self._read(ws)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.debug("websocket to ComfyUI failed: %s", error)
            finally:
                self._ws = None
            if self._closing:
                break
            self._set_connected(False)
            now = time.monotonic()
            lost_since = lost_since or now
            for waiter in self._waiters.values():
                waiter.execution.outputs_complete = False
            if now - lost_since >= self._lost_timeout_s:
                self._fail_all(ComfyError(502, "Lost the connection to ComfyUI while the prompt was running"))
            await asyncio.sleep(backoff)
            backoff = min(self._reconnect_max_s, backoff * 2)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        self._fail_all(ComfyError(503, "The sidecar is shutting down"))

    def _set_connected(self, up: bool) -> None:
        if up == self.connected.is_set():
            return
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if self._on_connection is not None:
            self._on_connection(up)

    def _fail_all(self, error: ComfyError) -> None:
        for waiter in list(self._waiters.values()):
            _settle(waiter, error)

    async def _reconcile(self) -> None:
        for prompt_id, waiter in list(self._waiters.items()):
            if not waiter.future.done():
                await self._check_history(prompt_id, waiter, lost_if_absent=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                if message.data.startswith(self.skipped_prefixes):
                    continue
                try:
                    event = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    try:
                        self.handle_event(event)
                    except Exception:  # an odd message must not end the websocket task
                        log.exception("could not handle a ComfyUI websocket message")
            elif message.type == aiohttp.WSMsgType.BINARY:
                preview = parse_preview(message.data) if self.on_preview is not None else None
                if preview is not None and self.on_preview is not None:
                    self.on_preview(preview)
            elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Apply one websocket message (public for tests with recorded transcripts)."""
        if self.on_event is not None:
            self.on_event(event)
        for listener in self.listeners:
            listener(event)
        kind = event.get("type")
        data = event.get("data")
        if not isinstance(data, dict):
            return
        if self._observer is not None and isinstance(kind, str):
            self._observer.event(kind, data)
        if kind == "status":
            remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
            if isinstance(remaining, int):
                self.queue_remaining = remaining
                if self._on_queue_depth is not None:
                    self._on_queue_depth(remaining)
            return
        waiter = self._waiters.get(str(data.get("prompt_id")))
        if waiter is None or waiter.future.done():
            return
        execution = waiter.execution
        if kind == "execution_start":
            execution.start = data.get("timestamp")
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                _settle(waiter, execution)
            else:
                execution.nodes[str(node)] = {"start": int(time.time() * 1000)}
        elif kind == "executed":
            target = execution.outputs.setdefault(str(data.get("node")), {})
            for key, items in (data.get("output") or {}).items():
                if isinstance(items, list):
                    target.setdefault(key, []).extend(items)
                else:
                    target[key] = items
        elif kind == "execution_success":
            execution.end = data.get("timestamp")
            _settle(waiter, execution)
        elif kind == "execution_error":
            _settle(waiter, error_from_event(data))
        elif kind == "execution_interrupted":
            _settle(waiter, ComfyError(500, "Prompt execution interrupted"))


def _settle(waiter: _Waiter, result: Execution | ComfyError) -> None:
    if waiter.future.done():
        return
    if isinstance(result, ComfyError):
        waiter.future.set_exception(result)
    else:
        waiter.future.set_result(result)


def _rejection_message(body: Any) -> str:
    """One line from ComfyUI's 400 body: the error message plus the first node error."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the prompt: {str(body)[:300]}"
    error = body.get("error") or {}
    parts = [str(error.get("message", "invalid prompt")) if isinstance(error, dict) else str(error)]
    for node_id, node in (body.get("node_errors") or {}).items():
        for item in node.get("errors", [])[:1]:
            parts.append(
                f"node {node_id} ({node.get('class_type')}): {item.get('message')}: {item.get('details')}"
            )
        break
    return "ComfyUI rejected the prompt: " + "; ".join(parts)

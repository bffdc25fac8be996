"""Lifecycle: attach or supervise ComfyUI, warm up before /ready, restart ComfyUI, readiness state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shlex
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from comfyui_sidecar.comfy_client import ComfyError, ComfyRejected
from comfyui_sidecar.comfy_pool import ComfyPool, Member
from comfyui_sidecar.egress.client import EgressClient, EgressError, read_capped
from comfyui_sidecar.egress.urls import parse_url
from comfyui_sidecar.logs import job_scope
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.model_paths import write_model_paths
from comfyui_sidecar.models import PromptRequest
from comfyui_sidecar.prompt_flow import PrepareError, PromptService
from comfyui_sidecar.settings import Settings
from comfyui_sidecar.uploads import UploadError

log = logging.getLogger(__name__)

WARMUP_ATTEMPTS = 3
WARMUP_BACKOFF_S = 1.0
WARMUP_FETCH_TIMEOUT_S = 60.0
WARMUP_MAX_BYTES = 64 << 20


@dataclass
class State:
    """What /health and /ready report.

    `draining`: the pod is being removed (GET /drain, SIGTERM): /ready is 503, prompts are still accepted
    while ComfyUI runs. `stopping`: SIGTERM; new prompts get 503. `models_ready`: the fetcher's start-up
    downloads (the manifest's `before_start` models) are done.
    """

    warm: bool = False
    comfy_up: bool = False
    draining: bool = False
    stopping: bool = False
    models_ready: bool = True
    healthy: bool = True
    exit_code: int | None = None

    def ready(self, max_queue_depth: int, queue_depth: int) -> bool:
        if not (self.warm and self.comfy_up and self.healthy and self.models_ready) or self.draining:
            return False
        return max_queue_depth == 0 or queue_depth < max_queue_depth


MODEL_PATHS_FLAG = "--extra-model-paths-config"


def comfy_command(settings: Settings) -> list[str]:
    """CMD split like a shell would, plus `--extra-model-paths-config <file>` (the file the sidecar writes:
    comfyui_sidecar.model_paths) unless CMD names that file already. ComfyUI reads every such flag, so a
    user's own file stays in effect; CMD must pass its arguments on to ComfyUI (`python main.py …`,
    `comfy launch -- …`, or a script that forwards "$@")."""
    argv = shlex.split(settings.cmd)
    paths_file = str(settings.model_paths_file())
    if argv and paths_file not in argv:
        argv += [MODEL_PATHS_FLAG, paths_file]
    return argv


class Lifecycle:
    """Starts (supervise mode) and watches the local ComfyUIs, keeps their websocket tasks, runs warmups (on
    each ComfyUI: each GPU loads the warmup's models)."""

    def __init__(
        self,
        *,
        settings: Settings,
        comfy: ComfyPool,
        service: PromptService,
        metrics: Metrics,
        state: State,
        fetch: EgressClient,
        on_fatal: Callable[[int], None],
    ) -> None:
        self.settings = settings
        self.comfy = comfy
        self.service = service
        self.metrics = metrics
        self.state = state
        self.fetch = fetch
        """Where WARMUP_PROMPT_URL is read from: the download client, under the egress policy."""
        self.on_fatal = on_fatal
        self.process: asyncio.subprocess.Process | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warmup_prompt: dict[str, Any] | None = None
        self._warmup_locks = {m.index: asyncio.Lock() for m in comfy.members}
        self._ever_connected: set[int] = set()
        self._closing = False
        for member in comfy.members:
            member.client._on_connection = functools.partial(self.on_connection, member)
        # Set when the fetcher's start-up downloads are done; supervise mode starts ComfyUI after them.
        self.models_present = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._spawn(self._startup())

    def _refresh(self) -> None:
        """Readiness from the ComfyUIs: some ComfyUI is connected, and some connected one is warm."""
        members = self.comfy.members
        self.state.comfy_up = any(m.up for m in members)
        self.state.warm = self.comfy.serving
        self.metrics.comfy_connected.set(1 if all(m.up for m in members) else 0)

    def on_connection(self, member: Member, up: bool) -> None:
        """Websocket state changes: readiness follows; a reconnect after a drop re-runs the warmup."""
        if not up:
            member.activity.connection_lost()
        else:
            member.warmup_failed = False
        self.metrics.busy.connected(up, member.index)
        if up and (member.draining or self.state.draining) and not self.state.stopping:
            # ComfyUI came back after a drain (its preStop hook also runs when the kubelet restarts it after
            # failed probes): the pod is not being removed, so it takes prompts again.
            log.info("ComfyUI %d is back after a drain: taking prompts again", member.index)
            member.draining = member.stopped = False
            self.state.draining = False
        if up and member.index in self._ever_connected:
            if self._warmup_prompt is not None:
                member.warm = False
            self._spawn(self._warmup(member))
        if up:
            self._ever_connected.add(member.index)
        self._refresh()

    async def _startup(self) -> None:
        try:
            self._warmup_prompt = await self._load_warmup()
        except (OSError, ValueError, EgressError, TimeoutError) as error:
            log.error("cannot load the warmup prompt: %s", getattr(error, "message", error))
            self.state.healthy = False
            return
        if self.settings.sidecar_mode == "supervise":
            await self.models_present.wait()
            if not await self._launch():
                self.on_fatal(1)
                return
            self._spawn(self._watch_process())
        await asyncio.gather(*(self._start_member(member) for member in self.comfy.members))

    async def _start_member(self, member: Member) -> None:
        while not await self._wait_for_comfy(member):
            log.error(
                "ComfyUI %d did not answer after %d checks",
                member.index,
                self.settings.startup_check_max_tries,
            )
            if self._closing:
                return
            if self.settings.sidecar_mode == "supervise":
                self.on_fatal(1)
                return
            # attach mode: ComfyUI is another container that may start late; stay not ready and keep checking
        self._spawn(member.client.run())
        await self._warmup(member)

    async def _wait_for_comfy(self, member: Member) -> bool:
        for _ in range(self.settings.startup_check_max_tries):
            if self._closing:
                return False
            if await member.client.ping():
                return True
            await asyncio.sleep(self.settings.startup_check_interval_s)
        return False

    async def _load_warmup(self) -> dict[str, Any] | None:
        settings = self.settings
        if settings.warmup_prompt_file is not None:
            data = json.loads(settings.warmup_prompt_file.read_text())
        elif settings.warmup_prompt_url:
            headers = {}
            if settings.http_auth_header_name and settings.http_auth_header_value:
                headers[settings.http_auth_header_name] = settings.http_auth_header_value.get_secret_value()
            timeout = aiohttp.ClientTimeout(total=WARMUP_FETCH_TIMEOUT_S)
            url = parse_url(settings.warmup_prompt_url)
            async with self.fetch.request(
                "GET", url, headers=headers, deadline=timeout, follow_redirects=True
            ) as response:
                if response.status != 200:
                    raise EgressError(f"GET {url.redacted} answered HTTP {response.status}")
                data = json.loads(await read_capped(response, WARMUP_MAX_BYTES))
        else:
            return None
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
            data = data["prompt"]
        if not isinstance(data, dict):
            raise ValueError("the warmup prompt must be a JSON object (an API-format prompt)")
        return data

    async def _warmup(self, member: Member) -> None:
        """Run the warmup prompt (if any) on this ComfyUI through the normal pipeline; then mark it warm."""
        async with self._warmup_locks[member.index]:
            if self._warmup_prompt is None:
                await self._wait_connected(member)
                member.warm = True
                self._refresh()
                return
            for attempt in range(1, WARMUP_ATTEMPTS + 1):
                await self._wait_connected(member)
                if await self._run_warmup_once(member.index):
                    member.warm = True
                    self._refresh()
                    log.info("warmup finished on ComfyUI %d", member.index)
                    return
                if attempt < WARMUP_ATTEMPTS:
                    await asyncio.sleep(WARMUP_BACKOFF_S * attempt)
            if len(self.comfy.members) > 1:
                # one GPU's ComfyUI: its own probe fails (GET /health/comfyui/{i}), the kubelet restarts it
                failed = "warmup failed %d times on ComfyUI %d; its probe fails"
                log.error(failed, WARMUP_ATTEMPTS, member.index)
                member.warmup_failed = True
                return
            log.error("warmup failed %d times; reporting not healthy", WARMUP_ATTEMPTS)
            self.state.healthy = False

    async def _wait_connected(self, member: Member) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                member.client.connected.wait(), timeout=self.settings.comfyui_lost_timeout_s
            )

    async def _run_warmup_once(self, index: int) -> bool:
        request_id = f"warmup-{uuid.uuid4()}"
        with job_scope(request_id):
            try:
                request = PromptRequest.model_validate({"prompt": self._warmup_prompt, "id": request_id})
                prepared = await self.service.prepare(request, time.monotonic())
                prepared.target = index
                await self.service.run(prepared)
            except (PrepareError, ComfyError, ComfyRejected, UploadError, ValueError) as error:
                log.warning("warmup failed: %s", getattr(error, "message", error))
                return False
        return True

    # ---- supervise mode ------------------------------------------------------------------------------------
    async def _launch(self) -> bool:
        """Start ComfyUI from CMD; False (logged) when the command cannot be started at all."""
        try:
            argv = comfy_command(self.settings)
            if not argv:
                raise ValueError("CMD is empty")
            write_model_paths(self.settings, self.settings.model_dir)
            log.info("starting ComfyUI: %s", argv[0])
            self.process = await asyncio.create_subprocess_exec(*argv, start_new_session=True)
        except (OSError, ValueError) as error:
            log.error("cannot start ComfyUI from CMD: %s", error)
            return False
        return True

    async def _watch_process(self) -> None:
        backoff = 1.0
        failures = 0
        while not self._closing and self.process is not None:
            code = await self.process.wait()
            if self._closing:
                return
            self.comfy.members[0].warm = False
            self._refresh()
            log.warning("ComfyUI exited with code %s", code)
            if not self.settings.always_restart_comfyui:
                self.on_fatal(1)
                return
            self.metrics.restarts.inc()
            await asyncio.sleep(backoff)
            started = time.monotonic()
            if not await self._launch():
                self.on_fatal(1)
                return
            if not await self._wait_for_comfy(self.comfy.members[0]):
                failures += 1
                if failures >= self.settings.startup_check_max_tries:
                    log.error("ComfyUI failed to start %d times in a row; giving up", failures)
                    self.on_fatal(1)
                    return
            else:
                failures = 0
            backoff = (
                1.0
                if time.monotonic() - started > 60
                else min(self.settings.restart_backoff_max_s, backoff * 2)
            )

    async def stop(self, kill_after_s: float = 10.0) -> None:
        self._closing = True
        await asyncio.gather(*(m.client.close() for m in self.comfy.members))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=kill_after_s)
            except TimeoutError:
                process.kill()
                await process.wait()

"""Integration helpers and fixtures: stand-in ComfyUI, sidecar in-process, a local webhook receiver.

Everything listens on 127.0.0.1 with free ports. Helpers are plain async context managers so tests can also
start extra instances (e.g. a second sidecar) themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from comfyui_sidecar.app import create_app, make_runner
from comfyui_sidecar.fetching import Fetcher, NoDownloads
from comfyui_sidecar.settings import Settings
from comfyui_standin.testing import RunningStandin, StandinDirs, run_standin

HOST = "127.0.0.1"


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("not listening")


@dataclass
class RunningSidecar:
    url: str
    app: web.Application
    settings: Settings


def sidecar_settings(comfy_url: str, dirs: StandinDirs, **overrides: Any) -> Settings:
    """Settings for a sidecar in front of a stand-in with these directories."""
    values: dict[str, Any] = {
        "comfyui_url": comfy_url,
        "comfy_home": dirs.base,
        "input_dir": dirs.input,
        "output_dir": dirs.output,
        "temp_dir": dirs.temp,
        "model_dir": dirs.models,
        "host": HOST,
        "port": 3000,
        "startup_check_interval_s": 0.05,
        "startup_check_max_tries": 200,
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_timeout_s": 2.0,
        "comfyui_lost_timeout_s": 3.0,
        "ws_reconnect_max_s": 0.2,
        "ws_heartbeat_s": 2.0,
        "history_poll_interval_s": 1.0,
        "prompt_timeout_s": 30.0,
        # the local webhook receivers and file servers listen on loopback, which the egress policy refuses by
        # default; ComfyUI's (the stand-in's) own port stays refused
        "download_allow_networks": ["127.0.0.1/32"],
    }
    values.update(overrides)
    return Settings(**values)


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Poll an (a)sync predicate until truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@contextlib.asynccontextmanager
async def run_sidecar(
    settings: Settings, *, fetcher: Fetcher | None = None, wait_ready: bool = True
) -> AsyncIterator[RunningSidecar]:
    # The core's tests run without the cache (NoDownloads) unless a test passes a fetcher; the cache's own
    # integration tests (tests/integration/cache) cover the real fetcher.
    app = create_app(settings, fetcher=fetcher if fetcher is not None else NoDownloads())
    runner = make_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        running = RunningSidecar(f"http://{HOST}:{_bound_port(runner)}", app, settings)
        if wait_ready:
            async with aiohttp.ClientSession() as session:

                async def is_ready() -> bool:
                    async with session.get(f"{running.url}/ready") as response:
                        return response.status == 200

                await wait_until(is_ready, timeout_s=15)
        yield running
    finally:
        await runner.cleanup()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    url: str
    received: list[Received] = field(default_factory=list)
    fail_times: int = 0
    """Answer 500 to this many requests before answering 200."""
    attempts: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        await wait_until(lambda: len(self.received) >= count, timeout_s)
        return self.received


@contextlib.asynccontextmanager
async def run_webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    async def handle(request: web.Request) -> web.Response:
        receiver.attempts += 1
        body = await request.read()
        if receiver.fail_times > 0:
            receiver.fail_times -= 1
            return web.Response(status=500)
        receiver.received.append(Received(request.path, dict(request.headers), body))
        receiver.event.set()
        return web.Response(status=200)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    app.router.add_put("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        receiver.url = f"http://{HOST}:{_bound_port(runner)}"
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[RunningStandin]:
    async with run_standin(tmp_path / "comfy") as running:
        yield running


@pytest.fixture
async def sidecar(standin: RunningStandin) -> AsyncIterator[RunningSidecar]:
    settings = sidecar_settings(standin.url, standin.dirs)
    async with run_sidecar(settings) as running:
        yield running


@pytest.fixture
async def webhooks() -> AsyncIterator[WebhookReceiver]:
    async with run_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def empty_image_prompt(
    width: int = 32, height: int = 32, batch: int = 1, prefix: str = "test"
) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": batch, "color": 255},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


class TcpProxy:
    """A TCP relay in front of a server, to cut connections (a dropped websocket) or refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refuse = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                for _ in range(10_000_000):
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})

    def sever(self) -> None:
        """Close every open connection (both sides)."""
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

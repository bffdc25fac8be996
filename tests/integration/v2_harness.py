"""Helpers for the Comfy API v2 tests: sidecars in front of stand-ins, driven by the real comfy-sdk.

`replicas(tmp_path, n)` starts n (stand-in, sidecar) pairs on 127.0.0.1 whose sidecars know each other as
peers through a static PEERS list (names a, b, ...): the loopback version of n pods behind one Service.
The SDK reads its base URL and key from the environment only, so `sdk_env` sets COMFY_BASE_URL/COMFY_API_KEY.
"""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from comfyui_sidecar.app import create_app
from comfyui_sidecar.fetching import NoDownloads
from comfyui_sidecar.settings import Settings
from comfyui_standin.testing import RunningStandin, run_standin
from PIL import Image
from sidecar_harness import HOST, sidecar_settings, wait_until

NAMES = "abcdefgh"


@dataclass
class Replica:
    name: str
    url: str
    app: web.Application
    settings: Settings
    standin: RunningStandin
    runner: web.AppRunner


async def start_sidecar(
    settings: Settings, port: int, sock: socket.socket | None = None
) -> tuple[web.Application, web.AppRunner]:
    """A sidecar on `port`, or on an already bound `sock` (so no other process can take the port first)."""
    app = create_app(settings, fetcher=NoDownloads())
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, HOST, port)
    await site.start()
    return app, runner


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


async def wait_ready(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            async with session.get(f"{url}/ready") as response:
                return response.status == 200

        await wait_until(ready, timeout_s=15)


@contextlib.asynccontextmanager
async def replicas(
    base: Path, count: int = 2, *, exec_delay: float = 0.0, previews: bool = True, **overrides: Any
) -> AsyncIterator[list[Replica]]:
    """`count` sidecars (each with its own stand-in) that are each other's peers."""
    sockets = [bound_socket() for _ in range(count)]
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    peers = ",".join(f"{NAMES[i]}=http://{HOST}:{port}" for i, port in enumerate(ports))
    async with contextlib.AsyncExitStack() as stack:
        started: list[Replica] = []
        for index, port in enumerate(ports):
            standin = await stack.enter_async_context(
                run_standin(
                    base / f"comfy-{NAMES[index]}",
                    exec_delay=exec_delay,
                    preview_method="auto" if previews else "none",
                )
            )
            values: dict[str, Any] = {"peer_name": NAMES[index], "peers": peers, "port": port, **overrides}
            settings = sidecar_settings(standin.url, standin.dirs, **values)
            app, runner = await start_sidecar(settings, port, sockets[index])
            stack.push_async_callback(runner.cleanup)
            started.append(Replica(NAMES[index], f"http://{HOST}:{port}", app, settings, standin, runner))
        for replica in started:
            await wait_ready(replica.url)
        yield started


@contextlib.contextmanager
def sdk_env(monkeypatch: pytest.MonkeyPatch, base_url: str, api_key: str | None = None) -> Iterator[None]:
    monkeypatch.setenv("COMFY_BASE_URL", base_url)
    if api_key is None:
        monkeypatch.delenv("COMFY_API_KEY", raising=False)
    else:
        monkeypatch.setenv("COMFY_API_KEY", api_key)
    yield


async def until_running(job: Any, timeout_s: float = 10.0) -> None:
    """Poll an SDK job handle (refresh) until ComfyUI runs it."""

    async def running() -> bool:
        await job.refresh()
        return bool(job.status == "running")

    await wait_until(running, timeout_s=timeout_s, interval_s=0.05)


def empty_image(
    width: int = 32, height: int = 32, color: int = 0x336699, prefix: str = "v2"
) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def slow_image(seconds: float = 2.0, steps: int = 4, prefix: str = "slow") -> dict[str, Any]:
    """EmptyImage -> StandinSleep (progress per step, interruptible) -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0xFF0000},
        },
        "2": {
            "class_type": "StandinSleep",
            "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def invert(image: Any, prefix: str = "inv") -> dict[str, Any]:
    """LoadImage(image) -> ImageInvert -> SaveImage; `image` is a file name or an SDK asset handle."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def pixel(data: bytes, xy: tuple[int, int] = (0, 0)) -> Any:
    return Image.open(io.BytesIO(data)).convert("RGB").getpixel(xy)

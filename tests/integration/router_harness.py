"""Helpers for the router tests: routers in front of sidecars and stand-ins on 127.0.0.1.

`run_router(replicas)` starts a comfyui-router in this event loop that routes to the given replicas (static
REPLICAS list, names as the sidecars' PEER_NAME). `Relay` is a TCP relay that can be frozen: the replica
behind it then neither answers nor closes its connections, as a pod on a node that vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from comfyui_router.app import create_app
from comfyui_router.settings import RouterSettings
from comfyui_standin.models import safetensors_bytes
from comfyui_standin.testing import run_standin
from sidecar_harness import HOST, sidecar_settings, wait_until
from v2_harness import Replica, bound_socket, start_sidecar, wait_ready

MODELS = ("a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors")


@dataclass
class RunningRouter:
    url: str
    app: web.Application
    settings: RouterSettings
    runner: web.AppRunner


def replicas_setting(replicas: list[Replica] | Mapping[str, str]) -> str:
    pairs = replicas.items() if isinstance(replicas, Mapping) else [(r.name, r.url) for r in replicas]
    return ",".join(f"{name}={url}" for name, url in pairs)


@contextlib.asynccontextmanager
async def run_router(
    replicas: list[Replica] | Mapping[str, str],
    *,
    sock: socket.socket | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningRouter]:
    sock = sock or bound_socket()
    port = int(sock.getsockname()[1])
    values: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "replicas": replicas_setting(replicas),
        "peer_name": "router-1",
        "placement_interval_s": 0.2,
        "replica_lost_s": 1.5,
        "hold_timeout_s": 30.0,
        "event_heartbeat_s": 1.0,
        "peer_timeout_s": 3.0,
        **overrides,
    }
    settings = RouterSettings(**values)
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield RunningRouter(f"http://{HOST}:{port}", app, settings, runner)
    finally:
        await runner.cleanup()


def add_models(replicas: list[Replica], names: tuple[str, ...] = MODELS) -> None:
    """Checkpoint files every stand-in can load."""
    for replica in replicas:
        folder = replica.standin.dirs.models / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(safetensors_bytes())


async def placement_of(session: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    async with session.get(f"{replica.url}/internal/placement") as response:
        body: dict[str, Any] = await response.json()
        return body


async def until_loaded(replica: Replica, model: str, timeout_s: float = 10.0) -> None:
    async with aiohttp.ClientSession() as session:

        async def loaded() -> bool:
            report = await placement_of(session, replica)
            return any(model in comfy["loaded_models"] for comfy in report["comfyuis"])

        await wait_until(loaded, timeout_s=timeout_s, interval_s=0.05)


# ---- a relay that can be frozen ------------------------------------------------------------------------
class Relay:
    """127.0.0.1:<port> -> target. `freeze()`: bytes stop flowing both ways, no connection is closed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        self.frozen.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # hold the connection open, say nothing
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not self.frozen.is_set():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._tasks.add(current)  # type: ignore[arg-type]
        if self.frozen.is_set():
            await asyncio.Event().wait()
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
        tasks = [
            asyncio.ensure_future(self._pipe(reader, upstream_writer)),
            asyncio.ensure_future(self._pipe(upstream_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def late_replica(
    base: Path, name: str, sock: socket.socket, **overrides: Any
) -> AsyncIterator[Replica]:
    """A replica (stand-in and sidecar) started on a socket bound earlier, as a pod that starts after the
    router already knew where it would be (scale from zero)."""
    port = int(sock.getsockname()[1])
    async with run_standin(base / f"comfy-{name}") as standin:
        values: dict[str, Any] = {"peer_name": name, "peers": f"{name}=http://{HOST}:{port}", "port": port}
        settings = sidecar_settings(standin.url, standin.dirs, **{**values, **overrides})
        app, runner = await start_sidecar(settings, port, sock)
        try:
            replica = Replica(name, f"http://{HOST}:{port}", app, settings, standin, runner)
            add_models([replica])
            await wait_ready(replica.url)
            yield replica
        finally:
            await runner.cleanup()

"""Fixtures and a local file server for the cache tests.

Imported by the test modules (no conftest here, so tests/integration/conftest.py stays the only `conftest`
module). The server does Range, Content-Disposition, no-extension URLs, auth, cut connections, slow bodies,
redirects and chunked bodies, and counts every request per path."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from comfyui_sidecar.app import build_fetcher
from comfyui_sidecar.cache import CacheSettings, ModelCache
from comfyui_sidecar.model_paths import extra_model_paths_yaml, known_folders
from comfyui_standin.testing import run_standin
from PIL import Image
from sidecar_harness import RunningSidecar, run_sidecar, sidecar_settings


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    disposition: dict[str, str] = field(default_factory=dict)
    content_type: dict[str, str] = field(default_factory=dict)
    gets: collections.Counter[str] = field(default_factory=collections.Counter)
    heads: collections.Counter[str] = field(default_factory=collections.Counter)
    range_requests: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    cut_next: dict[str, int] = field(default_factory=dict)  # name -> number of requests still to cut
    slow_delay: float = 0.02
    stall_seconds: float = 2.0
    token: str = "s3cret"
    base: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def add(self, name: str, data: bytes, *, disposition: str | None = None, ctype: str | None = None) -> str:
        self.files[name] = data
        if disposition is not None:
            self.disposition[name] = disposition
        if ctype is not None:
            self.content_type[name] = ctype
        return hashlib.sha256(data).hexdigest()


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    if not header or not header.startswith("bytes="):
        return None
    start_s, _, end_s = header[6:].partition("-")
    start = int(start_s)
    end = int(end_s) if end_s else size - 1
    return start, min(end, size - 1)


def build_app(fs: FileServer) -> web.Application:
    async def serve(
        request: web.Request, *, slow: bool = False, cut: bool = False, stall: bool = False
    ) -> web.StreamResponse:
        name = request.match_info["name"]
        key = request.path
        if request.method == "HEAD":
            fs.heads[key] += 1
        else:
            fs.gets[key] += 1
        fs.auth_headers.append(request.headers.get("Authorization"))
        if name not in fs.files:
            raise web.HTTPNotFound()
        data = fs.files[name]
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.md5(data).hexdigest()}"'}
        headers["Content-Type"] = fs.content_type.get(name, "application/octet-stream")
        if name in fs.disposition:
            headers["Content-Disposition"] = fs.disposition[name]
        status = 200
        rng = _range(request.headers.get("Range"), len(data))
        body = data
        if rng is not None and request.method == "GET":
            fs.range_requests.append(request.headers["Range"])
            start, end = rng
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        if cut and fs.cut_next.get(name, 0) > 0:
            fs.cut_next[name] -= 1
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.abort()
            return resp
        if stall:
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(fs.stall_seconds)
            body = body[len(body) // 2 :]
        step = 64 * 1024 if slow else 1 << 20
        for i in range(0, len(body), step):
            await resp.write(body[i : i + step])
            if slow:
                await asyncio.sleep(fs.slow_delay)
        await resp.write_eof()
        return resp

    async def plain(request: web.Request) -> web.StreamResponse:
        return await serve(request)

    async def slow(request: web.Request) -> web.StreamResponse:
        return await serve(request, slow=True)

    async def stall(request: web.Request) -> web.StreamResponse:
        return await serve(request, stall=True)

    async def cut(request: web.Request) -> web.StreamResponse:
        return await serve(request, cut=True)

    async def auth(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {fs.token}":
            fs.gets[request.path] += 1
            raise web.HTTPUnauthorized()
        return await serve(request)

    async def chunked(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        fs.gets[request.path] += 1
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = fs.files[name]
        for i in range(0, len(data), 65536):
            await resp.write(data[i : i + 65536])
        await resp.write_eof()
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        fs.gets[request.path] += 1
        if "raw" in request.query:  # a Location header sent as is, even when malformed
            return web.Response(status=302, headers={"Location": request.query["to"]})
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_route("*", "/files/{name}", plain)
    app.router.add_route("*", "/noext/{name}", plain)
    app.router.add_route("*", "/slow/{name}", slow)
    app.router.add_route("*", "/cut/{name}", cut)
    app.router.add_route("*", "/stall/{name}", stall)
    app.router.add_route("*", "/auth/{name}", auth)
    app.router.add_get("/chunked/{name}", chunked)
    app.router.add_get("/redirect", redirect)
    return app


async def start_app(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{port}"


def disk_usage(root: Path) -> int:
    """Bytes of regular files under root (what the kubelet would count, roughly)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
    return total


@pytest.fixture
async def file_server() -> AsyncIterator[FileServer]:
    fs = FileServer()
    runner, base = await start_app(build_app(fs))
    fs.base = base
    yield fs
    await runner.cleanup()


CacheFactory = Callable[..., Awaitable[ModelCache]]


@pytest.fixture
async def make_cache(tmp_path: Path) -> AsyncIterator[CacheFactory]:
    """Build and start a ModelCache in tmp_path; loopback is allowed explicitly (the guard refuses it
    by default)."""
    caches: list[ModelCache] = []

    async def factory(**overrides: Any) -> ModelCache:
        values: dict[str, Any] = {
            "cache_dir": tmp_path / "cache",
            "download_allow_networks": ["127.0.0.1/32"],
            "download_backoff_seconds": 0.01,
            "download_attempts": 3,
            "cache_reserve_timeout_seconds": 0.2,
        }
        values.update(overrides)
        settings = CacheSettings(**values)
        cache = ModelCache(settings, input_dir=tmp_path / "input")
        await cache.start()
        caches.append(cache)
        return cache

    yield factory
    for cache in caches:
        await cache.close()


def png_bytes(size: tuple[int, int] = (4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def upscale_prompt(image_url: str, model_url: str, prefix: str = "up") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_url}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_url}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


@contextlib.asynccontextmanager
async def sidecar_with_cache(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningSidecar]:
    """The stand-in and a sidecar with the real cache wired in (app.build_fetcher); the stand-in reads the
    extra_model_paths.yaml the operator's ConfigMap (or the cache's own writer) gives ComfyUI at start."""
    cache_dir = tmp_path / "cache"
    paths_file = tmp_path / "extra_model_paths.yaml"
    paths_file.write_text(extra_model_paths_yaml(None, cache_dir / "models", known_folders()))
    async with run_standin(tmp_path / "comfy", extra_model_paths_configs=[paths_file]) as comfy:
        settings = sidecar_settings(
            comfy.url, comfy.dirs, cache_dir=cache_dir, extra_model_paths_file=paths_file, **overrides
        )
        async with run_sidecar(settings, fetcher=build_fetcher(settings)) as sidecar:
            yield sidecar

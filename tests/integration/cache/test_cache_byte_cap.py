"""The download byte cap stops reading at the cap: the connection is closed as soon as more than the cap has
come off the socket, not after the reader's buffer (MiBs) has been filled and consumed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.streams
import pytest
from aiohttp import web
from cache_fileserver import start_app
from comfyui_sidecar.cache import CacheSettings, ModelCache
from comfyui_sidecar.fetching import Fetch, FetchError

CAP = 4 << 20
ONE_SOCKET_READ = 256 << 10  # what asyncio takes off a socket at most per read


@pytest.fixture
async def endless() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length: the cap can only act while reading
        await response.prepare(request)
        chunk = os.urandom(64 << 10)
        try:
            for _ in range(10_000):
                await response.write(chunk)
        except (ConnectionError, OSError):
            pass
        return response

    app = web.Application()
    app.router.add_get("/model.bin", handle)
    runner, base = await start_app(app)
    yield f"{base}/model.bin"
    await runner.cleanup()


async def test_a_body_without_length_is_cut_at_the_cap(
    endless: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = [0]
    feed = aiohttp.streams.StreamReader.feed_data

    def counting(self: aiohttp.streams.StreamReader, data: bytes, *args: object) -> bool:
        taken[0] += len(data)  # bytes taken off the socket by the sidecar
        return feed(self, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(aiohttp.streams.StreamReader, "feed_data", counting)
    settings = CacheSettings(
        cache_dir=tmp_path / "cache",
        download_allow_networks=["127.0.0.1/32"],
        download_max_bytes=CAP,
        download_attempts=3,
    )
    cache = ModelCache(settings, input_dir=tmp_path / "input")
    await cache.start()
    item = Fetch(url=endless, node_id="1", input_name="ckpt_name", kind="model", folder="checkpoints")
    try:
        with pytest.raises(FetchError, match="exceeds the maximum download size of 4194304 bytes"):
            async with cache.pin([item], []):
                pass
        await asyncio.sleep(0.2)
    finally:
        await cache.close()
    assert CAP < taken[0] <= CAP + ONE_SOCKET_READ  # one attempt (not retried), stopped at the cap
    assert list(cache.tmp.iterdir()) == []

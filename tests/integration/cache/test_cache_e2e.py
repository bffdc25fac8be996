"""End to end: sidecar (with the cache wired in) -> stand-in ComfyUI, models and inputs from a file server.

The stand-in reads the extra_model_paths.yaml the cache writes, so it loads the downloaded model by the
rewritten name from <cache>/models/<folder>/.
"""

# ruff: noqa: F811  (pytest fixtures imported from cache_fileserver are redefined as arguments)

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cache_fileserver import (  # noqa: F401 (fixtures)
    FileServer,
    file_server,
    png_bytes,
    sidecar_with_cache,
    upscale_prompt,
)
from comfyui_sidecar.cache.naming import url_hash
from comfyui_sidecar.placement import Placement, held_models, workflow_models
from comfyui_standin.models import safetensors_bytes
from PIL import Image
from sidecar_harness import RunningSidecar


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningSidecar]:
    async with sidecar_with_cache(tmp_path, download_backoff_seconds=0.01) as sidecar:
        yield sidecar


async def test_standin_loads_the_downloaded_model_by_its_rewritten_name(
    stack: RunningSidecar, file_server: FileServer
) -> None:
    file_server.add("x3.safetensors", safetensors_bytes({"scale": "3"}))
    file_server.add("in.png", png_bytes(), ctype="image/png")
    model_url = file_server.url("/files/x3.safetensors")
    image_url = file_server.url("/files/in.png")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}/prompt", json={"prompt": upscale_prompt(image_url, model_url)}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200, body
    assert body["prompt"]["2"]["inputs"]["model_name"] == url_hash(model_url) + ".safetensors"
    out = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert out.size == (12, 12)  # the x3 model from the cache was really used
    # the placement state names the model as workflow_models names the URL (what the router compares)
    async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/internal/placement") as resp:
        state = Placement.model_validate(await resp.json())
    wanted = workflow_models(upscale_prompt(image_url, model_url))
    assert held_models(wanted, state.cached_models) == wanted
    assert held_models(wanted, state.comfyuis[0].loaded_models) == wanted


async def test_a_missing_model_url_names_the_node_like_comfyui_api(
    stack: RunningSidecar, file_server: FileServer
) -> None:
    file_server.add("in.png", png_bytes(), ctype="image/png")
    prompt = upscale_prompt(file_server.url("/files/in.png"), file_server.url("/files/gone.safetensors"))
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}/prompt", json={"prompt": prompt}) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400, body
    assert body["location"] == "prompt.2.inputs"
    assert body["error"].startswith("Failed to process model for node 2: Error downloading file: ")
    assert "Not Found" in body["error"]


async def test_sixteen_concurrent_prompts_with_one_new_url_cause_one_get(
    stack: RunningSidecar, file_server: FileServer
) -> None:
    file_server.add("x2.safetensors", safetensors_bytes({"scale": "2"}) + b"\0" * 300_000)
    file_server.add("in.png", png_bytes(), ctype="image/png")
    model_url = file_server.url("/slow/x2.safetensors")
    image_url = file_server.url("/files/in.png")

    async def one(http: aiohttp.ClientSession, i: int) -> int:
        prompt = upscale_prompt(image_url, model_url, prefix=f"p{i}")
        async with http.post(f"{stack.url}/prompt", json={"prompt": prompt}) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(one(http, i) for i in range(16)))
    assert statuses == [200] * 16
    assert file_server.gets["/slow/x2.safetensors"] == 1
    assert file_server.gets["/files/in.png"] == 1


async def test_download_route_wait_and_background(stack: RunningSidecar, file_server: FileServer) -> None:
    file_server.add("lora.safetensors", safetensors_bytes())
    url = file_server.url("/files/lora.safetensors")
    async with aiohttp.ClientSession() as http:
        payload = {"url": url, "model_type": "loras", "filename": "my-lora", "wait": True}
        async with http.post(f"{stack.url}/download", json=payload) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["status"] == "completed"
        assert body["filename"] == "my-lora.safetensors"
        assert body["size"] == len(safetensors_bytes())
        assert len(body["sha256"]) == 64
        link = stack.settings.cache_dir / "models" / "loras" / "my-lora.safetensors"
        assert link.is_symlink()

        file_server.add("bg.safetensors", safetensors_bytes())
        bg = {"url": file_server.url("/files/bg.safetensors"), "model_type": "checkpoints"}
        async with http.post(f"{stack.url}/download", json=bg) as resp:
            assert resp.status == 202
            assert (await resp.json())["status"] == "started"
        target = stack.settings.cache_dir / "models" / "checkpoints" / "bg.safetensors"
        for _ in range(200):
            if target.exists():
                break
            await asyncio.sleep(0.02)
        assert target.exists()
        async with http.get(f"{stack.url}/internal/placement") as resp:
            cached = (await resp.json())["cached_models"]
        assert cached == ["checkpoints/bg.safetensors", "loras/my-lora.safetensors"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"url": "http://127.0.0.1:1/a.pt", "model_type": "nope", "wait": True}, "unknown model_type"),
        ({"url": "ftp://h/a.pt", "model_type": "loras", "wait": True}, "No storage provider found"),
        ({"url": "not a url", "model_type": "loras", "wait": True}, "Invalid URL"),
        ({"url": "http://[::1/a.pt", "model_type": "loras", "wait": True}, "Invalid URL"),
        ({"model_type": "loras"}, "url"),
        ({"url": "http://169.254.169.254/x", "model_type": "loras", "wait": True}, "metadata"),
        ({"url": "http://169.254.169.254/x", "model_type": "loras", "wait": False}, "metadata"),
        ({"url": "http://h\ud800.example/a.pt", "model_type": "loras"}, "surrogate"),
        (
            {"url": "http://h.example:65536/a.pt", "model_type": "loras"},
            "port must be a number from 1 to 65535",
        ),
        ({"url": f"http://{'a' * 64}.example/a.pt", "model_type": "loras"}, "label is longer than 63"),
        ({"url": "ftp://h/a.pt", "model_type": "loras"}, "(supported schemes: http, https, s3)"),
    ],
)
async def test_download_route_errors_are_clear_400s(
    stack: RunningSidecar, payload: dict[str, Any], fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}/download", json=payload) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400
    assert fragment in body["error"]

"""The stand-in's simulated model-load cost (--model-load-delay) and its execution cache across prompts
(classic, and --cache-lru N), over real HTTP and websocket."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from comfyui_standin import testing
from comfyui_standin.testing import RunningStandin, run_standin, write_model
from standin_helpers import golden, post_prompt, until_done

DELAY = 0.6


def upscale(model: str, color: int = 0) -> dict[str, Any]:
    return testing.upscale(model, color=color, prefix="t/up")


async def run(
    session: aiohttp.ClientSession, comfy: RunningStandin, prompt: dict[str, Any]
) -> tuple[float, set[str], list[str]]:
    """(seconds, nodes ComfyUI ran, nodes served from its cache) of one prompt."""
    client_id = uuid.uuid4().hex
    async with session.ws_connect(f"{comfy.ws_url}?clientId={client_id}") as ws:
        await ws.receive()  # the first status
        started = time.monotonic()
        body = await post_prompt(session, comfy.url, prompt, client_id=client_id)
        messages = await until_done(ws, body["prompt_id"])
    seconds = time.monotonic() - started
    ran = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    cached = next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
    assert any(m["type"] == "execution_success" for m in messages), messages
    return seconds, ran, cached


def models(comfy: RunningStandin, *names: str) -> None:
    for name in names:
        write_model(comfy.dirs.models / "upscale_models" / name)


async def test_a_loader_that_runs_costs_the_delay_and_a_cached_one_does_not(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with run_standin(tmp_path, model_load_delay=DELAY) as comfy:
        models(comfy, "a-x2.safetensors", "b-x2.safetensors")
        seconds, ran, cached = await run(session, comfy, upscale("a-x2.safetensors"))
        assert "2" in ran
        assert seconds >= DELAY
        # the recording wf_heavy_upscale: the same loader again is listed in execution_cached and not run
        recorded = golden("wf_heavy_upscale.json")
        assert next(m["data"]["nodes"] for m in recorded["ws"] if m["type"] == "execution_cached") == ["2"]
        seconds, ran, cached = await run(session, comfy, upscale("a-x2.safetensors", color=9))
        assert cached == ["2"]
        assert "2" not in ran
        assert seconds < DELAY
        # the classic cache keeps only the latest prompt's nodes: b evicts a, so a loads again
        await run(session, comfy, upscale("b-x2.safetensors"))
        seconds, ran, _ = await run(session, comfy, upscale("a-x2.safetensors", color=3))
        assert "2" in ran
        assert seconds >= DELAY
        async with session.get(f"{comfy.url}/system_stats") as response:
            assert response.status == 200


async def test_cache_lru_keeps_models_of_earlier_prompts(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with run_standin(tmp_path, model_load_delay=DELAY, cache_lru=8) as comfy:
        models(comfy, "a-x2.safetensors", "b-x2.safetensors")
        await run(session, comfy, upscale("a-x2.safetensors"))
        await run(session, comfy, upscale("b-x2.safetensors"))
        seconds, ran, cached = await run(session, comfy, upscale("a-x2.safetensors", color=5))
        assert "2" in cached
        assert "2" not in ran
        assert seconds < DELAY


async def test_cache_lru_is_bounded(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Room for 4 node outputs (each prompt here has 4 new ones): as in ComfyUI's LRU cache, the outputs a new
    prompt reuses stay and the least recently used others go when it starts."""
    async with run_standin(tmp_path, cache_lru=4) as comfy:
        models(comfy, "a-x2.safetensors", "b-x2.safetensors", "c-x2.safetensors")
        await run(session, comfy, upscale("a-x2.safetensors", color=1))
        await run(session, comfy, upscale("b-x2.safetensors", color=2))
        _, ran, cached = await run(session, comfy, upscale("a-x2.safetensors", color=3))
        assert cached == ["2"]  # a was kept while the next prompt ran (4 + 4 outputs until then)
        await run(session, comfy, upscale("b-x2.safetensors", color=4))
        await run(session, comfy, upscale("c-x2.safetensors", color=5))
        _, ran, _ = await run(session, comfy, upscale("a-x2.safetensors", color=6))
        assert "2" in ran

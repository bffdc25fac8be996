"""Faults: ComfyUI killed mid-prompt, websocket dropped mid-prompt, prompt timeout (contract 3.2, #186)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from comfyui_sidecar.app import COMFY_KEY
from comfyui_standin.testing import StandinProcess, run_standin
from sidecar_harness import TcpProxy, empty_image_prompt, run_sidecar, sidecar_settings, wait_until


def slow_prompt(seconds: float, steps: int = 10) -> dict[str, object]:
    prompt = empty_image_prompt()
    prompt["3"] = {
        "class_type": "StandinSleep",
        "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps},
    }
    prompt["2"]["inputs"]["images"] = ["3", 0]
    return prompt


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_comfyui_killed_mid_prompt_gives_502_then_recovers(tmp_path: Path) -> None:
    async with StandinProcess(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        settings = sidecar_settings(comfy.url, comfy.dirs, comfyui_lost_timeout_s=2.0, prompt_timeout_s=30)
        async with run_sidecar(settings) as sc:
            task = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(10)}))
            await asyncio.sleep(0.7)
            comfy.kill()
            started = time.monotonic()
            response = await asyncio.wait_for(task, 10)
            body = await response.json()
            assert response.status == 502
            assert time.monotonic() - started < 6
            assert "ComfyUI" in body["message"]
            await wait_until(lambda: status_of(http, f"{sc.url}/ready"), timeout_s=1)  # answers at all
            assert await status_of(http, f"{sc.url}/ready") == 503
            assert await status_of(http, f"{sc.url}/health") == 200
            async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as down:
                assert down.status == 502
            await comfy.start()
            await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=15)
            async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as again:
                assert again.status == 200
                assert len((await again.json())["images"]) == 1


async def test_comfyui_restarted_quickly_fails_the_lost_prompt_at_once(tmp_path: Path) -> None:
    async with StandinProcess(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        settings = sidecar_settings(comfy.url, comfy.dirs, comfyui_lost_timeout_s=30.0, prompt_timeout_s=60)
        async with run_sidecar(settings) as sc:
            task = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(10)}))
            await asyncio.sleep(0.7)
            comfy.kill()
            await comfy.stop()
            await comfy.start()
            response = await asyncio.wait_for(task, 15)
            assert response.status == 502
            assert "lost the prompt" in (await response.json())["message"]


async def test_websocket_dropped_mid_prompt_still_completes(tmp_path: Path) -> None:
    async with run_standin(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        proxy = TcpProxy(comfy.port)
        await proxy.start()
        try:
            async with run_sidecar(sidecar_settings(proxy.url, comfy.dirs)) as sc:
                task = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(1.0)}))
                await asyncio.sleep(0.3)
                proxy.sever()
                response = await asyncio.wait_for(task, 15)
                assert response.status == 200
                assert len((await response.json())["images"]) == 1
        finally:
            await proxy.close()


async def test_completion_missed_while_disconnected_is_found_in_history(tmp_path: Path) -> None:
    async with run_standin(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        proxy = TcpProxy(comfy.port)
        await proxy.start()
        try:
            async with run_sidecar(sidecar_settings(proxy.url, comfy.dirs, comfyui_lost_timeout_s=10)) as sc:
                task = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(0.5)}))
                await asyncio.sleep(0.2)
                proxy.refuse = True
                proxy.sever()
                await asyncio.sleep(1.5)  # the prompt finishes while the sidecar cannot see ComfyUI
                assert not task.done()
                proxy.refuse = False
                response = await asyncio.wait_for(task, 15)
                assert response.status == 200
                assert len((await response.json())["images"]) == 1
                assert sc.app[COMFY_KEY].members[0].up
        finally:
            await proxy.close()


async def test_prompt_timeout_gives_504_and_interrupts(tmp_path: Path) -> None:
    async with run_standin(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        settings = sidecar_settings(comfy.url, comfy.dirs, prompt_timeout_s=0.8, history_poll_interval_s=0.2)
        async with run_sidecar(settings) as sc:
            started = time.monotonic()
            async with http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(20, 200)}) as response:
                assert response.status == 504
                assert "PROMPT_TIMEOUT_S" in (await response.json())["message"]
            assert time.monotonic() - started < 3
            async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as after:
                assert after.status == 200  # the timed-out prompt was interrupted, the queue moves on


async def _is(http: aiohttp.ClientSession, url: str, code: int) -> bool:
    try:
        return await status_of(http, url) == code
    except aiohttp.ClientError:
        return False

"""What the pod's probes and preStop hook rely on (docs/operator.md, "Pod lifecycle"): /health/comfyui for the
ComfyUI container's probes, GET /drain for its preStop hook, start-up downloads that do not block /health."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from comfyui_sidecar.fetching import NoDownloads
from comfyui_standin.testing import RunningStandin, StandinDirs, free_port
from sidecar_harness import empty_image_prompt, run_sidecar, sidecar_settings, wait_until
from test_sidecar_lifecycle import slow_prompt


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_health_comfyui_follows_comfyui(standin: RunningStandin, http: aiohttp.ClientSession) -> None:
    async with (
        run_sidecar(sidecar_settings(standin.url, standin.dirs)) as sc,
        http.get(f"{sc.url}/health/comfyui") as response,
    ):
        assert response.status == 200
        assert (await response.json())["comfyui"] == "up"


async def test_health_comfyui_is_503_while_health_stays_200_without_comfyui(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    base = tmp_path / "comfy"
    dirs = StandinDirs(base, base / "input", base / "output", base / "temp", base / "models")
    for directory in (dirs.input, dirs.output, dirs.temp, dirs.models):
        directory.mkdir(parents=True)
    settings = sidecar_settings(nowhere, dirs, comfyui_probe_timeout_s=0.5)
    async with run_sidecar(settings, wait_ready=False) as sc:
        assert await _status(http, f"{sc.url}/health") == 200
        async with http.get(f"{sc.url}/health/comfyui") as response:
            assert response.status == 503
            assert (await response.json())["comfyui"] == "down"


async def test_drain_takes_prompts_during_the_delay_then_waits_for_them(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    settings = sidecar_settings(standin.url, standin.dirs, drain_delay_s=1.0, shutdown_grace_period_s=20)
    async with run_sidecar(settings) as sc:
        running = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(2.0)}))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        drain = asyncio.create_task(http.get(f"{sc.url}/drain"))
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 503), timeout_s=2)
        # The Service may still send a prompt here for a moment: it is served, not refused.
        async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as late:
            assert late.status == 200, await late.text()
        async with await drain as response:
            assert response.status == 200
            assert (await response.json())["drained"] is True
        assert time.monotonic() - started >= 1.0
        async with await running as first:
            assert first.status == 200  # finished before /drain returned
        assert running.done()


async def test_sigterm_drain_refuses_new_prompts(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    from comfyui_sidecar.app import drain

    async with run_sidecar(sidecar_settings(standin.url, standin.dirs)) as sc:
        await drain(sc.app, 1.0)
        async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as response:
            assert response.status == 503


class SlowPreload(NoDownloads):
    """A fetcher whose start-up downloads finish when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def preload(self) -> None:
        self.started.set()
        await self.release.wait()


async def test_start_up_downloads_hold_ready_but_not_health(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    fetcher = SlowPreload()
    settings = sidecar_settings(standin.url, standin.dirs)
    async with run_sidecar(settings, fetcher=fetcher, wait_ready=False) as sc:
        await asyncio.wait_for(fetcher.started.wait(), 5)
        await asyncio.sleep(0.5)  # ComfyUI is up and warm by now; only the downloads are missing
        assert await _status(http, f"{sc.url}/health") == 200
        assert await _status(http, f"{sc.url}/ready") == 503
        fetcher.release.set()
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=5)


async def _is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    return await _status(http, url) == status

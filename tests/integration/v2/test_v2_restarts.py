"""ComfyUI (not the sidecar) dies under a running v2 job: the job ends `failed`, never `expired` or 404, and
the pod takes new jobs once ComfyUI is back."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from comfyui_standin.testing import StandinProcess
from sidecar_harness import run_sidecar, sidecar_settings, wait_until
from v2_harness import empty_image, slow_image

API = "/api/v2"


async def test_comfyui_dying_under_a_job_fails_it_honestly(tmp_path: Path) -> None:
    async with StandinProcess(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        settings = sidecar_settings(comfy.url, comfy.dirs, comfyui_lost_timeout_s=2.0)
        async with run_sidecar(settings) as sc:
            async with http.post(f"{sc.url}{API}/jobs", json={"workflow": slow_image(20, 40)}) as response:
                job = await response.json()
            url = f"{sc.url}{job['urls']['self']}"

            async def status() -> str:
                async with http.get(url) as response:
                    assert response.status == 200
                    body = await response.json()
                    return str(body["status"])

            await wait_until(lambda: _is(status(), "running"), timeout_s=10)
            comfy.kill()
            await wait_until(lambda: _is(status(), "failed"), timeout_s=15)
            async with http.get(url) as response:
                body = await response.json()
            assert body["error"]["code"] == "comfyui_unavailable"
            assert body["completed_at"] is not None
            await comfy.stop()
            await comfy.start()

            async def ready() -> bool:
                async with http.get(f"{sc.url}/ready") as response:
                    return response.status == 200

            await wait_until(ready, timeout_s=20)
            async with http.post(f"{sc.url}{API}/jobs", json={"workflow": empty_image()}) as response:
                assert response.status == 201
                again = await response.json()
            await wait_until(
                lambda: _is(_status_at(http, f"{sc.url}{again['urls']['self']}"), "succeeded"), timeout_s=10
            )


async def _is(pending: object, wanted: str) -> bool:
    return await pending == wanted  # type: ignore[misc]


async def _status_at(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return str((await response.json())["status"])

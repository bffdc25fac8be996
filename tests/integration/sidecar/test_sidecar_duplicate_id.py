"""A second prompt with the id of one still in flight is refused (409); the id is free again afterwards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from comfyui_sidecar.app import SERVICE_KEY
from comfyui_standin.testing import run_standin
from sidecar_harness import (
    RunningSidecar,
    WebhookReceiver,
    empty_image_prompt,
    run_sidecar,
    sidecar_settings,
    wait_until,
)


def slow_prompt(seconds: float, steps: int = 10) -> dict[str, object]:
    prompt = empty_image_prompt()
    prompt["3"] = {
        "class_type": "StandinSleep",
        "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps},
    }
    prompt["2"]["inputs"]["images"] = ["3", 0]
    return prompt


async def test_duplicate_id_in_flight_is_refused_and_released_on_every_exit(
    tmp_path: Path, webhooks: WebhookReceiver
) -> None:
    async with run_standin(tmp_path / "comfy") as comfy, aiohttp.ClientSession() as http:
        settings = sidecar_settings(comfy.url, comfy.dirs, prompt_timeout_s=0.8, history_poll_interval_s=0.2)
        async with run_sidecar(settings) as sc:
            service = sc.app[SERVICE_KEY]
            first = asyncio.create_task(
                http.post(f"{sc.url}/prompt", json={"id": "dup", "prompt": slow_prompt(20, 200)})
            )
            await wait_until(lambda: "dup" in service.running, timeout_s=5)
            async with http.post(
                f"{sc.url}/prompt", json={"id": "dup", "prompt": empty_image_prompt()}
            ) as second:
                assert second.status == 409
                assert await second.json() == {
                    "error": "a prompt with id dup is already running",
                    "location": "id",
                }
            response = await asyncio.wait_for(first, 10)
            assert response.status == 504  # timeout path
            response.release()
            assert service.running == set()
            # success path
            async with http.post(
                f"{sc.url}/prompt", json={"id": "dup", "prompt": empty_image_prompt()}
            ) as ok:
                assert ok.status == 200
            assert service.running == set()
            # async (webhook) path: refused while running, released when it finished
            body = {"id": "dup", "prompt": slow_prompt(0.3, 3), "webhook_v2": webhooks.url}
            async with http.post(f"{sc.url}/prompt", json=body) as accepted:
                assert accepted.status == 202
            async with http.post(f"{sc.url}/prompt", json=body) as again:
                assert again.status == 409
            await webhooks.wait_for(1)
            await wait_until(lambda: service.running == set(), timeout_s=5)
            # client disconnect mid-prompt
            started = time.monotonic()
            with_timeout = aiohttp.ClientTimeout(total=0.3)
            try:
                async with http.post(
                    f"{sc.url}/prompt",
                    json={"id": "dup", "prompt": slow_prompt(20, 200)},
                    timeout=with_timeout,
                ):
                    pass
            except TimeoutError:
                pass
            await wait_until(lambda: service.running == set(), timeout_s=5)
            assert time.monotonic() - started < 5


async def test_a_finished_prompt_re_sent_with_its_id_gets_a_clear_409(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    request = {"prompt": empty_image_prompt(), "id": "done-once"}
    async with http.post(f"{sidecar.url}/prompt", json=request) as response:
        assert response.status == 200
    async with http.post(f"{sidecar.url}/prompt", json=request) as response:
        body = await response.json()
        assert response.status == 409, body
    assert body["location"] == "id"
    assert body["error"].startswith(
        "a prompt with id done-once already finished and its outputs were delivered"
    )
    assert "send it with a new id" in body["error"]
    changed = {"prompt": empty_image_prompt(width=16), "id": "done-once"}  # not in ComfyUI's cache: runs
    async with http.post(f"{sidecar.url}/prompt", json=changed) as response:
        assert response.status == 200
    async with http.post(f"{sidecar.url}/prompt", json={**request, "id": "fresh"}) as response:
        assert response.status == 200

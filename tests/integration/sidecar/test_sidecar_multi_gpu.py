"""One sidecar in front of two ComfyUIs (two stand-ins sharing models, input and output directories, each with
its own temp directory: the operator's per-GPU pod), over real HTTP: dispatch by loaded models, then by queue,
dead and draining ComfyUIs skipped, both APIs through the one pool, GET /internal/placement."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfyui_sidecar.app import COMFY_KEY
from comfyui_sidecar.comfy_pool import ComfyPool
from comfyui_sidecar.logs import JobIdFilter
from comfyui_sidecar.placement import Placement
from comfyui_standin import testing
from comfyui_standin.testing import RunningStandin, run_standin, write_model
from sidecar_harness import RunningSidecar, run_sidecar, sidecar_settings, wait_until

LOAD_S = 0.4
MODELS = ("a-x2.safetensors", "b-x2.safetensors")


@dataclass
class Pod:
    comfyuis: list[RunningStandin]
    sidecar: RunningSidecar
    stack: contextlib.AsyncExitStack

    async def stop_comfyui(self, index: int) -> None:
        """Stop one stand-in (its server closes; the sidecar's websocket to it drops)."""
        await self._stacks[index].aclose()

    _stacks: list[contextlib.AsyncExitStack]


@contextlib.asynccontextmanager
async def pod(tmp_path: Path, **settings: Any) -> AsyncIterator[Pod]:
    base = tmp_path / "pod"
    for name in MODELS:
        write_model(base / "models" / "upscale_models" / name)
    async with contextlib.AsyncExitStack() as stack:
        comfyuis, stacks = [], []
        for index in range(2):
            own = contextlib.AsyncExitStack()
            await stack.enter_async_context(own)
            comfyuis.append(
                await own.enter_async_context(
                    run_standin(base, model_load_delay=LOAD_S, temp_directory=tmp_path / f"t{index}")
                )
            )
            stacks.append(own)
        dirs = comfyuis[0].dirs
        values = {
            "comfyui_urls": ",".join(c.url for c in comfyuis),
            "comfyui_temp_dirs": ",".join(str(c.dirs.temp) for c in comfyuis),
            "pod_name": "pod-0",
            **settings,
        }
        sidecar = await stack.enter_async_context(
            run_sidecar(sidecar_settings(comfyuis[0].url, dirs, **values))
        )
        yield Pod(comfyuis, sidecar, stack, stacks)


def pool(p: Pod) -> ComfyPool:
    return p.sidecar.app[COMFY_KEY]


def upscale(model: str, prefix: str, seconds: float = 0.0) -> dict[str, Any]:
    return testing.upscale(model, color=7, prefix=prefix, sleep_s=seconds, sleep_steps=1)


async def post(
    http: aiohttp.ClientSession, pod: Pod, request_id: str, prompt: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{pod.sidecar.url}/prompt", json={"id": request_id, "prompt": prompt}) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


async def ran_on(http: aiohttp.ClientSession, comfy: RunningStandin) -> set[str]:
    """Request ids of the prompts this ComfyUI ran (its history; the sidecar prefixes outputs with the id)."""
    async with http.get(f"{comfy.url}/history") as response:
        history = await response.json()
    ids = set()
    for entry in history.values():
        for node in entry["prompt"][2].values():
            prefix = node["inputs"].get("filename_prefix")
            if isinstance(prefix, str):
                ids.add(prefix.split("_", 1)[0])
    return ids


async def placement(http: aiohttp.ClientSession, pod: Pod) -> Placement:
    async with http.get(f"{pod.sidecar.url}/internal/placement") as response:
        assert response.status == 200
        return Placement.model_validate(await response.json())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_prompts_go_where_their_model_is_loaded(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with pod(tmp_path) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))  # both empty: ComfyUI 0
        await post(http, p, "b1", upscale(MODELS[1], "x"))  # neither holds b: the one holding nothing
        state = await placement(http, p)
        assert [c.loaded_models for c in state.comfyuis] == [
            [f"upscale_models/{MODELS[0]}"],
            [f"upscale_models/{MODELS[1]}"],
        ]
        for round_ in range(2, 4):
            await post(http, p, f"b{round_}", upscale(MODELS[1], "x"))
            await post(http, p, f"a{round_}", upscale(MODELS[0], "x"))
        assert await ran_on(http, p.comfyuis[0]) == {"a1", "a2", "a3"}
        assert await ran_on(http, p.comfyuis[1]) == {"b1", "b2", "b3"}
        async with http.get(f"{p.sidecar.url}/metrics") as response:
            text = await response.text()
        assert 'comfyui_api_model_loads_total{loader="UpscaleModelLoader"} 2.0' in text


@pytest.mark.parametrize(
    ("slack", "on_first", "on_second"),
    [(0, {"a1", "a2"}, {"a3"}), (2, {"a1", "a2", "a3"}, set())],
    ids=["beyond-the-slack-the-idle-one-wins", "within-the-slack-the-model-wins"],
)
async def test_a_busy_comfyui_holding_the_model_against_an_idle_one(
    tmp_path: Path, http: aiohttp.ClientSession, slack: int, on_first: set[str], on_second: set[str]
) -> None:
    async with pod(tmp_path, dispatch_queue_slack=slack) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))
        slow = asyncio.create_task(post(http, p, "a2", upscale(MODELS[0], "x", seconds=1.5)))
        await wait_until(lambda: pool(p).members[0].queued, timeout_s=5)
        await post(http, p, "a3", upscale(MODELS[0], "x"))  # ComfyUI 0 holds the model and is busy
        await slow
        assert await ran_on(http, p.comfyuis[0]) == on_first
        assert await ran_on(http, p.comfyuis[1]) == on_second


async def test_a_dead_comfyui_is_skipped(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with pod(tmp_path) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))
        await post(http, p, "b1", upscale(MODELS[1], "x"))
        await p.stop_comfyui(1)
        await wait_until(lambda: not pool(p).members[1].up, timeout_s=10)
        state = await placement(http, p)
        assert [c.up for c in state.comfyuis] == [True, False]
        assert state.comfyuis[1].loaded_models == []  # a lost connection forgets what it held
        assert state.ready  # one GPU still serves
        body = await post(http, p, "b2", upscale(MODELS[1], "x"))
        assert len(body["images"]) == 1
        assert await ran_on(http, p.comfyuis[0]) == {"a1", "b2"}
        async with http.get(f"{p.sidecar.url}/health/comfyui/1") as response:
            assert response.status == 503
        async with http.get(f"{p.sidecar.url}/health/comfyui/0") as response:
            assert (response.status, (await response.json())["comfyui"]) == (200, "up")
        async with http.get(f"{p.sidecar.url}/health/comfyui") as response:
            assert response.status == 503, "the pod-wide probe wants every ComfyUI"
        async with http.get(f"{p.sidecar.url}/health/comfyui/2") as response:
            assert response.status == 404
            assert (await response.json())["location"] == "index"


async def test_a_draining_comfyui_gets_no_new_prompts_and_waits_for_its_own(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with pod(tmp_path, drain_delay_s=0.2) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))
        slow = asyncio.create_task(post(http, p, "a2", upscale(MODELS[0], "x", seconds=1.0)))
        await wait_until(lambda: pool(p).members[0].queued, timeout_s=5)
        async with http.get(f"{p.sidecar.url}/drain/0") as response:  # its container's preStop hook
            assert (await response.json())["drained"] is True
        assert slow.done(), "the drain returned before the prompt dispatched to it ended"
        assert (await placement(http, p)).ready, "the other ComfyUI keeps the pod in the Service"
        await post(http, p, "a3", upscale(MODELS[0], "x"))
        assert await ran_on(http, p.comfyuis[1]) == {"a3"}


async def test_v2_jobs_and_previews_use_the_same_dispatch(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with pod(tmp_path) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))
        await post(http, p, "b1", upscale(MODELS[1], "x"))
        workflow = upscale(MODELS[1], "v2")
        workflow["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
        async with http.post(f"{p.sidecar.url}/api/v2/jobs", json={"workflow": workflow}) as response:
            assert response.status == 201, await response.text()
            job = await response.json()

        async def finished() -> bool:
            async with http.get(f"{p.sidecar.url}/api/v2/jobs/{job['id']}") as response:
                job.update(await response.json())
            return bool(job["status"] in ("succeeded", "failed"))

        await wait_until(finished, timeout_s=20)
        assert job["status"] == "succeeded", job
        assert [o["type"] for o in job["outputs"]] == ["image", "image"]
        for output in job["outputs"]:  # the preview is read from ComfyUI 1's own temp directory
            async with http.get(output["url"]) as response:
                assert response.status == 200
        assert (await placement(http, p)).comfyuis[1].queue_depth == 0
        async with http.get(f"{p.comfyuis[1].url}/history") as response:
            assert len(await response.json()) == 2  # b1 and the job


async def test_comfyui_api_previews_come_from_their_comfyui_temp_dir(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with pod(tmp_path) as p:
        await post(http, p, "a1", upscale(MODELS[0], "x"))
        prompt = upscale(MODELS[1], "x")
        prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
        body = await post(http, p, "b1", prompt)
        assert len(body["images"]) == 2
        assert await ran_on(http, p.comfyuis[1]) == {"b1"}
        assert list(p.comfyuis[1].dirs.temp.iterdir()) == [], "delivered previews are deleted"


async def test_placement_is_protected_by_the_api_token_and_logs_carry_the_job_id(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(JobIdFilter())
    with caplog.at_level(logging.INFO, logger="comfyui_sidecar"):
        async with pod(tmp_path, api_token="s3cret") as p:
            async with http.get(f"{p.sidecar.url}/internal/placement") as response:
                assert response.status == 401
            headers = {"Authorization": "Bearer s3cret"}
            async with http.get(f"{p.sidecar.url}/internal/placement", headers=headers) as response:
                state = Placement.model_validate(await response.json())
            assert (state.pod, state.version, len(state.comfyuis)) == ("pod-0", 1, 2)
            await post(http, p, "job7", upscale(MODELS[0], "x"))
    dispatched = [r for r in caplog.records if "goes to ComfyUI" in r.getMessage()]
    assert [getattr(r, "job_id", None) for r in dispatched] == ["job7"]


async def test_a_warmup_failing_on_one_comfyui_fails_only_its_probe(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """ComfyUI 1 sees other model directories (a broken GPU node's view, say): the warmup's model is missing
    there. Its probe fails, so the kubelet restarts that container; the pod stays healthy and serves."""
    base = tmp_path / "pod"
    write_model(base / "models" / "upscale_models" / MODELS[0])
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(upscale(MODELS[0], "warmup")))
    async with (
        run_standin(base, temp_directory=tmp_path / "t0") as first,
        run_standin(
            tmp_path / "elsewhere",
            input_directory=first.dirs.input,
            output_directory=first.dirs.output,
            temp_directory=tmp_path / "t1",
        ) as second,
    ):
        values = {
            "comfyui_urls": f"{first.url},{second.url}",
            "comfyui_temp_dirs": f"{first.dirs.temp},{second.dirs.temp}",
            "warmup_prompt_file": warmup,
        }
        async with run_sidecar(sidecar_settings(first.url, first.dirs, **values)) as sidecar:
            members = sidecar.app[COMFY_KEY].members
            await wait_until(lambda: members[1].warmup_failed, timeout_s=20)
            statuses = {}
            for path in ("/health", "/ready", "/health/comfyui/0", "/health/comfyui/1"):
                async with http.get(f"{sidecar.url}{path}") as response:
                    statuses[path] = response.status
            assert statuses == {
                "/health": 200,
                "/ready": 200,
                "/health/comfyui/0": 200,
                "/health/comfyui/1": 503,
            }
            body = {"id": "after", "prompt": upscale(MODELS[0], "x")}
            async with http.post(f"{sidecar.url}/prompt", json=body) as response:
                assert response.status == 200, await response.text()
            assert members[0].warm
            assert not members[1].warm

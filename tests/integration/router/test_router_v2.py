"""Comfy API v2 through the router, driven by the real comfy-sdk: jobs, polling, event streams, cancel and
downloads by id; jobs held while no replica is ready (scale to zero) and run once one is, across a router
restart and across two routers; the bound on held jobs; a sync comfyui-api prompt waiting for a replica."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from comfy_sdk import AsyncComfy, StatusChange
from comfyui_sidecar.logs import make_handler
from comfyui_sidecar.v2 import ids
from comfyui_standin.testing import txt2img
from router_harness import add_models, late_replica, run_router
from sidecar_harness import wait_until
from v2_harness import Replica, bound_socket, pixel, replicas, sdk_env, slow_image, until_running

pytestmark = pytest.mark.timeout(120)
API = "/api/v2"
KEY = b"comfyui-sidecar"  # the fixed ID_KEY of sidecars and routers without one


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    async with replicas(tmp_path, 2) as started:
        add_models(started)
        yield started


def sdk(monkeypatch: pytest.MonkeyPatch, url: str) -> AsyncComfy:
    with sdk_env(monkeypatch, url):
        return AsyncComfy()


async def test_v2_jobs_poll_stream_cancel_and_download_through_the_router(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_router(pair) as router:
        client = sdk(monkeypatch, router.url)
        try:
            job = await client.submit(client.workflows.from_json(slow_image(seconds=0.6, steps=3)))
            assert ids.decode(KEY, job.id).owner in {"a", "b"}  # the replica's own id, passed through
            statuses = [e.status async for e in job.events() if isinstance(e, StatusChange)]
            assert statuses[-1] == "succeeded"
            await job.result()
            (output,) = job.get_outputs("3")
            assert pixel(await output.to_bytes()) == (255, 0, 0)
            assert await output.to_bytes(range=(1, 3)) == b"PNG"
            assert (await job.get_workflow()).graph["2"]["class_type"] == "StandinSleep"

            doomed = await client.submit(client.workflows.from_json(slow_image(seconds=20, steps=40)))
            await until_running(doomed)
            await doomed.cancel()
            await wait_until(_terminal(doomed), timeout_s=10)
            assert doomed.status == "canceled"
            listed = [item.id async for item in client.list_jobs()]
            assert {job.id, doomed.id} <= set(listed)
        finally:
            await client.aclose()


def _terminal(job: object) -> object:
    async def check() -> bool:
        await job.refresh()  # type: ignore[attr-defined]
        return job.status in ("succeeded", "failed", "canceled", "expired")  # type: ignore[attr-defined]

    return check


async def test_a_v2_job_goes_to_the_replica_holding_its_model(pair: list[Replica]) -> None:
    async with run_router(pair) as router, aiohttp.ClientSession() as session:
        owners = []
        for seed in range(4):
            body = {"workflow": txt2img("b.safetensors", seed)}
            async with session.post(f"{router.url}{API}/jobs", json=body) as response:
                assert response.status == 201
                owners.append(ids.decode(KEY, (await response.json())["id"]).owner)
            await asyncio.sleep(0.5)  # a poll between jobs: the router learns where b is loaded
        assert len(set(owners)) == 1


async def test_a_job_held_at_zero_runs_when_a_replica_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    async with run_router({"a": f"http://127.0.0.1:{port}"}) as router, aiohttp.ClientSession() as session:
        client = sdk(monkeypatch, router.url)
        try:
            held = await client.submit(
                client.workflows.from_json(txt2img("a.safetensors", 3)), metadata={"t": "1"}
            )
            assert held.status == "queued"
            assert ids.decode(KEY, held.id).owner == "router-1"  # minted by the router
            async with session.get(f"{router.url}{API}/jobs/{held.id}") as response:
                body = await response.json()
            assert body["queue_position"] == 1
            assert body["metadata"] == {"t": "1"}
            async with session.get(f"{router.url}/activity") as response:
                assert (await response.json())["held"] == 1
            events = asyncio.ensure_future(_statuses(held))
            async with late_replica(tmp_path, "a", sock):
                await held.result()
                assert held.status == "succeeded"
                (output,) = held.get_outputs("6")
                assert (await output.to_bytes())[1:4] == b"PNG"
                assert (await held.get_workflow()).graph["1"]["class_type"] == "CheckpointLoaderSimple"
                assert "succeeded" in await asyncio.wait_for(events, timeout=20)
                async with session.get(f"{router.url}{API}/jobs/{held.id}") as response:
                    body = await response.json()
                assert body["id"] == held.id  # the replica's answer, under the held id
                assert body["metadata"] == {"t": "1"}  # the router's own label is not shown
        finally:
            await client.aclose()


async def _statuses(job: object) -> list[str]:
    return [e.status async for e in job.events() if isinstance(e, StatusChange)]  # type: ignore[attr-defined]


async def test_held_jobs_are_bounded_with_retry_after(tmp_path: Path) -> None:
    sock = bound_socket()
    nowhere = {"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    async with run_router(nowhere, max_held_jobs=2) as router, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(
                f"{router.url}{API}/jobs", json={"workflow": txt2img("a.safetensors")}
            ) as r:
                assert r.status == 201
        async with session.post(f"{router.url}{API}/jobs", json={"workflow": txt2img("a.safetensors")}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "5"
            assert (await r.json())["error"]["code"] == "queue_full"
        async with session.post(f"{router.url}/prompt", json={"prompt": txt2img("a.safetensors")}) as r:
            assert r.status == 429  # a sync prompt would wait: it counts against the same bound
            assert r.headers["Retry-After"] == "5"
        held = await (await session.get(f"{router.url}{API}/jobs")).json()
        canceled_id = held["jobs"][0]["id"]
        async with session.post(f"{router.url}{API}/jobs/{canceled_id}/cancel") as r:
            assert (await r.json())["status"] == "canceled"
        async with session.post(f"{router.url}{API}/jobs", json={"workflow": txt2img("a.safetensors")}) as r:
            assert r.status == 201  # a canceled job no longer counts


async def test_held_jobs_survive_a_router_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = bound_socket()
    nowhere = {"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    hold = tmp_path / "held"
    router_sock = bound_socket()
    async with run_router(nowhere, hold_dir=hold, sock=router_sock) as router:
        client = sdk(monkeypatch, router.url)
        held = await client.submit(client.workflows.from_json(txt2img("c.safetensors", 5)))
        await client.aclose()
        url = router.url
    again = bound_socket_at(int(url.rsplit(":", 1)[1]))
    async with run_router(nowhere, hold_dir=hold, sock=again) as router:
        client = sdk(monkeypatch, router.url)
        try:
            job = await client.jobs.get(held.id)
            assert job.status == "queued"
            async with late_replica(tmp_path, "a", sock):
                await job.result()
            assert job.status == "succeeded"
        finally:
            await client.aclose()


def bound_socket_at(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def test_two_routers_share_held_jobs_and_the_other_dispatches_when_one_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = bound_socket()
    nowhere = {"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    first, second = bound_socket(), bound_socket()
    peers = ",".join(
        f"router-{i}=http://127.0.0.1:{s.getsockname()[1]}" for i, s in ((1, first), (2, second))
    )
    async with run_router(nowhere, sock=second, peer_name="router-2", peers=peers) as other:
        async with run_router(nowhere, sock=first, peer_name="router-1", peers=peers) as one:
            client = sdk(monkeypatch, one.url)
            held = await client.submit(client.workflows.from_json(txt2img("d.safetensors", 9)))
            await client.aclose()
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{other.url}{API}/jobs/{held.id}") as response:
                    assert (await response.json())["status"] == "queued"  # the copy on the other router
                async with session.get(f"{other.url}/activity") as response:
                    report = await response.json()
                assert (report["held"], report["routers"]) == (1, 2)  # counted once over both routers
        # router-1, which minted the id, is gone: router-2 dispatches it
        client = sdk(monkeypatch, other.url)
        try:
            async with late_replica(tmp_path, "a", sock):
                job = await client.jobs.get(held.id)
                await job.wait()
            assert job.status == "succeeded", job._model.error
        finally:
            await client.aclose()


async def test_a_sync_prompt_waits_while_scaled_to_zero(tmp_path: Path) -> None:
    sock = bound_socket()
    nowhere = {"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    async with run_router(nowhere) as router, aiohttp.ClientSession() as session:
        body = {"id": "waits", "prompt": txt2img("a.safetensors")}
        prompt = asyncio.ensure_future(session.post(f"{router.url}/prompt", json=body))

        async def waiting() -> bool:
            async with session.get(f"{router.url}/activity") as response:
                return bool((await response.json())["waiting"] == 1)

        await wait_until(waiting, timeout_s=5)
        assert not prompt.done()
        async with late_replica(tmp_path, "a", sock):
            response = await asyncio.wait_for(prompt, timeout=30)
            assert response.status == 200
            assert (await response.json())["id"] == "waits"


async def test_a_sync_prompt_that_waits_too_long_gets_503(tmp_path: Path) -> None:
    sock = bound_socket()
    nowhere = {"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    async with run_router(nowhere, hold_timeout_s=1.0) as router, aiohttp.ClientSession() as session:
        async with session.post(
            f"{router.url}/prompt", json={"prompt": txt2img("a.safetensors")}
        ) as response:
            assert response.status == 503
            assert "no replica became ready" in (await response.json())["message"]
        async with session.post(f"{router.url}{API}/jobs", json={"workflow": txt2img("a.safetensors")}) as r:
            held_id = (await r.json())["id"]
        await asyncio.sleep(2.5)
        async with session.get(f"{router.url}{API}/jobs/{held_id}") as response:
            body = await response.json()
        assert body["status"] == "failed"
        assert body["error"]["code"] == "no_replica_ready"


async def test_every_log_line_of_a_held_job_carries_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    handler = make_handler("json", "router", stream)
    router_log = logging.getLogger("comfyui_router")
    router_log.addHandler(handler)
    router_log.setLevel(logging.INFO)
    sock = bound_socket()
    try:
        async with run_router({"a": f"http://127.0.0.1:{sock.getsockname()[1]}"}) as router:
            client = sdk(monkeypatch, router.url)
            try:
                held = await client.submit(client.workflows.from_json(txt2img("a.safetensors", 4)))
                async with late_replica(tmp_path, "a", sock):
                    await held.result()
            finally:
                await client.aclose()
    finally:
        router_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    about = [line for line in lines if "held" in line["message"]]
    assert len(about) >= 2, lines  # held, then run on the replica
    assert {line.get("job_id") for line in about} == {held.id}
    assert {line["component"] for line in about} == {"router"}

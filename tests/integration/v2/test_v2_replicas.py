"""Two replicas on loopback (two sidecars, two stand-ins, a static peer list): a job submitted through one is
found, streamed, cancelled and downloaded through the other; idempotency keys hold across both; a restarted or
departed owner reads as `expired`, never 404."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from comfy_sdk import AsyncComfy, StatusChange
from comfy_sdk.exceptions import IdempotencyKeyReuse, JobFailed
from comfyui_sidecar.v2 import ids
from sidecar_harness import wait_until
from v2_harness import (
    Replica,
    empty_image,
    invert,
    pixel,
    png_bytes,
    replicas,
    sdk_env,
    slow_image,
    start_sidecar,
    until_running,
    wait_ready,
)

API = "/api/v2"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    async with replicas(tmp_path, 2) as started:
        yield started


class Client:
    """An AsyncComfy aimed at one replica (the SDK reads COMFY_BASE_URL when it is built)."""

    def __init__(self, replica: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
        with sdk_env(monkeypatch, replica.url):
            self.sdk = AsyncComfy()

    async def __aenter__(self) -> AsyncComfy:
        return self.sdk

    async def __aexit__(self, *exc: object) -> None:
        await self.sdk.aclose()


async def test_a_job_from_one_pod_is_polled_streamed_and_downloaded_through_the_other(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a, Client(b, monkeypatch) as via_b:
        submitted = await via_a.submit(via_a.workflows.from_json(slow_image(seconds=0.8, steps=4)))
        assert submitted.id.startswith("job_")
        assert ids.decode(a.settings.tag_key(), submitted.id).owner == "a"
        same = await via_b.jobs.get(submitted.id)
        statuses = [event.status async for event in same.events() if isinstance(event, StatusChange)]
        assert statuses[-1] == "succeeded"
        await same.result()
        (output,) = same.get_outputs("3")
        assert pixel(await output.to_bytes()) == (255, 0, 0)
        assert (await output.to_bytes(range=(1, 3))) == b"PNG"
        graph = await same.get_workflow()
        assert graph.graph["2"]["class_type"] == "StandinSleep"
    assert a.app is not b.app


async def test_cancel_through_the_other_pod(pair: list[Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a, Client(b, monkeypatch) as via_b:
        job = await via_a.submit(via_a.workflows.from_json(slow_image(seconds=20, steps=40)))
        remote = await via_b.jobs.get(job.id)
        await until_running(remote)
        await remote.cancel()
        await remote.wait(timeout=10)
        assert remote.status == "canceled"
        await job.refresh()
        assert job.status == "canceled"


async def test_idempotency_keys_hold_across_pods(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a, Client(b, monkeypatch) as via_b:
        workflow = via_a.workflows.from_json(empty_image())
        await via_a.submit(workflow, idempotency_key="shared-1")
        with pytest.raises(IdempotencyKeyReuse):
            await via_b.submit(workflow, idempotency_key="shared-1")
    async with aiohttp.ClientSession() as http:

        async def post(replica: Replica, key: str) -> int:
            body = {"workflow": empty_image()}
            async with http.post(
                f"{replica.url}{API}/jobs", json=body, headers={"Idempotency-Key": key}
            ) as r:
                return r.status

        for round_ in range(10):
            statuses = await asyncio.gather(post(a, f"race-{round_}"), post(b, f"race-{round_}"))
            assert sorted(statuses) == [201, 422], statuses


async def test_listing_merges_both_pods_newest_first(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a, Client(b, monkeypatch) as via_b:
        made = []
        for index in range(6):
            sdk = via_a if index % 2 == 0 else via_b
            job = await sdk.submit(
                sdk.workflows.from_json(empty_image(prefix=f"m{index}")), metadata={"i": str(index)}
            )
            made.append(job.id)
            await asyncio.sleep(0.005)
        listed = [item.id async for item in via_b.list_jobs(limit=2)]
        assert listed == made[::-1]
        odd = [item.id async for item in via_a.list_jobs(metadata={"i": "3"})]
        assert odd == [made[3]]


async def test_assets_from_one_pod_feed_jobs_on_the_other(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a, Client(b, monkeypatch) as via_b:
        data = png_bytes(color=(0, 100, 200))
        uploaded = via_b.assets.from_bytes(data, filename="cross.png")
        asset_id = await uploaded.commit()
        assert ids.decode(a.settings.tag_key(), asset_id).owner == "b"
        job = await via_a.run(via_a.workflows.from_json(invert(uploaded)))
        assert pixel(await job.outputs[0].to_bytes()) == (255, 155, 55)
        again = via_a.assets.from_bytes(data, filename="again.png")  # by hash: found on b, no upload
        await again.commit()
        assert again.created_new is False
        output_as_input = {"__type": "core/ASSET", "info": {"id": job.outputs[0].id}}
        twice = await via_b.run(via_b.workflows.from_json(invert(output_as_input, prefix="twice")))
        assert pixel(await twice.outputs[0].to_bytes()) == (0, 100, 200)


async def test_a_departed_owner_reads_as_expired_never_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(tmp_path, 2) as (a, b):
        async with Client(a, monkeypatch) as via_a:
            job = await via_a.run(via_a.workflows.from_json(empty_image()))
        await a.runner.cleanup()  # pod a is gone; b still lists it (static peers), so its calls fail
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}{API}/jobs/{job.id}") as response:
            assert response.status == 503  # listed but silent: not a terminal verdict
        b_only = f"b={b.url}"
        async with (
            replicas(tmp_path / "later", 1, peer_name="b", peers=b_only) as (lone,),
            Client(lone, monkeypatch) as via_lone,
        ):
            lost = await via_lone.jobs.get(job.id)
            assert lost.status == "expired"
            assert lost.error.code == "job_lost"
            with pytest.raises(JobFailed):
                await lost.result()


async def test_a_restarted_owner_reports_its_lost_jobs_as_expired(
    pair: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    async with Client(a, monkeypatch) as via_a:
        job = await via_a.run(via_a.workflows.from_json(empty_image()))
    await a.runner.cleanup()
    _, runner = await start_sidecar(a.settings, a.settings.port)  # same name, same port, empty store
    try:
        await wait_ready(a.url)
        async with Client(b, monkeypatch) as via_b:
            lost = await via_b.jobs.get(job.id)
            assert lost.status == "expired"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{b.url}{API}/jobs/{job.id[:-2]}xx") as response:
                assert response.status == 404  # a changed id was never minted here
            forged = ids.mint(b"another key", "job", "a", 1)
            async with http.get(f"{b.url}{API}/jobs/{forged}") as response:
                assert response.status == 404
    finally:
        await runner.cleanup()


async def test_prompt_status_is_found_through_any_pod(pair: list[Replica]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.url}/prompt", json={"prompt": empty_image(), "id": "legacy-7"}) as response:
            assert response.status == 200

        async def on_b() -> bool:
            async with http.get(f"{b.url}/prompt/legacy-7") as response:
                return response.status == 200 and (await response.json())["status"] == "succeeded"

        await wait_until(on_b, timeout_s=5)


async def test_with_auth_on_the_pods_authenticate_to_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(tmp_path, 2, api_token="t0k") as (a, b):
        with sdk_env(monkeypatch, a.url, api_key="t0k"):
            via_a = AsyncComfy()
        with sdk_env(monkeypatch, b.url, api_key="t0k"):
            via_b = AsyncComfy()
        try:
            job = await via_a.submit(via_a.workflows.from_json(empty_image()), idempotency_key="auth-1")
            remote = await via_b.jobs.get(job.id)
            await remote.result()
            assert len(await remote.outputs[0].to_bytes()) > 0
            with pytest.raises(IdempotencyKeyReuse):
                await via_b.submit(via_b.workflows.from_json(empty_image()), idempotency_key="auth-1")
            assert [item.id async for item in via_b.list_jobs()] == [job.id]
        finally:
            await via_a.aclose()
            await via_b.aclose()
        async with aiohttp.ClientSession() as http, http.put(f"{a.url}/internal/v2/claims/{'0' * 64}") as r:
            assert r.status == 401  # the peers' internal route needs the token too

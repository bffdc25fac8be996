"""The router over real HTTP in front of sidecars and stand-ins on loopback: comfyui-api prompts go to the
replica that holds their model (unless its queue is too long); a replica that disappears mid-job is a clear
502, not a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from comfyui_sidecar.app import JOBS_KEY
from comfyui_standin.testing import txt2img
from router_harness import Relay, add_models, run_router, until_loaded
from sidecar_harness import wait_until
from v2_harness import Replica, replicas

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    async with replicas(tmp_path, 3, previews=False) as started:
        add_models(started)
        yield started


def ran_on(started: list[Replica], prompt_id: str) -> str:
    (name,) = [r.name for r in started if r.app[JOBS_KEY].get_prompt(prompt_id) is not None]
    return name


async def post_prompt(session: aiohttp.ClientSession, url: str, prompt_id: str, prompt: dict) -> int:  # type: ignore[type-arg]
    async with session.post(f"{url}/prompt", json={"id": prompt_id, "prompt": prompt}) as response:
        await response.read()
        return response.status


async def test_jobs_go_to_the_replica_that_has_their_model_loaded(three: list[Replica]) -> None:
    async with run_router(three) as router, aiohttp.ClientSession() as session:
        assert await post_prompt(session, router.url, "first-a", txt2img("a.safetensors", 1)) == 200
        home = ran_on(three, "first-a")
        await until_loaded(next(r for r in three if r.name == home), "checkpoints/a.safetensors")
        await asyncio.sleep(0.5)  # the router's next poll sees it
        for seed in range(2, 6):
            assert await post_prompt(session, router.url, f"a-{seed}", txt2img("a.safetensors", seed)) == 200
            assert ran_on(three, f"a-{seed}") == home
        # a job for another model does not evict model a from its home while others are free
        assert await post_prompt(session, router.url, "first-b", txt2img("b.safetensors", 1)) == 200
        other = ran_on(three, "first-b")
        if other == home:  # the hash picked a's home for b too: then b must now live there and a moved on
            pytest.fail("b went to a's home although two replicas were idle and held nothing")
        metrics = await (await session.get(f"{router.url}/metrics")).text()
        assert 'comfyui_router_decisions_total{reason="affinity"} 4.0' in metrics


async def test_a_queue_longer_than_the_bound_sends_the_job_elsewhere(three: list[Replica]) -> None:
    async with run_router(three, affinity_max_queue=1) as router, aiohttp.ClientSession() as session:
        assert await post_prompt(session, router.url, "warm", txt2img("a.safetensors", 1)) == 200
        home = ran_on(three, "warm")
        await until_loaded(next(r for r in three if r.name == home), "checkpoints/a.safetensors")
        await asyncio.sleep(0.5)
        slow = [
            asyncio.ensure_future(
                post_prompt(session, router.url, f"slow-{i}", txt2img("a.safetensors", 10 + i, sleep_s=2.0))
            )
            for i in range(3)
        ]
        await asyncio.sleep(0.6)
        places = [ran_on(three, f"slow-{i}") for i in range(3)]
        assert places[:2] == [home, home]  # queue 0, then 1: within the bound
        assert places[2] != home  # queue 2 > 1: the least-loaded replica takes it
        assert await asyncio.gather(*slow) == [200, 200, 200]


async def test_a_replica_that_vanishes_mid_job_is_a_502_not_a_hang(three: list[Replica]) -> None:
    victim = three[0]
    async with Relay(int(victim.url.rsplit(":", 1)[1])) as relay:
        routes = {victim.name: relay.url, **{r.name: r.url for r in three[1:]}}
        async with run_router(routes, replica_lost_s=1.0) as router, aiohttp.ClientSession() as session:
            # only the victim holds model c, so the job goes there
            await post_prompt(session, victim.url, "warm-c", txt2img("c.safetensors", 1))
            await until_loaded(victim, "checkpoints/c.safetensors")
            await asyncio.sleep(0.5)
            job = asyncio.ensure_future(
                session.post(
                    f"{router.url}/prompt",
                    json={"id": "doomed", "prompt": txt2img("c.safetensors", 2, sleep_s=20.0)},
                )
            )
            await wait_until(lambda: victim.app[JOBS_KEY].get_prompt("doomed") is not None, timeout_s=5)
            relay.freeze()  # the node is gone: no answer, no reset
            response = await asyncio.wait_for(job, timeout=15)  # lost after REPLICA_LOST_S, not 20 s
            body = await response.json()
            assert response.status == 502
            assert "went away" in body["message"]
            assert victim.name in body["message"]
            # the rest keeps working, around the lost replica
            assert await post_prompt(session, router.url, "after", txt2img("c.safetensors", 3)) == 200
            assert ran_on(three, "after") != victim.name


async def test_a_replica_whose_connection_breaks_mid_job_is_a_502(three: list[Replica]) -> None:
    async with run_router(three[:1]) as router, aiohttp.ClientSession() as session:
        job = asyncio.ensure_future(
            session.post(
                f"{router.url}/prompt", json={"id": "cut", "prompt": txt2img("a.safetensors", sleep_s=20)}
            )
        )
        await wait_until(lambda: three[0].app[JOBS_KEY].get_prompt("cut") is not None, timeout_s=5)
        await three[0].runner.cleanup()  # the sidecar process ends: its connections close
        response = await asyncio.wait_for(job, timeout=15)
        assert response.status == 502
        assert "outcome is unknown" in (await response.json())["message"]


async def test_interrupt_and_status_of_a_prompt_go_to_its_replica(three: list[Replica]) -> None:
    async with run_router(three) as router, aiohttp.ClientSession() as session:
        job = asyncio.ensure_future(
            post_prompt(session, router.url, "long", txt2img("b.safetensors", sleep_s=20))
        )
        await wait_until(lambda: any(r.app[JOBS_KEY].get_prompt("long") for r in three), timeout_s=5)
        async with session.get(f"{router.url}/prompt/long") as response:
            assert response.status == 200
            assert (await response.json())["id"] == "long"
        await asyncio.sleep(0.3)
        async with session.post(f"{router.url}/interrupt", json={"id": "long"}) as response:
            assert response.status == 200
            assert (await response.json())["interrupted"] == "success"
        assert await asyncio.wait_for(job, timeout=10) == 500  # comfyui-api: an interrupted prompt is a 500
        async with session.post(f"{router.url}/interrupt", json={"id": "nobody"}) as response:
            assert response.status == 404

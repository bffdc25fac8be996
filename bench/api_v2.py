"""Comfy API v2 costs: two sidecar processes (peers) in front of two stand-in processes on 127.0.0.1.

Prints p50/p99 (ms) of: comfyui-api POST /prompt (synchronous, the baseline); v2 POST /jobs (201); v2 submit
until the terminal `status` on the job's event stream; GET /jobs/{id} on the owner vs through the other pod
(the forwarding cost); 20 concurrent comfy-sdk `run()` calls (wall time); the sidecar's RSS growth over N v2
jobs kept in its store. A tiny EmptyImage->SaveImage prompt each time.

    python3 bench/api_v2.py [--quick]
Every phase is bounded in count; the whole run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from comfyui_standin.testing import StandinProcess, free_port, sidecar_env

HOST = "127.0.0.1"


def prompt(index: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": index},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
    }


@contextlib.asynccontextmanager
async def cluster(tmp: Path) -> AsyncIterator[tuple[list[str], list[int]]]:
    ports = [free_port(), free_port()]
    peers = ",".join(f"{name}=http://{HOST}:{port}" for name, port in zip("ab", ports, strict=True))
    async with contextlib.AsyncExitStack() as stack:
        urls, pids = [], []
        for name, port in zip("ab", ports, strict=True):
            comfy = await stack.enter_async_context(StandinProcess(tmp / f"comfy-{name}"))
            env = sidecar_env(
                comfy.url,
                comfy.dirs,
                port,
                tmp / f"cache-{name}",
                LOG_LEVEL="warn",
                PEER_NAME=name,
                PEERS=peers,
            )
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "comfyui_sidecar", env=env)
            stack.push_async_callback(stop, process)
            urls.append(f"http://{HOST}:{port}")
            pids.append(process.pid)
        yield urls, pids


async def stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    await process.wait()


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/ready") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(url)


async def sample(count: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        await call(index)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}


async def submit(session: aiohttp.ClientSession, url: str, index: int) -> dict[str, Any]:
    async with session.post(f"{url}/api/v2/jobs", json={"workflow": prompt(index)}) as response:
        assert response.status == 201, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def until_terminal(session: aiohttp.ClientSession, url: str, index: int) -> None:
    job = await submit(session, url, index)
    async with session.get(f"{url}{job['urls']['events']}") as response:
        text = (await response.read()).decode()
    assert '"succeeded"' in text.rsplit("event: status", 1)[-1], text


async def main(quick: bool) -> None:
    rounds = 50 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        async with cluster(Path(tmp)) as (urls, pids), aiohttp.ClientSession() as session:
            a, b = urls
            for url in urls:
                await wait_ready(session, url)
            for index in range(10):  # warm
                await until_terminal(session, a, index)

            async def legacy(index: int) -> None:
                async with session.post(f"{a}/prompt", json={"prompt": prompt(index)}) as response:
                    assert response.status == 200

            rows = {
                "comfyui-api POST /prompt (sync)": await sample(rounds, legacy),
                "v2 POST /jobs -> 201": await sample(rounds, lambda i: submit(session, a, i)),
                "v2 submit -> terminal status (SSE)": await sample(
                    rounds, lambda i: until_terminal(session, a, i)
                ),
            }
            job = await submit(session, a, 0)
            await asyncio.sleep(0.5)

            async def get(url: str) -> None:
                async with session.get(f"{url}/api/v2/jobs/{job['id']}") as response:
                    assert response.status == 200

            rows["v2 GET job on its owner"] = await sample(rounds, lambda _: get(a))
            rows["v2 GET job through the other pod"] = await sample(rounds, lambda _: get(b))
            print("latency (ms), tiny prompt, 2 peers on loopback:")
            for name, row in rows.items():
                print(f"  {name:<40} p50 {row['p50']:7.2f}   p99 {row['p99']:7.2f}")
            added = rows["v2 GET job through the other pod"]["p50"] - rows["v2 GET job on its owner"]["p50"]
            print(f"  forwarding adds p50 {added:.2f} ms")

            os.environ["COMFY_BASE_URL"] = b
            os.environ.pop("COMFY_API_KEY", None)
            from comfy_sdk import AsyncComfy  # noqa: PLC0415 - after COMFY_BASE_URL is set

            async with AsyncComfy() as sdk:
                started = time.perf_counter()
                jobs = await asyncio.gather(*(sdk.run(sdk.workflows.from_json(prompt(i))) for i in range(20)))
                wall = time.perf_counter() - started
                assert all(job.status == "succeeded" for job in jobs)
            print(f"20 concurrent comfy-sdk run() through one pod (SDK polling): {wall:.2f} s wall")

            process = psutil.Process(pids[0])
            before = process.memory_info().rss
            count = 500 if quick else 2000
            for index in range(count):
                await submit(session, a, index)
                if index % 50 == 49:
                    await asyncio.sleep(0.2)
            await until_terminal(session, a, count)
            after = process.memory_info().rss
            print(
                f"sidecar RSS with {count} more v2 jobs kept: {before / 2**20:.1f} -> {after / 2**20:.1f} MB "
                f"({(after - before) / count / 1024:.1f} KiB per job)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    asyncio.run(main(parser.parse_args().quick))

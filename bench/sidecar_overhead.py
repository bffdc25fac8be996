"""Sidecar overhead: end-to-end latency through the sidecar vs a direct client of the stand-in ComfyUI.

Runs the stand-in and the sidecar as separate processes on 127.0.0.1 and prints:
  - p50/p99 latency and throughput at concurrency 1, 8 and 32, direct vs through the sidecar
    (interleaved rounds);
  - added latency at concurrency 1 and the sidecar/direct throughput ratio at concurrency 8;
  - /health p99 while four ~20 MB outputs are read, base64-encoded and serialised;
  - sidecar RSS growth over N prompts (default 10,000), measured before the large-output phase.
The direct client does what a well-written client does: POST /prompt with client_id and a prompt id, wait for
`execution_success` on its websocket, GET /view for each output.

    python3 bench/sidecar_overhead.py [--quick]
Every phase is bounded in count and time; the whole run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from comfyui_standin.testing import StandinProcess, free_port, sidecar_env

HOST = "127.0.0.1"


def tiny_prompt(prefix: str) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 4242},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def big_prompt(seed: int) -> dict[str, Any]:
    """About 20 MB of PNG: 2600x2600 RGB noise does not compress."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 2600, "height": 2600, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": seed, "strength": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "big"}},
    }


class DirectClient:
    """A careful direct ComfyUI client: one websocket, futures keyed by prompt id."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ws = await self.session.ws_connect(f"{self.base}/ws?clientId={self.client_id}")
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = message.json()
            data = event.get("data") or {}
            prompt_id = data.get("prompt_id")
            if event["type"] == "executed" and prompt_id in self.waiters:
                self.outputs.setdefault(prompt_id, {}).update({data["node"]: data["output"]})
            elif event["type"] == "execution_success" and prompt_id in self.waiters:
                self.waiters[prompt_id].set_result(self.outputs.pop(prompt_id, {}))

    async def run(self, prompt: dict[str, Any]) -> int:
        prompt_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[prompt_id] = future
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.session.post(f"{self.base}/prompt", json=body) as response:
            await response.read()
            assert response.status == 200
        outputs = await asyncio.wait_for(future, 60)
        del self.waiters[prompt_id]
        size = 0
        for node in outputs.values():
            for item in node.get("images", []):
                params = {"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]}
                async with self.session.get(f"{self.base}/view", params=params) as response:
                    size += len(await response.read())
        return size


async def via_sidecar(session: aiohttp.ClientSession, url: str, prompt: dict[str, Any]) -> int:
    async with session.post(f"{url}/prompt", json={"prompt": prompt}) as response:
        body = await response.read()
        assert response.status == 200, body[:300]
    return len(body)


async def timed(call: Callable[[], Awaitable[int]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def measure(
    call: Callable[[], Awaitable[int]], concurrency: int, count: int
) -> tuple[list[float], float]:
    """`count` calls with `concurrency` workers; returns the latencies and the wall time."""
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            latencies.append(await timed(call))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 300)
    return latencies, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def latency_table(
    direct: DirectClient, session: aiohttp.ClientSession, url: str, quick: bool
) -> dict[int, Any]:
    results: dict[int, Any] = {}
    for concurrency, full_round, full_rounds in ((1, 25, 12), (8, 120, 4), (32, 256, 3)):
        per_round, rounds = (max(8, full_round // 4), 2) if quick else (full_round, full_rounds)
        lat = {"direct": [], "sidecar": []}  # type: dict[str, list[float]]
        wall = {"direct": 0.0, "sidecar": 0.0}
        for _ in range(rounds):  # interleaved rounds: direct, sidecar, direct, sidecar, ...
            d, dw = await measure(
                lambda: direct.run(tiny_prompt(f"d{uuid.uuid4().hex[:8]}")), concurrency, per_round
            )
            s, sw = await measure(lambda: via_sidecar(session, url, tiny_prompt("s")), concurrency, per_round)
            lat["direct"] += d
            lat["sidecar"] += s
            wall["direct"] += dw
            wall["sidecar"] += sw
        results[concurrency] = {
            name: {
                "p50": pct(values, 0.5),
                "p99": pct(values, 0.99),
                "throughput": len(values) / wall[name],
            }
            for name, values in lat.items()
        }
        if concurrency == 1:  # paired estimate: median of per-round differences is robust to drift
            results[1]["added_p50"] = results[1]["sidecar"]["p50"] - results[1]["direct"]["p50"]
    return results


async def poll_health(url: str, stop_file: Path) -> None:
    """Child-process mode: GET /health every 5 ms until `stop_file` exists; print the latencies (ms)."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(200_000):
            if stop_file.exists():  # noqa: ASYNC240 - a stat() per 5 ms is negligible
                break
            started = time.perf_counter()
            async with session.get(f"{url}/health") as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.005)
    print(json.dumps(latencies))


async def health_under_load(session: aiohttp.ClientSession, url: str, tmp: Path) -> dict[str, float]:
    """/health latency seen by a separate process while four ~20 MB outputs go through the sidecar."""
    stop_file = tmp / "stop-health-poll"
    poller = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--poll-health",
        url,
        "--stop-file",
        str(stop_file),
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    sizes = await asyncio.wait_for(
        asyncio.gather(*(via_sidecar(session, url, big_prompt(seed)) for seed in range(4))), 300
    )
    seconds = time.perf_counter() - started
    stop_file.touch()
    out, _ = await asyncio.wait_for(poller.communicate(), 30)
    latencies = [value / 1000 for value in json.loads(out)]
    return {
        "health_p50": pct(latencies, 0.5),
        "health_p99": pct(latencies, 0.99),
        "health_max": max(latencies) * 1000,
        "samples": len(latencies),
        "response_mb": sum(sizes) / 4 / 1e6,
        "seconds": seconds,
    }


async def cpu_per_prompt(
    direct: DirectClient,
    session: aiohttp.ClientSession,
    url: str,
    sidecar_pid: int,
    standin_pid: int,
    count: int,
) -> dict[str, float]:
    """CPU milliseconds per prompt spent in each server process (robust to other load on the machine)."""
    sidecar, standin = psutil.Process(sidecar_pid), psutil.Process(standin_pid)

    def cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    start_standin = cpu(standin)
    await measure(lambda: direct.run(tiny_prompt(f"c{uuid.uuid4().hex[:8]}")), 1, count)
    standin_direct = (cpu(standin) - start_standin) / count * 1000
    start_sidecar, start_standin = cpu(sidecar), cpu(standin)
    await measure(lambda: via_sidecar(session, url, tiny_prompt("c")), 1, count)
    return {
        "standin_direct": standin_direct,
        "standin_via_sidecar": (cpu(standin) - start_standin) / count * 1000,
        "sidecar": (cpu(sidecar) - start_sidecar) / count * 1000,
    }


async def rss_growth(session: aiohttp.ClientSession, url: str, pid: int, total: int) -> dict[str, float]:
    process = psutil.Process(pid)
    warm = max(200, total // 20)
    await measure(lambda: via_sidecar(session, url, tiny_prompt("m")), 8, warm)
    before = process.memory_info().rss
    started = time.perf_counter()
    await measure(lambda: via_sidecar(session, url, tiny_prompt("m")), 8, total)
    after = process.memory_info().rss
    return {
        "prompts": total,
        "rss_before_mb": before / 1e6,
        "rss_after_mb": after / 1e6,
        "growth_pct": (after - before) / before * 100,
        "seconds": time.perf_counter() - started,
    }


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/ready") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError("the sidecar did not become ready")


async def main(quick: bool, prompts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with StandinProcess(Path(tmp) / "comfy") as comfy:
            port = free_port()
            env = sidecar_env(comfy.url, comfy.dirs, port, Path(tmp) / "cache", LOG_LEVEL="warn")
            sidecar = await asyncio.create_subprocess_exec(sys.executable, "-m", "comfyui_sidecar", env=env)
            url = f"http://{HOST}:{port}"
            connector = aiohttp.TCPConnector(limit=128)
            try:
                async with aiohttp.ClientSession(connector=connector) as session:
                    await wait_ready(session, url)
                    direct = DirectClient(comfy.url, session)
                    await direct.start()
                    for _ in range(20):  # warm both paths
                        await direct.run(tiny_prompt(f"w{uuid.uuid4().hex[:8]}"))
                        await via_sidecar(session, url, tiny_prompt("w"))
                    table = await latency_table(direct, session, url, quick)
                    print("latency (ms) and throughput (prompts/s), tiny EmptyImage->SaveImage prompt:")
                    print(
                        f"{'conc':>4} {'direct p50':>10} {'p99':>7} {'rps':>7} | "
                        f"{'sidecar p50':>11} {'p99':>7} {'rps':>7}"
                    )
                    for concurrency, row in table.items():
                        d, s = row["direct"], row["sidecar"]
                        print(
                            f"{concurrency:>4} {d['p50']:>10.2f} {d['p99']:>7.2f} {d['throughput']:>7.1f} | "
                            f"{s['p50']:>11.2f} {s['p99']:>7.2f} {s['throughput']:>7.1f}"
                        )
                    print(
                        f"added latency p50 at concurrency 1: {table[1]['added_p50']:.2f} ms (target <= 1.5)"
                    )
                    ratio = table[8]["sidecar"]["throughput"] / table[8]["direct"]["throughput"]
                    print(f"throughput ratio sidecar/direct at concurrency 8: {ratio:.2f} (target >= 0.8)")
                    assert comfy.pid is not None
                    used = await cpu_per_prompt(
                        direct, session, url, sidecar.pid, comfy.pid, 100 if quick else 400
                    )
                    print(
                        f"CPU per prompt: sidecar {used['sidecar']:.2f} ms; stand-in "
                        f"{used['standin_direct']:.2f} ms (direct) / "
                        f"{used['standin_via_sidecar']:.2f} ms (via sidecar)"
                    )
                    memory = await rss_growth(session, url, sidecar.pid, 1000 if quick else prompts)
                    print(
                        f"sidecar RSS over {memory['prompts']} prompts: {memory['rss_before_mb']:.1f} -> "
                        f"{memory['rss_after_mb']:.1f} MB ({memory['growth_pct']:+.1f} %, "
                        f"{memory['seconds']:.0f} s) (target <= 10 %)"
                    )
                    health = await health_under_load(session, url, Path(tmp))
                    print(
                        f"/health while 4 x {health['response_mb']:.1f} MB outputs are delivered: "
                        f"p50 {health['health_p50']:.2f} ms, p99 {health['health_p99']:.2f} ms "
                        f"(max {health['health_max']:.1f} ms, {health['samples']} samples, "
                        f"{health['seconds']:.1f} s) (target p99 <= 50)"
                    )
            finally:
                sidecar.terminate()
                await asyncio.wait_for(sidecar.wait(), 30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--prompts", type=int, default=10_000, help="prompts for the RSS measurement")
    parser.add_argument("--poll-health", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll_health:
        asyncio.run(poll_health(args.poll_health, args.stop_file))
    else:
        asyncio.run(main(args.quick, args.prompts))

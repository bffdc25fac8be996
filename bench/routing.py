"""Model-aware routing against round-robin (docs/router.md): 4 replicas (4 comfyui-sidecar + 4 comfyui-standin
processes) behind one comfyui-router process, all on 127.0.0.1.

Every stand-in runs with `--model-load-delay S`: a checkpoint loader that really runs costs S seconds; one
ComfyUI serves from its execution cache (the same model as its previous prompt) costs nothing, as ComfyUI's
classic cache does. Each job is a txt2img prompt (checkpoint -> KSampler -> decode -> StandinSleep `--run`
seconds -> SaveImage) for one of six models, drawn with skewed weights, sent as a sync comfyui-api POST
/prompt through the router. Both policies get the same jobs at the same arrival times (open loop, Poisson
arrivals at `--rate` jobs/s, one seed), on freshly started processes:

  round_robin  ROUTING_POLICY=round_robin: what a plain Service does
  models       ROUTING_POLICY=models (the default): where the models are, within AFFINITY_MAX_QUEUE

Printed per policy: model loads (the sidecars' comfyui_api_model_loads_total), job latency p50/p95/max
(submit to answer), throughput (jobs / span), GPU-busy fraction (the sidecars' comfyui_api_comfy_busy_seconds
over 4 x the span: time a ComfyUI had work, loads included), and the router's decisions.

    python3 bench/routing.py [--jobs 120] [--rate 1.5] [--load-delay 2] [--run 0.5] [--seed 7] [--quick]
Bounded: --jobs jobs per policy, every request with a timeout; about 3 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from comfyui_standin.models import safetensors_bytes
from comfyui_standin.testing import StandinProcess, free_port, sidecar_env, txt2img

HOST = "127.0.0.1"
REPLICAS = 4
MODELS = [f"m{i}.safetensors" for i in range(6)]
WEIGHTS = [0.30, 0.24, 0.18, 0.12, 0.10, 0.06]
REQUEST_TIMEOUT_S = 600


def workflow(model: str, seed: int, run_s: float) -> dict[str, Any]:
    return txt2img(model, seed, sleep_s=run_s, prefix="bench")


@dataclass
class Job:
    at: float
    model: str
    seed: int


def schedule(count: int, rate: float, seed: int = 7) -> list[Job]:
    rng = random.Random(seed)
    jobs, now = [], 0.0
    for index in range(count):
        now += rng.expovariate(rate)
        jobs.append(Job(now, rng.choices(MODELS, WEIGHTS)[0], 1000 + index))
    return jobs


# ---- processes -------------------------------------------------------------------------------------------
def _require_load_delay() -> None:
    text = subprocess.run(
        [sys.executable, "-m", "comfyui_standin", "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--model-load-delay" not in text:
        raise SystemExit(
            "bench/routing.py: this stand-in has no --model-load-delay (needs the multi-GPU work)"
        )


@contextlib.asynccontextmanager
async def instance(
    tmp: Path, policy: str, load_s: float, affinity_max_queue: int
) -> AsyncIterator[tuple[str, list[str]]]:
    """4 stand-ins, 4 sidecars (peers) and a router with `policy`; yields the router's and sidecars' URLs."""
    names = [f"r{i}" for i in range(REPLICAS)]
    ports = {name: free_port() for name in names}
    peers = ",".join(f"{name}=http://{HOST}:{port}" for name, port in ports.items())
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            comfy = await stack.enter_async_context(
                StandinProcess(tmp / f"comfy-{name}", extra_args=["--model-load-delay", str(load_s)])
            )
            checkpoints = comfy.dirs.models / "checkpoints"
            checkpoints.mkdir(parents=True, exist_ok=True)
            for model in MODELS:
                (checkpoints / model).write_bytes(safetensors_bytes())
            env = sidecar_env(
                comfy.url,
                comfy.dirs,
                ports[name],
                tmp / f"cache-{name}",
                MODEL_DIR=str(comfy.dirs.models),
                LOG_LEVEL="warn",
                PEER_NAME=name,
                PEERS=peers,
            )
            await stack.enter_async_context(_process("comfyui_sidecar", env))
        router_port = free_port()
        router_env = {
            **os.environ,
            "PORT": str(router_port),
            "HOST": HOST,
            "REPLICAS": peers,
            "ROUTING_POLICY": policy,
            "AFFINITY_MAX_QUEUE": str(affinity_max_queue),
            "PEER_NAME": "bench-router",
            "LOG_LEVEL": "warning",
        }
        await stack.enter_async_context(_process("comfyui_router", router_env))
        url = f"http://{HOST}:{router_port}"
        async with aiohttp.ClientSession() as session:
            for port in ports.values():
                await _wait(session, f"http://{HOST}:{port}/ready")
            await _wait(session, f"{url}/ready")
            await asyncio.sleep(2)  # the router has read every replica's placement
        yield url, [f"http://{HOST}:{port}" for port in ports.values()]


@contextlib.asynccontextmanager
async def _process(module: str, env: dict[str, str]) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env)
    try:
        yield
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(url)


# ---- measuring -------------------------------------------------------------------------------------------
DECISIONS = re.compile(r'^comfyui_router_decisions_total\{reason="(\w+)"\} (\S+)$', re.M)
LOADS = re.compile(r"^comfyui_api_model_loads_total\{[^}]*\} (\S+)$", re.M)


async def sidecar_totals(session: aiohttp.ClientSession, sidecars: list[str]) -> dict[str, float]:
    """Model loads and busy seconds summed over the replicas (read from each sidecar's /metrics)."""
    totals = {"loads": 0.0, "busy": 0.0}
    for url in sidecars:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        totals["loads"] += sum(float(value) for value in LOADS.findall(text))
        busy = re.search(r"^comfyui_api_comfy_busy_seconds_total (\S+)$", text, re.M)
        totals["busy"] += float(busy.group(1)) if busy else 0.0
    return totals


async def run_policy(policy: str, jobs: list[Job], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with instance(Path(tmp), policy, args.load_delay, args.affinity_max_queue) as (
            router,
            sidecars,
        ):
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                before = await sidecar_totals(session, sidecars)
                latencies: list[float] = []
                failures = 0
                started = time.monotonic()
                finished_at = started

                async def one(job: Job) -> None:
                    nonlocal failures, finished_at
                    await asyncio.sleep(max(0.0, started + job.at - time.monotonic()))
                    sent = time.monotonic()
                    body = {"prompt": workflow(job.model, job.seed, args.run)}
                    async with session.post(f"{router}/prompt", json=body) as response:
                        await response.read()
                        if response.status != 200:
                            failures += 1
                            return
                    latencies.append(time.monotonic() - sent)
                    finished_at = max(finished_at, time.monotonic())

                await asyncio.gather(*(one(job) for job in jobs))
                span = finished_at - started
                after = await sidecar_totals(session, sidecars)
                async with session.get(f"{router}/metrics") as response:
                    router_metrics = await response.text()
    latencies.sort()
    decisions = dict(DECISIONS.findall(router_metrics))
    return {
        "policy": policy,
        "jobs": len(latencies),
        "failures": failures,
        "loads": int(after["loads"] - before["loads"]),
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))],
        "max": latencies[-1],
        "throughput": len(latencies) / span,
        "busy": (after["busy"] - before["busy"]) / (REPLICAS * span),
        "decisions": {k: int(float(v)) for k, v in decisions.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--rate", type=float, default=1.5, help="arrivals per second")
    parser.add_argument("--load-delay", type=float, default=2.0, help="seconds a model load costs")
    parser.add_argument("--run", type=float, default=0.5, help="seconds a job runs once its model is loaded")
    parser.add_argument("--affinity-max-queue", type=int, default=3, help="the router's AFFINITY_MAX_QUEUE")
    parser.add_argument("--seed", type=int, default=7, help="of the job mix and arrival times")
    parser.add_argument("--policies", default="round_robin,models", help="compared in this order")
    parser.add_argument("--quick", action="store_true", help="40 jobs")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 40
    _require_load_delay()
    jobs = schedule(args.jobs, args.rate, args.seed)
    counts = {model: sum(1 for job in jobs if job.model == model) for model in MODELS}
    print(f"{args.jobs} jobs over {len(MODELS)} models {counts}, {args.rate}/s Poisson arrivals, 4 replicas,")
    print(f"model load {args.load_delay} s, run {args.run} s, AFFINITY_MAX_QUEUE {args.affinity_max_queue}")
    print("(2 cores, every process on loopback)\n")
    results = [asyncio.run(run_policy(policy, jobs, args)) for policy in args.policies.split(",")]
    print(f"{'policy':<12} {'loads':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'jobs/s':>7} {'GPU busy':>9}")
    for r in results:
        print(
            f"{r['policy']:<12} {r['loads']:>6} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['max']:>7.2f} "
            f"{r['throughput']:>7.2f} {r['busy']:>8.0%}  {r['decisions']} failures={r['failures']}"
        )
    if len(results) != 2:
        return
    rr, mm = results
    fewer, lower = rr["loads"] / max(1, mm["loads"]), rr["p95"] / mm["p95"]
    print(f"\nmodel-aware: {fewer:.1f}x fewer model loads, p95 {lower:.1f}x lower than round-robin")


if __name__ == "__main__":
    main()

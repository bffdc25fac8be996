"""Dispatch inside one per-GPU pod: one sidecar in front of N stand-in ComfyUIs (one per "GPU", sharing the
model, input and output directories), each charging --model-load-delay for a model it does not hold.

A mixed workload (prompts over several models, seeded) is sent by a few concurrent clients, once per policy:
  model-aware     the sidecar's dispatch (comfy_pool.choose: loaded models, then queue)
  shortest-queue  the same without the models (queue, then index)
  round-robin     ComfyUI 0, 1, 2, ... in turn
Printed per policy: model loads (the sidecar's comfyui_api_model_loads_total), p50/p95 prompt latency, wall
time, and the GPU-busy fraction (comfyui_api_comfy_busy_seconds_total / (wall x N)).

    python3 bench/per_gpu_dispatch.py [--comfyuis 4] [--models 4] [--prompts 48] [--clients 4]
        [--load-s 1.0] [--work-s 0.5] [--seed 1] [--slack 2]
Runs in-process on 127.0.0.1; about a minute with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from comfyui_sidecar import comfy_pool
from comfyui_sidecar.app import create_app, make_runner
from comfyui_sidecar.fetching import NoDownloads
from comfyui_sidecar.settings import Settings
from comfyui_standin.testing import run_standin, write_model

HOST = "127.0.0.1"
Chooser = Callable[[comfy_pool.ComfyPool, Mapping[str, Any]], int]


def prompt(model: str, work_s: float, index: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": index % 0xFFFFFF},
        },
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "StandinSleep", "inputs": {"image": ["3", 0], "seconds": work_s, "steps": 1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bench"}},
    }


def policies() -> dict[str, Chooser | None]:
    turns = itertools.count()

    def round_robin(pool: comfy_pool.ComfyPool, _: Mapping[str, Any]) -> int:
        return next(turns) % len(pool.members)

    def shortest_queue(pool: comfy_pool.ComfyPool, _: Mapping[str, Any]) -> int:
        return comfy_pool.choose([m.candidate() for m in pool.members], set(), pool.slack)

    return {"model-aware": None, "shortest-queue": shortest_queue, "round-robin": round_robin}


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def run_policy(args: argparse.Namespace, name: str, chooser: Chooser | None) -> dict[str, float]:
    models = [f"m{i}-x2.safetensors" for i in range(args.models)]
    rng = random.Random(args.seed)
    workload = [rng.choice(models) for _ in range(args.prompts)]
    original = comfy_pool.ComfyPool.choose
    if chooser is not None:
        comfy_pool.ComfyPool.choose = chooser  # type: ignore[method-assign,assignment]
    try:
        with tempfile.TemporaryDirectory(prefix="per-gpu-bench-") as tmp:
            base = Path(tmp) / "pod"
            for model in models:
                write_model(base / "models" / "upscale_models" / model)
            async with contextlib.AsyncExitStack() as stack:
                comfyuis = [
                    await stack.enter_async_context(
                        run_standin(base, model_load_delay=args.load_s, temp_directory=Path(tmp) / f"t{i}")
                    )
                    for i in range(args.comfyuis)
                ]
                dirs = comfyuis[0].dirs
                settings = Settings(
                    comfyui_urls=",".join(c.url for c in comfyuis),
                    comfyui_temp_dirs=",".join(str(c.dirs.temp) for c in comfyuis),
                    comfy_home=dirs.base,
                    input_dir=dirs.input,
                    output_dir=dirs.output,
                    temp_dir=dirs.temp,
                    model_dir=dirs.models,
                    host=HOST,
                    startup_check_interval_s=0.05,
                    prompt_timeout_s=600,
                    dispatch_queue_slack=args.slack,
                )
                runner = make_runner(create_app(settings, fetcher=NoDownloads()), shutdown_timeout=2.0)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                site = web.TCPSite(runner, HOST, 0)
                await site.start()
                port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
                url = f"http://{HOST}:{port}"
                timeout = aiohttp.ClientTimeout(total=900)
                http = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
                for _ in range(400):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{url}/ready") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.05)
                queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
                for item in enumerate(workload):
                    queue.put_nowait(item)
                latencies: list[float] = []

                async def client() -> None:
                    while not queue.empty():
                        index, model = queue.get_nowait()
                        body = {"id": f"p{index}", "prompt": prompt(model, args.work_s, index)}
                        started = time.monotonic()
                        async with http.post(f"{url}/prompt", json=body) as response:
                            await response.read()
                            if response.status != 200:
                                raise RuntimeError(f"prompt {index}: HTTP {response.status}")
                        latencies.append(time.monotonic() - started)

                busy_before = await metric(http, url, "comfyui_api_comfy_busy_seconds_total")
                started = time.monotonic()
                await asyncio.gather(*(client() for _ in range(args.clients)))
                wall = time.monotonic() - started
                busy = await metric(http, url, "comfyui_api_comfy_busy_seconds_total") - busy_before
                loads = await metric(http, url, "comfyui_api_model_loads_total")
    finally:
        comfy_pool.ComfyPool.choose = original  # type: ignore[method-assign]
    quantiles = statistics.quantiles(latencies, n=20)
    return {
        "loads": loads,
        "p50": statistics.median(latencies),
        "p95": quantiles[18],
        "wall": wall,
        "busy": busy / (wall * args.comfyuis),
        "throughput": len(latencies) / wall,
    }


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyuis", type=int, default=4)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--load-s", type=float, default=1.0)
    parser.add_argument("--work-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slack", type=int, default=2, help="DISPATCH_QUEUE_SLACK")
    args = parser.parse_args(argv)
    print(
        f"{args.comfyuis} ComfyUIs, {args.models} models, {args.prompts} prompts from {args.clients} "
        f"clients, model load {args.load_s:g} s, work {args.work_s:g} s per prompt, "
        f"DISPATCH_QUEUE_SLACK {args.slack}"
    )
    print(f"{'policy':<16}{'loads':>7}{'p50 s':>8}{'p95 s':>8}{'wall s':>8}{'prompts/s':>11}{'GPU busy':>10}")
    for name, chooser in policies().items():
        r = await run_policy(args, name, chooser)
        print(
            f"{name:<16}{r['loads']:>7.0f}{r['p50']:>8.2f}{r['p95']:>8.2f}{r['wall']:>8.1f}"
            f"{r['throughput']:>11.2f}{r['busy']:>10.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

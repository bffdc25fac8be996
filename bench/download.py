"""Download throughput of the sidecar cache vs curl, and the latency a cache hit adds to a prompt.

    python3 bench/download.py [--size-mib 1024] [--rounds 5] [--rate-mib 0] [--dir /var/tmp/bench-download]

A 1 GiB file is served from a loopback aiohttp server (its own process; sendfile, or paced at --rate-mib MiB/s
to stand for a network link). Each round, interleaved and alternating the order: `curl -o <dir>/curl.out`
and the sidecar's `POST /download` (wait: true; sha256 computed while streaming; temp file + rename; the route
runs in its own process with the real `ModelCache` and `add_download_routes`). Both write to the same
directory tree (the same disk). Then the latency a cache hit adds: `ModelCache.pin()` of an already cached
URL, in process, p50/p99 over many iterations. The load average is printed with the figures: other work on
the same cores moves them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from comfyui_sidecar.cache import CacheSettings, ModelCache
from comfyui_sidecar.cache.routes import add_download_routes
from comfyui_sidecar.fetching import Fetch

HOST = "127.0.0.1"
ME = str(Path(__file__).resolve())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- child processes ----------------------------------------------------------------------------------------


def serve_files(root: Path, port: int, rate_mib: float) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        if not rate_mib:
            return web.FileResponse(path, chunk_size=1 << 20)
        response = web.StreamResponse()
        response.content_length = path.stat().st_size
        await response.prepare(request)
        start = time.monotonic()
        sent = 0
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                await response.write(chunk)
                sent += len(chunk)
                ahead = sent / (rate_mib * (1 << 20)) - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handle)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def serve_sidecar(cache_dir: Path, port: int, budget_gib: float) -> None:
    settings = CacheSettings(
        cache_dir=cache_dir, download_allow_networks=["127.0.0.1/32"], lru_cache_size_gb=budget_gib
    )
    cache = ModelCache(settings, input_dir=cache_dir / "input")
    app = web.Application()
    add_download_routes(app, cache)

    async def start(_: web.Application) -> None:
        await cache.start()

    async def stop(_: web.Application) -> None:
        await cache.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


async def wait_port(port: int, wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


# -- measurements -------------------------------------------------------------------------------------------


def run_curl(url: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


async def run_sidecar_download(http: aiohttp.ClientSession, sidecar: str, url: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    start = time.perf_counter()
    payload = {"url": url, "model_type": "checkpoints", "wait": True}
    async with http.post(f"{sidecar}/download", json=payload) as resp:
        body = await resp.json()
    elapsed = time.perf_counter() - start
    if resp.status != 200:
        raise RuntimeError(f"POST /download failed: {resp.status} {body}")
    return elapsed, body


async def hit_latency(files_base: str, work: Path, iterations: int) -> list[float]:
    settings = CacheSettings(cache_dir=work / "hit-cache", download_allow_networks=["127.0.0.1/32"])
    cache = ModelCache(settings, input_dir=work / "hit-input")
    await cache.start()
    try:
        item = Fetch(
            url=f"{files_base}/small.safetensors",
            node_id="1",
            input_name="ckpt_name",
            kind="model",
            folder="checkpoints",
        )
        async with cache.pin([item], []):
            pass  # the miss: download once
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            async with cache.pin([item], []):
                pass
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        await cache.close()


def spawn_servers(
    work: Path, files_port: int, sidecar_port: int, budget_gib: float, rate_mib: float
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, ME, "--serve-files", str(work / "files"), str(files_port), str(rate_mib)]
        ),
        subprocess.Popen(
            [sys.executable, ME, "--serve-sidecar", str(work / "cache"), str(sidecar_port), str(budget_gib)]
        ),
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-mib", type=float, default=0.0, help="pace the server (0: unpaced)")
    parser.add_argument("--hit-iterations", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/bench-download"))
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is needed")
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    (work / "files").mkdir(parents=True)
    size = args.size_mib << 20
    big = work / "files" / "big.safetensors"
    with big.open("wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(1 << 20))
    (work / "files" / "small.safetensors").write_bytes(os.urandom(64 * 1024))
    os.sync()  # the source file's own writeback must not land inside the timed rounds
    files_port, sidecar_port = free_port(), free_port()
    budget_gib = args.size_mib * 1.3 / 1024  # room for one copy: every round evicts the previous one
    children = spawn_servers(work, files_port, sidecar_port, budget_gib, args.rate_mib)
    load_before = os.getloadavg()[0]
    try:
        await wait_port(files_port)
        await wait_port(sidecar_port)
        files_base = f"http://{HOST}:{files_port}"
        sidecar = f"http://{HOST}:{sidecar_port}"
        curl_s: list[float] = []
        side_s: list[float] = []
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # warm-up (untimed): connections, thread pool, page cache of the served file
            await asyncio.to_thread(run_curl, f"{files_base}/small.safetensors", work / "curl.out")
            await run_sidecar_download(http, sidecar, f"{files_base}/small.safetensors?warmup")
            for rnd in range(args.rounds):
                url = f"{files_base}/big.safetensors?round={rnd}"  # a new URL each round: a real download
                order = ("curl", "sidecar") if rnd % 2 == 0 else ("sidecar", "curl")
                for who in order:
                    if who == "curl":
                        curl_s.append(await asyncio.to_thread(run_curl, url, work / "curl.out"))
                    else:
                        elapsed, body = await run_sidecar_download(http, sidecar, url)
                        side_s.append(elapsed)
                        if body["size"] != size or len(body["sha256"]) != 64:
                            raise RuntimeError(f"unexpected response: {body}")
                print(
                    f"round {rnd + 1}: curl {size / curl_s[-1] / 2**20:7.0f} MiB/s   "
                    f"sidecar {size / side_s[-1] / 2**20:7.0f} MiB/s"
                )
        hits = await hit_latency(files_base, work, args.hit_iterations)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)
    curl_rate = size / statistics.median(curl_s) / 2**20
    side_rate = size / statistics.median(side_s) / 2**20
    result = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "rate_mib": args.rate_mib or "unpaced",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "curl_mib_s_median": round(curl_rate),
        "sidecar_mib_s_median": round(side_rate),
        "ratio_sidecar_vs_curl": round(side_rate / curl_rate, 3),
        "curl_seconds": [round(s, 3) for s in curl_s],
        "sidecar_seconds": [round(s, 3) for s in side_s],
        "cache_hit_pin_ms_p50": round(pct(hits, 0.5) * 1000, 3),
        "cache_hit_pin_ms_p99": round(pct(hits, 0.99) * 1000, 3),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-files":
        serve_files(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-sidecar":
        serve_sidecar(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        asyncio.run(main())

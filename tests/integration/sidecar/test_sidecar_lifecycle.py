"""Contract 6 (lifecycle): warmup before /ready, MAX_QUEUE_DEPTH, supervise mode restarts, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from comfyui_sidecar.app import LIFECYCLE_KEY, build_fetcher
from comfyui_sidecar.settings import Settings
from comfyui_standin.testing import RunningStandin, free_port, sidecar_env
from sidecar_harness import empty_image_prompt, run_sidecar, sidecar_settings, wait_until


def slow_prompt(seconds: float) -> dict[str, object]:
    prompt = empty_image_prompt()
    prompt["3"] = {
        "class_type": "StandinSleep",
        "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 5},
    }
    prompt["2"]["inputs"]["images"] = ["3", 0]
    return prompt


async def code(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return -1


async def test_warmup_runs_before_ready(
    standin: RunningStandin, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(slow_prompt(1.0)))
    settings = sidecar_settings(standin.url, standin.dirs, warmup_prompt_file=warmup)
    async with run_sidecar(settings, wait_ready=False) as sc:
        await asyncio.sleep(0.3)
        assert await code(http, f"{sc.url}/ready") == 503
        assert await code(http, f"{sc.url}/health") == 200
        started = time.monotonic()
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=10)
        assert time.monotonic() - started > 0.3  # the warmup prompt really ran
    assert not list(standin.dirs.output.rglob("warmup-*"))  # its outputs were cleaned up


async def test_ready_is_503_while_the_queue_is_at_max_depth(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    async with run_sidecar(sidecar_settings(standin.url, standin.dirs, max_queue_depth=1)) as sc:
        task = asyncio.create_task(http.post(f"{sc.url}/prompt", json={"prompt": slow_prompt(1.0)}))
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 503), timeout_s=5)
        async with http.get(f"{sc.url}/metrics") as response:
            assert "comfyui_api_queue_depth 1.0" in await response.text()
        response = await task
        assert response.status == 200
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=5)


async def test_supervise_mode_starts_and_restarts_comfyui(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    base = tmp_path / "comfy"
    cmd = f"{sys.executable} -m comfyui_standin --listen 127.0.0.1 --port {port} --base-directory {base}"
    from comfyui_standin.testing import StandinDirs

    dirs = StandinDirs(base, base / "input", base / "output", base / "temp", base / "models")
    settings = sidecar_settings(f"http://127.0.0.1:{port}", dirs, sidecar_mode="supervise", cmd=cmd)
    async with run_sidecar(settings, wait_ready=False) as sc:
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=20)
        async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as response:
            assert response.status == 200
        process = sc.app[LIFECYCLE_KEY].process
        assert process is not None
        first_pid = process.pid
        process.kill()
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 503), timeout_s=5)
        assert await code(http, f"{sc.url}/health") == 200
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=20)
        new = sc.app[LIFECYCLE_KEY].process
        assert new is not None
        assert new.pid != first_pid
        async with http.get(f"{sc.url}/metrics") as response:
            assert "comfyui_api_comfy_restarts_total 1.0" in await response.text()
        async with http.post(f"{sc.url}/prompt", json={"prompt": empty_image_prompt()}) as response:
            assert response.status == 200
    assert new.returncode is not None  # the child is stopped with the sidecar


async def test_sigterm_finishes_in_flight_prompts_then_exits(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    env = sidecar_env(
        standin.url, standin.dirs, port, standin.dirs.base / "cache", SHUTDOWN_GRACE_PERIOD_S="20"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "comfyui_sidecar", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _is(http, f"{url}/ready", 200), timeout_s=20)
        tasks = [
            asyncio.create_task(http.post(f"{url}/prompt", json={"prompt": slow_prompt(0.6)}))
            for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with http.post(f"{url}/prompt", json={"prompt": empty_image_prompt()}) as late:
            assert late.status == 503
        responses = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert [r.status for r in responses] == [200, 200, 200]
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _is(http: aiohttp.ClientSession, url: str, expected: int) -> bool:
    return await code(http, url) == expected


async def test_failing_warmup_keeps_not_ready_then_reports_not_healthy(
    standin: RunningStandin, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    prompt = empty_image_prompt()
    prompt["3"] = {"class_type": "StandinFail", "inputs": {"message": "warmup breaks", "image": ["1", 0]}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps({"prompt": prompt}))
    settings = sidecar_settings(standin.url, standin.dirs, warmup_prompt_file=warmup)
    async with run_sidecar(settings, wait_ready=False) as sc:
        await wait_until(lambda: _is(http, f"{sc.url}/health", 500), timeout_s=15)
        assert await code(http, f"{sc.url}/ready") == 503
        async with http.get(f"{sc.url}/health") as response:
            assert await response.json() == {"version": "1.18.0", "status": "not healthy"}


async def test_warmup_from_a_url(standin: RunningStandin, http: aiohttp.ClientSession) -> None:
    from aiohttp import web

    seen: list[str] = []

    async def serve_warmup(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Token", ""))
        return web.json_response({"prompt": empty_image_prompt()})

    app = web.Application()
    app.router.add_get("/warmup.json", serve_warmup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        settings = sidecar_settings(
            standin.url,
            standin.dirs,
            warmup_prompt_url=f"http://127.0.0.1:{port}/warmup.json",
            http_auth_header_name="X-Token",
            http_auth_header_value="abc",
        )
        async with run_sidecar(settings) as sc:
            assert await code(http, f"{sc.url}/ready") == 200
        assert seen == ["abc"]
    finally:
        await runner.cleanup()


async def test_supervise_without_restart_stops_the_sidecar_with_code_1(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from comfyui_sidecar.app import STATE_KEY, STOP_KEY
    from comfyui_standin.testing import StandinDirs

    port = free_port()
    base = tmp_path / "comfy"
    cmd = f"{sys.executable} -m comfyui_standin --listen 127.0.0.1 --port {port} --base-directory {base}"
    dirs = StandinDirs(base, base / "input", base / "output", base / "temp", base / "models")
    settings = sidecar_settings(
        f"http://127.0.0.1:{port}", dirs, sidecar_mode="supervise", cmd=cmd, always_restart_comfyui=False
    )
    async with run_sidecar(settings, wait_ready=False) as sc:
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=20)
        process = sc.app[LIFECYCLE_KEY].process
        assert process is not None
        process.kill()
        await asyncio.wait_for(sc.app[STOP_KEY].wait(), 10)
        assert sc.app[STATE_KEY].exit_code == 1
        assert await code(http, f"{sc.url}/health") == 500


async def test_supervise_with_a_command_that_cannot_start_stops_with_code_1(tmp_path: Path) -> None:
    from comfyui_sidecar.app import STATE_KEY, STOP_KEY
    from comfyui_standin.testing import StandinDirs

    base = tmp_path / "comfy"
    dirs = StandinDirs(base, base / "input", base / "output", base / "temp", base / "models")
    settings = sidecar_settings(
        f"http://127.0.0.1:{free_port()}",
        dirs,
        sidecar_mode="supervise",
        cmd=str(tmp_path / "no-such-comfyui"),
    )
    async with run_sidecar(settings, wait_ready=False) as sc:
        await asyncio.wait_for(sc.app[STOP_KEY].wait(), 10)
        assert sc.app[STATE_KEY].exit_code == 1
        assert not sc.app[STATE_KEY].healthy


async def test_cmd_alone_supervises_and_comfyui_sees_the_cache_and_extra_folders(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream's variable names only: CMD set means supervise, and the ComfyUI it starts (no
    --extra-model-paths-config in CMD) finds models in the cache root and in EXTRA_MODEL_FOLDERS."""
    port = free_port()
    base = tmp_path / "comfy"
    cache = tmp_path / "cache"
    env = {
        "CMD": f"{sys.executable} -m comfyui_standin --port {port} --base-directory {base}",
        "COMFY_HOME": str(base),
        "COMFYUI_PORT_HOST": str(port),
        "CACHE_DIR": str(cache),
        "EXTRA_MODEL_FOLDERS": "ipadapter",
        "STARTUP_CHECK_INTERVAL_S": "0.05",
        "STARTUP_CHECK_MAX_TRIES": "400",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SIDECAR_MODE", raising=False)
    settings = Settings()
    assert settings.sidecar_mode == "supervise"
    async with run_sidecar(settings, fetcher=build_fetcher(settings), wait_ready=False) as sc:
        await wait_until(lambda: _is(http, f"{sc.url}/ready", 200), timeout_s=30)
        for folder, name in (("loras", "cached.safetensors"), ("ipadapter", "adapter.safetensors")):
            (cache / "models" / folder / name).write_bytes(b"x")
        async with http.get(f"{sc.url}/models") as response:
            listed = await response.json()
    assert "cached.safetensors" in listed["loras"]
    assert listed["ipadapter"] == ["adapter.safetensors"]

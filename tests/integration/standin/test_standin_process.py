"""The stand-in as a child process: command line, extra model paths, crash (SIGKILL) and restart."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from comfyui_standin.testing import StandinProcess, write_model


async def test_kill_and_restart_keep_url_and_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    write_model(shared / "ups" / "x-x2.safetensors")
    write_model(shared / "ckpt" / "c.safetensors")
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        f"mine:\n  base_path: {shared}\n  upscale_models: ups\n  checkpoints: |\n    ckpt\n    missing\n"
    )
    process = StandinProcess(
        tmp_path / "base", extra_args=["--extra-model-paths-config", str(extra), "--cpu"]
    )
    async with process, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{process.url}/models/upscale_models") as r:
            assert await r.json() == ["x-x2.safetensors"]
        async with session.get(f"{process.url}/models/checkpoints") as r:
            assert await r.json() == ["c.safetensors"]
        first_pid = process.pid
        process.kill()
        assert await process.stop() == -9
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{process.url}/system_stats"):
                pass
        await process.start()
        assert process.pid != first_pid
        async with session.get(f"{process.url}/api/models/upscale_models") as r:
            assert await r.json() == ["x-x2.safetensors"]
    assert not process.running()
    assert process.process is not None
    assert process.process.returncode == 0  # SIGTERM is a clean shutdown


async def test_bad_extra_paths_config_exits_with_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_standin",
        "--base-directory",
        str(tmp_path),
        "--port",
        "0",
        "--extra-model-paths-config",
        str(bad),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"not valid YAML" in stderr


async def test_startup_delay_and_port_in_use(tmp_path: Path) -> None:
    process = StandinProcess(tmp_path / "a", startup_delay=0.5)
    await process.start(wait=False)
    try:
        started = asyncio.get_running_loop().time()
        await process.wait_ready(timeout_s=20)
        assert asyncio.get_running_loop().time() - started >= 0.4
        clash = StandinProcess(tmp_path / "b", port=process.port)
        await clash.start(wait=False)
        assert await asyncio.wait_for(clash.process.wait(), 20) == 1  # type: ignore[union-attr]
        await clash.stop()
        assert "cannot listen" in clash.log_path.read_text()
    finally:
        await process.stop()


async def test_sigterm_with_a_prompt_running_exits_promptly(tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": 60, "steps": 2}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}},
    }
    process = StandinProcess(tmp_path)
    await process.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(f"{process.url}/prompt", json={"prompt": prompt}) as r:
                assert r.status == 200
            for _ in range(100):
                async with session.get(f"{process.url}/queue") as r:
                    if (await r.json())["queue_running"]:
                        break
                await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        assert await process.stop(timeout_s=10) == 0
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await process.stop()

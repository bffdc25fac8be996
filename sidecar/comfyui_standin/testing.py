"""Test helpers: run the stand-in ComfyUI on a free 127.0.0.1 port, in-process or as a killable subprocess.

    async with run_standin(tmp_path) as comfy:          # in-process
        comfy.url, comfy.ws_url, comfy.dirs.input, ...

    async with StandinProcess(tmp_path) as comfy:       # subprocess; same port across restarts
        comfy.kill()                                     # SIGKILL: a crash
        await comfy.start()                              # back again

The signatures here are kept stable for other parts of the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
from aiohttp import web
from PIL import Image

from comfyui_standin.config import StandinConfig
from comfyui_standin.models import safetensors_bytes
from comfyui_standin.server import create_app

HOST = "127.0.0.1"


@dataclass(frozen=True)
class StandinDirs:
    base: Path
    input: Path
    output: Path
    temp: Path
    models: Path


@dataclass(frozen=True)
class RunningStandin:
    """A started stand-in: `url` is "http://127.0.0.1:<port>", `ws_url` the websocket base ("ws://.../ws")."""

    url: str
    ws_url: str
    port: int
    dirs: StandinDirs
    config: StandinConfig


def dirs_of(config: StandinConfig) -> StandinDirs:
    return StandinDirs(
        config.base_directory, config.input_dir, config.output_dir, config.temp_dir, config.models_dir
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def run_standin(
    base_dir: Path,
    *,
    exec_delay: float = 0.0,
    extra_model_paths_configs: Sequence[Path] = (),
    port: int = 0,
    preview_method: str = "none",
    model_load_delay: float = 0.0,
    cache_lru: int = 0,
    input_directory: Path | None = None,
    output_directory: Path | None = None,
    temp_directory: Path | None = None,
) -> AsyncIterator[RunningStandin]:
    """Run the stand-in inside this event loop on 127.0.0.1 (a free port unless `port` is given). The
    directory overrides are ComfyUI's flags (temp files go to `<temp_directory>/temp`)."""
    config = StandinConfig(
        base_directory=_absolute(base_dir),
        input_directory=input_directory,
        output_directory=output_directory,
        temp_directory=temp_directory,
        listen=HOST,
        port=port,
        exec_delay=exec_delay,
        model_load_delay=model_load_delay,
        cache_lru=cache_lru,
        preview_method=preview_method,
        extra_model_paths_configs=tuple(Path(p) for p in extra_model_paths_configs),
    )
    runner = web.AppRunner(create_app(config), shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        bound = _bound_port(runner)
        yield RunningStandin(
            f"http://{HOST}:{bound}", f"ws://{HOST}:{bound}/ws", bound, dirs_of(config), config
        )
    finally:
        await runner.cleanup()


def _absolute(path: Path) -> Path:
    return Path(path).resolve()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the stand-in is not listening on a TCP port")


class StandinProcess:
    """The stand-in as a child process (`python -m comfyui_standin`), on a fixed free port, so it can be
    killed (a crash) and started again at the same URL. Its log goes to `<base_dir>/standin.log`."""

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        exec_delay: float = 0.0,
        startup_delay: float = 0.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}/ws"
        base = Path(base_dir).resolve()
        self.config = StandinConfig(
            base_directory=base,
            listen=HOST,
            port=self.port,
            exec_delay=exec_delay,
            startup_delay=startup_delay,
        )
        self.config.make_dirs()
        self.dirs = dirs_of(self.config)
        self.args = [
            sys.executable,
            "-m",
            "comfyui_standin",
            "--listen",
            HOST,
            "--port",
            str(self.port),
            "--base-directory",
            str(base),
            "--exec-delay",
            str(exec_delay),
            "--startup-delay",
            str(startup_delay),
            *extra_args,
        ]
        self.log_path = base / "standin.log"
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, timeout_s: float = 20.0, wait: bool = True) -> None:
        """Spawn the process; unless `wait` is False, return once GET /system_stats answers 200."""
        if self.running():
            raise RuntimeError("the stand-in process is already running")
        self._close_log()
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            stdout=self._log,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
        )
        if wait:
            await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if not self.running():
                    raise RuntimeError(f"the stand-in exited early; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(f"{self.url}/system_stats") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the stand-in did not answer within {timeout_s} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the process (simulates a crash). Returns at once; `await stop()` or `start()` later."""
        if self.running() and self.process is not None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait (SIGKILL after `timeout_s`), return the exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.send_signal(signal.SIGKILL)
                await self.process.wait()
        await self.process.wait()
        self._close_log()
        return self.process.returncode

    async def restart(self, timeout_s: float = 20.0) -> None:
        await self.stop()
        await self.start(timeout_s)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> StandinProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# ---------------------------------------------------------------- fixtures for test data


def sidecar_env(
    comfy_url: str, dirs: StandinDirs, port: int, cache_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment of a `comfyui-sidecar` on 127.0.0.1:`port` in front of the stand-in at `comfy_url`
    (sharing its directories, as in a pod), over this process's environment; `extra` adds or overrides."""
    return {
        **os.environ,
        "PORT": str(port),
        "HOST": HOST,
        "COMFYUI_URL": comfy_url,
        "COMFY_HOME": str(dirs.base),
        "INPUT_DIR": str(dirs.input),
        "OUTPUT_DIR": str(dirs.output),
        "TEMP_DIR": str(dirs.temp),
        "CACHE_DIR": str(cache_dir),
        **extra,
    }


def write_png(
    path: Path, size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (200, 30, 30)
) -> Path:
    """Write a small RGB PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def write_model(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a minimal valid .safetensors file (no tensors) that the stand-in's loaders accept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(safetensors_bytes(metadata))
    return path


def write_corrupt_model(path: Path) -> Path:
    """Write a .safetensors file whose header length is absurd: loading it fails like a corrupt download."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((2**62).to_bytes(8, "little") + os.urandom(64))
    return path


def txt2img(model: str, seed: int = 1, *, sleep_s: float = 0.0, prefix: str = "t2i") -> dict[str, Any]:
    """A txt2img prompt on checkpoint `model`: checkpoint -> text -> KSampler (seed) -> decode
    (-> StandinSleep `sleep_s`, the job's own work) -> SaveImage."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }
    if sleep_s:
        prompt["7"] = {
            "class_type": "StandinSleep",
            "inputs": {"image": ["5", 0], "seconds": sleep_s, "steps": 4},
        }
        prompt["6"]["inputs"]["images"] = ["7", 0]
    return prompt


def upscale(
    model: str,
    *,
    color: int = 0,
    size: int = 8,
    prefix: str = "up",
    sleep_s: float = 0.0,
    sleep_steps: int = 4,
) -> dict[str, Any]:
    """EmptyImage -> UpscaleModelLoader(`model`) -> ImageUpscaleWithModel (-> StandinSleep) -> SaveImage: the
    recorded wf_heavy_upscale's shape, small. The stand-in really opens the model file (its safetensors
    header) and scales by its metadata `scale`."""
    prompt: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if sleep_s:
        prompt["5"] = {
            "class_type": "StandinSleep",
            "inputs": {"image": ["3", 0], "seconds": sleep_s, "steps": sleep_steps},
        }
        prompt["4"]["inputs"]["images"] = ["5", 0]
    return prompt

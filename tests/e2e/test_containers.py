"""The sidecar and the stand-in ComfyUI as containers on the host network: one prompt end to end."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from .conftest import BuiltImage, Docker

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 90
PROMPT_TIMEOUT_S = 60
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 16711680},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e"}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, body: object | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(url: str, docker: Docker, containers: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    status = 0
    while time.monotonic() < deadline:
        try:
            status, _ = http("GET", url, timeout=2)
        except OSError:
            status = 0
        if status == 200:
            return
        time.sleep(0.5)
    logs = "\n".join(docker.run("logs", name, check=False).stderr[-1500:] for name in containers)
    pytest.fail(f"{url} not ready within {READY_TIMEOUT_S}s (last status {status}); logs:\n{logs}")


@pytest.fixture
def sidecar_url(docker: Docker, images: dict[str, BuiltImage], tmp_path: Path) -> Iterator[str]:
    """Stand-in ComfyUI and sidecar containers sharing a data directory, on the host network (127.0.0.1)."""
    data = tmp_path / "comfy"
    data.mkdir()
    data.chmod(0o777)  # the containers run as 65532
    image = images["sidecar"].name
    suffix = uuid.uuid4().hex[:8]
    standin, sidecar = f"e2e-standin-{suffix}", f"e2e-sidecar-{suffix}"
    comfy_port, api_port = free_port(), free_port()
    common = ["run", "-d", "--network", "host", "--read-only", "--tmpfs", "/tmp", "-v", f"{data}:/data"]
    try:
        docker.run(
            *common,
            "--name",
            standin,
            "--entrypoint",
            "comfyui-standin",
            image,
            "--listen",
            "127.0.0.1",
            "--port",
            str(comfy_port),
            "--base-directory",
            "/data",
        )
        docker.run(
            *common,
            "--name",
            sidecar,
            "-e",
            "HOST=127.0.0.1",
            "-e",
            f"PORT={api_port}",
            "-e",
            f"COMFYUI_URL=http://127.0.0.1:{comfy_port}",
            "-e",
            "COMFY_HOME=/data",
            "-e",
            f"PROMPT_TIMEOUT_S={PROMPT_TIMEOUT_S}",
            image,
        )
        url = f"http://127.0.0.1:{api_port}"
        wait_ready(f"{url}/ready", docker, [standin, sidecar])
        yield url
    finally:
        for name in (sidecar, standin):
            docker.run("rm", "-f", name, check=False)


def test_one_prompt_end_to_end_returns_the_png(sidecar_url: str, tmp_path: Path) -> None:
    status, body = http("POST", f"{sidecar_url}/prompt", {"prompt": WORKFLOW}, timeout=PROMPT_TIMEOUT_S + 10)
    assert status == 200, body[:1000]
    response = json.loads(body)
    assert len(response["images"]) == 1
    assert response["filenames"][0].endswith(".png")
    png = base64.b64decode(response["images"][0])
    (tmp_path / "output.png").write_bytes(png)
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG"
        assert picture.size == (64, 48)
        # red (255, 0, 0) inverted is cyan
        assert picture.convert("RGB").getpixel((10, 10)) == (0, 255, 255)


def test_bad_prompt_is_a_clear_400_through_the_container(sidecar_url: str) -> None:
    status, body = http("POST", f"{sidecar_url}/prompt", {"prompt": {"1": {"class_type": "EmptyImage"}}})
    assert status == 400
    assert "error" in json.loads(body)

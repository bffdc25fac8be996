"""Fixtures for the e2e tier: a Docker engine (hack/docker.sh) and the two images (hack/images.sh).

The images are built once per session and the build is timed; E2E_REUSE_IMAGES=1 reuses images already built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tier import tool_missing

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")
IMAGE_REPO = os.environ.get("IMAGE_REPO", "ghcr.io/comfyui-operator")
BUILD_TIMEOUT_S = 1200
DOCKER_TIMEOUT_S = 120


@dataclass(frozen=True)
class BuiltImage:
    name: str
    size_bytes: int
    build_seconds: int | None  # None when reused


@dataclass(frozen=True)
class Docker:
    binary: str
    host: str

    def run(
        self, *args: str, timeout: float = DOCKER_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "DOCKER_HOST": self.host},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])}... failed: {result.stderr.strip()[-2000:]}")
        return result


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "hack" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def docker() -> Docker:
    if not (
        shutil.which("dockerd") or os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()
    ):
        tool_missing("no Docker engine: install Debian's docker.io (or run on a machine with Docker)")
    started = _script("docker.sh", "start", timeout=90)
    if started.returncode != 0:
        tool_missing(f"no Docker engine could be started: {started.stderr.strip()[-500:]}")
    env = _script("docker.sh", "env", timeout=30)
    assert env.returncode == 0, env.stderr
    host = env.stdout.strip().removeprefix("export DOCKER_HOST=")
    binary = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    assert binary, "docker client not found"
    return Docker(binary, host)


def _existing(docker: Docker, name: str) -> BuiltImage | None:
    result = docker.run("image", "inspect", "-f", "{{.Size}}", name, check=False)
    if result.returncode != 0:
        return None
    return BuiltImage(name, int(result.stdout.strip()), None)


@pytest.fixture(scope="session")
def images(docker: Docker) -> dict[str, BuiltImage]:
    names = {c: f"{IMAGE_REPO}/{c}:{IMAGE_TAG}" for c in ("operator", "sidecar")}
    if os.environ.get("E2E_REUSE_IMAGES") == "1":
        found = {c: _existing(docker, n) for c, n in names.items()}
        if all(found.values()):
            return {c: image for c, image in found.items() if image is not None}
    built = _script("images.sh", timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, f"hack/images.sh failed:\n{built.stderr[-3000:]}"
    result: dict[str, BuiltImage] = {}
    for line in built.stdout.splitlines():
        name, size, seconds = line.split()
        component = name.rsplit("/", 1)[1].split(":")[0]
        result[component] = BuiltImage(name, int(size), int(seconds))
    assert set(result) == {"operator", "sidecar"}, built.stdout
    return result

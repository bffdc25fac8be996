"""Fixtures for the e2e tier: a Docker engine (hack/docker.sh), the two images (hack/images.sh) and a cluster
with real pods.

The images are built once per session and the build is timed; E2E_REUSE_IMAGES=1 reuses images already built.
The cluster is the kind cluster `make up` creates (hack/up.sh: node image, images, chart, the stand-in
instance, one prompt), deleted at the end unless E2E_KEEP_CLUSTER=1; or, with E2E_KUBE_CONTEXT set, any
cluster of the kubeconfig that has the chart installed and can run the images (nothing is created or
deleted then).
A private Docker engine this session started is stopped at the end (unless the cluster is kept in it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tier import tool_missing

from .kube import Kube, kube_from_env

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


def _engine_answers() -> bool:
    return _script("docker.sh", "status", timeout=30).returncode == 0


def _keep_cluster() -> bool:
    return os.environ.get("E2E_KEEP_CLUSTER") == "1" or bool(os.environ.get("E2E_KUBE_CONTEXT"))


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    if not (
        shutil.which("dockerd") or os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()
    ):
        tool_missing("no Docker engine: install Debian's docker.io (or run on a machine with Docker)")
    was_running = _engine_answers()
    started = _script("docker.sh", "start", timeout=90)
    if started.returncode != 0:
        tool_missing(f"no Docker engine could be started: {started.stderr.strip()[-500:]}")
    env = _script("docker.sh", "env", timeout=30)
    assert env.returncode == 0, env.stderr
    host = env.stdout.strip().removeprefix("export DOCKER_HOST=")
    binary = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    assert binary, "docker client not found"
    yield Docker(binary, host)
    if not was_running and not _keep_cluster():
        _script("docker.sh", "stop", timeout=120)  # only ever the private engine docker.sh started


@dataclass(frozen=True)
class Cluster:
    kube: Kube
    up_output: str | None  # what `make up` printed, when this session created the cluster


UP_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def cluster(docker: Docker) -> Iterator[Cluster]:
    if os.environ.get("E2E_KUBE_CONTEXT"):
        yield Cluster(kube_from_env(), None)
        return
    if not shutil.which("kind") and not any(
        (Path(d) / "kind").is_file() for d in os.environ.get("COMFYUI_TOOLS_BIN", "").split(":") if d
    ):
        tool_missing("kind is not installed: hack/build-tools.sh kind (make e2e builds it)")
    up = subprocess.run(
        [str(REPO / "hack" / "up.sh")],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
        cwd=REPO,
        env={**os.environ, "DOCKER_HOST": docker.host},
    )
    try:
        assert up.returncode == 0, f"make up failed:\n{up.stderr[-6000:]}"
        yield Cluster(kube_from_env(), up.stdout + up.stderr)
    finally:
        if not _keep_cluster():
            subprocess.run([str(REPO / "hack" / "down.sh")], timeout=300, check=False, cwd=REPO)


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return cluster.kube


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

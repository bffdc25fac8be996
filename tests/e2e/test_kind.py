"""The kind tier: `make up` on a real cluster (operator, stand-in instance, one prompt through the Service).

Skips, naming what is missing, when kind or its node image is not available (no container registry here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from .conftest import REPO, Docker

pytestmark = pytest.mark.e2e

UP_TIMEOUT_S = 1800
PULL_TIMEOUT_S = 600


def _node_image() -> str:
    configured = os.environ.get("KIND_NODE_IMAGE")
    if configured:
        return configured
    match = re.search(r"KIND_NODE_IMAGE:-([^}]+)\}", (REPO / "hack" / "up.sh").read_text())
    assert match, "hack/up.sh has no default KIND_NODE_IMAGE"
    return match.group(1)


def _kind_binary() -> str | None:
    for directory in os.environ.get("COMFYUI_TOOLS_BIN", "").split(":"):
        candidate = Path(directory) / "kind"
        if directory and candidate.is_file():
            return str(candidate)
    return shutil.which("kind")


@pytest.fixture(scope="module")
def kind_cluster(docker: Docker) -> Iterator[str]:
    if _kind_binary() is None:
        pytest.skip("kind is not installed: hack/build-tools.sh kind (make e2e builds it)")
    image = _node_image()
    present = docker.run("image", "inspect", image, check=False).returncode == 0
    if not present and docker.run("pull", image, timeout=PULL_TIMEOUT_S, check=False).returncode != 0:
        pytest.skip(f"kind node image {image} is not available locally and can not be pulled (no registry)")
    up = subprocess.run(
        [str(REPO / "hack" / "up.sh")],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
        cwd=REPO,
    )
    try:
        assert up.returncode == 0, f"make up failed:\n{up.stderr[-4000:]}"
        yield up.stdout
    finally:
        if os.environ.get("E2E_KEEP_CLUSTER") != "1":
            subprocess.run([str(REPO / "hack" / "down.sh")], timeout=300, check=False, cwd=REPO)


def test_make_up_answers_a_prompt_with_a_png(kind_cluster: str) -> None:
    match = re.search(r"its image is at: (\S+)", kind_cluster)
    assert match, kind_cluster
    path = Path(match.group(1))
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (256, 256)


def test_make_up_fails_with_one_clear_message_when_the_node_image_is_missing(docker: Docker) -> None:
    missing = "kindest/node:v0.0.0-does-not-exist"
    up = subprocess.run(
        [str(REPO / "hack" / "up.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "KIND_NODE_IMAGE": missing},
    )
    assert up.returncode == 1
    assert f"missing: the kind node image {missing}" in up.stderr or "missing: kind" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr
    assert up.stderr.strip().count("\n") < 10, up.stderr

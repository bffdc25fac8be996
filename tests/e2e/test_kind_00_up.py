"""`make up` on real pods: a kind cluster (the public node image, or one built here), the chart, the stand-in
instance, one prompt through the Service; and the operator running as the chart installs it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from .conftest import REPO, Cluster, Docker
from .kube import Kube

pytestmark = pytest.mark.e2e


def _up_output(cluster: Cluster) -> str:
    if cluster.up_output is None:
        pytest.skip("E2E_KUBE_CONTEXT: the cluster was not created by `make up` in this session")
    return cluster.up_output


def test_make_up_answers_a_prompt_with_a_png(cluster: Cluster) -> None:
    match = re.search(r"its image is at: (\S+)", _up_output(cluster))
    assert match, _up_output(cluster)[-3000:]
    with Image.open(Path(match.group(1))) as picture:
        assert picture.format == "PNG"
        assert picture.size == (256, 256)
        assert picture.convert("RGB").getpixel((0, 0)) == (255 - 0x33, 255 - 0x99, 255 - 0xFF)  # inverted


def test_make_up_says_which_node_image_it_used(cluster: Cluster) -> None:
    assert re.search(r"node image: the (public|local) \S+", _up_output(cluster)), _up_output(cluster)[-3000:]


def test_operator_runs_and_is_ready(kube: Kube) -> None:
    deployment = kube.get("deployment", "comfyui-operator", "comfyui-system")
    assert deployment, "the chart's operator Deployment is missing"
    available = {c["type"]: c["status"] for c in deployment["status"].get("conditions", [])}
    assert available.get("Available") == "True", deployment["status"]
    pods = kube.pods("comfyui-system", "app.kubernetes.io/name=comfyui-operator")
    assert pods
    statuses = [status for pod in pods for status in pod["status"]["containerStatuses"]]
    assert all(status["ready"] and status["restartCount"] == 0 for status in statuses), statuses


def test_make_up_fails_with_one_clear_message_when_the_node_image_is_missing(docker: Docker) -> None:
    missing = "kindest/node:v0.0.0-does-not-exist"
    up = subprocess.run(
        [str(REPO / "hack" / "up.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env={**os.environ, "KIND_NODE_IMAGE": missing, "DOCKER_HOST": docker.host},
    )
    assert up.returncode == 1
    assert f"KIND_NODE_IMAGE={missing} is not in the Docker engine and can not be pulled" in up.stderr, (
        up.stderr
    )
    assert "make up: no kind node image" in up.stderr
    assert "Traceback" not in up.stderr

"""The stand-in instance's pod on a real kubelet: both containers Ready, the shared model volume ReadOnlyMany
and read-only in both containers, and ComfyUI loading a model from it through the sidecar's
extra_model_paths.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from comfyui_standin.models import safetensors_bytes

from .conftest import REPO
from .kube import (
    Kube,
    container_status,
    e2e_namespace,
    models_volume,
    pod_of,
    post_json,
    standin_instance,
    upscale_prompt,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
NAME = "pod"
SHARED_MODEL = "e2e-shared-x3.safetensors"


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    # The host's .out/models is the node's /var/lib/comfyui-models (kind-config.yaml): a model placed here is
    # in the shared volume.
    folder = REPO / ".out" / "models" / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHARED_MODEL).write_bytes(safetensors_bytes({"scale": "3"}))
    with e2e_namespace(kube, "e2e-pod") as name:
        kube.apply(*models_volume(name))
        kube.apply(standin_instance(NAME, name, models={"claimName": "models"}))
        wait_instance_ready(kube, NAME, name)
        yield name


@pytest.fixture(scope="module")
def pod(kube: Kube, namespace: str) -> dict[str, Any]:
    return pod_of(kube, NAME, namespace)


def test_both_containers_are_ready(pod: dict[str, Any]) -> None:
    assert pod["status"]["phase"] == "Running"
    for name in ("sidecar", "comfyui"):
        status = container_status(pod, name)
        assert status["ready"], status
        assert status["started"], status
        assert status["restartCount"] == 0, status


def test_the_sidecar_is_a_native_sidecar_started_before_comfyui(pod: dict[str, Any]) -> None:
    sidecar = container_status(pod, "sidecar")
    comfyui = container_status(pod, "comfyui")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sidecar"]
    assert sidecar["state"]["running"]["startedAt"] <= comfyui["state"]["running"]["startedAt"]


def test_the_model_volume_is_read_only_many(kube: Kube, namespace: str) -> None:
    claim = kube.get("pvc", "models", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["status"]["accessModes"] == ["ReadOnlyMany"]
    volume = kube.get("pv", claim["spec"]["volumeName"], "")
    assert volume["spec"]["accessModes"] == ["ReadOnlyMany"]


@pytest.mark.parametrize("container", ["sidecar", "comfyui"])
def test_writing_into_the_model_volume_fails_with_erofs(
    kube: Kube, namespace: str, pod: dict[str, Any], container: str
) -> None:
    name = pod["metadata"]["name"]
    listed = kube.exec(namespace, name, container, "ls", "/models/upscale_models")
    assert SHARED_MODEL in listed.stdout, listed.stderr
    written = kube.exec(namespace, name, container, "sh", "-c", "echo x > /models/upscale_models/new")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr


def test_comfyui_loads_a_model_from_the_shared_volume(kube: Kube, namespace: str) -> None:
    with kube.port_forward(namespace, f"service/{NAME}", 3000) as url:
        status, body = post_json(f"{url}/prompt", {"prompt": upscale_prompt(SHARED_MODEL, size=16)})
    assert status == 200, body
    from base64 import b64decode
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(b64decode(body["images"][0]))) as image:
        assert image.size == (48, 48)  # the shared file's metadata says scale 3

"""A model library on real pods (docs/library.md): a ComfyUIModelLibrary synced from an in-cluster file server
into a claim of kind's default StorageClass (`standard`, local-path: ReadWriteOnce, one node, so the instance
pod can mount the same claim read-only), then an instance that uses it answers a prompt whose model comes
from the library, with no download by its sidecar.

Order: the instance is applied first and waits with no pods (ModelsReady LibraryNotFound); then the library;
its sync Job (the sidecar image, `comfyui-sidecar sync`) downloads and verifies the model and reports through
its termination message, which the operator turns into the library's status; then the instance starts."""

from __future__ import annotations

import hashlib
import json
import re
from base64 import b64decode
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from PIL import Image

from .incluster.fileserver import model_bytes
from .kube import (
    ALLOW_SERVICE_NETWORK,
    SIDECAR_IMAGE,
    Kube,
    condition,
    deploy_file_server,
    e2e_namespace,
    files_url,
    get_text,
    pod_of,
    post_json,
    standin_instance,
    upscale_prompt,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
LIBRARY = "lib"
INSTANCE = "uses-lib"
MODEL = "library-x4.safetensors"
SIZE = 1 << 20
# kind's Service network: the in-cluster file server is a private address, refused unless allowed.


def library(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "comfyui.operator.dev/v1alpha1",
        "kind": "ComfyUIModelLibrary",
        "metadata": {"name": LIBRARY, "namespace": namespace},
        "spec": {
            # kind's default StorageClass (local-path) offers ReadWriteOnce only; one node, so the sync pod
            # and the instance's pod both mount it there.
            "storage": {"size": "1Gi", "accessMode": "ReadWriteOnce", "reclaimPolicy": "Delete"},
            "models": [
                {
                    "url": files_url(namespace, f"/files/{MODEL}?size={SIZE}&scale=4"),
                    "target": f"upscale_models/{MODEL}",
                    "sha256": hashlib.sha256(model_bytes(SIZE, "4")).hexdigest(),
                }
            ],
            "sync": {"image": SIDECAR_IMAGE, "env": [ALLOW_SERVICE_NETWORK], "backoffLimit": 1},
        },
    }


def _library(kube: Kube, namespace: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = kube.get("comfyuimodellibrary", LIBRARY, namespace)
    return found


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-library") as name:
        deploy_file_server(kube, name)
        yield name


def _file_requests(kube: Kube, namespace: str) -> dict[str, int]:
    with kube.port_forward(namespace, "service/files", 8000) as files:
        status, text = get_text(f"{files}/stats")
    assert status == 200, text
    counts: dict[str, int] = json.loads(text)["requests"]
    return counts


def test_an_instance_waits_for_its_library_and_then_serves_a_model_from_it(
    kube: Kube, namespace: str
) -> None:
    kube.apply(standin_instance(INSTANCE, namespace, models={"libraryRef": {"name": LIBRARY}}))

    def waiting() -> dict[str, Any] | None:
        instance = kube.get("comfyuiinstance", INSTANCE, namespace)
        return instance if condition(instance, "ModelsReady").get("reason") == "LibraryNotFound" else None

    kube.wait(waiting, timeout=60, what="the instance reporting its library missing")
    assert kube.pods(namespace, f"app.kubernetes.io/instance={INSTANCE}") == []

    kube.apply(library(namespace))

    def synced() -> dict[str, Any] | None:
        found = _library(kube, namespace)
        return found if condition(found, "Ready").get("status") == "True" else None

    try:
        found = kube.wait(synced, timeout=300, what=f"comfyuimodellibrary/{LIBRARY} Ready")
    except AssertionError as error:
        jobs = kube.run("-n", namespace, "get", "jobs,pods,pvc", "-o", "wide", check=False).stdout
        raise AssertionError(f"{error}\nlibrary: {json.dumps(_library(kube, namespace))}\n{jobs}") from None
    (model,) = found["status"]["models"]
    assert model["phase"] == "Ready"
    assert model["size"] == SIZE
    assert model["sha256"] == hashlib.sha256(model_bytes(SIZE, "4")).hexdigest()
    assert found["status"]["claimName"] == LIBRARY
    job = kube.json("-n", namespace, "get", "jobs", "-l", f"comfyui.operator.dev/library={LIBRARY}")["items"][
        0
    ]
    pods = kube.pods(namespace, f"batch.kubernetes.io/job-name={job['metadata']['name']}")
    terminated = pods[-1]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert json.loads(terminated["message"])["r"][0][0] == "R"  # the report came through the kubelet

    instance = wait_instance_ready(kube, INSTANCE, namespace)
    assert condition(instance, "ModelsReady").get("status") == "True"
    pod = pod_of(kube, INSTANCE, namespace)["metadata"]["name"]
    # the claim is mounted read-only in ComfyUI's container
    write = kube.exec(namespace, pod, "comfyui", "sh", "-c", "touch /models/upscale_models/x")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr

    with kube.port_forward(namespace, f"service/{INSTANCE}", 3000) as url:
        status, body = post_json(f"{url}/prompt", {"prompt": upscale_prompt(MODEL, size=8)})
        assert status == 200, body
        with Image.open(BytesIO(b64decode(body["images"][0]))) as image:
            assert image.size == (32, 32)  # ComfyUI opened the library's file: its metadata says scale 4
        assert body["prompt"]["2"]["inputs"]["model_name"] == MODEL  # a file name, not rewritten
        status, metrics = get_text(f"{url}/metrics")
    downloads = re.search(r"^comfyui_api_model_download_duration_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert downloads is None or float(downloads.group(1)) == 0, "the sidecar downloaded a model"
    assert _file_requests(kube, namespace).get(MODEL) == 1  # once, by the sync Job

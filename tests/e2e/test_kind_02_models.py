"""Models from URLs on real pods: a model served from inside the cluster is downloaded once into the pod's
cache and ComfyUI loads it through the cache's links; a folder added through the sidecar's extra-folder
settings is seen by ComfyUI (one extra_model_paths.yaml, written by the sidecar)."""

from __future__ import annotations

import json
import re
from base64 import b64decode
from collections.abc import Iterator
from io import BytesIO

import pytest
from PIL import Image

from .kube import (
    ALLOW_SERVICE_NETWORK,
    Kube,
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
NAME = "models"
EXTRA_FOLDER = "e2e_custom"


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-models") as name:
        deploy_file_server(kube, name)
        kube.apply(
            standin_instance(
                NAME,
                name,
                sidecar={
                    "env": [
                        ALLOW_SERVICE_NETWORK,
                        {"name": "EXTRA_MODEL_FOLDERS", "value": EXTRA_FOLDER},
                    ]
                },
            )
        )
        wait_instance_ready(kube, NAME, name)
        yield name


@pytest.fixture(scope="module")
def url(kube: Kube, namespace: str) -> Iterator[str]:
    with kube.port_forward(namespace, f"service/{NAME}", 3000) as forwarded:
        yield forwarded


def _file_requests(kube: Kube, namespace: str) -> dict[str, int]:
    with kube.port_forward(namespace, "service/files", 8000) as files:
        status, text = get_text(f"{files}/stats")
    assert status == 200, text
    counts: dict[str, int] = json.loads(text)["requests"]
    return counts


def _size(body: dict[str, object]) -> tuple[int, int]:
    images = body["images"]
    assert isinstance(images, list)
    with Image.open(BytesIO(b64decode(images[0]))) as image:
        return image.size


def test_a_url_model_is_downloaded_once_and_loaded_through_the_cache(
    kube: Kube, namespace: str, url: str
) -> None:
    model = files_url(namespace, "/files/up-x4.safetensors?size=2097152&scale=4")
    for _ in range(2):
        status, body = post_json(f"{url}/prompt", {"prompt": upscale_prompt(model, size=8)})
        assert status == 200, body
        assert _size(body) == (32, 32)  # ComfyUI opened the downloaded file: its metadata says scale 4
        loader = body["prompt"]["2"]["inputs"]["model_name"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}\.safetensors", loader), loader  # rewritten to the cache name
    assert _file_requests(kube, namespace).get("up-x4.safetensors") == 1
    pod = pod_of(kube, NAME, namespace)["metadata"]["name"]
    # ComfyUI's container sees the link in the cache's model tree, pointing at the blob.
    link = kube.exec(
        namespace, pod, "comfyui", "sh", "-c", f"readlink -f /cache/models/upscale_models/{loader}"
    )
    assert link.returncode == 0, link.stderr
    assert link.stdout.strip().startswith("/cache/blobs/"), link.stdout
    status, text = get_text(f"{url}/metrics")
    hits = re.search(r'comfyui_api_model_cache_requests_total\{result="hit"\} (\d+)', text)
    assert hits, text[-2000:]
    assert int(hits.group(1)) >= 1


def test_a_folder_from_the_extra_folder_setting_is_seen_by_comfyui(url: str, namespace: str) -> None:
    body = {
        "url": files_url(namespace, "/files/custom.safetensors?size=4096"),
        "model_type": EXTRA_FOLDER,
        "filename": "custom.safetensors",
        "wait": True,
    }
    status, answer = post_json(f"{url}/download", body)
    assert status == 200, answer
    status, text = get_text(f"{url}/models")
    assert status == 200, text
    # GET /models lists what ComfyUI itself reports, folder by folder.
    assert "custom.safetensors" in json.loads(text).get(EXTRA_FOLDER, []), text

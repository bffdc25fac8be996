"""gpu.mode ComfyUIPerGPU on a real kubelet (docs/operator.md "One ComfyUI per GPU"). kind has no GPUs, so the
node is given a made-up extended resource (Kubernetes' "advertise extended resources for a node" status patch)
and the instance asks for that resource: the pod runs two stand-in ComfyUIs, one "GPU" each, and the sidecar
sends each model to the ComfyUI that already holds it. The resource is removed from the node afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from comfyui_standin.models import safetensors_bytes

from .conftest import REPO
from .kube import (
    Kube,
    container_status,
    e2e_namespace,
    get_text,
    models_volume,
    pod_of,
    post_json,
    standin_instance,
    upscale_prompt,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
NAME = "per-gpu"
RESOURCE = "e2e.comfyui.operator.dev/gpu"
PATCH_PATH = "/status/capacity/" + RESOURCE.replace("~", "~0").replace("/", "~1")
MODELS = ("e2e-gpu-a-x2.safetensors", "e2e-gpu-b-x2.safetensors")
LOAD_S = 2


def _patch_nodes(kube: Kube, operation: list[dict[str, Any]]) -> None:
    for node in kube.json("get", "nodes")["items"]:
        kube.run(
            "patch",
            "node",
            node["metadata"]["name"],
            "--subresource=status",
            "--type=json",
            "-p",
            json.dumps(operation),
            check=False,
        )


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    folder = REPO / ".out" / "models" / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        (folder / model).write_bytes(safetensors_bytes({"scale": "2"}))
    _patch_nodes(kube, [{"op": "add", "path": PATCH_PATH, "value": "4"}])
    try:
        with e2e_namespace(kube, "e2e-per-gpu") as name:
            kube.apply(*models_volume(name))
            kube.apply(
                standin_instance(
                    NAME,
                    name,
                    models={"claimName": "models"},
                    comfyui={
                        "gpu": {"count": 2, "mode": "ComfyUIPerGPU", "resourceName": RESOURCE},
                        "args": ["--model-load-delay", str(LOAD_S)],
                    },
                )
            )
            wait_instance_ready(kube, NAME, name)
            yield name
    finally:
        _patch_nodes(kube, [{"op": "remove", "path": PATCH_PATH}])


@pytest.fixture(scope="module")
def pod(kube: Kube, namespace: str) -> dict[str, Any]:
    return pod_of(kube, NAME, namespace)


@pytest.fixture(scope="module")
def url(kube: Kube, namespace: str, pod: dict[str, Any]) -> Iterator[str]:
    with kube.port_forward(namespace, f"pod/{pod['metadata']['name']}", 3000) as base:
        yield base


def test_two_comfyuis_one_resource_each_all_ready(pod: dict[str, Any]) -> None:
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == ["comfyui-0", "comfyui-1"]
    for container in containers:
        assert container["resources"]["limits"][RESOURCE] == "1"
        status = container_status(pod, container["name"])
        assert status["ready"], status
        assert status["restartCount"] == 0, status


def test_each_model_goes_to_the_comfyui_that_holds_it(url: str) -> None:
    for round_ in range(3):
        for index, model in enumerate(MODELS):
            status, body = post_json(
                f"{url}/prompt", {"id": f"r{round_}m{index}", "prompt": upscale_prompt(model)}
            )
            assert status == 200, body
    status, text = get_text(f"{url}/internal/placement")
    assert status == 200, text
    placement = json.loads(text)
    loaded = sorted(model for c in placement["comfyuis"] for model in c["loaded_models"])
    assert loaded == sorted(f"upscale_models/{m}" for m in MODELS), placement
    assert all(c["up"] for c in placement["comfyuis"]), placement
    status, metrics = get_text(f"{url}/metrics")
    loads = next(line for line in metrics.splitlines() if line.startswith("comfyui_api_model_loads_total{"))
    assert loads.endswith(" 2.0"), loads  # one load per model, not one per prompt


def test_each_comfyui_is_probed_on_its_own(url: str) -> None:
    for index in (0, 1):
        status, text = get_text(f"{url}/health/comfyui/{index}")
        assert status == 200, text
    status, _ = get_text(f"{url}/health/comfyui/2")
    assert status == 404


def test_the_sidecar_logs_json_lines_with_the_job_id(kube: Kube, namespace: str, pod: dict[str, Any]) -> None:
    logs = kube.run("-n", namespace, "logs", pod["metadata"]["name"], "-c", "sidecar").stdout
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert lines, logs[-2000:]
    dispatched = [line for line in lines if "goes to ComfyUI" in line["message"]]
    assert {line["job_id"] for line in dispatched} >= {"r0m0", "r0m1"}, dispatched[:4]

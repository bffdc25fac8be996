"""Scenario 11: gpu.mode ComfyUIPerGPU on fake 8-GPU nodes: each pod runs one ComfyUI container per GPU, each
requesting one GPU, and the scheduler places the whole pod on a node with that many free GPUs; more GPUs than
a node has is Unschedulable. Without the mode, several GPUs feed one ComfyUI and the status says so."""

from __future__ import annotations

from k8s_cluster import GPU_RESOURCE
from k8s_expected import chart_settings, differences_from_builders
from k8s_instances import RESOURCE, gpu_request, instance, pod_ready, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess
from k8s_session import Operators


def _per_gpu(name: str, gpus: int, replicas: int = 1) -> Manifest:
    manifest = instance(name, replicas=replicas, gpus=gpus)
    manifest["spec"]["comfyui"]["gpu"]["mode"] = "ComfyUIPerGPU"
    return manifest


def _condition(live: Manifest | None, kind: str) -> Manifest:
    for cond in (live or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def test_one_comfyui_per_gpu_on_gpu_nodes(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str
) -> None:
    kubectl.apply([_per_gpu("per-gpu", gpus=4, replicas=2)], namespace)
    live = wait_ready(kubectl, "per-gpu", namespace, timeout=120)
    assert differences_from_builders(kubectl, live, chart_settings(operators.release.deployment)) == []
    assert "only one GPU" not in _condition(live, "Ready")["message"]
    nodes = {n["metadata"]["name"]: n for n in kubectl.items("nodes")}
    pods = [p for p in kubectl.items("pods", namespace, live["status"]["selector"]) if pod_ready(p)]
    assert len(pods) == 2
    used: dict[str, int] = {}
    for pod in pods:
        containers = pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["comfyui-0", "comfyui-1", "comfyui-2", "comfyui-3"]
        for container in containers:
            assert container["resources"]["limits"][GPU_RESOURCE] == "1"
            assert container["resources"]["requests"][GPU_RESOURCE] == "1"
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sidecar"]
        assert gpu_request(pod["spec"]) == 4
        node = nodes[pod["spec"]["nodeName"]]
        assert int(node["status"]["allocatable"].get(GPU_RESOURCE, 0)) >= 4, node["metadata"]["name"]
        used[node["metadata"]["name"]] = used.get(node["metadata"]["name"], 0) + 4
        statuses = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}
        assert sorted(statuses) == [c["name"] for c in containers]
    for node_name, gpus in used.items():
        assert gpus <= int(nodes[node_name]["status"]["allocatable"][GPU_RESOURCE])


def test_more_gpus_than_a_node_has_is_unschedulable_and_one_comfyui_on_two_gpus_is_noted(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([_per_gpu("wide", gpus=12)], namespace)

    def unschedulable() -> Manifest | None:
        ready = _condition(kubectl.get(RESOURCE, "wide", namespace), "Ready")
        return ready if ready.get("reason") == "Unschedulable" else None

    ready = wait_for(unschedulable, timeout=90, what="Ready with reason Unschedulable")
    assert f"Insufficient {GPU_RESOURCE}" in ready["message"], ready

    kubectl.apply([instance("wide", gpus=2)], namespace)  # the mode off: one ComfyUI gets both GPUs
    live = wait_ready(kubectl, "wide", namespace, timeout=120)
    message = _condition(live, "Ready")["message"]
    assert "only one GPU is used" in message, message
    assert "spec.comfyui.gpu.mode: ComfyUIPerGPU" in message
    pods = [p for p in kubectl.items("pods", namespace, live["status"]["selector"]) if pod_ready(p)]
    assert [[c["name"] for c in p["spec"]["containers"]] for p in pods] == [["comfyui"]]

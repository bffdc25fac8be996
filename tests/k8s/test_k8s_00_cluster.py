"""The cluster itself: pinned versions, fake GPU nodes, and pods that kwok runs on them."""

from __future__ import annotations

import json

from k8s_cluster import GPU_RESOURCE, GPU_TOLERATION, KwokCluster
from k8s_instances import pod_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_kubelet import NODE as KUBELET_NODE
from k8s_tools import Tools


def test_server_runs_the_pinned_kubernetes(kubectl: Kubectl, tools: Tools) -> None:
    version = json.loads(kubectl.out("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == tools.kube_version


def test_gpu_nodes_are_tainted_and_allocatable(kubectl: Kubectl) -> None:
    nodes = {n["metadata"]["name"]: n for n in kubectl.items("nodes")}
    gpu = {name: n for name, n in nodes.items() if GPU_RESOURCE in n["status"]["allocatable"]}
    assert sorted(gpu) == ["gpu-node-a", "gpu-node-b", KUBELET_NODE]
    assert "kwok.x-k8s.io/node" not in nodes[KUBELET_NODE]["metadata"]["annotations"]
    for node in gpu.values():
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert "taints" not in nodes["cpu-node"]["spec"] or not any(
        t["key"] == GPU_RESOURCE for t in nodes["cpu-node"]["spec"]["taints"]
    )


def _pod(name: str, gpus: int) -> Manifest:
    container: Manifest = {"name": "main", "image": "registry.example.invalid/x:1"}
    spec: Manifest = {"containers": [container]}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_kwok_runs_pods_where_the_scheduler_puts_them(
    kubectl: Kubectl, namespace: str, cluster: KwokCluster
) -> None:
    kubectl.apply([_pod("gpu-pod", 2), _pod("cpu-pod", 0)], namespace)

    def running() -> dict[str, str] | None:
        pods = kubectl.items("pods", namespace)
        ready = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods if pod_ready(p)}
        return ready if len(ready) == 2 else None

    placed = wait_for(running, timeout=60, what="both pods Running and Ready")
    assert placed["gpu-pod"].startswith("gpu-node-")
    assert placed["cpu-pod"] == "cpu-node", "an untolerated pod must stay off the tainted GPU nodes"
    assert (cluster.cluster_dir / "kwok.yaml").is_file()

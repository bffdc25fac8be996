"""Scenario 2: the examples applied as they are: objects exactly as the builders promise, pods on GPU nodes,
the model PVC read-only, cache emptyDirs with their size limits, status Ready, printer columns."""

from __future__ import annotations

import pytest
from comfyui_operator import crdgen
from k8s_cluster import GPU_RESOURCE
from k8s_expected import chart_settings, differences_from_builders
from k8s_instances import (
    EXAMPLES,
    RESOURCE,
    in_namespace,
    instances_in,
    load_documents,
    pod_ready,
    prerequisites,
    wait_ready,
)
from k8s_kubectl import Kubectl, Manifest
from k8s_operator import OperatorProcess
from k8s_session import Operators


def _gpu_nodes(kubectl: Kubectl) -> set[str]:
    nodes = kubectl.items("nodes")
    return {n["metadata"]["name"] for n in nodes if GPU_RESOURCE in n["status"]["allocatable"]}


def _pod_problems(pod: Manifest, spec: Manifest, gpu_nodes: set[str]) -> list[str]:
    name = pod["metadata"]["name"]
    problems = []
    gpus = int(spec.get("comfyui", {}).get("gpu", {}).get("count", 1))
    if gpus and pod["spec"].get("nodeName") not in gpu_nodes:
        problems.append(f"{name}: on {pod['spec'].get('nodeName')}, not a GPU node")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = [m for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])]
    claim = spec.get("models", {}).get("claimName")
    if claim:
        model_volumes = [
            n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim
        ]
        if not model_volumes:
            problems.append(f"{name}: no volume for PVC {claim}")
        for volume in model_volumes:
            read_only = volumes[volume]["persistentVolumeClaim"].get("readOnly") or all(
                m.get("readOnly") for m in mounts if m["name"] == volume
            )
            if not read_only:
                problems.append(f"{name}: model PVC volume {volume} is writable")
    limit = str(spec.get("cache", {}).get("sizeLimit", "20Gi"))
    limits = [str(v["emptyDir"].get("sizeLimit")) for v in volumes.values() if "emptyDir" in v]
    if limit not in limits:
        problems.append(f"{name}: no emptyDir with the cache sizeLimit {limit} (emptyDir limits: {limits})")
    if any(v["emptyDir"].get("sizeLimit") is None for v in volumes.values() if "emptyDir" in v):
        problems.append(f"{name}: an emptyDir without a sizeLimit")
    return problems


@pytest.mark.parametrize("example", ["instance.yaml", "multi-instance.yaml"])
def test_example_is_served_as_promised(
    example: str, kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str
) -> None:
    documents = load_documents(EXAMPLES / example)
    kubectl.apply(in_namespace(prerequisites(namespace, documents), namespace))
    kubectl.apply(in_namespace(documents, namespace))
    settings = chart_settings(operators.release.deployment)
    gpu_nodes = _gpu_nodes(kubectl)
    problems: list[str] = []
    for item in instances_in(documents):
        name = item["metadata"]["name"]
        live = wait_ready(kubectl, name, namespace, timeout=120)
        problems += differences_from_builders(kubectl, live, settings)
        spec = live["spec"]
        status = live["status"]
        if status.get("readyReplicas") != spec["replicas"] or status.get("replicas") != spec["replicas"]:
            problems.append(f"{name}: status replicas {status.get('replicas')}/{status.get('readyReplicas')}")
        if spec["replicas"] <= 1 and kubectl.get("poddisruptionbudget", name, namespace) is not None:
            problems.append(f"{name}: a PodDisruptionBudget for a single replica blocks node drains")
        service = kubectl.get("service", name, namespace)
        ports = [p["port"] for p in (service or {}).get("spec", {}).get("ports", [])]
        if ports != [spec.get("service", {}).get("port", 3000)]:
            problems.append(f"{name}: Service ports {ports} (only the sidecar's port may be exposed)")
        pods = [p for p in kubectl.items("pods", namespace, status["selector"]) if pod_ready(p)]
        if len(pods) != spec["replicas"]:
            problems.append(f"{name}: {len(pods)} ready pods for {spec['replicas']} replicas")
        for pod in pods:
            problems += _pod_problems(pod, spec, gpu_nodes)
    assert problems == []
    columns = crdgen.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    default = ["NAME", *(c["name"].upper() for c in columns if not c.get("priority"))]
    wide = ["NAME", *(c["name"].upper() for c in columns)]
    table = kubectl.out("get", "cui", "-n", namespace)
    assert table.splitlines()[0].split() == default, table
    assert kubectl.out("get", "cui", "-n", namespace, "-o", "wide").splitlines()[0].split() == wide
    for item in instances_in(documents):
        name = item["metadata"]["name"]
        row = next(line.split() for line in table.splitlines() if line.split()[0] == name)
        live = kubectl.get(RESOURCE, name, namespace) or {}
        assert row[default.index("ENDPOINT")] == live["status"]["endpoint"], row
    assert len(kubectl.items(RESOURCE, namespace)) == len(instances_in(documents))

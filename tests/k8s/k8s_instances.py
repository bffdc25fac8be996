"""ComfyUIInstance helpers for the scenarios: test instances, what an example refers to, status reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from k8s_cluster import GPU_RESOURCE, GPU_TOLERATION
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_tools import REPO_ROOT

API_VERSION = "comfyui.operator.dev/v1alpha1"
KIND = "ComfyUIInstance"
RESOURCE = "comfyuiinstances.comfyui.operator.dev"
EXAMPLES = REPO_ROOT / "examples"
TEST_IMAGE = "registry.example.invalid/comfyui:test"  # never pulled: kwok runs no container
CLUSTER_SCOPED = frozenset({"PersistentVolume", "Namespace", "PriorityClass", "Node"})
WARMUP_PROMPT = '{"1": {"class_type": "EmptyLatentImage", "inputs": {}}}'


def instance(name: str, *, replicas: int = 1, gpus: int = 1, **spec: Any) -> Manifest:
    """A small instance that tolerates the GPU taint; `spec` entries are merged in at the top level."""
    body: Manifest = {
        "replicas": replicas,
        "comfyui": {"image": TEST_IMAGE, "gpu": {"count": gpus}},
        "tolerations": [dict(GPU_TOLERATION)],
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": body}


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def instances_in(documents: list[Manifest]) -> list[Manifest]:
    return [d for d in documents if d.get("kind") == KIND]


def bound_volume(namespace: str, claim: Manifest) -> Manifest:
    """A PersistentVolume pre-bound to `claim` (static provisioning: no provisioner runs in this cluster)."""
    spec = claim.get("spec", {})
    name = claim["metadata"]["name"]
    size = spec.get("resources", {}).get("requests", {}).get("storage", "100Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{name}"[:253], "labels": {"k8s-tier/namespace": namespace}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes", ["ReadOnlyMany"]),
            "storageClassName": spec.get("storageClassName") or "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/srv/k8s-tier/{namespace}/{name}"},
            "claimRef": {"namespace": namespace, "name": name},
        },
    }


def claim(name: str, access: str = "ReadOnlyMany", size: str = "100Gi") -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": [access],
            "storageClassName": "",
            "resources": {"requests": {"storage": size}},
        },
    }


def config_map(name: str, data: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def secret(name: str, data: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def references(spec: Manifest) -> dict[str, dict[str, str]]:
    """What an instance spec points at: {"pvc": {name: ""}, "configmap": {name: key}, "secret": {...}}."""
    refs: dict[str, dict[str, str]] = {"pvc": {}, "configmap": {}, "secret": {}, "priorityclass": {}}
    if spec.get("priorityClassName"):
        refs["priorityclass"][spec["priorityClassName"]] = ""
    models = spec.get("models") or {}
    if models.get("claimName"):
        refs["pvc"][models["claimName"]] = ""
    nodes = spec.get("customNodes") or {}
    if nodes.get("claimName"):
        refs["pvc"][nodes["claimName"]] = ""
    warm = (spec.get("warmup") or {}).get("configMapRef")
    if warm:
        refs["configmap"][warm["name"]] = warm.get("key", "workflow.json")
    for holder, field in (("huggingFace", "tokenSecretRef"), ("webhook", "secretRef")):
        ref = (spec.get(holder) or {}).get(field)
        if ref:
            refs["secret"][ref["name"]] = ref.get("key", "token")
    return refs


def prerequisites(namespace: str, documents: list[Manifest]) -> list[Manifest]:
    """The objects the documents' instances refer to but do not define, plus a bound PV for every claim."""
    defined = {(d.get("kind"), d.get("metadata", {}).get("name")) for d in documents}
    claims = {d["metadata"]["name"]: d for d in documents if d.get("kind") == "PersistentVolumeClaim"}
    created: list[Manifest] = []
    for item in instances_in(documents):
        refs = references(item.get("spec", {}))
        for name in refs["pvc"]:
            if name not in claims:
                claims[name] = claim(name)
                created.append(claims[name])
        for name, key in refs["configmap"].items():
            if ("ConfigMap", name) not in defined:
                created.append(config_map(name, {key: WARMUP_PROMPT}))
                defined.add(("ConfigMap", name))
        for name, key in refs["secret"].items():
            if ("Secret", name) not in defined:
                created.append(secret(name, {key: "dGVzdC1vbmx5LXZhbHVl"}))
                defined.add(("Secret", name))
        for name in refs["priorityclass"]:
            if ("PriorityClass", name) not in defined:
                created.append(priority_class(name))
                defined.add(("PriorityClass", name))
    volumes = [bound_volume(namespace, c) for c in claims.values()]
    return volumes + created


def priority_class(name: str) -> Manifest:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": 1000,
        "globalDefault": False,
        "description": "created by the k8s test tier",
    }


def in_namespace(documents: list[Manifest], namespace: str) -> list[Manifest]:
    """Copies with metadata.namespace set (namespaced kinds only)."""
    result = []
    for doc in documents:
        copied = copy.deepcopy(doc)
        if copied.get("kind") not in CLUSTER_SCOPED:
            copied.setdefault("metadata", {})["namespace"] = namespace
        result.append(copied)
    return result


def condition(obj: Manifest | None, kind: str) -> Manifest | None:
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_ready(obj: Manifest | None) -> bool:
    cond = condition(obj, "Ready")
    status = (obj or {}).get("status", {})
    wanted = (obj or {}).get("spec", {}).get("replicas", 1)
    return bool(cond and cond.get("status") == "True" and status.get("readyReplicas", 0) == wanted)


def describe_status(obj: Manifest | None) -> str:
    if obj is None:
        return "object not found"
    status = obj.get("status", {})
    conds = ", ".join(
        f"{c.get('type')}={c.get('status')}({c.get('reason')}: {c.get('message')})"
        for c in status.get("conditions", []) or []
    )
    return f"readyReplicas={status.get('readyReplicas')} conditions=[{conds}]"


def wait_ready(kubectl: Kubectl, name: str, namespace: str, timeout: float = 90) -> Manifest:
    """Until the instance reports Ready with all replicas ready; the error shows the last status seen."""
    last: list[Manifest | None] = [None]

    def ready() -> Manifest | None:
        last[0] = kubectl.get(RESOURCE, name, namespace)
        return last[0] if is_ready(last[0]) else None

    try:
        return wait_for(ready, timeout=timeout, what=f"{namespace}/{name} Ready")
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {describe_status(last[0])}") from None


def wait_condition(
    kubectl: Kubectl,
    name: str,
    namespace: str,
    kind: str,
    *,
    status: str,
    reason: str | None = None,
    timeout: float = 90,
) -> Manifest:
    """Until condition `kind` has `status` (and `reason` when given); returns the condition."""
    last: list[Manifest | None] = [None]

    def matches() -> Manifest | None:
        last[0] = kubectl.get(RESOURCE, name, namespace)
        cond = condition(last[0], kind)
        if cond and cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return cond
        return None

    try:
        return wait_for(matches, timeout=timeout, what=f"{namespace}/{name} {kind}={status} {reason or ''}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {describe_status(last[0])}") from None


def pod_ready(pod: Manifest) -> bool:
    status = pod.get("status", {})
    conditions = status.get("conditions", []) or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return bool(status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp"))


def gpu_request(pod_or_template_spec: Manifest) -> int:
    total = 0
    for container in pod_or_template_spec.get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        total += int(limits.get(GPU_RESOURCE, 0))
    return total


def owned_by(obj: Manifest, owner: Manifest) -> bool:
    uid = owner["metadata"]["uid"]
    refs = obj["metadata"].get("ownerReferences", [])
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)

"""Scenario 8: deleting an instance garbage-collects what it owns (the real controller manager does it);
no finalizer is left behind."""

from __future__ import annotations

from k8s_instances import RESOURCE, instance, owned_by, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess

OWNED_KINDS = ("deployments", "services", "configmaps", "poddisruptionbudgets")


def _owned(kubectl: Kubectl, owner: Manifest, namespace: str) -> list[str]:
    return [
        f"{kind}/{obj['metadata']['name']}"
        for kind in OWNED_KINDS
        for obj in kubectl.items(kind, namespace)
        if owned_by(obj, owner)
    ]


def test_delete_collects_owned_objects(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply([instance("doomed", replicas=2)], namespace)
    live = wait_ready(kubectl, "doomed", namespace)
    owned = _owned(kubectl, live, namespace)
    kinds = {entry.split("/")[0] for entry in owned}
    assert kinds == set(OWNED_KINDS), f"owned objects: {owned}"

    kubectl.run("delete", "cui", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")
    assert kubectl.get(RESOURCE, "doomed", namespace) is None
    wait_for(lambda: not _owned(kubectl, live, namespace), timeout=90, what=f"garbage collection of {owned}")
    wait_for(
        lambda: not kubectl.items("pods", namespace, live["status"]["selector"]),
        timeout=90,
        what="the pods to go",
    )


def test_finalizers_are_the_operators_own(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """Any finalizer is under the API group's domain and is removed promptly when the instance is deleted."""
    kubectl.apply([instance("short-lived")], namespace)
    live = wait_ready(kubectl, "short-lived", namespace)
    finalizers = live["metadata"].get("finalizers", [])
    for finalizer in finalizers:
        assert finalizer.split("/")[0].endswith("comfyui.operator.dev"), f"foreign finalizer {finalizer}"
    kubectl.run("delete", "cui", "short-lived", "-n", namespace, "--wait=true", "--timeout=30s")
    assert kubectl.get(RESOURCE, "short-lived", namespace) is None

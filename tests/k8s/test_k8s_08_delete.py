"""Scenario 8: deleting an instance garbage-collects what it owns (the real controller manager does it);
the operator puts no finalizer on an instance, so deleting one, or its namespace, works while no operator runs
(after `helm uninstall`, or while it is down); a finalizer an older version added is removed."""

from __future__ import annotations

import json

from k8s_instances import RESOURCE, instance, owned_by, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess

OWNED_KINDS = ("deployments", "services", "configmaps", "poddisruptionbudgets")
LEGACY_FINALIZER = "comfyui.operator.dev/finalizer"  # kopf added it for a timer in earlier versions


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


def test_no_finalizer_so_deletion_works_with_the_operator_stopped(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("orphan"), instance("orphan-2")], namespace)
    live = wait_ready(kubectl, "orphan", namespace)
    wait_ready(kubectl, "orphan-2", namespace)
    assert live["metadata"].get("finalizers", []) == []

    operator.stop()  # the chart uninstalled, or the operator down
    kubectl.run("delete", "cui", "orphan", "-n", namespace, "--wait=true", "--timeout=30s")
    assert kubectl.get(RESOURCE, "orphan", namespace) is None
    kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=90s")
    assert kubectl.get("namespace", namespace) is None


def test_a_finalizer_left_by_an_older_operator_is_removed(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("legacy")], namespace)
    wait_ready(kubectl, "legacy", namespace)
    patch = json.dumps({"metadata": {"finalizers": [LEGACY_FINALIZER]}})
    kubectl.run("patch", "cui", "legacy", "-n", namespace, "--type=merge", "-p", patch)

    def released() -> bool:
        live = kubectl.get(RESOURCE, "legacy", namespace) or {}
        return LEGACY_FINALIZER not in live.get("metadata", {}).get("finalizers", [])

    wait_for(released, timeout=60, what=f"the operator to remove {LEGACY_FINALIZER}")
    kubectl.run("delete", "cui", "legacy", "-n", namespace, "--wait=true", "--timeout=30s")

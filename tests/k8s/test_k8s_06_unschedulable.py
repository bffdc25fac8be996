"""Scenario 6: more GPUs than any node has -> `Unschedulable` in a condition; a fixed spec -> Ready."""

from __future__ import annotations

from k8s_instances import RESOURCE, instance, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess


def _unschedulable(obj: Manifest | None) -> Manifest | None:
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("reason") == "Unschedulable":
            return dict(cond)
    return None


def test_too_many_gpus_is_reported_then_fixed(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("greedy", gpus=12)], namespace)
    cond = wait_for(
        lambda: _unschedulable(kubectl.get(RESOURCE, "greedy", namespace)),
        timeout=90,
        what="a condition with reason Unschedulable",
    )
    assert cond["message"], "Unschedulable without a message"
    live = kubectl.get(RESOURCE, "greedy", namespace)
    ready = [c for c in (live or {})["status"]["conditions"] if c["type"] == "Ready"]
    assert ready
    assert ready[0]["status"] != "True"

    kubectl.apply([instance("greedy", gpus=1)], namespace)
    live = wait_ready(kubectl, "greedy", namespace, timeout=120)
    assert _unschedulable(live) is None

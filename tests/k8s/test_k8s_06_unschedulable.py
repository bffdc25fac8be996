"""Scenario 6: more GPUs than any node has -> `Unschedulable` in a condition; a fixed spec -> Ready. An
expected state, not an operator failure: nothing at error level in the operator's log."""

from __future__ import annotations

from k8s_instances import RESOURCE, instance, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess, lines_at


def _unschedulable(obj: Manifest | None) -> Manifest | None:
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("reason") == "Unschedulable":
            return dict(cond)
    return None


def test_too_many_gpus_is_reported_then_fixed(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    log_start = operator.log_size()
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
    assert lines_at(operator.log_text(log_start), "error") == []
    assert any("Unschedulable" in line for line in lines_at(operator.log_text(log_start), "info"))

    kubectl.apply([instance("greedy", gpus=1)], namespace)
    live = wait_ready(kubectl, "greedy", namespace, timeout=120)
    assert _unschedulable(live) is None

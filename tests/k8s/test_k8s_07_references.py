"""Scenario 7: a missing PVC / ConfigMap / Secret reference -> a clear condition and a Warning Event;
created later -> the instance converges by itself (nobody touches it). The operator retries quietly: a missing
reference is the user's to fix, not an operator error (no error-level log line, no kopf "failed" Event).

A missing Secret shows only on the pods (the kubelet reports CreateContainerConfigError), which kwok does not
simulate: that case runs on the node of the stand-in kubelet (k8s_kubelet.py)."""

from __future__ import annotations

import re

import pytest
from k8s_instances import RESOURCE, in_namespace, instance, prerequisites, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_kubelet import PLACEMENT, TestKubelet
from k8s_operator import OperatorProcess, lines_at

MISSING: dict[str, tuple[str, Manifest]] = {
    "pvc": ("late-models", {"models": {"claimName": "late-models"}}),
    "configmap": (
        "late-warmup",
        {"warmup": {"configMapRef": {"name": "late-warmup", "key": "workflow.json"}}},
    ),
    "secret": ("late-hf", {"huggingFace": {"tokenSecretRef": {"name": "late-hf", "key": "token"}}}),
}


def _condition_naming(obj: Manifest | None, name: str) -> Manifest | None:
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if name in cond.get("message", "") and cond.get("status") in {"True", "False"}:
            return dict(cond)
    return None


@pytest.mark.parametrize("kind", sorted(MISSING))
def test_missing_reference_is_reported_and_heals(
    kind: str, kubectl: Kubectl, operator: OperatorProcess, namespace: str, kubelet: TestKubelet
) -> None:
    log_start = operator.log_size()
    missing, spec = MISSING[kind]
    placement = PLACEMENT if kind == "secret" else {}
    item = instance(f"refs-{kind}", **spec, **placement)
    name = item["metadata"]["name"]
    kubectl.apply([item], namespace)

    cond = wait_for(
        lambda: _condition_naming(kubectl.get(RESOURCE, name, namespace), missing),
        timeout=90,
        what=f"a condition naming the missing {kind} {missing}",
    )
    assert re.fullmatch(r"[A-Z][A-Za-z]+", cond["reason"]), cond
    live = kubectl.get(RESOURCE, name, namespace)
    ready = [c for c in (live or {})["status"]["conditions"] if c["type"] == "Ready"]
    assert ready
    assert ready[0]["status"] != "True"

    def warning() -> Manifest | None:
        for event in kubectl.items("events", namespace):
            involved = event.get("involvedObject", {})
            if (
                involved.get("name") == name
                and involved.get("kind") == "ComfyUIInstance"
                and missing in event.get("message", "")
            ):
                return dict(event)
        return None

    event = wait_for(warning, timeout=60, what=f"an Event on {name} naming {missing}")
    assert event["type"] == "Warning"
    assert re.fullmatch(r"[A-Z][A-Za-z]+", event["reason"]), event

    kubectl.apply(in_namespace(prerequisites(namespace, [item]), namespace))
    wait_ready(kubectl, name, namespace, timeout=150)
    assert lines_at(operator.log_text(log_start), "error") == []
    events = [
        e for e in kubectl.items("events", namespace) if e.get("involvedObject", {}).get("name") == name
    ]
    assert not [e for e in events if e.get("type") == "Error"], "kopf posted a handler failure as an Event"

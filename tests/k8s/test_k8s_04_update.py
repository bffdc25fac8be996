"""Scenario 4: a spec update rolls the pods (new config hash); an unchanged re-apply makes the operator write
nothing at all (counted in the API server's audit log of the operator's ServiceAccount)."""

from __future__ import annotations

import time

from comfyui_operator.builders import CONFIG_HASH_ANNOTATION
from k8s_instances import RESOURCE, instance, pod_ready, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_observe import AuditEvent, AuditLog, writes
from k8s_operator import OperatorProcess
from k8s_session import Operators

QUIET_SECONDS = 12.0
OWNED_KINDS = ("deployment", "service", "configmap", "poddisruptionbudget")


def _warmup(width: int) -> Manifest:
    return {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 64}}}}


def _operator_writes(audit: AuditLog, user: str, namespace: str) -> list[AuditEvent]:
    """The operator's writes in `namespace` since the mark (its leader-election Lease lives elsewhere)."""
    events = writes(audit.since_mark(), user)
    return [e for e in events if e.namespace == namespace and e.resource != "leases"]


def _settle(audit: AuditLog, user: str, namespace: str, timeout: float = 60) -> None:
    """Until the operator has written nothing in `namespace` for a few seconds (status catching up)."""

    def quiet() -> bool:
        audit.mark()
        time.sleep(4)
        return not _operator_writes(audit, user, namespace)

    wait_for(quiet, timeout=timeout, interval=0, what="the operator to stop writing after Ready")


def _versions(kubectl: Kubectl, name: str, namespace: str) -> dict[str, str]:
    found = {}
    for kind in (*OWNED_KINDS, RESOURCE):
        for obj in kubectl.items(kind, namespace):
            if obj["metadata"]["name"].startswith(name):
                found[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return found


def test_spec_update_rolls_out_a_new_pod_template(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("roll", warmup=_warmup(64))], namespace)
    wait_ready(kubectl, "roll", namespace)
    before = kubectl.get("deployment", "roll", namespace)
    assert before is not None
    old_hash = before["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    old_pods = {p["metadata"]["name"] for p in kubectl.items("pods", namespace) if pod_ready(p)}

    kubectl.apply([instance("roll", warmup=_warmup(128))], namespace)

    def rolled() -> Manifest | None:
        deploy = kubectl.get("deployment", "roll", namespace)
        if deploy is None:
            return None
        status = deploy.get("status", {})
        new_hash = deploy["spec"]["template"]["metadata"]["annotations"].get(CONFIG_HASH_ANNOTATION)
        pods = {p["metadata"]["name"] for p in kubectl.items("pods", namespace) if pod_ready(p)}
        done = (
            new_hash != old_hash
            and status.get("observedGeneration") == deploy["metadata"]["generation"]
            and status.get("updatedReplicas") == status.get("readyReplicas") == 1
            and pods
            and not pods & old_pods
        )
        return deploy if done else None

    deploy = wait_for(rolled, timeout=90, what="a rollout with a new config hash")
    assert deploy["metadata"]["generation"] > before["metadata"]["generation"]
    live = wait_ready(kubectl, "roll", namespace)
    assert live["status"].get("observedGeneration") == live["metadata"]["generation"]


def test_unchanged_reapply_makes_no_write(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str, audit: AuditLog
) -> None:
    manifest = instance("steady", replicas=2)
    kubectl.apply([manifest], namespace, server_side=True)
    wait_ready(kubectl, "steady", namespace)
    _settle(audit, operators.user, namespace)
    versions = _versions(kubectl, "steady", namespace)

    audit.mark()
    kubectl.apply([manifest], namespace, server_side=True)  # sent to the server; changes nothing
    time.sleep(QUIET_SECONDS)
    made = [e.describe() for e in _operator_writes(audit, operators.user, namespace)]
    assert made == [], f"writes after an unchanged re-apply: {made}"
    assert _versions(kubectl, "steady", namespace) == versions

    kubectl.run("annotate", "cui", "steady", "-n", namespace, "k8s-tier/touched=yes")  # a watch event
    time.sleep(QUIET_SECONDS)
    after = _versions(kubectl, "steady", namespace)
    changed = sorted(k for k in versions if after.get(k) != versions[k] and not k.startswith(RESOURCE))
    assert changed == [], f"owned objects rewritten after a metadata-only change: {changed}"

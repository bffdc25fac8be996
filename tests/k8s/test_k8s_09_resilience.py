"""Scenario 9: the operator SIGKILLed mid-reconcile and restarted converges; two operator processes at once
act once (the audit log tells their tokens apart), and the standby takes over when the active one dies; a
local run takes the chart's Lease; watch events leave the info log alone."""

from __future__ import annotations

import time
from collections import Counter

from k8s_expected import chart_settings, differences_from_builders, promised_objects
from k8s_instances import instance, owned_by, wait_ready
from k8s_kubectl import Kubectl, wait_for
from k8s_observe import AuditEvent, AuditLog, writes
from k8s_operator import OperatorProcess, log_records
from k8s_session import STANDBY_LOG, Operators, wait_operator_ready

OWNED_KINDS = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


def _writes_in(audit: AuditLog, user: str, namespace: str) -> list[AuditEvent]:
    return [e for e in writes(audit.since_mark(), user) if e.namespace == namespace]


def test_killed_mid_reconcile_then_restarted_converges(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str, audit: AuditLog
) -> None:
    audit.mark()
    kubectl.apply([instance("phoenix", replicas=2)], namespace)
    first = wait_for(
        lambda: _writes_in(audit, operators.user, namespace),
        timeout=60,
        interval=0.02,
        what="the operator's first write for the new instance",
    )
    operator.kill()
    assert not operator.running
    killed_after = [e.describe() for e in first]

    operator.start()
    wait_operator_ready(operator)
    live = wait_ready(kubectl, "phoenix", namespace, timeout=120)
    settings = chart_settings(operators.release.deployment)
    promised = Counter(obj["kind"] for obj in promised_objects(live, settings))
    for kind, plural in OWNED_KINDS.items():
        owned = [o for o in kubectl.items(plural, namespace) if owned_by(o, live)]
        assert len(owned) == promised[kind], (
            f"{kind}: {len(owned)} owned after the restart, {promised[kind]} promised "
            f"(killed after {killed_after})"
        )
    assert differences_from_builders(kubectl, live, settings) == []


def test_two_operators_act_once_and_fail_over(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str, audit: AuditLog
) -> None:
    second = operators.spawn("operator-1")
    try:
        wait_operator_ready(second, standby_ok=True)
        audit.mark()
        kubectl.apply([instance("twins", replicas=2)], namespace)
        wait_ready(kubectl, "twins", namespace)
        time.sleep(3)
        made = [e for e in _writes_in(audit, operators.user, namespace) if e.resource != "leases"]
        assert made, "no write by the operators at all"
        assert all(e.credential for e in made), "the audit log does not name the credential of each request"
        writers = {e.credential for e in made}
        assert len(writers) == 1, f"both operator processes wrote: {sorted({e.describe() for e in made})}"
        assert writers <= {operator.credential, second.credential}

        active = operator if writers == {operator.credential} else second
        standby = second if active is operator else operator
        active.kill()
        audit.mark()
        kubectl.apply([instance("twins-after-failover")], namespace)
        wait_ready(kubectl, "twins-after-failover", namespace, timeout=120)
        later = {e.credential for e in _writes_in(audit, operators.user, namespace) if e.resource != "leases"}
        assert later == {standby.credential}
    finally:
        second.stop()


def test_a_local_run_contends_for_the_charts_lease(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str, audit: AuditLog
) -> None:
    """`comfyui-operator` started by hand (no POD_NAMESPACE, no Lease settings, as docs/operator.md shows)
    while the chart's operator runs: the same Lease, so it waits instead of acting next to it."""
    wait_for(
        lambda: "became leader" in operator.log_text(operator.start_offset),
        timeout=60,
        what="the chart-configured operator to hold the Lease",
    )
    local = operators.make("laptop")
    for name in [*local.extra_env]:  # what a person running it by hand would not set
        if name in {"POD_NAME", "POD_NAMESPACE"} or name.startswith("COMFYUI_OPERATOR_LEASE_"):
            del local.extra_env[name]
    operators.extra.append(local)
    local.start()
    try:
        wait_operator_ready(local, standby_ok=True)
        assert f"{STANDBY_LOG} {operators.release.namespace}/comfyui-operator" in local.log_text()
        audit.mark()
        kubectl.apply([instance("not-twice")], namespace)
        wait_ready(kubectl, "not-twice", namespace)
        time.sleep(3)
        made = _writes_in(audit, operators.user, namespace)
        assert {e.credential for e in made if e.resource != "leases"} == {operator.credential}
    finally:
        local.stop()


def test_idle_watch_events_leave_the_info_log_alone(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """Pods and Deployments change all the time in a cluster; each change is a watch event. At info level the
    log must not get a line per event (kopf's "Handler 'pod_changed' succeeded."), only what a human needs."""
    kubectl.apply([instance(f"quiet-{n}", replicas=2) for n in range(3)], namespace)
    for n in range(3):
        wait_ready(kubectl, f"quiet-{n}", namespace)
    time.sleep(3)  # the refreshes after the last pod became ready
    start = operator.log_size()
    for round_ in range(5):  # 6 pods x 5 = 30 watch events that change nothing the operator owns
        kubectl.run("annotate", "pods", "--all", "-n", namespace, f"k8s-tier/touch={round_}", "--overwrite")
        time.sleep(1)
    time.sleep(3)
    window = [line for line in operator.log_text(start).splitlines() if namespace in line]
    assert [r for r in log_records("\n".join(window)) if r.get("severity") != "debug"] == []

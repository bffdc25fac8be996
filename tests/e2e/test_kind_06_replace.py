"""A deleted pod is replaced and the instance goes back to Ready, and the status conditions on the way say
what is true: not Ready while no pod serves, Ready again once the new pod is."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .kube import Kube, condition, e2e_namespace, pod_of, standin_instance, wait_instance_ready

pytestmark = pytest.mark.e2e
NAME = "replace"


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-replace") as name:
        kube.apply(standin_instance(NAME, name))
        wait_instance_ready(kube, NAME, name)
        yield name


def _ready_pods(kube: Kube, namespace: str) -> int:
    return sum(
        1
        for pod in kube.pods(namespace, f"app.kubernetes.io/instance={NAME}")
        if not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    )


def test_a_deleted_pod_is_replaced_and_the_conditions_follow(kube: Kube, namespace: str) -> None:
    old = pod_of(kube, NAME, namespace)["metadata"]["name"]
    kube.run("-n", namespace, "delete", "pod", old, "--wait=false")
    deleted = time.monotonic()
    samples: list[tuple[float, str, str, int]] = []  # (seconds, Ready status, reason, ready pods)
    while time.monotonic() - deleted < 180:
        instance = kube.get("comfyuiinstance", NAME, namespace)
        ready = condition(instance, "Ready")
        samples.append(
            (
                time.monotonic() - deleted,
                ready.get("status", ""),
                ready.get("reason", ""),
                _ready_pods(kube, namespace),
            )
        )
        if (
            samples[-1][1] == "True"
            and samples[-1][3] == 1
            and pod_of(kube, NAME, namespace)["metadata"]["name"] != old
        ) and any(status == "False" for _, status, _, _ in samples):
            break
        time.sleep(0.5)
    print("\n".join(f"{t:5.1f}s Ready={s:5} {r:20} ready pods={n}" for t, s, r, n in samples))
    not_ready = [(t, r) for t, s, r, _ in samples if s == "False"]
    assert not_ready, "the instance never said it was not ready while its only pod was replaced"
    assert not_ready[0][0] < 15, f"Ready stayed True for {not_ready[0][0]:.0f} s after the pod was deleted"
    assert {r for _, r in not_ready} <= {"ReplicasNotReady", "RollingOut"}, not_ready
    # Never Ready=True with no pod serving, beyond the operator's reaction time.
    stale = [t for t, s, _, n in samples if s == "True" and n == 0 and t > 5]
    assert not stale, f"Ready=True while no pod was ready at {stale}"
    assert samples[-1][1] == "True"
    assert pod_of(kube, NAME, namespace)["metadata"]["name"] != old
    wait_instance_ready(kube, NAME, namespace)

"""Runs last: deleting every instance and then `helm uninstall` leave nothing behind but what
docs/packaging.md ("Uninstalling") says is kept: the CRD (Helm never deletes CRDs), the release namespace, and
the operator's Lease, released or expired."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .kube import Kube

pytestmark = pytest.mark.e2e
RELEASE = "comfyui-operator"
NAMESPACE = "comfyui-system"
NAMESPACED = (
    "deployments,replicasets,pods,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,"
    "rolebindings,jobs"
)


def _items(kube: Kube, kinds: str, *args: str) -> list[dict[str, Any]]:
    found = kube.json("get", kinds, *args, check=False)
    return list((found or {}).get("items", []))


def _names(items: list[dict[str, Any]]) -> list[str]:
    return [f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items]


def test_uninstall_leaves_only_what_the_docs_say(kube: Kube) -> None:
    kube.run(
        "delete",
        "comfyuiinstances,comfyuimodellibraries",
        "--all",
        "--all-namespaces",
        "--wait=true",
        timeout=300,
    )

    def instances_gone() -> bool:
        left = _items(kube, NAMESPACED, "-A", "-l", "app.kubernetes.io/managed-by=comfyui-operator")
        assert not left, _names(left)
        return True

    kube.wait(instances_gone, timeout=180, what="the instances' objects garbage-collected")
    uninstalled = kube.helm_run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")
    assert uninstalled.returncode == 0, uninstalled.stderr

    def chart_gone() -> bool:
        return not _items(kube, NAMESPACED, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")

    kube.wait(chart_gone, timeout=180, what="the chart's namespaced objects deleted")
    cluster_scoped = _items(
        kube, "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    assert cluster_scoped == [], _names(cluster_scoped)
    left = [
        i
        for i in _items(kube, NAMESPACED, "-n", NAMESPACE)
        if not (i["kind"] == "ConfigMap" and i["metadata"]["name"] == "kube-root-ca.crt")
        and not (i["kind"] == "ServiceAccount" and i["metadata"]["name"] == "default")
    ]
    assert left == [], _names(left)
    # What is kept, as documented.
    for crd in ("comfyuiinstances.comfyui.operator.dev", "comfyuimodellibraries.comfyui.operator.dev"):
        assert kube.json("get", "crd", crd, check=False), f"the CRD {crd} was deleted"
    assert kube.json("get", "namespace", NAMESPACE, check=False)
    leases = _items(kube, "leases", "-n", NAMESPACE)
    assert [lease["metadata"]["name"] for lease in leases] == ["comfyui-operator"], _names(leases)
    spec = leases[0]["spec"]
    if spec.get("holderIdentity"):
        # helm deletes the operator's RBAC while its pod is stopping, so the release may be refused; the Lease
        # must then expire: nobody renews it any more.
        renewed = datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))
        expires = renewed + timedelta(seconds=spec["leaseDurationSeconds"])
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1)
        again = kube.get("lease", "comfyui-operator", NAMESPACE)["spec"]
        assert again.get("renewTime") == spec["renewTime"], "someone still renews the Lease after uninstall"

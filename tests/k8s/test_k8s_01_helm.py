"""Scenario 1: `helm install` of the chart: CRDs established, objects created, `kubectl explain` useful."""

from __future__ import annotations

from k8s_kubectl import Helm, Kubectl
from k8s_session import CRD_NAME, Release


def test_chart_installs_an_established_crd_with_subresources(release: Release, kubectl: Kubectl) -> None:
    crd = kubectl.get("crd", CRD_NAME)
    assert crd is not None
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "cui" in crd["spec"]["names"].get("shortNames", [])
    served = [v for v in crd["spec"]["versions"] if v["served"]]
    assert served, "no served version"
    for version in served:
        assert "status" in version.get("subresources", {})
        scale = version["subresources"].get("scale", {})
        assert scale.get("specReplicasPath") == ".spec.replicas"
        assert scale.get("labelSelectorPath") == ".status.selector"
        columns = {c["name"].lower() for c in version.get("additionalPrinterColumns", [])}
        assert {"ready", "replicas", "endpoint", "age"} <= columns, columns


def test_chart_creates_operator_objects(release: Release, kubectl: Kubectl, helm: Helm) -> None:
    status = helm.run("status", release.name, "-n", release.namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    assert kubectl.get("serviceaccount", release.service_account, release.namespace) is not None
    bindings = kubectl.items("clusterrolebindings") + kubectl.items("rolebindings")
    bound = [
        b
        for b in bindings
        if any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == release.service_account
            and s.get("namespace") == release.namespace
            for s in b.get("subjects", [])
        )
    ]
    assert bound, "no (Cluster)RoleBinding grants the operator's ServiceAccount anything"
    assert release.deployment["spec"]["template"]["spec"]["serviceAccountName"] == release.service_account
    kubectl.run(
        "rollout",
        "status",
        f"deployment/{release.deployment['metadata']['name']}",
        "-n",
        release.namespace,
        "--timeout=60s",
    )


def test_kubectl_explain_prints_field_docs(release: Release, kubectl: Kubectl) -> None:
    text = kubectl.out("explain", "comfyuiinstance.spec.models")
    assert "DESCRIPTION" in text
    assert "claimName" in text
    assert "ReadOnlyMany" in text or "read-only" in text.lower(), text
    top = kubectl.out("explain", "cui.spec")
    assert "replicas" in top
    assert "<empty>" not in top.split("FIELDS:")[0], "spec has no description"

"""`helm template` over the values matrix in helm/ci, validated against two Kubernetes minors' schemas."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from .conftest import CI_VALUES, KUBE_VERSIONS, NAMESPACE, RELEASE, Manifest, Render, by_kind, one

# Kinds from CRDs, not in the Kubernetes schemas (test_monitoring, test_autoscaling, test_crds check them).
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "ComfyUIInstance"}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_objects_match_kubernetes_schemas(render: Render, values: Path, kube_version: str) -> None:
    docs = render([values], kube_version=kube_version)
    validated = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube_version}: {error.message}"
            )
        validated += 1
    assert validated >= 2, "expected at least a Deployment and a ServiceAccount or Service"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_chart_object_has_the_recommended_labels(render: Render, values: Path) -> None:
    for doc in render([values]):
        if doc["kind"] == "ComfyUIInstance":
            continue
        labels = doc["metadata"].get("labels", {})
        missing = [key for key in RECOMMENDED_LABELS if key not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        if doc["kind"] not in CLUSTER_SCOPED:
            assert "namespace" in doc["metadata"], f"{doc['kind']} has no namespace"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_operator_pod_is_hardened_and_probed(render: Render, values: Path) -> None:
    deployment = one(render([values]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "health", probe
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert set(ports) == {"health", "metrics"}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def _env(deployment: Manifest) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container["env"]}


def test_defaults_watch_the_cluster_with_a_cluster_role(render: Render) -> None:
    docs = render()
    env = _env(one(docs, "Deployment"))
    assert env["COMFYUI_OPERATOR_NAMESPACES"] == ""
    assert env["COMFYUI_OPERATOR_SIDECAR_IMAGE"].startswith("ghcr.io/comfyui-operator/sidecar:")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(docs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]
    assert [role["metadata"]["name"] for role in by_kind(docs, "Role")] == [
        f"{RELEASE}-comfyui-operator-leader-election"
    ]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not by_kind(docs, "ServiceMonitor")
    assert not by_kind(docs, "PrometheusRule")


def test_namespaced_scope_grants_roles_only_in_watched_namespaces(render: Render) -> None:
    docs = render(sets=["watch.scope=namespaces", "watch.namespaces={team-a,team-b}"])
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    roles = {(role["metadata"]["namespace"], role["metadata"]["name"]) for role in by_kind(docs, "Role")}
    assert roles == {
        ("team-a", f"{RELEASE}-comfyui-operator"),
        ("team-b", f"{RELEASE}-comfyui-operator"),
        (NAMESPACE, f"{RELEASE}-comfyui-operator-leader-election"),
    }
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert _env(one(docs, "Deployment"))["COMFYUI_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_customized_values_reach_the_deployment(render: Render) -> None:
    docs = render([v for v in CI_VALUES if v.stem == "customized-values"])
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "cui-op"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/ai/comfyui-operator:0.1.0-rc.1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/livez"
    env = _env(deployment)
    assert env["COMFYUI_OPERATOR_SIDECAR_IMAGE"] == "registry.example.com/ai/comfyui-sidecar:0.1.0-rc.1"
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"
    assert env["COMFYUI_OPERATOR_LOG_FORMAT"] == "text"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert one(docs, "Service")["spec"]["type"] == "NodePort"


def test_existing_service_account_without_rbac(render: Render) -> None:
    docs = render(
        sets=["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=platform-op"]
    )
    kinds = {doc["kind"] for doc in docs}
    assert kinds.isdisjoint({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-op"


def test_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    docs = render(sets=["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"])
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]


def test_every_replica_is_probed_on_healthz(render: Render) -> None:
    """A standby replica (waiting for the Lease) serves /healthz too: one probe path for any replica count."""
    for sets in ([], ["replicaCount=2"]):
        container = one(render(sets=sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, (sets, probe)

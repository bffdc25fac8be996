"""Scenario 5b: the API server, with KEDA's and prometheus-operator's own CRDs installed, accepts the KEDA
example and the chart's ScaledObject, PodMonitor, ServiceMonitor and PrometheusRule (strict field validation,
dry run), and refuses a misspelt field. No KEDA or Prometheus runs: only their schemas are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from foreign_crds import KEDA, PROMETHEUS_OPERATOR, crd_path
from k8s_kubectl import CommandFailed, Helm, Kubectl, Manifest
from k8s_session import CHART_DIR, REPO_ROOT

FOREIGN_CRDS = [
    (KEDA, "keda.sh_scaledobjects.yaml"),
    (PROMETHEUS_OPERATOR, "monitoring.coreos.com_podmonitors.yaml"),
    (PROMETHEUS_OPERATOR, "monitoring.coreos.com_servicemonitors.yaml"),
    (PROMETHEUS_OPERATOR, "monitoring.coreos.com_prometheusrules.yaml"),
]
FOREIGN_KINDS = {"ScaledObject", "PodMonitor", "ServiceMonitor", "PrometheusRule"}
KEDA_EXAMPLE = REPO_ROOT / "examples" / "autoscaling" / "keda-scaledobject.yaml"


@pytest.fixture(scope="module")
def foreign_crds(kubectl: Kubectl) -> None:
    for project, file_name in FOREIGN_CRDS:
        path = crd_path(project, file_name)
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(path))
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def dry_run(kubectl: Kubectl, docs: list[Manifest], namespace: str, *, check: bool = True) -> str:
    text = yaml.safe_dump_all(docs)
    result = kubectl.run(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=text,
        check=check,
    )
    return result.stdout + result.stderr


def chart_objects(helm: Helm, namespace: str) -> list[Manifest]:
    values = [CHART_DIR / "ci" / name for name in ("monitoring-values.yaml", "instances-values.yaml")]
    args = ["template", "cui", str(CHART_DIR), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    args += [
        "--set",
        "metrics.service.enabled=true",
    ]  # instances-values turns it off; the ServiceMonitor needs it
    docs = [doc for doc in yaml.safe_load_all(helm.run(*args).stdout) if doc]
    return [doc for doc in docs if doc["kind"] in FOREIGN_KINDS]


def example(path: Path, namespace: str) -> list[Manifest]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def test_keda_example_passes_server_side_validation(
    kubectl: Kubectl, foreign_crds: None, namespace: str
) -> None:
    out = dry_run(kubectl, example(KEDA_EXAMPLE, namespace), namespace)
    assert "scaledobject.keda.sh/image-edit created (server dry run)" in out, out


def test_chart_monitoring_objects_pass_server_side_validation(
    kubectl: Kubectl, helm: Helm, foreign_crds: None, namespace: str
) -> None:
    docs = chart_objects(helm, namespace)
    assert {doc["kind"] for doc in docs} == FOREIGN_KINDS
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    out = dry_run(kubectl, docs, namespace)
    assert out.count("(server dry run)") == len(docs), out


def test_a_misspelt_field_is_refused(kubectl: Kubectl, foreign_crds: None, namespace: str) -> None:
    (scaled,) = example(KEDA_EXAMPLE, namespace)
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    with pytest.raises(CommandFailed) as refused:
        dry_run(kubectl, [scaled], namespace)
    assert "maxReplicas" in str(refused.value), refused.value

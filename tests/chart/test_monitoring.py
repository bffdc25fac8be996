"""The sidecars' PodMonitor, the Grafana dashboard ConfigMap, and every prometheus-operator object of the
chart validated against prometheus-operator's own CRDs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from comfyui_operator import builders
from comfyui_operator.api import ComfyUIInstanceSpec
from comfyui_operator.settings import OperatorSettings
from foreign_crds import PROMETHEUS_OPERATOR, crd, validate

from .conftest import CHART, CI_VALUES, NAMESPACE, RELEASE, Manifest, Render, by_kind, one

DASHBOARD = CHART / "files" / "dashboards" / "comfyui-instances.json"
PROMETHEUS_OPERATOR_CRDS = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
MONITORING_VALUES = [v for v in CI_VALUES if v.stem == "monitoring-values"]


def instance_pod() -> dict[str, Any]:
    """The pod template the operator builds for an instance (the object the PodMonitor must find)."""
    instance = builders.InstanceRef(name="image-edit", namespace="ai", uid="u1")
    spec = ComfyUIInstanceSpec.model_validate({"comfyui": {"image": "comfy:1"}})
    settings = OperatorSettings(namespaces=[], sidecar_image="sidecar:1")
    template: dict[str, Any] = builders.build_deployment(instance, spec, settings)["spec"]["template"]
    return template


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_prometheus_operator_objects_match_their_crds(render: Render, values: Path) -> None:
    for doc in render([values]):
        if doc["kind"] in PROMETHEUS_OPERATOR_CRDS:
            try:
                validate(doc, crd(PROMETHEUS_OPERATOR, PROMETHEUS_OPERATOR_CRDS[doc["kind"]]))
            except jsonschema.ValidationError as error:
                pytest.fail(f"{doc['kind']} invalid: {error.message} at {list(error.absolute_path)}")


def test_a_pod_monitor_the_crd_rejects_is_caught(render: Render) -> None:
    monitor = one(render(sets=["sidecarMetrics.podMonitor.enabled=true"]), "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["scrapeInterval"] = "30s"  # not a field: "interval" is
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, crd(PROMETHEUS_OPERATOR, PROMETHEUS_OPERATOR_CRDS["PodMonitor"]))


def test_nothing_for_the_sidecars_by_default(render: Render) -> None:
    docs = render()
    assert not by_kind(docs, "PodMonitor")
    assert not [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def test_pod_monitor_scrapes_the_sidecar_of_every_instance_pod(render: Render) -> None:
    monitor = one(render(MONITORING_VALUES), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    pod = instance_pod()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == "sidecar"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in sidecar["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # the instance name becomes the label comfyui_instance that alerts, dashboard and KEDA query on
    (relabel,) = endpoint["relabelings"]
    instance_label = "app.kubernetes.io/instance"
    assert pod["metadata"]["labels"][instance_label] == "image-edit"
    meta_label = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", instance_label)
    assert relabel["sourceLabels"] == [meta_label]
    assert relabel["targetLabel"] == "comfyui_instance"


def test_pod_monitor_follows_the_watched_namespaces(render: Render) -> None:
    monitor = one(
        render(
            sets=[
                "sidecarMetrics.podMonitor.enabled=true",
                "watch.scope=namespaces",
                "watch.namespaces={team-a,team-b}",
            ]
        ),
        "PodMonitor",
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def dashboard_config_map(docs: list[Manifest]) -> Manifest:
    name = f"{RELEASE}-comfyui-operator-dashboard"
    (found,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    return found


def test_dashboard_config_map_carries_the_dashboard_for_grafana_sidecar(render: Render) -> None:
    config_map = dashboard_config_map(render(MONITORING_VALUES))
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ComfyUI"}
    (name,) = config_map["data"]
    assert json.loads(config_map["data"][name]) == json.loads(DASHBOARD.read_text())
    default_namespace = dashboard_config_map(render(sets=["dashboard.enabled=true"]))
    assert default_namespace["metadata"]["namespace"] == NAMESPACE


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_shows_what_an_operator_of_gpus_asks_for() -> None:
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for metric in (
        "comfyui_api_queue_depth",
        "comfyui_api_prompt_duration_seconds_bucket",  # job latency
        "comfyui_api_model_loads_total",
        "comfyui_api_model_cache_requests_total",  # hit ratio
        "comfyui_api_comfy_busy_seconds_total",  # GPU busy fraction
        "comfyui_api_webhook_deliveries_total",
    ):
        assert metric in exprs, f"no panel uses {metric}"


def test_dashboard_is_per_instance_and_portable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "comfyui-instances"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "comfyui_instance" in variables["instance"]["definition"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for title, expr in dashboard_targets():
        for selector in re.findall(r"comfyui_api_\w+\{([^}]*)\}", expr):
            assert 'namespace="$namespace"' in selector, title
            assert 'comfyui_instance=~"$instance"' in selector, title
        assert "[5m]" not in expr, f"{title}: use $__rate_interval"

"""The environment the chart gives the operator parses into the settings the values ask for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comfyui_operator import settings as settings_module

from .conftest import CI_VALUES, KUBE_VERSIONS, Manifest, Render, one, run_helm, template_args

POD_NAMESPACE = "comfyui-system"
CHART_ENV_NAMES_OUTSIDE_SETTINGS = {"POD_NAME", "POD_NAMESPACE", "HTTPS_PROXY", "COMFYUI_OPERATOR_EXTRA_FLAG"}


def container_env(deployment: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet would set it (fieldRefs resolved to fixed values)."""
    resolved = {"metadata.namespace": POD_NAMESPACE, "metadata.name": "operator-0"}
    env: dict[str, str] = {}
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = resolved[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_chart_environment_parses_into_operator_settings(
    render: Render, values: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = one(render([values]), "Deployment")
    env = container_env(deployment)
    for name in list(settings_module.OperatorSettings.model_fields):
        monkeypatch.delenv(f"COMFYUI_OPERATOR_{name.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_module.OperatorSettings()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert settings.metrics_port == ports["metrics"]
    assert settings.liveness_port == ports["health"]
    assert settings.lease_namespace == POD_NAMESPACE
    assert settings.sidecar_image == env["COMFYUI_OPERATOR_SIDECAR_IMAGE"]
    assert settings.namespaces == [n for n in env["COMFYUI_OPERATOR_NAMESPACES"].split(",") if n]


def test_every_operator_variable_the_chart_sets_is_a_setting(render: Render) -> None:
    fields = {f"COMFYUI_OPERATOR_{name.upper()}" for name in settings_module.OperatorSettings.model_fields}
    for values in CI_VALUES:
        names = set(container_env(one(render([values]), "Deployment")))
        unknown = names - fields - CHART_ENV_NAMES_OUTSIDE_SETTINGS
        assert not unknown, f"{values.stem}: the operator ignores {sorted(unknown)}"


def test_namespaced_values_reach_the_settings(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(sets=["watch.scope=namespaces", "watch.namespaces={ai,batch}", "logFormat=text"])
    for name, value in container_env(one(docs, "Deployment")).items():
        monkeypatch.setenv(name, value)
    settings = settings_module.OperatorSettings()
    assert settings.namespaces == ["ai", "batch"]
    assert not settings.clusterwide
    assert settings.log_format == "text"


def test_the_chart_and_a_local_run_contend_for_one_lease(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed as the docs say (namespace comfyui-system), the chart's operator and one started locally
    (`comfyui-operator` with a kubeconfig, docs/operator.md) use the same Lease, so only one of them acts."""
    for name in [*os.environ]:
        if name.startswith("COMFYUI_OPERATOR_") or name in {"POD_NAME", "POD_NAMESPACE"}:
            monkeypatch.delenv(name)
    local = settings_module.OperatorSettings()
    for values in CI_VALUES:
        for name, value in container_env(one(render([values]), "Deployment")).items():
            monkeypatch.setenv(name, value)
        chart = settings_module.OperatorSettings()
        assert (chart.lease_namespace, chart.lease_name) == (local.lease_namespace, local.lease_name), (
            values.stem
        )


def test_excluded_namespaces_reach_the_settings_and_may_not_be_watched(
    render: Render, helm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in container_env(one(render(), "Deployment")).items():
        monkeypatch.setenv(name, value)
    assert settings_module.OperatorSettings().excluded_namespaces == list(
        settings_module.DEFAULT_EXCLUDED_NAMESPACES
    )
    docs = render(sets=["watch.excludedNamespaces={kube-system,platform}"])
    for name, value in container_env(one(docs, "Deployment")).items():
        monkeypatch.setenv(name, value)
    assert settings_module.OperatorSettings().excluded_namespaces == ["kube-system", "platform"]
    args = template_args(
        [], ["watch.scope=namespaces", "watch.namespaces={ai,kube-system}"], KUBE_VERSIONS[-1]
    )
    result = run_helm(helm, *args)
    assert result.returncode != 0
    assert "watch.namespaces lists kube-system, which watch.excludedNamespaces excludes" in result.stderr

"""Operator settings from COMFYUI_OPERATOR_* variables, RBAC data, kopf settings, handler registration."""

from __future__ import annotations

import re

import kopf
import pytest
from comfyui_operator import api, handlers, rbac
from comfyui_operator.settings import DEFAULT_COMFYUI_IMAGE, OperatorSettings, load_settings
from operator_testlib import fixed_settings
from pydantic import ValidationError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("COMFYUI_OPERATOR_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.clusterwide
    assert settings.namespaces == []
    assert settings.sidecar_image == "ghcr.io/comfyui-operator/sidecar:0.1.0"
    assert settings.comfyui_image == DEFAULT_COMFYUI_IMAGE
    assert settings.comfyui_command == ["python", "main.py"]
    assert settings.log_format == "json"
    assert settings.leader_election is True


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_OPERATOR_NAMESPACES", "ai, batch")
    monkeypatch.setenv("COMFYUI_OPERATOR_SIDECAR_IMAGE", "registry.local/sidecar:dev")
    monkeypatch.setenv("COMFYUI_OPERATOR_COMFYUI_COMMAND", "comfyui-standin --cpu")
    monkeypatch.setenv("COMFYUI_OPERATOR_LOG_FORMAT", "text")
    monkeypatch.setenv("COMFYUI_OPERATOR_LEADER_ELECTION", "false")
    monkeypatch.setenv("COMFYUI_OPERATOR_METRICS_PORT", "0")
    settings = load_settings()
    assert settings.namespaces == ["ai", "batch"]
    assert not settings.clusterwide
    assert settings.sidecar_image == "registry.local/sidecar:dev"
    assert settings.comfyui_command == ["comfyui-standin", "--cpu"]
    assert (settings.log_format, settings.leader_election, settings.metrics_port) == ("text", False, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMFYUI_OPERATOR_LOG_FORMAT", "xml"),
        ("COMFYUI_OPERATOR_NAMESPACES", "Bad_Namespace"),
        ("COMFYUI_OPERATOR_NAMESPACES", "-ai"),
        ("COMFYUI_OPERATOR_NAMESPACES", "ai-"),
        ("COMFYUI_OPERATOR_NAMESPACES", "caf\u00e9"),
        ("COMFYUI_OPERATOR_METRICS_PORT", "70000"),
        ("COMFYUI_OPERATOR_COMFYUI_WORKDIR", "relative/dir"),
        ("COMFYUI_OPERATOR_LEASE_DURATION_SECONDS", "1"),
    ],
)
def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        load_settings()
    field = name.removeprefix("COMFYUI_OPERATOR_").lower()
    assert field in str(info.value)


def test_numeric_namespace_names_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_OPERATOR_NAMESPACES", "2024,team-7")
    assert load_settings().namespaces == ["2024", "team-7"]


def test_the_clusters_own_namespaces_are_excluded_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().excluded_namespaces == ["kube-system", "kube-public", "kube-node-lease"]
    monkeypatch.setenv("COMFYUI_OPERATOR_EXCLUDED_NAMESPACES", "")
    assert load_settings().excluded_namespaces == []
    monkeypatch.setenv("COMFYUI_OPERATOR_EXCLUDED_NAMESPACES", "kube-system,platform")
    monkeypatch.setenv("COMFYUI_OPERATOR_NAMESPACES", "ai,platform")
    with pytest.raises(ValidationError, match=r"\['platform'\] are both watched and excluded"):
        load_settings()


def test_settings_are_immutable() -> None:
    settings = OperatorSettings()
    with pytest.raises(ValidationError):
        settings.log_format = "text"  # type: ignore[misc]


def test_rbac_is_least_privilege() -> None:
    rules = rbac.workload_rules() + rbac.leader_election_rules()
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert "secrets" not in rule["resources"]
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "patch", "update", "delete"}
    deletable = {res for rule in rules if "delete" in rule["verbs"] for res in rule["resources"]}
    # only what the operator stops wanting while the owner lives: a PDB (one replica left), the router objects
    # (spec.routing removed), a library's superseded sync Jobs
    assert deletable == {"poddisruptionbudgets", "deployments", "services", "jobs"}
    by_resource = {res: set(rule["verbs"]) for rule in rules for res in rule["resources"]}
    assert by_resource[f"{api.PLURAL}/status"] == {"get", "patch"}
    assert by_resource["comfyuimodellibraries/status"] == {"get", "patch"}
    assert by_resource["persistentvolumeclaims"] == {"get", "create", "patch"}  # a library's own claim
    assert by_resource["jobs"] == {"get", "list", "watch", "create", "delete"}
    assert by_resource["leases"] == {"get", "create", "update"}
    assert all(rule.why for rule in rbac.WORKLOAD_RULES + rbac.LEADER_ELECTION_RULES)


def test_kopf_settings_use_the_api_group() -> None:
    config = handlers.kopf_settings(fixed_settings())
    assert config.persistence.finalizer == "comfyui.operator.dev/finalizer"
    assert isinstance(config.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert config.persistence.progress_storage.prefix == "comfyui.operator.dev"
    assert config.persistence.diffbase_storage.prefix == "comfyui.operator.dev"
    assert config.scanning.disabled is True


def test_handlers_register_into_an_explicit_registry() -> None:
    from comfyui_operator.reconcile import Reconciler

    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(kube=None, settings=fixed_settings(), post_event=lambda *_: None)  # type: ignore[arg-type]
    handlers.register(registry, reconciler, fixed_settings())
    handler_ids = {
        str(handler.id)
        for part in (registry._changing, registry._spawning, registry._watching, registry._activities)
        for handler in part.get_all_handlers()
    }
    assert {"converge", "instance_seen", "deployment_changed", "pod_changed", "login"} <= {
        hid.rsplit(".", 1)[-1].split("/")[0] for hid in handler_ids
    }
    selectors = {str(sel.any_name) for sel in registry._watching.get_all_selectors()}
    assert {"deployments", "pods"} <= selectors


def test_no_handler_makes_kopf_add_a_finalizer() -> None:
    """kopf puts its finalizer on every object that has a deletion handler, a daemon or a timer; with no
    operator running, deleting such an instance (or its namespace) would hang. Nothing outside the cluster
    needs cleaning up, so no handler may ask for one."""
    from comfyui_operator.reconcile import Reconciler

    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(kube=None, settings=fixed_settings(), post_event=lambda *_: None)  # type: ignore[arg-type]
    handlers.register(registry, reconciler, fixed_settings())
    parts = (registry._changing, registry._spawning)  # the handler kinds kopf asks (kopf's processing.py)
    wanting = [str(h.id) for part in parts for h in part.get_all_handlers() if h.requires_finalizer]
    assert wanting == []


def test_every_setting_is_in_the_docs_table() -> None:
    from operator_testlib import REPO

    text = (REPO / "docs" / "operator.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `COMFYUI_OPERATOR_")]
    documented = set()
    for row in rows:
        names = re.findall(r"`(COMFYUI_OPERATOR_[A-Z_]+|_[A-Z_]+)`", row.split("|")[1])
        documented |= {name if name.startswith("COMFYUI") else f"COMFYUI_OPERATOR{name}" for name in names}
    fields = {f"COMFYUI_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    assert fields - documented == set()

"""kind-config.yaml and the model-store PV/PVC that hack/up.sh applies agree (no cluster needed)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import REPO

UP_SCRIPT = (REPO / "hack" / "up.sh").read_text()
KIND_CONFIG = yaml.safe_load((REPO / "kind-config.yaml").read_text())


def up_manifests() -> list[dict[str, Any]]:
    match = re.search(r"<<'YAML'\n(.*?)\nYAML\n", UP_SCRIPT, re.S)
    assert match, "hack/up.sh has no YAML heredoc"
    return [doc for doc in yaml.safe_load_all(match.group(1)) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in up_manifests() if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.34.0"])
def test_up_manifests_are_valid_kubernetes(kube_version: str) -> None:
    docs = up_manifests()
    assert {doc["kind"] for doc in docs} == {"PersistentVolume", "PersistentVolumeClaim"}
    for doc in docs:
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_model_store_is_read_only_many_on_the_mounted_directory() -> None:
    (node,) = KIND_CONFIG["nodes"]
    (mount,) = node["extraMounts"]
    assert mount["readOnly"] is True
    assert f"mkdir -p {mount['hostPath']}/" in UP_SCRIPT, "up.sh must create the mounted host directory"
    volume, claim = by_kind("PersistentVolume"), by_kind("PersistentVolumeClaim")
    assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert volume["spec"]["local"]["path"] == mount["containerPath"]
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"]
    assert claim["spec"]["storageClassName"] == volume["spec"]["storageClassName"]
    (term,) = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert node["labels"][expression["key"]] in expression["values"]


def test_quick_start_uses_the_kind_values_and_the_standin_example() -> None:
    assert "--values helm/ci/kind-values.yaml" in UP_SCRIPT
    assert (REPO / "examples" / "standin-instance.yaml").is_file()
    assert KIND_CONFIG["name"] == re.search(
        r'CLUSTER_NAME="\$\{CLUSTER_NAME:-([a-z0-9-]+)\}"', UP_SCRIPT
    ).group(1)  # type: ignore[union-attr]

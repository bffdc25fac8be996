"""The chart ships the generated CRDs unchanged, and instances declared in values match the CRD schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from foreign_crds import openapi_to_jsonschema

from .conftest import CHART, CI_VALUES, NAMESPACE, REPO, Render, by_kind

TOP_LEVEL_CRDS = REPO / "crds"
CHART_CRDS = CHART / "crds"


def crd_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.yaml"))}


@pytest.fixture(scope="module")
def instance_schema() -> dict[str, Any]:
    path = TOP_LEVEL_CRDS / "comfyui.operator.dev_comfyuiinstances.yaml"
    assert path.is_file(), f"{path.relative_to(REPO)} is missing: run `make crds`"
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_chart_crds_are_identical_to_the_generated_ones() -> None:
    generated = crd_files(TOP_LEVEL_CRDS)
    assert generated, "crds/ is empty: run `make crds`"
    assert crd_files(CHART_CRDS) == generated, "helm/crds differs from crds/: run `make crds`"


def test_chart_crds_are_not_templated() -> None:
    for name, content in crd_files(CHART_CRDS).items():
        assert b"{{" not in content, f"helm/crds/{name} contains template syntax; Helm does not render crds/"


def test_instances_in_values_are_rendered_and_valid(render: Render, instance_schema: dict[str, Any]) -> None:
    docs = render([v for v in CI_VALUES if v.stem == "instances-values"])
    instances = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "ComfyUIInstance")}
    assert set(instances) == {"image-edit", "image-gen"}
    assert instances["image-edit"]["metadata"]["namespace"] == NAMESPACE
    assert instances["image-gen"]["metadata"]["namespace"] == "ai"
    assert instances["image-gen"]["spec"]["replicas"] == 2
    schema = openapi_to_jsonschema(instance_schema)
    for instance in instances.values():
        jsonschema.validate(instance, schema)


def test_an_instance_the_crd_rejects_is_caught(instance_schema: dict[str, Any]) -> None:
    schema = openapi_to_jsonschema(instance_schema)
    bad = {
        "apiVersion": "comfyui.operator.dev/v1alpha1",
        "kind": "ComfyUIInstance",
        "metadata": {"name": "bad"},
        "spec": {"replicas": -1},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)

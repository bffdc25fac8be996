"""The generated CRD: drift against the committed files, structural-schema rules, API features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from comfyui_operator import api, crdgen
from operator_testlib import REPO


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.build_crd()


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for name, sub in (node.get("properties") or {}).items():
            found += _walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_files_match_the_models() -> None:
    stale = crdgen.stale_files(REPO)
    assert stale == [], "run `python -m comfyui_operator.crdgen --write`"
    assert (REPO / "crds" / crdgen.CRD_FILE_NAME).read_text() == (
        REPO / "helm/crds" / crdgen.CRD_FILE_NAME
    ).read_text()


def test_check_mode_detects_drift(tmp_path: Path) -> None:
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    target = tmp_path / "helm/crds" / crdgen.CRD_FILE_NAME
    target.write_text(target.read_text().replace("maxQueueDepth", "maxQueue"))
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert crdgen.stale_files(tmp_path) == [target]


def test_names_scope_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "comfyuiinstances.comfyui.operator.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["cui"]
    assert "comfyui" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Replicas", "Endpoint", "Age"]


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _walk(_schema(crd)):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        for banned in ("$ref", "title", "anyOf", "oneOf", "allOf"):
            assert banned not in node, f"{path}: {banned}"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "object" and "properties" not in node and "additionalProperties" not in node:
            assert node.get("x-kubernetes-preserve-unknown-fields") or path in {".metadata"}, path


def test_preserve_unknown_fields_only_where_needed(crd: dict[str, Any]) -> None:
    free = sorted(
        path for path, node in _walk(_schema(crd)) if node.get("x-kubernetes-preserve-unknown-fields")
    )
    assert free == [
        ".spec.affinity",
        ".spec.comfyui.env[].valueFrom",
        ".spec.extraVolumes[]",
        ".spec.sidecar.env[].valueFrom",
        ".spec.topologySpreadConstraints[]",
        ".spec.warmup.prompt",
    ]


def test_every_spec_field_is_described(crd: dict[str, Any]) -> None:
    for path, node in _walk(_schema(crd)["properties"]["spec"], ".spec"):
        if path.endswith(("[]", "{}")):
            continue
        assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_cel_rules_iterate_only_bounded_lists(crd: dict[str, Any]) -> None:
    for path, node in _walk(_schema(crd)):
        for rule in node.get("x-kubernetes-validations") or []:
            assert rule["message"], path
            assert rule["rule"], path
            if ".all(" in rule["rule"] or ".exists(" in rule["rule"]:
                lists = [n for p, n in _walk(node, path) if n.get("type") == "array"]
                assert lists, path
                assert all("maxItems" in n for n in lists), path


def test_defaults_are_valid_specs(crd: dict[str, Any]) -> None:
    spec = api.parse_spec({})
    assert spec.replicas == 1
    assert spec.cache.size_limit == "20Gi"
    assert spec.comfyui.gpu.resource_name == "nvidia.com/gpu"
    for path, node in _walk(_schema(crd)):
        if node.get("default") == {} and path:
            assert node["type"] == "object"


def test_quantities_are_int_or_string_with_pattern(crd: dict[str, Any]) -> None:
    nodes = dict(_walk(_schema(crd)))
    limits = nodes[".spec.comfyui.resources.limits{}"]
    assert limits["x-kubernetes-int-or-string"] is True
    assert limits["pattern"].startswith("^")
    assert nodes[".spec.cache.sizeLimit"]["x-kubernetes-int-or-string"] is True
    assert nodes[".spec.comfyui.resources.limits"]["maxProperties"] == 16


def test_crd_is_a_valid_custom_resource_definition(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.34.0", strict=True)


def test_rendered_yaml_round_trips(crd: dict[str, Any]) -> None:
    text = crdgen.render_crd()
    assert text.startswith("# Generated")
    assert yaml.safe_load(text) == crd

"""The generated CRD: drift against the committed files, structural-schema rules, API features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from comfyui_operator import api, builders, crdgen
from comfyui_operator.quantity import QUANTITY_PATTERN
from operator_testlib import REPO, fixed_settings


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


def test_quantities_are_bounded_int_or_string_checked_by_a_rule(crd: dict[str, Any]) -> None:
    nodes = dict(_walk(_schema(crd)))
    limits = nodes[".spec.comfyui.resources.limits{}"]
    assert limits["x-kubernetes-int-or-string"] is True
    assert limits["maxLength"] == api.MAX_QUANTITY  # without it the rule's estimated cost is over budget
    assert limits["x-kubernetes-validations"] == [
        {
            "rule": f"type(self) != string || self.matches(r'{QUANTITY_PATTERN}')",
            "message": api.PATTERN_MESSAGES[QUANTITY_PATTERN],
        }
    ]
    assert nodes[".spec.cache.sizeLimit"]["x-kubernetes-int-or-string"] is True
    assert nodes[".spec.comfyui.resources.limits"]["maxProperties"] == 16


def test_every_pattern_is_a_rule_with_a_message_a_user_can_act_on() -> None:
    """A bare `pattern` makes the API server answer with the regex; each is a CEL rule with a message
    (over both kinds: every entry of api.PATTERN_MESSAGES is used by one of them)."""
    nodes = [node for kind in crdgen.KINDS for _, node in _walk(_schema(crdgen.build_crd(kind)))]
    assert all("pattern" not in node for node in nodes)
    rules = [r for node in nodes for r in node.get("x-kubernetes-validations", [])]
    checked = {r["rule"].split("matches(r'", 1)[1][:-2] for r in rules if "matches(r'" in r["rule"]}
    assert checked == set(api.PATTERN_MESSAGES)
    for rule in rules:
        assert not rule["message"].startswith(("^", "spec.")), rule


def test_the_name_rule_names_the_field_not_nil(crd: dict[str, Any]) -> None:
    rule = _schema(crd)["x-kubernetes-validations"][0]
    assert rule["fieldPath"] == ".metadata.name"
    assert _schema(crd)["properties"]["metadata"]["properties"]["name"] == {"type": "string"}
    assert rule["messageExpression"].startswith("self.metadata.name + ")


def test_kubectl_explain_shows_defaults_bounds_and_formats(crd: dict[str, Any]) -> None:
    nodes = dict(_walk(_schema(crd)))
    assert nodes[".spec.replicas"]["description"].endswith("Default: 1. From 0 to 1000.")
    assert 'Default: "20Gi". Must be a size such as 20Gi' in nodes[".spec.cache.sizeLimit"]["description"]
    assert "Default: 3000. From 1 to 65535." in nodes[".spec.service.port"]["description"]
    assert "At most 64 entries." in nodes[".spec.comfyui.env"]["description"]
    reference = crdgen.render_reference()
    assert "Default: 1." not in reference  # the reference has its own column for these


def test_crd_is_a_valid_custom_resource_definition(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.34.0", strict=True)


def test_rendered_yaml_round_trips(crd: dict[str, Any]) -> None:
    text = crdgen.render_crd()
    assert text.startswith("# Generated")
    assert yaml.safe_load(text) == crd


DOCS_WITH_GET_CUI = ("README.md", "docs/operator.md")


def _get_cui_samples(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(command, header, rows) of every `$ kubectl get cui ...` console sample."""
    samples = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("$ kubectl get cui"):
            header = lines[index + 1].split()
            rows = []
            for row in lines[index + 2 :]:
                if row.startswith(("$", "```")) or not row.strip():
                    break
                rows.append(row.split())
            samples.append((line, header, rows))
    return samples


@pytest.mark.parametrize("doc", DOCS_WITH_GET_CUI)
def test_kubectl_get_samples_show_the_crds_printer_columns(crd: dict[str, Any], doc: str) -> None:
    """`kubectl get cui` shows the columns without a priority; `-o wide` adds the others, in CRD order."""
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    default = ["NAME", *(c["name"].upper() for c in columns if not c.get("priority"))]
    wide = ["NAME", *(c["name"].upper() for c in columns)]
    samples = _get_cui_samples((REPO / doc).read_text())
    assert {"-o wide" in command for command, _, _ in samples} == {False, True}, doc
    for command, header, rows in samples:
        assert header == (wide if "-o wide" in command else default), command
        namespace = command.split("-n ", 1)[1].split()[0] if "-n " in command else "default"
        for row in rows:
            instance = builders.InstanceRef(name=row[0], namespace=namespace, uid="x")
            endpoint = builders.endpoint(instance, api.parse_spec({}), fixed_settings())
            assert row[header.index("ENDPOINT")] == endpoint, command

"""Examples: the valid ones parse; every invalid one is rejected offline the way the CRD would reject it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from comfyui_operator import api, crdgen, reconcile
from operator_testlib import EXAMPLES, load_docs
from pydantic import ValidationError

INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
SCHEMA = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _expectations(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def _node(field_path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in field_path.split("."):
        props = node.get("properties") or {}
        node = props[part] if part in props else node["additionalProperties"]
    return node


def _all_rule_messages(node: Any) -> list[str]:
    messages: list[str] = []
    if isinstance(node, dict):
        messages += [rule["message"] for rule in node.get("x-kubernetes-validations") or []]
        for value in node.values():
            messages += _all_rule_messages(value)
    elif isinstance(node, list):
        for value in node:
            messages += _all_rule_messages(value)
    return messages


def test_at_least_fifteen_invalid_specs() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_spec_is_rejected(path: Path) -> None:
    assert path.read_text().startswith("# Invalid: "), "first line must say what is wrong"
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == api.KIND
    with pytest.raises((ValidationError, ValueError)):
        _parse(doc)


def _parse(doc: dict[str, Any]) -> api.ComfyUIInstanceSpec:
    api.check_instance_name(doc["metadata"]["name"])
    return api.parse_spec(doc["spec"])


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_expected_message_matches_the_schema(path: Path) -> None:
    """Each `# expect:` line names a schema feature the API server would report; check the CRD has it."""
    text = path.read_text()
    expectations = _expectations(path)
    if "# expect-condition: InvalidSpec" in text:
        assert expectations == []
        return
    assert expectations, "needs at least one '# expect:' line"
    rule_messages = _all_rule_messages(SCHEMA)
    checked = 0
    for expect in expectations:
        if match := re.match(r"^(spec\.[\w.]+) in body should match", expect):
            assert "pattern" in _node(match.group(1)), expect
        elif match := re.match(
            r"^(spec\.[\w.]+) in body should be (less|greater) than or equal to (\d+)", expect
        ):
            node = _node(match.group(1))
            assert node["maximum" if match.group(2) == "less" else "minimum"] == int(match.group(3)), expect
        elif match := re.match(r'^(spec\.[\w.]+): Unsupported value: "(\w+)"', expect):
            assert match.group(2) not in _node(match.group(1))["enum"], expect
        elif match := re.match(r"^(spec\.[\w.]+)\.(\w+): Required value", expect):
            assert match.group(2) in _node(match.group(1))["required"], expect
        elif match := re.match(r'^(spec\.[\w.]+) in body must be of type (\w+): "(\w+)"', expect):
            assert _node(match.group(1))["type"] == match.group(2), expect
        elif match := re.match(r'^unknown field "(spec\.[\w.]+)\.(\w+)"', expect):
            assert match.group(2) not in _node(match.group(1))["properties"], expect
        elif match := re.match(r'^metadata\.name: Invalid value: "object": (\S+) (.+)$', expect):
            assert api.NAME_RULE["fieldPath"] == ".metadata.name", expect  # not <nil>: the field is named
            assert match.group(1) == yaml.safe_load(text)["metadata"]["name"], expect
            assert api.NAME_MESSAGE.startswith(match.group(2)), expect
        else:
            assert any(expect in message for message in rule_messages), f"no CEL rule says {expect!r}"
        checked += 1
    assert checked == len(expectations)


def test_reserved_pod_label_is_reported_by_the_operator() -> None:
    doc = yaml.safe_load((EXAMPLES / "invalid" / "27-reserved-pod-label.yaml").read_text())
    with pytest.raises(ValidationError, match="reserved"):
        api.parse_spec(doc["spec"])


@pytest.mark.parametrize(
    "name", ["instance.yaml", "multi-instance.yaml", "standin-instance.yaml", "multi-gpu-instance.yaml"]
)
def test_valid_examples_parse(name: str) -> None:
    docs = load_docs(EXAMPLES / name)
    assert docs
    for doc in docs:
        api.check_instance_name(doc["metadata"]["name"])
        spec = api.parse_spec(doc["spec"])
        assert spec.replicas >= 1


def test_multi_instance_shares_one_model_claim_with_separate_caches() -> None:
    docs = load_docs(EXAMPLES / "multi-instance.yaml")
    specs = [api.parse_spec(doc["spec"]) for doc in docs]
    assert len(specs) >= 2
    assert len({spec.models.claim_name for spec in specs if spec.models}) == 1
    assert {"image-edit", "image-gen"} <= {doc["metadata"]["name"] for doc in docs}


def test_standin_example_runs_the_standin() -> None:
    doc = load_docs(EXAMPLES / "standin-instance.yaml")[0]
    spec = api.parse_spec(doc["spec"])
    assert spec.comfyui.command == ["comfyui-standin"]
    assert spec.comfyui.gpu.count == 0


VALID_EXAMPLES = sorted(EXAMPLES.glob("*.yaml"))
NUMBER_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five"}


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))])


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=[p.stem for p in VALID_EXAMPLES])
def test_example_header_says_what_it_holds_and_needs(path: Path) -> None:
    """The leading comment counts the instances (when it counts them) and names every object they need."""
    docs = load_docs(path)
    header = _header(path)
    counted = [n for n, word in NUMBER_WORDS.items() if re.search(rf"\b{word}\b", header)]
    assert counted in ([], [len(docs)]), f"the header counts {counted}, the file has {len(docs)}"
    for doc in docs:
        spec = api.parse_spec(doc.get("spec") or {})
        needed = [ref.name for ref in reconcile.references(spec)]
        needed += [ref.token_secret_ref.name for ref in [spec.hugging_face] if ref]
        needed += [ref.secret_ref.name for ref in [spec.webhook] if ref]
        needed += [spec.priority_class_name] if spec.priority_class_name else []
        for name in needed:
            assert f'"{name}"' in header, f"{doc['metadata']['name']} needs {name!r}, not in the header"

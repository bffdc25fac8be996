"""The autoscaling examples: valid against KEDA's own CRD schema, aimed at the ComfyUIInstance's scale
subresource, and driven by the sidecar's queue gauge."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from .conftest import REPO
from .crd_schema import KEDA, crd, validate

EXAMPLES = sorted((REPO / "examples" / "autoscaling").glob("*.yaml"))
INSTANCE_CRD = REPO / "crds" / "comfyui.operator.dev_comfyuiinstances.yaml"


def scaled_objects() -> list[dict[str, Any]]:
    docs = [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in docs if doc["kind"] == "ScaledObject"]


def keda_scaled_object_crd() -> dict[str, Any]:
    return crd(KEDA, "keda.sh_scaledobjects.yaml")


def test_there_is_a_keda_example() -> None:
    assert scaled_objects(), f"no ScaledObject in {[p.name for p in EXAMPLES]}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_keda_crds(example: Path) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        if doc is None:
            continue
        assert doc["apiVersion"].startswith("keda.sh/"), f"{example.name}: {doc['kind']} is not KEDA's"
        file_name = f"keda.sh_{doc['kind'].lower()}s.yaml"
        try:
            validate(doc, crd(KEDA, file_name))
        except jsonschema.ValidationError as error:
            pytest.fail(f"{example.name}: {error.message} at {list(error.absolute_path)}")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["spec"].pop("triggers"),
        lambda d: d["spec"].pop("scaleTargetRef"),
        lambda d: d["spec"].update(maxReplicas=4),  # KEDA's field is maxReplicaCount
        lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=2),  # metadata values are strings
        lambda d: d["spec"]["scaleTargetRef"].pop("name"),
    ],
    ids=["no-triggers", "no-target", "unknown-field", "number-in-metadata", "target-without-name"],
)
def test_keda_schema_rejects_a_broken_scaled_object(damage: Any) -> None:
    broken = copy.deepcopy(scaled_objects()[0])
    damage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, keda_scaled_object_crd())


def test_scaled_objects_target_an_instance_through_its_scale_subresource() -> None:
    instance_crd = yaml.safe_load(INSTANCE_CRD.read_text())
    group, kind = instance_crd["spec"]["group"], instance_crd["spec"]["names"]["kind"]
    scalable = {
        f"{group}/{version['name']}"
        for version in instance_crd["spec"]["versions"]
        if version["served"] and "scale" in version.get("subresources", {})
    }
    for scaled in scaled_objects():
        target = scaled["spec"]["scaleTargetRef"]
        assert target["kind"] == kind
        assert target["apiVersion"] in scalable


def test_scaled_objects_scale_on_the_sidecar_queue_gauge() -> None:
    for scaled in scaled_objects():
        assert scaled["spec"]["minReplicaCount"] >= 1, "no pod, no queue gauge to scale up from"
        assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert "comfyui_api_queue_depth" in query
        name = scaled["spec"]["scaleTargetRef"]["name"]
        assert f'comfyui_instance="{name}"' in query
        assert f'namespace="{scaled["metadata"]["namespace"]}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0

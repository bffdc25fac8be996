"""The autoscaling example and the chart's ScaledObjects (`instances.<name>.autoscaling`): valid against
KEDA's own CRD schema, aimed at the ComfyUIInstance's scale subresource, driven by the sidecar's queue
gauge, and the same object from both."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from foreign_crds import KEDA, crd, validate

from .conftest import CI_VALUES, REPO, Render, by_kind, run_helm, template_args

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


def render_scaled(render: Render, **autoscaling: int) -> list[dict[str, Any]]:
    sets = ["instances.image-edit.namespace=default", "instances.image-edit.spec.comfyui.image=comfy:1"]
    sets += [f"instances.image-edit.autoscaling.{key}={value}" for key, value in autoscaling.items()]
    return by_kind(render(sets=sets), "ScaledObject")


def test_chart_renders_the_example_for_an_instance_with_autoscaling(render: Render) -> None:
    (example,) = scaled_objects()
    (rendered,) = render_scaled(render, minReplicas=1, maxReplicas=4, queueDepthPerReplica=2)
    rendered["metadata"].pop("labels")
    assert rendered == example, "helm/templates/scaledobjects.yaml and the example differ"


def test_chart_scaled_objects_match_keda_crd(render: Render) -> None:
    docs = render([v for v in CI_VALUES if v.stem == "instances-values"])
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "image-edit"
    assert scaled["spec"]["minReplicaCount"] == 1
    assert scaled["spec"]["maxReplicaCount"] == 3
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "4"
    assert 'namespace="comfyui-system"' in scaled["spec"]["triggers"][0]["metadata"]["query"]
    validate(scaled, keda_scaled_object_crd())
    assert not by_kind(render(), "ScaledObject")


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (
            ["instances.a.spec.replicas=2", "instances.a.autoscaling.maxReplicas=3"],
            "instances.a: leave spec.replicas out when autoscaling is set",
        ),
        (
            [
                "instances.a.spec.comfyui.image=x",
                "instances.a.autoscaling.maxReplicas=2",
                "instances.a.autoscaling.minReplicas=3",
            ],
            "minReplicas (3) is above maxReplicas (2)",
        ),
        (["instances.a.spec.comfyui.image=x", "instances.a.autoscaling.minReplicas=0"], "minReplicas"),
        (["instances.a.spec.comfyui.image=x", "instances.a.autoscaling.minReplicas=1"], "maxReplicas"),
    ],
    ids=["replicas-and-autoscaling", "min-above-max", "scale-to-zero", "no-max"],
)
def test_chart_refuses_autoscaling_it_can_not_honour(helm: str, sets: list[str], fragment: str) -> None:
    result = run_helm(helm, *template_args([], sets, "1.34.0"))
    assert result.returncode != 0, f"accepted {sets}"
    assert fragment in result.stderr, result.stderr

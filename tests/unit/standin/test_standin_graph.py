"""Pure graph logic of the stand-in: validation (against the recorded error bodies), order, cache keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from comfyui_standin.folders import ModelFolders
from comfyui_standin.graph import ClassSpec, execution_order, is_link, signatures, validate_prompt
from comfyui_standin.nodes import Environment, SpecView

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "comfyui-transcripts"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


@pytest.fixture
def specs(tmp_path: Path) -> SpecView:
    for d in ("input", "output", "temp", "models"):
        (tmp_path / d).mkdir()
    folders = ModelFolders.standard(tmp_path, tmp_path / "models", tmp_path / "output")
    env = Environment(tmp_path / "input", tmp_path / "output", tmp_path / "temp", folders)
    return SpecView(env)


def empty_image(width: Any = 64) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": 64, "batch_size": 1, "color": 0}}


def save(source: str) -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": "x"}}


def body(result: Any) -> dict[str, Any]:
    return {"error": result.error, "node_errors": result.node_errors}


def strip_tracebacks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<tb>" if k == "traceback" else strip_tracebacks(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_tracebacks(v) for v in value]
    return value


ERROR_CASES = {
    "unknown_class_type": {"1": {"class_type": "NoSuchNode", "inputs": {}}},
    "missing_required_input": {
        "1": {"class_type": "EmptyImage", "inputs": {"height": 64, "batch_size": 1, "color": 0}},
        "2": save("1"),
    },
    "value_below_min": {"1": empty_image(0), "2": save("1")},
    "invalid_int": {"1": empty_image("abc"), "2": save("1")},
    "link_to_missing_node": {"1": empty_image(), "2": save("9")},
    "wrong_link_type": {
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x.safetensors"}},
        "4": save("2"),
    },
    "input_image_missing": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no_such_input.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": save("2"),
    },
    "no_output_node": {"1": empty_image()},
    "missing_class_type": {"1": empty_image(), "2": {"inputs": {}}},
    "empty_prompt": {},
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_validation_errors_match_recorded_bodies(specs: SpecView, case: str) -> None:
    expected = golden("errors_validation.json")[case]
    result = validate_prompt(ERROR_CASES[case], specs)
    assert expected["status"] == 400
    assert not result.ok
    assert strip_tracebacks(body(result)) == strip_tracebacks(expected["body"])


def test_broken_link_error_carries_a_traceback(specs: SpecView) -> None:
    result = validate_prompt(ERROR_CASES["link_to_missing_node"], specs)
    extra = result.node_errors["2"]["errors"][0]["extra_info"]
    assert extra["exception_type"] == "KeyError"
    assert extra["traceback"]
    assert all(isinstance(line, str) for line in extra["traceback"])


@pytest.mark.parametrize("loader", ["CheckpointLoaderSimple", "VAELoader"])
def test_missing_v1_model_is_value_not_in_list(specs: SpecView, loader: str) -> None:
    name = {"CheckpointLoaderSimple": "ckpt_name", "VAELoader": "vae_name"}[loader]
    vae = ["1", 2] if loader == "CheckpointLoaderSimple" else ["1", 0]
    prompt = {
        "1": {"class_type": loader, "inputs": {name: "missing.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": vae}},
        "4": save("3"),
    }
    result = validate_prompt(prompt, specs)
    assert body(result) == golden("missing_models.json")[loader]["post_response"]


def test_missing_v3_model_passes_validation(specs: SpecView) -> None:
    prompt = {
        "1": empty_image(8),
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "missing.safetensors"}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": save("3"),
    }
    result = validate_prompt(prompt, specs)
    assert result.ok
    assert result.outputs == ["4"]
    assert result.node_errors == {}


def test_one_bad_output_does_not_block_a_good_one(specs: SpecView) -> None:
    prompt = {"1": empty_image(), "2": save("1"), "3": empty_image(0), "4": save("3")}
    result = validate_prompt(prompt, specs)
    assert result.ok
    assert result.outputs == ["2"]
    assert result.node_errors["3"]["dependent_outputs"] == ["4"]


def test_value_above_max_and_combo_list(specs: SpecView) -> None:
    prompt = {
        "1": empty_image(20000),
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "magic",
                "width": 8,
                "height": 8,
                "crop": "disabled",
            },
        },
        "3": save("2"),
    }
    result = validate_prompt(prompt, specs)
    types = {nid: [e["type"] for e in v["errors"]] for nid, v in result.node_errors.items()}
    assert types == {"1": ["value_bigger_than_max"], "2": ["value_not_in_list"]}
    assert (
        "upscale_method: 'magic' not in ['nearest-exact'" in result.node_errors["2"]["errors"][0]["details"]
    )


def test_partial_execution_targets_limit_outputs(specs: SpecView) -> None:
    prompt = {"1": empty_image(), "2": save("1"), "3": save("1")}
    assert validate_prompt(prompt, specs, ["3"]).outputs == ["3"]
    assert validate_prompt(prompt, specs, []).error["type"] == "prompt_no_outputs"  # type: ignore[index]


def test_non_object_prompt_is_invalid(specs: SpecView) -> None:
    result = validate_prompt(["not", "a", "dict"], specs)
    assert not result.ok
    assert result.error is not None
    assert result.error["type"] == "invalid_prompt"


def test_is_link() -> None:
    assert is_link(["1", 0])
    assert not is_link(["1", "0"])
    assert not is_link([1, 0])
    assert not is_link(["1", 0, 2])
    assert not is_link(["1", True])


# ---------------------------------------------------------------- execution order

UPSCALE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
    "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "m"}},
    "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
}


@pytest.mark.parametrize(
    ("cached", "expected"),
    [
        (set(), ["1", "2", "3", "4"]),  # wf_exec_error (missing model): 1 runs before 2
        ({"1"}, ["2", "3", "4"]),  # wf_upscale_tiny
        ({"2"}, ["1", "3", "4"]),  # wf_heavy_upscale
        ({"1", "2", "3", "4"}, ["4"]),  # identical re-run: only the output root is visited
    ],
)
def test_execution_order_matches_recordings(cached: set[str], expected: list[str]) -> None:
    assert execution_order(UPSCALE, ["4"], cached, {"4"}) == expected


def test_execution_order_prefers_outputs_and_feeders() -> None:
    prompt = {
        "a": {"class_type": "X", "inputs": {}},
        "b": {"class_type": "X", "inputs": {}},
        "p": {"class_type": "Out", "inputs": {"x": ["b", 0]}},
        "s": {"class_type": "Out", "inputs": {"x": ["a", 0], "y": ["p", 0]}},
    }
    order = execution_order(prompt, ["s"], set(), {"p", "s"})
    assert order.index("b") < order.index("p") < order.index("s")
    assert sorted(order) == ["a", "b", "p", "s"]


def test_execution_order_detects_cycles() -> None:
    prompt = {
        "1": {"class_type": "X", "inputs": {"x": ["2", 0]}},
        "2": {"class_type": "X", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "Out", "inputs": {"x": ["2", 0]}},
    }
    with pytest.raises(ValueError, match="cycle"):
        execution_order(prompt, ["3"], set(), {"3"})


# ---------------------------------------------------------------- cache keys


def test_signatures_ignore_node_ids_but_follow_inputs() -> None:
    a = {"1": empty_image(), "2": save("1")}
    b = {"7": empty_image(), "9": save("7")}
    sa, sb = signatures(a, {}), signatures(b, {})
    assert sa["1"] == sb["7"]
    assert sa["2"] == sb["9"]


def test_signature_change_propagates_downstream_only() -> None:
    base = {
        "1": empty_image(),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": save("2"),
    }
    changed = json.loads(json.dumps(base))
    changed["3"]["inputs"]["filename_prefix"] = "other"
    s1, s2 = signatures(base, {}), signatures(changed, {})
    assert s1["1"] == s2["1"]
    assert s1["2"] == s2["2"]
    assert s1["3"] != s2["3"]
    s3 = signatures(base, {"1": "new file hash"})
    assert all(s1[n] != s3[n] for n in ("1", "2", "3"))


def test_specs_are_class_specs(specs: SpecView) -> None:
    spec = specs["SaveImage"]
    assert isinstance(spec, ClassSpec)
    assert spec.output_node
    assert spec.output_types == ()
    assert "NoSuchNode" not in specs
    with pytest.raises(KeyError):
        specs["NoSuchNode"]


def test_cycle_is_a_validation_error_not_a_hang(specs: SpecView) -> None:
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": save("2"),
    }
    result = validate_prompt(prompt, specs)
    assert not result.ok
    error = result.node_errors["3"]["errors"][0]
    assert error["type"] == "exception_during_validation"
    assert "cycle" in error["details"]
    assert len(error["extra_info"]["traceback"]) < 20

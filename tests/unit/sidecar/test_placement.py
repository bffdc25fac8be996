"""The placement module: the models a workflow names (as the rewriting and the cache name them) and the
schema of GET /internal/placement."""

from __future__ import annotations

import json
from typing import Any

import pytest
from comfyui_sidecar.cache.naming import cache_name
from comfyui_sidecar.fetching import apply_fetched
from comfyui_sidecar.filenames import path_extension
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.placement import (
    PLACEMENT_VERSION,
    Placement,
    held_models,
    model_name,
    workflow_models,
)
from comfyui_sidecar.rewriting import RewriteOptions, rewrite_prompt
from pydantic import ValidationError
from transcripts import TRANSCRIPTS

URL = "https://models.example/sd/v1-5.safetensors?download=true"


def recorded_prompt(name: str) -> dict[str, Any]:
    history = json.loads((TRANSCRIPTS / name).read_text())["history"]
    entry = next(iter(history.values()))
    prompt: dict[str, Any] = entry["prompt"][2]
    return prompt


def test_models_of_recorded_workflows() -> None:
    assert workflow_models(recorded_prompt("wf_upscale_tiny.json")) == {
        "upscale_models/tiny-compact-x2.safetensors"
    }
    assert workflow_models(recorded_prompt("wf_heavy_upscale.json")) == {
        "upscale_models/heavy-compact-x2.safetensors"
    }
    assert workflow_models(recorded_prompt("wf_empty_image_save.json")) == set()


def test_every_loader_input_and_links_skipped() -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/base.safetensors"}},
        "2": {
            "class_type": "DualCLIPLoader",
            "inputs": {"clip_name1": "a.safetensors", "clip_name2": "b.safetensors", "type": "flux"},
        },
        "3": {"class_type": "LoraLoader", "inputs": {"lora_name": ["9", 0], "model": ["1", 0]}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": ""}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 1}},
        "6": "not a node",
        "7": {"class_type": "UNETLoader"},
    }
    assert workflow_models(prompt) == {
        "checkpoints/sdxl/base.safetensors",
        "text_encoders/a.safetensors",
        "text_encoders/b.safetensors",
    }


def test_custom_loaders_and_legacy_folder_names() -> None:
    table = loader_table({"MyUnet": {"unet": "unet"}})
    prompt = {"1": {"class_type": "MyUnet", "inputs": {"unet": "flux.gguf"}}}
    assert workflow_models(prompt) == set()
    assert workflow_models(prompt, table) == {"diffusion_models/flux.gguf"}


def test_url_models_are_named_as_the_rewriting_and_the_cache_name_them() -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": URL}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    rewritten = rewrite_prompt(prompt, "req", RewriteOptions(True, loader_table()))
    (fetch,) = rewritten.fetches
    # what the cache links and the prompt then carries (the HTTP source keeps the path's extension)
    blob = cache_name(fetch.url, path_extension(fetch.url))
    sent = apply_fetched(rewritten.prompt, {fetch: blob})
    assert workflow_models(prompt) == {f"checkpoints/{blob}"} == workflow_models(sent)
    assert blob.endswith(".safetensors")


def test_extensionless_url_matches_its_download_with_any_extension() -> None:
    url = "https://example.test/download?id=7"
    (wanted,) = workflow_models({"1": {"class_type": "VAELoader", "inputs": {"vae_name": url}}})
    assert "." not in wanted.rpartition("/")[2]
    downloaded = f"{wanted}.safetensors"
    assert held_models({wanted}, [downloaded]) == {wanted}
    assert held_models({wanted}, [f"loras/{wanted.rpartition('/')[2]}.safetensors"]) == set()
    assert held_models({"vae/a.pt", "vae/b.pt"}, ["vae/a.pt", "vae/c.pt"]) == {"vae/a.pt"}
    assert held_models(set(), ["vae/a.pt"]) == set()


def test_model_name_of_plain_names_and_urls() -> None:
    assert model_name("clip", "t5.safetensors") == "text_encoders/t5.safetensors"
    assert model_name("loras", "s3://bucket/x.safetensors").endswith(".safetensors")
    assert model_name("loras", "s3://bucket/x.safetensors") != model_name(
        "loras", "s3://bucket/y.safetensors"
    )


def test_placement_schema_round_trip_and_compatibility() -> None:
    body = {
        "pod": "image-edit-0",
        "ready": True,
        "draining": False,
        "queue_depth": 3,
        "max_queue_depth": 0,
        "comfyuis": [
            {"index": 0, "up": True, "queue_depth": 2, "loaded_models": ["checkpoints/a.safetensors"]},
            {"index": 1, "up": False, "queue_depth": 1, "loaded_models": [], "later_field": 1},
        ],
        "cached_models": ["checkpoints/b.safetensors"],
        "version": 1,
        "added_later": {"x": 1},
    }
    placement = Placement.model_validate(body)
    assert placement.comfyuis[1].up is False
    dumped = placement.model_dump()
    assert set(dumped) == {
        "pod",
        "ready",
        "draining",
        "queue_depth",
        "max_queue_depth",
        "comfyuis",
        "cached_models",
        "version",
    }
    assert dumped["version"] == PLACEMENT_VERSION == 1
    with pytest.raises(ValidationError):
        Placement.model_validate({**body, "version": 2})
    with pytest.raises(ValidationError):
        Placement.model_validate({**body, "queue_depth": -1})

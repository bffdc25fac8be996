"""Which local ComfyUI runs a prompt (`comfy_pool.choose`), the inferred models of a ComfyUI
(`LoadedModels`, fed from recorded ComfyUI transcripts), and the settings of several ComfyUIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from comfyui_sidecar.activity import ComfyActivity
from comfyui_sidecar.comfy_pool import Candidate, choose
from comfyui_sidecar.loaded_models import LoadedModels
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.metrics import BusyTime, Metrics
from comfyui_sidecar.settings import Settings
from pydantic import ValidationError
from transcripts import TRANSCRIPTS

A, B, C = "checkpoints/a.safetensors", "checkpoints/b.safetensors", "loras/c.safetensors"


def cand(index: int, queue: int = 0, models: set[str] | None = None, tier: int = 0) -> Candidate:
    return Candidate(index, tier, queue, frozenset(models or set()))


# ---- choose ----
def test_the_comfyui_holding_the_models_wins() -> None:
    assert choose([cand(0, models={B}), cand(1, models={A})], {A}, slack=2) == 1
    assert choose([cand(0, models={A}), cand(1, models={A, C})], {A, C}, slack=2) == 1  # more of them


def test_within_the_slack_the_models_beat_a_shorter_queue_beyond_it_the_queue_wins() -> None:
    holder, idle = cand(0, queue=2, models={A}), cand(1, queue=0)
    assert choose([holder, idle], {A}, slack=2) == 0
    assert choose([holder, idle], {A}, slack=1) == 1
    assert choose([cand(0, queue=3), cand(1, queue=1), cand(2, queue=2)], {A}, slack=2) == 1


def test_without_a_holder_the_shortest_queue_then_the_emptiest_then_the_lowest_index() -> None:
    assert choose([cand(0, queue=1), cand(1, queue=0, models={B})], {A}, slack=2) == 1
    assert choose([cand(0, models={B}), cand(1)], {A}, slack=2) == 1  # evicts nothing
    assert choose([cand(0), cand(1)], set(), slack=2) == 0


def test_state_first_down_draining_and_cold_comfyuis_only_when_nothing_better() -> None:
    down_with_model = cand(0, models={A}, tier=4)
    assert choose([down_with_model, cand(1, queue=5, tier=0)], {A}, slack=0) == 1
    assert choose([cand(0, models={A}, tier=2), cand(1, tier=1)], {A}, slack=2) == 1
    assert choose([cand(0, tier=5), cand(1, tier=4)], {A}, slack=2) == 1


# ---- the inferred models ----
def test_classic_cache_holds_the_latest_prompts_models_only() -> None:
    models = LoadedModels(limit=8)
    models.prompt_finished({A}, cached=set())
    models.prompt_finished({B, C}, cached=set())
    assert set(models.names()) == {B, C}
    models.prompt_finished(set(), cached=set())  # a prompt without loaders: ComfyUI dropped them all
    assert models.names() == []
    assert not models.retains


def test_a_cached_loader_the_previous_prompt_did_not_use_reveals_a_larger_cache() -> None:
    models = LoadedModels(limit=2)
    models.prompt_finished({A}, cached=set())
    models.prompt_finished({B}, cached=set())
    models.prompt_finished({A}, cached={A})  # served from the cache two prompts later: --cache-lru
    assert models.retains
    assert models.names() == [A, B], "B is still held too"
    models.prompt_finished({B}, cached=set())
    models.prompt_finished({C}, cached=set())
    assert models.names() == [C, B], "most recent first, at most `limit`"


def test_expected_models_follow_the_queue() -> None:
    models = LoadedModels(limit=8)
    models.prompt_finished({A}, cached=set())
    assert models.expected([]) == {A}
    assert models.expected([{B}, {C}]) == {C}
    models.retains = True
    assert models.expected([{B}, {C}]) == {A, B, C}
    models.reset()
    assert models.names() == []


def replay(activity: ComfyActivity, name: str, prompt_id: str | None = None) -> None:
    recorded: dict[str, Any] = json.loads((TRANSCRIPTS / name).read_text())
    entry = next(iter(recorded["history"].values()))
    activity.sending(entry["prompt"][1], entry["prompt"][2])
    for message in recorded["ws"]:
        if isinstance(message.get("data"), dict):
            activity.event(message["type"], message["data"])


def test_loaded_models_from_recorded_comfyui_transcripts() -> None:
    models = LoadedModels(limit=8)
    activity = ComfyActivity(Metrics(), loader_table(), models)
    replay(activity, "wf_upscale_tiny.json")  # the loader ran to the end
    assert models.names() == ["upscale_models/tiny-compact-x2.safetensors"]
    replay(activity, "wf_exec_error_corrupt_model.json")  # the loader itself failed: nothing loaded
    assert models.names() == []
    activity.connection_lost()  # the recordings are not consecutive prompts: start from nothing known
    replay(activity, "wf_heavy_upscale.json")  # the loader was served from ComfyUI's cache: still held
    assert models.names() == ["upscale_models/heavy-compact-x2.safetensors"]
    assert not models.retains, "with nothing known about the previous prompt, no evidence either way"
    replay(activity, "wf_empty_image_save.json")  # the classic cache dropped the loader's output
    assert models.names() == []
    assert activity.running is None
    assert activity.tracked == 0


def test_the_running_prompt_is_known_for_previews() -> None:
    activity = ComfyActivity(Metrics(), loader_table(), LoadedModels(4))
    activity.sending("p1", {})
    activity.event("execution_start", {"prompt_id": "p1"})
    assert activity.running == "p1"
    activity.event("executing", {"node": None, "prompt_id": "p1"})
    assert activity.running is None


# ---- metrics and settings ----
def test_busy_seconds_of_several_comfyuis_add_up() -> None:
    now = [0.0]
    busy = BusyTime(lambda: now[0])
    for source in (0, 1):
        busy.connected(True, source)
        busy.queue_depth(1, source)
    now[0] = 3.0
    busy.queue_depth(0, 1)
    now[0] = 5.0
    assert busy.seconds() == pytest.approx(8.0)
    metrics = Metrics()
    metrics.queue_depth_changed(2, source=0)
    metrics.queue_depth_changed(3, source=1)
    assert metrics.registry.get_sample_value("comfyui_api_queue_depth") == 5


def test_settings_of_several_comfyuis(tmp_path: Path) -> None:
    base = {"comfy_home": tmp_path}
    one = Settings(**base, comfyui_url="http://127.0.0.1:9000/")
    assert (one.comfy_urls, one.comfy_temp_dirs) == (["http://127.0.0.1:9000"], [one.temp_dir])
    two = Settings(**base, comfyui_urls="http://127.0.0.1:8188, http://127.0.0.1:8189/")
    assert two.comfy_urls == ["http://127.0.0.1:8188", "http://127.0.0.1:8189"]
    assert two.comfy_temp_dirs == [two.temp_dir, two.temp_dir]
    with pytest.raises(ValidationError, match="COMFYUI_TEMP_DIRS has 1 entries, COMFYUI_URLS 2"):
        Settings(**base, comfyui_urls="http://a:1,http://a:2", comfyui_temp_dirs="/t0")
    with pytest.raises(ValidationError, match="needs SIDECAR_MODE=attach"):
        Settings(**base, comfyui_urls="http://a:1,http://a:2", cmd="python main.py")
    with pytest.raises(ValidationError, match="must be an http"):
        Settings(**base, comfyui_urls="a:1")

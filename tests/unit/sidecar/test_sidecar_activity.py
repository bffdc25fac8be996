"""Model loads, finished prompts and busy time, counted from recorded websocket transcripts of ComfyUI."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from comfyui_sidecar.activity import MAX_TRACKED_PROMPTS, ComfyActivity, loader_nodes
from comfyui_sidecar.comfy_client import ComfyClient
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.metrics import BusyTime, Metrics
from transcripts import TRANSCRIPTS


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def replay(name: str, metrics: Metrics) -> ComfyActivity:
    """Feed one recorded exchange through a ComfyClient, as the sidecar sees it: the prompt sent, then the
    websocket messages in order."""
    recorded: dict[str, Any] = json.loads((TRANSCRIPTS / name).read_text())
    history = recorded.get("history") or {}
    entry = next(iter(history.values()), None)
    prompt_id, prompt = (entry["prompt"][1], entry["prompt"][2]) if entry else ("unknown", {})
    activity = ComfyActivity(metrics, loader_table())
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(
            "http://127.0.0.1:9",
            session,
            heartbeat_s=1,
            reconnect_max_s=1,
            lost_timeout_s=1,
            history_poll_s=1,
            on_queue_depth=metrics.queue_depth_changed,
            observer=activity,
        )
        activity.sending(prompt_id, prompt)
        for message in recorded["ws"]:
            client.handle_event(message)
    return activity


async def test_a_loader_comfyui_runs_is_one_model_load() -> None:
    metrics = Metrics()
    activity = await replay("wf_upscale_tiny.json", metrics)
    assert sample(metrics, "comfyui_api_model_loads_total", loader="UpscaleModelLoader") == 1
    assert sample(metrics, "comfyui_api_comfy_executions_total", result="success") == 1
    assert activity.tracked == 0, "a finished prompt is forgotten"


async def test_a_loader_served_from_comfyui_cache_is_no_load() -> None:
    metrics = Metrics()
    await replay("wf_heavy_upscale.json", metrics)  # UpscaleModelLoader listed in execution_cached
    assert sample(metrics, "comfyui_api_model_loads_total", loader="UpscaleModelLoader") == 0
    assert sample(metrics, "comfyui_api_comfy_executions_total", result="success") == 1


async def test_failed_and_interrupted_prompts_are_counted_by_result() -> None:
    metrics = Metrics()
    await replay("wf_exec_error_corrupt_model.json", metrics)
    assert sample(metrics, "comfyui_api_comfy_executions_total", result="error") == 1
    assert sample(metrics, "comfyui_api_model_loads_total", loader="UpscaleModelLoader") == 1
    await replay("queue_interrupt.json", metrics)
    assert sample(metrics, "comfyui_api_comfy_executions_total", result="interrupted") == 1
    assert sample(metrics, "comfyui_api_comfy_executions_total", result="success") == 0


def test_execution_series_exist_before_the_first_prompt() -> None:
    """Alerts compare increases: a pod that never finished a prompt must export zeros, not nothing."""
    metrics = Metrics()
    for result in ("success", "error", "interrupted"):
        assert (
            metrics.registry.get_sample_value("comfyui_api_comfy_executions_total", {"result": result}) == 0
        )


def test_loader_nodes_follow_the_loader_table() -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
        "2": {"class_type": "MyLoader", "inputs": {}},
        "3": {"class_type": "KSampler", "inputs": {}},
        "4": "not a node",
    }
    assert loader_nodes(prompt, loader_table()) == {"1": "CheckpointLoaderSimple"}
    extra = loader_table({"MyLoader": {"path": "checkpoints"}})
    assert loader_nodes(prompt, extra) == {"1": "CheckpointLoaderSimple", "2": "MyLoader"}


def activity_metrics(activity: ComfyActivity) -> Metrics:
    return activity._metrics


def test_prompts_whose_end_is_never_seen_are_bounded() -> None:
    activity = ComfyActivity(Metrics(), loader_table())
    prompt = {"1": {"class_type": "VAELoader", "inputs": {}}}
    for index in range(MAX_TRACKED_PROMPTS + 5):
        activity.sending(f"p{index}", prompt)
    assert activity.tracked == MAX_TRACKED_PROMPTS
    activity.event("executing", {"prompt_id": "p0", "node": "1"})  # the oldest was dropped: not counted
    activity.event("executing", {"prompt_id": "p5", "node": "1"})
    assert sample(activity_metrics(activity), "comfyui_api_model_loads_total", loader="VAELoader") == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (seconds to advance, then "depth" or "connected" and its new value)
        ([(0, "connected", 1), (5, "depth", 1), (3, "depth", 0), (10, "depth", 0)], 3.0),
        ([(0, "depth", 2), (4, "connected", 1), (6, "depth", 1), (2, "depth", 0)], 8.0),
        ([(0, "connected", 1), (1, "depth", 1), (2, "connected", 0), (7, "depth", 1)], 2.0),
    ],
    ids=["busy-while-queued", "counts-only-while-connected", "stops-when-comfyui-goes-away"],
)
def test_busy_time_counts_queued_and_connected_seconds(
    steps: list[tuple[float, str, int]], expected: float
) -> None:
    clock = FakeClock()
    busy = BusyTime(clock)
    for advance, what, value in steps:
        clock.now += advance
        if what == "depth":
            busy.queue_depth(value)
        else:
            busy.connected(bool(value))
    assert busy.seconds() == pytest.approx(expected)


def test_busy_time_includes_the_running_stretch_at_scrape_time() -> None:
    clock = FakeClock()
    busy = BusyTime(clock)
    busy.connected(True)
    busy.queue_depth(1)
    clock.now += 2.5
    (family,) = list(busy.collect())
    assert family.samples[0].name == "comfyui_api_comfy_busy_seconds_total"
    assert family.samples[0].value == pytest.approx(2.5)
    clock.now += 1.5
    assert busy.seconds() == pytest.approx(4.0)

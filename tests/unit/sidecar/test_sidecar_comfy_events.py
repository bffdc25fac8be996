"""The ComfyUI client's event handling, driven by recorded websocket transcripts of a real ComfyUI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from comfyui_sidecar.comfy_client import ComfyClient, ComfyError, Execution, result_from_history
from transcripts import TRANSCRIPTS


def load(name: str) -> dict[str, Any]:
    return json.loads((TRANSCRIPTS / name).read_text())


async def replay(name: str) -> tuple[ComfyClient, asyncio.Future[Execution]]:
    recorded = load(name)
    depths: list[int] = []
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(
            "http://127.0.0.1:9",
            session,
            heartbeat_s=1,
            reconnect_max_s=1,
            lost_timeout_s=1,
            history_poll_s=1,
            on_queue_depth=depths.append,
        )
        client.register(recorded["prompt_id"])
        for message in recorded["ws"]:
            client.handle_event(message)
        waiter = client._waiters[recorded["prompt_id"]]
    assert depths
    assert depths[-1] == 0
    return client, waiter.future


async def test_success_transcript_completes_with_outputs_and_timing() -> None:
    _, future = await replay("wf_empty_image_save.json")
    execution = future.result()
    assert execution.outputs == {
        "2": {"images": [{"filename": "empty_00011_.png", "subfolder": "rig", "type": "output"}]}
    }
    assert execution.start == 1795742856193
    assert execution.end == 1795742856196
    assert set(execution.nodes) == {"1", "2"}
    assert execution.stats()["duration"] == 3


async def test_cached_rerun_transcript_still_reports_the_output() -> None:
    _, future = await replay("wf_empty_image_save_cached.json")
    assert future.result().outputs


async def test_error_transcript_carries_node_class_and_exception() -> None:
    _, future = await replay("wf_exec_error_corrupt_model.json")
    with pytest.raises(ComfyError) as caught:
        future.result()
    error = caught.value
    assert error.status == 500
    assert error.comfy_error == {
        "node_id": "2",
        "node_type": "UpscaleModelLoader",
        "exception_type": "safetensors._safetensors_rust.SafetensorError",
        "exception_message": "Error while deserializing header: header too large\n",
    }
    assert "node 2 (UpscaleModelLoader)" in error.message


def test_history_entries_map_to_results() -> None:
    ok = load("wf_empty_image_save.json")
    entry = next(iter(ok["history"].values()))
    result = result_from_history(ok["prompt_id"], entry)
    assert isinstance(result, Execution)
    assert result.outputs["2"]["images"][0]["filename"] == "empty_00011_.png"
    failed = load("wf_exec_error_corrupt_model.json")
    error = result_from_history(failed["prompt_id"], next(iter(failed["history"].values())))
    assert isinstance(error, ComfyError)
    assert error.comfy_error
    assert error.comfy_error["node_id"] == "2"
    interrupted = load("history_interrupted.json")
    [(prompt_id, entry)] = interrupted.items()
    outcome = result_from_history(prompt_id, entry)
    assert isinstance(outcome, ComfyError)
    assert outcome.message == "Prompt execution interrupted"
    assert result_from_history("x", {"status": {"status_str": "success", "completed": False}}) is None

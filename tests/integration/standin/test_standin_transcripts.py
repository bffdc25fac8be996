"""Replay every recorded ComfyUI exchange against the stand-in and compare message types, order and shapes."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
from comfyui_standin.testing import RunningStandin, write_corrupt_model, write_model, write_png
from standin_helpers import golden, post_prompt, receive, shape, until_done


def recorded_prompt(record: dict[str, Any]) -> dict[str, Any]:
    entry = record["history"][record["prompt_id"]]
    prompt: dict[str, Any] = entry["prompt"][2]
    return copy.deepcopy(prompt)


def single_progress_step(messages: list[Any]) -> list[Any]:
    """Drop the (progress_state, progress) pairs after the first `progress` of a prompt."""
    result: list[Any] = []
    seen_progress = False
    for index, message in enumerate(messages):
        following = messages[index + 1]["type"] if index + 1 < len(messages) else None
        if seen_progress and (
            message["type"] == "progress" or (message["type"] == "progress_state" and following == "progress")
        ):
            continue
        seen_progress = seen_progress or message["type"] == "progress"
        result.append(message)
    return result


def prepare_files(comfy: RunningStandin) -> None:
    write_png(comfy.dirs.input / "rig_input.png", (24, 16), (40, 80, 120))
    upscale = comfy.dirs.models / "upscale_models"
    write_model(upscale / "tiny-compact-x2.safetensors")
    write_model(upscale / "heavy-compact-x2.safetensors")
    write_corrupt_model(upscale / "corrupt.safetensors")


async def run_recorded(
    comfy: RunningStandin, session: aiohttp.ClientSession, record: dict[str, Any], client_id: str
) -> tuple[list[Any], dict[str, Any], str]:
    """Connect, post the recorded prompt, return (ws messages incl. the first status, history entry, id)."""
    async with session.ws_connect(f"{comfy.ws_url}?clientId={client_id}") as ws:
        first = await receive(ws)
        posted = await post_prompt(session, comfy.url, recorded_prompt(record), client_id=client_id)
        assert posted["node_errors"] == {}
        messages = [first, *await until_done(ws, posted["prompt_id"])]
    async with session.get(f"{comfy.url}/history/{posted['prompt_id']}") as response:
        history = (await response.json())[posted["prompt_id"]]
    return messages, history, posted["prompt_id"]


def assert_like_recording(messages: list[Any], history: dict[str, Any], record: dict[str, Any]) -> None:
    expected = record["ws"]
    assert [m["type"] for m in messages] == [m["type"] for m in expected]
    assert [shape(m) for m in messages] == [shape(m) for m in expected]
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing == [m["data"]["node"] for m in expected if m["type"] == "executing"]
    assert shape(history) == shape(record["history"][record["prompt_id"]])
    assert history["status"]["status_str"] == record["history"][record["prompt_id"]]["status"]["status_str"]


async def test_empty_image_save(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    record = golden("wf_empty_image_save.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    image = history["outputs"]["2"]["images"][0]
    assert image == {"filename": "empty_00001_.png", "subfolder": "rig", "type": "output"}
    assert (comfy.dirs.output / "rig" / "empty_00001_.png").is_file()
    assert messages[1]["data"]["status"]["exec_info"]["queue_remaining"] == 1


async def test_identical_rerun_is_cached(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    first_messages, first_history, _ = await run_recorded(
        comfy, session, golden("wf_empty_image_save.json"), "c1"
    )
    record = golden("wf_empty_image_save_cached.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c2")
    assert_like_recording(messages, history, record)
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2"]
    assert history["outputs"] == first_history["outputs"]  # points at the old file
    assert sorted(p.name for p in (comfy.dirs.output / "rig").iterdir()) == ["empty_00001_.png"]
    # POST /free {"free_memory": true} resets the cache: the next identical prompt runs again
    async with session.post(
        f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}
    ) as response:
        assert response.status == 200
    again, again_history, _ = await run_recorded(comfy, session, record, "c3")
    assert [m["type"] for m in again] == [m["type"] for m in first_messages]
    assert again_history["outputs"]["2"]["images"][0]["filename"] == "empty_00002_.png"


async def test_load_invert_save(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    prepare_files(comfy)
    record = golden("wf_load_invert_save.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    saved = history["outputs"]["3"]["images"][0]
    async with session.get(f"{comfy.url}/view", params={**saved, "type": "output"}) as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert (await response.read()).startswith(b"\x89PNG")


async def test_preview_image(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    record = golden("wf_preview_image.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    for image in history["outputs"]["2"]["images"]:
        assert image["type"] == "temp"
        assert (comfy.dirs.temp / image["filename"]).is_file()


async def test_upscale_tiny_with_cached_loader_input(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    prepare_files(comfy)
    await run_recorded(comfy, session, golden("wf_load_invert_save.json"), "prime")  # caches LoadImage
    record = golden("wf_upscale_tiny.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert progress == [{"value": 1, "max": 1, "prompt_id": progress[0]["prompt_id"], "node": "3"}]


async def test_heavy_upscale_reports_sixteen_tiles(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    prepare_files(comfy)
    record = golden("wf_heavy_upscale.json")
    small = copy.deepcopy(record)
    small["history"][record["prompt_id"]]["prompt"][2]["1"]["inputs"]["width"] = 8
    await run_recorded(comfy, session, small, "prime")  # caches the loader (node 2) only
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    assert [m["data"]["value"] for m in messages if m["type"] == "progress"] == list(range(1, 17))


async def test_corrupt_model_execution_error(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    prepare_files(comfy)
    await run_recorded(comfy, session, golden("wf_load_invert_save.json"), "prime")
    record = golden("wf_exec_error_corrupt_model.json")
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    expected = next(m["data"] for m in record["ws"] if m["type"] == "execution_error")
    for key in ("node_id", "node_type", "executed", "exception_message", "exception_type", "current_inputs"):
        assert error[key] == expected[key], key
    assert sorted(error["current_outputs"]) == sorted(expected["current_outputs"])
    assert history["status"]["completed"] is False
    assert history["outputs"] == {}


async def test_missing_v3_model_fails_at_run_time(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    record = golden("missing_models.json")["UpscaleModelLoader(V3)"]
    messages, history, _ = await run_recorded(comfy, session, record, "c1")
    assert_like_recording(messages, history, record)
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    expected = next(m["data"] for m in record["ws"] if m["type"] == "execution_error")
    assert error["exception_message"] == expected["exception_message"]
    assert (error["exception_type"], error["executed"]) == ("FileNotFoundError", ["1"])


async def test_observer_without_client_id_sees_broadcasts_only(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    record = golden("wf_no_client_id_observer.json")
    prompt = recorded_prompt(golden("wf_empty_image_save.json"))
    async with session.ws_connect(f"{comfy.ws_url}?clientId=observer") as ws:
        await receive(ws)
        async with session.post(f"{comfy.url}/prompt", json={"prompt": prompt}) as response:
            assert response.status == 200
        expected = [m for m in record["ws"] if m["type"] != "__timeout__"]
        seen = [await receive(ws) for _ in expected]
        assert [shape(m) for m in seen] == [shape(m) for m in expected]
        assert seen[-1]["data"]["status"]["exec_info"]["queue_remaining"] == 0
        extra = ws.receive_json(timeout=0.3)
        try:
            unexpected = await extra
        except TimeoutError:
            unexpected = None
        assert unexpected is None  # no executing/executed/execution_* without a client_id


async def test_queue_front_delete_and_interrupt(tmp_path: Any, session: aiohttp.ClientSession) -> None:
    """queue_interrupt.json: A runs (heavy upscale), B queued, C queued in front, B deleted, A interrupted."""
    from comfyui_standin.testing import run_standin

    record = golden("queue_interrupt.json")
    prompt_a = recorded_prompt(golden("wf_heavy_upscale.json"))
    light = recorded_prompt(golden("wf_empty_image_save.json"))
    async with run_standin(tmp_path, exec_delay=1.6) as comfy:
        prepare_files(comfy)
        async with session.ws_connect(f"{comfy.ws_url}?clientId=probe-queue") as ws:
            await receive(ws)
            a = await post_prompt(session, comfy.url, prompt_a, client_id="probe-queue")
            seen: list[Any] = []
            while not (seen and seen[-1]["type"] == "executing"):
                seen.append(await receive(ws))
            b = await post_prompt(session, comfy.url, light, client_id="other")
            c = await post_prompt(session, comfy.url, light, client_id="other", front=True)
            assert c["number"] == -(b["number"] + 1)
            async with session.get(f"{comfy.url}/queue") as response:
                queue = await response.json()
            assert [item[1] for item in queue["queue_running"]] == [a["prompt_id"]]
            assert [item[1] for item in queue["queue_pending"]] == [c["prompt_id"], b["prompt_id"]]
            assert queue["queue_running"][0][3] == {"client_id": "probe-queue"}
            while not (seen and seen[-1]["type"] == "progress"):
                seen.append(await receive(ws))
            async with session.post(f"{comfy.url}/queue", json={"delete": [b["prompt_id"]]}) as response:
                assert response.status == 200
                assert await response.read() == b""
            async with session.post(f"{comfy.url}/interrupt", json={"prompt_id": "not-running"}) as response:
                assert response.status == 200
            async with session.post(f"{comfy.url}/interrupt", json={"prompt_id": a["prompt_id"]}) as response:
                assert response.status == 200
                assert await response.read() == b""
            seen += await until_done(ws, a["prompt_id"])
        seen = single_progress_step(seen)  # on a loaded machine a second tile may finish before the interrupt
        assert [m["type"] for m in seen] == [m["type"] for m in record["ws"]]
        assert [shape(m) for m in seen] == [shape(m) for m in record["ws"]]
        interrupted = next(m["data"] for m in seen if m["type"] == "execution_interrupted")
        assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "ImageUpscaleWithModel")
        assert sorted(interrupted["executed"]) == ["1", "2"]
        async with session.get(f"{comfy.url}/history/{a['prompt_id']}") as response:
            history = await response.json()
        expected_history = golden("history_interrupted.json")
        assert shape(list(history.values())) == shape(list(expected_history.values()))
        entry = history[a["prompt_id"]]
        assert entry["status"]["status_str"] == "error"
        assert entry["outputs"] == {}
        async with session.get(f"{comfy.url}/history/{b['prompt_id']}") as response:
            assert await response.json() == {}  # deleted before it ran

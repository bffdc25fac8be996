"""Preview frames (--preview-method): binary websocket frames to the prompt's client, as ComfyUI sends
them: type 4 with JSON metadata to a client whose first frame announced supports_preview_metadata, else
type 1 (JPEG)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from comfyui_standin.testing import run_standin
from PIL import Image
from standin_helpers import post_prompt


def sleepy(color: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 20, "height": 10, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": 0.1, "steps": 3}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}},
    }


async def frames_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=10)
        if message.type == aiohttp.WSMsgType.BINARY:
            out.append(message.data)
            continue
        data = json.loads(message.data)
        out.append(data["type"])
        if (
            data["type"] == "executing"
            and data["data"]["node"] is None
            and data["data"]["prompt_id"] == prompt_id
        ):
            return out
    raise AssertionError(out)


async def run(url: str, session: aiohttp.ClientSession, *, flags: bool, color: int = 0x00FF00) -> list[Any]:
    async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId=c1") as ws:
        if flags:
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        posted = await post_prompt(session, url, sleepy(color), client_id="c1")
        return await frames_until_done(ws, posted["prompt_id"])


async def test_previews_follow_the_feature_flags(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with run_standin(tmp_path, preview_method="auto") as comfy:
        tagged = await run(comfy.url, session, flags=True)
        binary = [frame for frame in tagged if isinstance(frame, bytes)]
        assert len(binary) == 3  # one per step
        assert tagged.index(binary[0]) > tagged.index("progress")  # after the step's progress message
        frame = binary[0]
        assert int.from_bytes(frame[:4], "big") == 4
        length = int.from_bytes(frame[4:8], "big")
        meta = json.loads(frame[8 : 8 + length])
        assert meta["node_id"] == "2"
        assert meta["prompt_id"]
        assert set(meta) == {"node_id", "prompt_id", "display_node_id", "parent_node_id", "real_node_id"}
        image = Image.open(io.BytesIO(frame[8 + length :]))
        assert (image.format, image.size) == ("JPEG", (20, 10))

        plain = await run(comfy.url, session, flags=False, color=0x0000FF)  # not served from the cache
        legacy = [frame for frame in plain if isinstance(frame, bytes)]
        assert legacy
        assert int.from_bytes(legacy[0][:4], "big") == 1
        assert int.from_bytes(legacy[0][4:8], "big") == 1  # JPEG
        assert Image.open(io.BytesIO(legacy[0][8:])).format == "JPEG"


async def test_no_previews_without_a_preview_method(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with run_standin(tmp_path) as comfy:
        frames = await run(comfy.url, session, flags=True)
    assert not [frame for frame in frames if isinstance(frame, bytes)]
    assert "progress" in frames

"""Helpers for the stand-in's integration tests (real HTTP and websocket on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from transcripts import TRANSCRIPTS

# Recordings of a real ComfyUI, shared with the unit tests (tests/data/comfyui-transcripts/README.md).
GOLDEN = TRANSCRIPTS


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys kept, scalars replaced by kinds ("_t", tracebacks ignored)."""
    if isinstance(value, dict):
        return {k: ("list" if k == "traceback" else shape(v)) for k, v in value.items() if k != "_t"}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 10.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout_s)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def until_done(
    ws: aiohttp.ClientWebSocketResponse, prompt_id: str, timeout_s: float = 20.0
) -> list[Any]:
    """Messages up to and including `executing {"node": null, "prompt_id": prompt_id}`."""
    deadline = time.monotonic() + timeout_s
    messages: list[Any] = []
    while time.monotonic() < deadline:
        message = await receive(ws, deadline - time.monotonic())
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout_s} s: {messages}")


async def post_prompt(session: aiohttp.ClientSession, url: str, prompt: Any, **extra: Any) -> dict[str, Any]:
    async with session.post(f"{url}/prompt", json={"prompt": prompt, **extra}) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

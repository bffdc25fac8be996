"""Comfy API v2 driven by the real comfy-sdk from PyPI against one sidecar in front of the stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from comfy_sdk import AsyncComfy
from v2_harness import Replica, empty_image, pixel, replicas, sdk_env


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[Replica]:
    async with replicas(tmp_path, 1) as started:
        yield started[0]


async def test_run_and_wait_returns_the_output_pixels(one: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    with sdk_env(monkeypatch, one.url):
        async with AsyncComfy() as client:
            job = await client.run(client.workflows.from_json(empty_image(color=0x336699)))
            assert job.status == "succeeded"
            outputs = job.get_outputs("2")
            assert len(outputs) == 1
            data = await outputs[0].to_bytes()
            assert pixel(data) == (0x33, 0x66, 0x99)

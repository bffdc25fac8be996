"""Fixtures for the stand-in's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from comfyui_standin.testing import RunningStandin, run_standin


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[RunningStandin]:
    async with run_standin(tmp_path) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client

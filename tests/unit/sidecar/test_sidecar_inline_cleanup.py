"""Inline (base64) inputs are removed again when writing them fails part way."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any, cast

import pytest
from comfyui_sidecar import prompt_flow
from comfyui_sidecar.fetching import NoDownloads
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.models import PromptRequest
from comfyui_sidecar.prompt_flow import PrepareError, PromptService
from comfyui_sidecar.settings import Settings
from PIL import Image


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_failed_second_write_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        comfy_home=tmp_path,
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        temp_dir=tmp_path / "temp",
        model_dir=tmp_path / "models",
    )
    service = PromptService(settings, cast(Any, None), NoDownloads(), cast(Any, None), Metrics())
    real_write = prompt_flow.write_atomic
    writes = 0

    def failing_second_write(path: Path, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(prompt_flow, "write_atomic", failing_second_write)
    request = PromptRequest.model_validate(
        {
            "id": "r1",
            "prompt": {
                "1": {"class_type": "LoadImage", "inputs": {"image": _png()}},
                "2": {"class_type": "LoadImage", "inputs": {"image": _png()}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            },
        }
    )
    with pytest.raises(PrepareError) as caught:
        await service.prepare(request, time.monotonic())
    assert caught.value.status == 500
    assert "No space left on device" in caught.value.message
    assert writes == 2
    assert list((tmp_path / "input").iterdir()) == []
    assert service.inflight == 0

"""Outputs already written are removed when a prompt fails, times out or reading a later output fails."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from comfyui_sidecar.comfy_client import ComfyError, Execution
from comfyui_sidecar.fetching import NoDownloads
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.models import PromptRequest
from comfyui_sidecar.outputs import OutputRef
from comfyui_sidecar.prompt_flow import PromptService
from comfyui_sidecar.settings import Settings


class FakeComfy:
    def __init__(self, *, wait_result: Execution | ComfyError, history: Any) -> None:
        self.wait_result = wait_result
        self.history_result = history
        self.history_calls = 0

    def forget(self, prompt_id: str) -> None: ...

    async def queue(self, prompt: Any, prompt_id: str, timeout_s: float, target: int | None) -> int:
        return 0

    def index_of(self, prompt_id: str) -> int | None:
        return 0

    async def wait(self, prompt_id: str, timeout_s: float) -> Execution:
        if isinstance(self.wait_result, ComfyError):
            raise self.wait_result
        return self.wait_result

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        self.history_calls += 1
        if isinstance(self.history_result, BaseException):
            raise self.history_result
        return cast(Mapping[str, Any] | None, self.history_result)

    async def view(self, ref: OutputRef) -> bytes:
        raise ComfyError(502, f"ComfyUI could not return output {ref.filename}: HTTP 404")


def _service(tmp_path: Path, comfy: FakeComfy) -> PromptService:
    settings = Settings(
        comfy_home=tmp_path,
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        temp_dir=tmp_path / "temp",
        model_dir=tmp_path / "models",
    )
    return PromptService(settings, cast(Any, comfy), NoDownloads(), cast(Any, None), Metrics())


def _request() -> PromptRequest:
    return PromptRequest.model_validate(
        {
            "id": "r1",
            "prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            },
        }
    )


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"png")
    return path


@pytest.mark.parametrize(
    "error",
    [ComfyError(500, "ComfyUI failed on node 2"), ComfyError(504, "timeout"), ComfyError(500, "interrupted")],
)
async def test_outputs_in_history_are_removed_when_the_prompt_fails(
    tmp_path: Path, error: ComfyError
) -> None:
    saved = _write(tmp_path / "output" / "sub" / "r1_x_00001_.png")
    preview = _write(tmp_path / "temp" / "r1_p_00001_.png")
    outside = _write(tmp_path / "keep.png")
    history = {
        "outputs": {
            "2": {"images": [{"filename": saved.name, "subfolder": "sub", "type": "output"}]},
            "3": {"images": [{"filename": preview.name, "subfolder": "", "type": "temp"}]},
            "4": {"images": [{"filename": "keep.png", "subfolder": "..", "type": "output"}]},
        }
    }
    service = _service(tmp_path, FakeComfy(wait_result=error, history=history))
    prepared = await service.prepare(_request(), time.monotonic())
    with pytest.raises(ComfyError) as caught:
        await service.run(prepared)
    assert caught.value is error
    assert not saved.exists()
    assert not preview.exists()
    assert outside.exists()
    assert service.inflight == 0
    assert service.running == set()


async def test_outputs_read_before_a_failing_read_are_removed(tmp_path: Path) -> None:
    first = _write(tmp_path / "output" / "r1_x_00001_.png")
    execution = Execution(
        "c1",
        outputs={
            "2": {
                "images": [
                    {"filename": first.name, "subfolder": "", "type": "output"},
                    {"filename": "r1_x_00002_.png", "subfolder": "", "type": "output"},
                ]
            }
        },
    )
    comfy = FakeComfy(wait_result=execution, history=None)
    service = _service(tmp_path, comfy)
    prepared = await service.prepare(_request(), time.monotonic())
    with pytest.raises(ComfyError) as caught:
        await service.run(prepared)
    assert caught.value.status == 502
    assert not first.exists()
    assert comfy.history_calls == 0  # the outputs were known; a 502 means ComfyUI may not answer


async def test_cleanup_never_raises_when_history_fails(tmp_path: Path) -> None:
    comfy = FakeComfy(wait_result=ComfyError(500, "boom"), history=aiohttp.ClientConnectionError("down"))
    service = _service(tmp_path, comfy)
    prepared = await service.prepare(_request(), time.monotonic())
    with pytest.raises(ComfyError, match="boom"):
        await service.run(prepared)
    assert comfy.history_calls == 1

"""Comfy API v2 driven by the real, unmodified comfy-sdk (PyPI) over HTTP: one sidecar before the stand-in.

What the SDK checks on its own (it validates every Job, Output and Asset strictly with pydantic) is part of
each test: a missing key, a naive timestamp or an unknown enum value would raise inside the SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from comfy_sdk import AsyncComfy, Comfy, OutputReady, Preview, Progress, StatusChange
from comfy_sdk.exceptions import IdempotencyKeyReuse, JobFailed, MissingAsset, NotFound
from comfy_sdk.workflows import Workflow
from v2_harness import (
    Replica,
    empty_image,
    invert,
    pixel,
    png_bytes,
    replicas,
    sdk_env,
    slow_image,
    until_running,
)


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[Replica]:
    async with replicas(tmp_path, 1) as started:
        yield started[0]


@pytest.fixture
async def client(one: Replica, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AsyncComfy]:
    with sdk_env(monkeypatch, one.url):
        async with AsyncComfy() as sdk:
            yield sdk


async def test_run_and_wait_returns_the_output_pixels(client: AsyncComfy) -> None:
    job = await client.run(client.workflows.from_json(empty_image(color=0x336699)))
    assert job.status == "succeeded"
    (output,) = job.get_outputs("2")
    assert (output.type, output.content_type) == ("image", "image/png")
    data = await output.to_bytes()
    assert output.size_bytes == len(data)
    assert pixel(data) == (0x33, 0x66, 0x99)
    assert (await output.to_bytes(range=(0, 3))) == data[:4]


async def test_an_uploaded_input_goes_through_the_workflow(client: AsyncComfy) -> None:
    photo = client.assets.from_bytes(png_bytes(color=(10, 200, 30)), filename="photo.png")
    job = await client.run(client.workflows.from_json(invert(photo)))
    (output,) = job.get_outputs("3")
    assert pixel(await output.to_bytes()) == (245, 55, 225)
    workflow = await job.get_workflow()
    assert workflow.format == "api"
    assert workflow.graph["1"]["inputs"]["image"].endswith("/photo.png")


async def test_the_same_bytes_are_uploaded_once(client: AsyncComfy, one: Replica) -> None:
    data = png_bytes(color=(1, 2, 3))
    first = client.assets.from_bytes(data, filename="a.png")
    second = client.assets.from_bytes(data, filename="b.png")
    first_id = await first.commit()
    second_id = await second.commit()
    assert first.created_new is True
    assert second.created_new is False  # found by hash: POST /assets/from-hash, no second upload
    assert first_id != second_id
    assert first.hash == second.hash
    assert len(list((one.settings.input_dir / ".api-v2" / "blobs").iterdir())) == 1
    fetched = await client.assets.get(second_id)
    assert fetched.file_path == "b.png"


async def test_events_arrive_in_order_with_progress_preview_output_then_the_end(client: AsyncComfy) -> None:
    job = await client.submit(client.workflows.from_json(slow_image(seconds=1.2, steps=4)))
    seen: list[object] = [event async for event in job.events()]
    statuses = [event.status for event in seen if isinstance(event, StatusChange)]
    assert statuses[-1] == "succeeded"
    assert statuses[0] in ("queued", "running")
    assert "running" in statuses
    kinds = [type(event).__name__ for event in seen]
    assert kinds.index("OutputReady") < len(kinds) - 1  # the output came before the terminal status
    progress = [event for event in seen if isinstance(event, Progress)]
    assert progress
    assert [p.value for p in progress] == sorted(p.value for p in progress)
    assert any(p.steps == 4 and p.current_node == "2" for p in progress)
    previews = [event for event in seen if isinstance(event, Preview)]
    assert previews
    assert previews[0].node_id == "2"
    assert previews[0].to_pil().size == (16, 16)
    (ready,) = [event for event in seen if isinstance(event, OutputReady)]
    assert ready.output.node_id == "3"
    assert pixel(await ready.output.to_bytes()) == (255, 0, 0)


async def test_a_queued_job_reports_its_position_then_runs(client: AsyncComfy) -> None:
    def slow(seconds: float, prefix: str) -> Workflow:
        return client.workflows.from_json(slow_image(seconds=seconds, steps=1, prefix=prefix))

    first = await client.submit(slow(1.0, "first"))
    second = await client.submit(slow(0.6, "second"))
    third = await client.submit(slow(0.2, "third"))
    seen = [(e.status, e.queue_position) async for e in third.events() if isinstance(e, StatusChange)]
    assert seen == [("queued", 2), ("queued", 1), ("running", None), ("succeeded", None)]
    await first.result()
    await second.result()


async def test_cancel_a_running_job(client: AsyncComfy) -> None:
    job = await client.submit(client.workflows.from_json(slow_image(seconds=20, steps=40)))
    await until_running(job)
    await job.cancel()
    assert job.status in ("canceling", "canceled")
    await job.wait(timeout=10)
    assert job.status == "canceled"
    with pytest.raises(JobFailed):
        await job.result()


async def test_cancel_a_queued_job_is_immediate(client: AsyncComfy) -> None:
    running = await client.submit(client.workflows.from_json(slow_image(seconds=20, steps=40)))
    queued = await client.submit(client.workflows.from_json(empty_image()))
    await queued.cancel()
    assert queued.status == "canceled"
    await running.cancel()
    await running.wait(timeout=10)


async def test_a_failing_workflow_raises_job_failed_with_the_node(client: AsyncComfy) -> None:
    failing = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "StandinFail", "inputs": {"message": "boom", "image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(JobFailed) as caught:
        await client.run(client.workflows.from_json(failing))
    error = caught.value.error
    assert error is not None
    assert (error.code, error.node_id, error.class_type) == ("node_execution_error", "2", "StandinFail")
    assert "boom" in error.message
    assert error.traceback


async def test_twenty_concurrent_jobs_each_get_their_own_output(client: AsyncComfy) -> None:
    colors = [0x010000 * (10 * i) + 0x05 for i in range(20)]
    jobs = await asyncio.gather(
        *(
            client.run(client.workflows.from_json(empty_image(color=c, prefix=f"c{i}")))
            for i, c in enumerate(colors)
        )
    )
    for color, job in zip(colors, jobs, strict=True):
        (output,) = job.get_outputs("2")
        assert pixel(await output.to_bytes()) == ((color >> 16) & 255, (color >> 8) & 255, color & 255)


async def test_list_jobs_pages_with_a_cursor_and_filters_by_labels(client: AsyncComfy) -> None:
    ids = []
    for index in range(5):
        job = await client.submit(
            client.workflows.from_json(empty_image(prefix=f"l{index}")),
            metadata={"team": "blue" if index % 2 else "red", "n": str(index)},
        )
        ids.append(job.id)
        await job.result()
    listed = [summary async for summary in client.list_jobs(limit=2)]
    assert [summary.id for summary in listed] == ids[::-1]
    assert all(summary.status == "succeeded" and summary.create_time is not None for summary in listed)
    blue = [summary async for summary in client.list_jobs(metadata={"team": "blue"}, limit=1)]
    assert [summary.id for summary in blue] == [ids[3], ids[1]]
    assert blue[0].metadata == {"team": "blue", "n": "3"}


async def test_a_reused_idempotency_key_is_refused(client: AsyncComfy) -> None:
    workflow = client.workflows.from_json(empty_image())
    first = await client.submit(workflow, idempotency_key="order-42")
    with pytest.raises(IdempotencyKeyReuse):
        await client.submit(workflow, idempotency_key="order-42")
    await first.result()


async def test_a_reference_to_an_unknown_asset_fails_the_submit(client: AsyncComfy) -> None:
    workflow = invert({"__type": "core/ASSET", "info": {"id": "ast_nosuchasset"}})
    with pytest.raises(MissingAsset):
        await client.submit(client.workflows.from_json(workflow))


async def test_delete_an_asset(client: AsyncComfy) -> None:
    asset = client.assets.from_bytes(png_bytes(), filename="gone.png")
    asset_id = await asset.commit()
    await asset.delete()
    with pytest.raises(NotFound):
        await client.assets.get(asset_id)


async def test_the_synchronous_client_streams_and_downloads(
    one: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocking client, run in a worker thread (the servers run on this test's event loop)."""

    def blocking() -> list[str]:
        with Comfy() as sdk:
            job = sdk.submit(sdk.workflows.from_json(slow_image(seconds=0.4, steps=2)))
            names = [type(event).__name__ for event in job.events()]
            job.result()
            (output,) = job.get_outputs("3")
            assert pixel(output.to_bytes()) == (255, 0, 0)
            return names

    with sdk_env(monkeypatch, one.url):
        names = await asyncio.to_thread(blocking)
    assert names[-1] == "StatusChange"
    assert "OutputReady" in names


async def test_an_identical_rerun_gets_its_own_files(client: AsyncComfy, one: Replica) -> None:
    workflow = client.workflows.from_json(empty_image(color=0x123456))
    first = await client.run(workflow)
    second = await client.run(workflow)  # ComfyUI's cache serves EmptyImage, SaveImage runs again
    (a,), (b,) = first.outputs, second.outputs
    assert a.id != b.id
    assert a.name == b.name == "v2_00001_.png"
    await client.assets.delete(a.id)
    assert pixel(await b.to_bytes()) == (0x12, 0x34, 0x56)
    folders = list((one.settings.output_dir / "api-v2").iterdir())
    assert len(folders) == 1  # the first job's emptied folder is gone too


def example_code(folder: Path) -> str:
    """The first Python block of docs/api-v2.md, with the files it reads written into `folder`."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "api-v2.md").read_text()
    (folder / "invert_api.json").write_text(json.dumps(invert("placeholder.png")))
    (folder / "photo.png").write_bytes(png_bytes(color=(0, 0, 0)))
    return text.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_worked_example_in_the_docs_runs(
    one: Replica, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Python block of docs/api-v2.md, as written, against a sidecar (in a thread: it is blocking)."""
    code = example_code(tmp_path)
    monkeypatch.chdir(tmp_path)
    with sdk_env(monkeypatch, one.url):
        await asyncio.to_thread(exec, compile(code, "docs/api-v2.md", "exec"), {})
    assert pixel((tmp_path / "inverted.png").read_bytes()) == (255, 255, 255)

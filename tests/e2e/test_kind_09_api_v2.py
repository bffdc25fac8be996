"""Comfy API v2 on real pods with two replicas, driven by the official `comfy-sdk` unmodified: a job submitted
through one pod is streamed, downloaded and cancelled through the other; an idempotency key holds across both;
a job whose pod was deleted reads `expired`, never 404 (docs/api-v2.md)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from comfy_sdk import AsyncComfy, StatusChange
from comfy_sdk.exceptions import IdempotencyKeyReuse
from PIL import Image

from .kube import Kube, e2e_namespace, standin_instance, wait_instance_ready

pytestmark = pytest.mark.e2e
NAME = "v2"


def slow_image(seconds: float, steps: int, color: int = 0xFF0000) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "StandinSleep",
            "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2"}},
    }


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-v2") as name:
        kube.apply(standin_instance(NAME, name, replicas=2, comfyui={"args": ["--preview-method", "auto"]}))
        wait_instance_ready(kube, NAME, name)
        yield name


@pytest.fixture(scope="module")
def pods(kube: Kube, namespace: str) -> list[str]:
    names = sorted(
        pod["metadata"]["name"]
        for pod in kube.pods(namespace, f"app.kubernetes.io/instance={NAME}")
        if not pod["metadata"].get("deletionTimestamp")
    )
    assert len(names) == 2, names
    return names


@pytest.fixture(scope="module")
def urls(kube: Kube, namespace: str, pods: list[str]) -> Iterator[tuple[str, str]]:
    with (
        kube.port_forward(namespace, f"pod/{pods[0]}", 3000) as a,
        kube.port_forward(namespace, f"pod/{pods[1]}", 3000) as b,
    ):
        yield a, b


@contextlib.contextmanager
def _env(base_url: str) -> Iterator[None]:
    saved = os.environ.get("COMFY_BASE_URL")
    os.environ["COMFY_BASE_URL"] = base_url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COMFY_BASE_URL", None)
        else:
            os.environ["COMFY_BASE_URL"] = saved


def sdk(base_url: str) -> AsyncComfy:
    with _env(base_url):  # the SDK reads COMFY_BASE_URL when the client is built
        return AsyncComfy()


async def test_a_job_from_one_pod_is_streamed_and_downloaded_through_the_other(urls: tuple[str, str]) -> None:
    a, b = urls
    via_a, via_b = sdk(a), sdk(b)
    try:
        submitted = await via_a.submit(via_a.workflows.from_json(slow_image(1.0, 4)))
        remote = await via_b.jobs.get(submitted.id)
        statuses = [event.status async for event in remote.events() if isinstance(event, StatusChange)]
        assert statuses[-1] == "succeeded", statuses
        await remote.result()
        (output,) = remote.get_outputs("3")
        with Image.open(io.BytesIO(await output.to_bytes())) as image:
            assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    finally:
        await via_a.aclose()
        await via_b.aclose()


async def test_cancel_through_the_other_pod(urls: tuple[str, str]) -> None:
    a, b = urls
    via_a, via_b = sdk(a), sdk(b)
    try:
        job = await via_a.submit(via_a.workflows.from_json(slow_image(30.0, 60)))
        remote = await via_b.jobs.get(job.id)
        deadline = time.monotonic() + 30
        while remote.status != "running" and time.monotonic() < deadline:
            await remote.refresh()
        await remote.cancel()
        await job.wait(timeout=20)
        await job.refresh()
        assert job.status == "canceled", job.status
    finally:
        await via_a.aclose()
        await via_b.aclose()


async def test_an_idempotency_key_holds_across_the_pods(urls: tuple[str, str]) -> None:
    a, b = urls
    via_a, via_b = sdk(a), sdk(b)
    key = f"e2e-{time.time_ns()}"
    try:
        first = await via_a.submit(via_a.workflows.from_json(slow_image(0.2, 1)), idempotency_key=key)
        with pytest.raises(IdempotencyKeyReuse):
            await via_b.submit(
                via_b.workflows.from_json(slow_image(0.2, 1, color=0x00FF00)), idempotency_key=key
            )
        await first.result()
    finally:
        await via_a.aclose()
        await via_b.aclose()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


async def test_a_job_of_a_deleted_pod_reads_expired_never_404(
    kube: Kube, namespace: str, pods: list[str], urls: tuple[str, str]
) -> None:
    a, b = urls
    via_a = sdk(a)
    try:
        job = await via_a.run(via_a.workflows.from_json(slow_image(0.2, 1)))
    finally:
        await via_a.aclose()
    kube.run("-n", namespace, "delete", "pod", pods[0], "--wait=false")
    seen: list[int | str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, body = _get(f"{b}/api/v2/jobs/{job.id}")
        assert status != 404, f"a job that existed answered 404: {body}"
        seen.append(status if status != 200 else body["status"])
        if status == 200 and body["status"] == "expired":
            break
        await asyncio.sleep(2)
    assert seen[-1] == "expired", seen

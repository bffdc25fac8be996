"""The router on real pods (docs/router.md): jobs through the instance's Service go to the replica that holds
their model; a replica deleted mid-job is a clear 502 and the rest keeps working; with spec.scaling, the idle
instance scales to zero, and a v2 job sent then is held (201 queued), scales it back and succeeds."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from comfy_sdk import AsyncComfy
from comfyui_standin.testing import upscale

from .kube import (
    Kube,
    condition,
    e2e_namespace,
    file_server,
    files_url,
    get_text,
    post_json,
    standin_instance,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
NAME = "routed"
ALLOW = {"name": "DOWNLOAD_ALLOW_NETWORKS", "value": "10.96.0.0/12"}
IDLE_S = 60
REPLICAS = "app.kubernetes.io/name=comfyui,app.kubernetes.io/instance=" + NAME
ROUTERS = "app.kubernetes.io/name=comfyui-router,app.kubernetes.io/instance=" + NAME


def _instance(namespace: str, **extra: Any) -> dict[str, Any]:
    return standin_instance(
        NAME, namespace, replicas=2, sidecar={"env": [ALLOW]}, routing={"replicas": 2}, **extra
    )


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-router") as name:
        kube.apply(*file_server(name))
        kube.run("-n", name, "rollout", "status", "deployment/files", "--timeout=120s", timeout=150)
        kube.apply(_instance(name))
        wait_instance_ready(kube, NAME, name)
        kube.run("-n", name, "rollout", "status", f"deployment/{NAME}-router", "--timeout=120s", timeout=150)
        yield name


@pytest.fixture(scope="module")
def router(kube: Kube, namespace: str) -> Iterator[str]:
    """The instance's Service (the router), as a client reaches it."""
    with kube.port_forward(namespace, f"svc/{NAME}", 3000) as url:
        yield url


def _replicas(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return [p for p in kube.pods(namespace, REPLICAS) if not p["metadata"].get("deletionTimestamp")]


def _successes(kube: Kube, namespace: str, pod: str) -> float:
    """comfyui_api_comfy_executions_total{result="success"} of one replica's sidecar."""
    with kube.port_forward(namespace, f"pod/{pod}", 3000) as url:
        status, text = get_text(f"{url}/metrics")
    assert status == 200
    match = re.search(r'^comfyui_api_comfy_executions_total\{result="success"\} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _prompt(model: str, seed: int, *, sleep_s: float = 0.0) -> dict[str, Any]:
    """EmptyImage -> UpscaleModelLoader(URL model) -> upscale (-> StandinSleep) -> SaveImage."""
    return upscale(model, color=seed, prefix="routed", sleep_s=sleep_s, sleep_steps=10)


def test_jobs_through_the_service_go_to_the_replica_holding_their_model(
    kube: Kube, namespace: str, router: str
) -> None:
    model = files_url(namespace, "/files/route-x2.safetensors?size=65536&scale=2")
    status, body = post_json(f"{router}/prompt", {"prompt": _prompt(model, 1)})
    assert status == 200, body
    time.sleep(3)  # the router's next placement polls see where the model is
    pods = [p["metadata"]["name"] for p in _replicas(kube, namespace)]
    before = {pod: _successes(kube, namespace, pod) for pod in pods}
    for seed in range(2, 7):
        status, body = post_json(f"{router}/prompt", {"prompt": _prompt(model, seed)})
        assert status == 200, body
    after = {pod: _successes(kube, namespace, pod) for pod in pods}
    gained = sorted(after[pod] - before[pod] for pod in pods)
    assert gained == [0, 5], f"the five jobs of one model were split over the replicas: {before} -> {after}"


def test_a_replica_deleted_mid_job_is_a_clear_failure_and_the_rest_keeps_working(
    kube: Kube, namespace: str, router: str
) -> None:
    model = files_url(namespace, "/files/route-doomed.safetensors?size=65536&scale=2")
    post_json(f"{router}/prompt", {"prompt": _prompt(model, 1)})

    def running_on() -> str | None:
        for pod in _replicas(kube, namespace):
            with kube.port_forward(namespace, f"pod/{pod['metadata']['name']}", 3000) as url:
                _, text = get_text(f"{url}/metrics")
            if re.search(r"^comfyui_api_queue_depth 1\.0$", text, re.M):
                return str(pod["metadata"]["name"])
        return None

    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(post_json, f"{router}/prompt", {"prompt": _prompt(model, 2, sleep_s=120)}, 200)
        victim = kube.wait(running_on, timeout=60, interval=2, what="the long prompt running on a replica")
        kube.run("-n", namespace, "delete", "pod", victim, "--grace-period=0", "--force", "--wait=false")
        deleted = time.monotonic()
        status, body = job.result(timeout=90)  # not the prompt's 120 s: the router does not wait for a ghost
    print(
        f"the router answered {status} {time.monotonic() - deleted:.1f} s after the pod was deleted: {body}"
    )
    assert status == 502, body  # the router's "went away ... outcome is unknown", or the sidecar's own 502
    assert body["message"], body
    wait_instance_ready(kube, NAME, namespace, timeout=240)
    status, body = post_json(f"{router}/prompt", {"prompt": _prompt(model, 3)})
    assert status == 200, body


def test_an_idle_instance_scales_to_zero_and_a_held_v2_job_brings_it_back(
    kube: Kube, namespace: str, router: str
) -> None:
    kube.apply(_instance(namespace, scaling={"idleTimeoutSeconds": IDLE_S}))

    def at_zero() -> dict[str, Any] | None:
        instance = kube.get("comfyuiinstance", NAME, namespace)
        scaling = (instance or {}).get("status", {}).get("scaling") or {}
        # every replica pod gone, terminating ones included: a draining pod still finishes what it is sent
        return instance if scaling.get("scaledToZero") and not kube.pods(namespace, REPLICAS) else None

    instance = kube.wait(at_zero, timeout=IDLE_S + 240, interval=5, what="the idle instance at zero replicas")
    assert condition(instance, "Ready")["reason"] == "IdleScaledToZero"
    assert len(kube.pods(namespace, ROUTERS)) == 2  # the routers stay

    async def run() -> tuple[str, str, str, Any]:
        os.environ["COMFY_BASE_URL"] = router
        client = AsyncComfy()
        try:
            # v2 names models by file name (URL model inputs are comfyui-api's): a model-free graph
            wf = client.workflows.from_json(
                {
                    "1": {
                        "class_type": "EmptyImage",
                        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 9},
                    },
                    "2": {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["1", 0], "filename_prefix": "wake"},
                    },
                }
            )
            job = await client.submit(wf)
            first = job.status
            await job.wait(timeout=600)
            return first, job.status, job.id, job.error
        finally:
            await client.aclose()

    started = time.monotonic()
    first, final, job_id, error = asyncio.run(run())
    print(f"held v2 job {job_id}: {first} -> {final} in {time.monotonic() - started:.0f} s (scale from zero)")
    assert first == "queued"
    assert final == "succeeded", error
    instance = kube.get("comfyuiinstance", NAME, namespace)
    assert instance["status"]["scaling"]["scaledToZero"] is False
    assert len(_replicas(kube, namespace)) == 2

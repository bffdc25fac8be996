"""The cache never outgrows its emptyDir: models that add up to more than `cache.sizeLimit` are evicted oldest
first, every prompt succeeds, and the kubelet never evicts the pod. A control pod that does overfill its
emptyDir is evicted, which shows the kubelet here enforces the limit the test relies on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .kube import (
    ALLOW_SERVICE_NETWORK,
    SIDECAR_IMAGE,
    Kube,
    container_status,
    deploy_file_server,
    e2e_namespace,
    files_url,
    pod_of,
    post_json,
    standin_instance,
    upscale_prompt,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
NAME = "cache"
LIMIT = 64 * 1024 * 1024
MODEL_SIZE = 20 * 1024 * 1024
MODELS = 6  # 120 MiB of models through a 64 MiB cache
# The kubelet measures emptyDirs every volumeStatsAggPeriod (10 s in kind-config.yaml, with jitter) and its
# eviction manager looks every 10 s: past this, a pod over its limit would have been evicted.
EVICTION_WINDOW_S = 35


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-cache") as name:
        deploy_file_server(kube, name)
        kube.apply(
            standin_instance(
                NAME,
                name,
                cache={"sizeLimit": "64Mi"},
                sidecar={"env": [ALLOW_SERVICE_NETWORK]},
            )
        )
        wait_instance_ready(kube, NAME, name)
        yield name


def _cache_bytes(kube: Kube, namespace: str, pod: str) -> int:
    used = kube.exec(namespace, pod, "sidecar", "du", "-s", "-B1", "/cache", check=True)
    return int(used.stdout.split()[0])


def test_models_larger_than_the_cache_are_evicted_and_every_prompt_succeeds(
    kube: Kube, namespace: str
) -> None:
    pod = pod_of(kube, NAME, namespace)
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    peak = 0
    with kube.port_forward(namespace, f"pod/{name}", 3000) as url:
        for index in range(MODELS):
            model = files_url(namespace, f"/files/big-{index}.safetensors?size={MODEL_SIZE}&scale=2")
            status, body = post_json(f"{url}/prompt", {"prompt": upscale_prompt(model, size=8)})
            assert status == 200, f"prompt {index}: {body}"
            peak = max(peak, _cache_bytes(kube, namespace, name))
            assert peak <= LIMIT, f"the cache holds {peak} bytes, over its {LIMIT}-byte emptyDir"
    assert peak > 2 * MODEL_SIZE  # the cache was really used, not bypassed
    time.sleep(EVICTION_WINDOW_S)
    now = pod_of(kube, NAME, namespace)
    assert now["metadata"]["uid"] == uid, "the pod was replaced"
    assert now["status"]["phase"] == "Running"
    assert container_status(now, "sidecar")["restartCount"] == 0
    assert container_status(now, "comfyui")["restartCount"] == 0


def test_control_a_pod_that_overfills_its_empty_dir_is_evicted(kube: Kube, namespace: str) -> None:
    control: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "overfill", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "fill",
                    "image": SIDECAR_IMAGE,
                    "command": ["sh", "-c", "head -c 33554432 /dev/zero > /data/fill && sleep 300"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "16Mi"}}],
        },
    }
    kube.apply(control)

    def evicted() -> str | None:
        pod = kube.get("pod", "overfill", namespace)
        return pod["status"].get("reason") if pod and pod["status"].get("phase") == "Failed" else None

    assert (
        kube.wait(evicted, timeout=3 * EVICTION_WINDOW_S, what="eviction of the overfilled pod") == "Evicted"
    )

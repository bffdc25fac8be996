"""Probes that mean something, on a real kubelet (docs/operator.md, "Pod lifecycle"):
- a long start-up download: the sidecar answers /health throughout, the pod is not killed, readiness waits;
- a ComfyUI that never answers is restarted after its startup budget, and the instance says why;
- a ComfyUI that hangs after start (its process stopped) is restarted and the instance comes back.
The three instances start together so their waits overlap."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .kube import (
    ALLOW_SERVICE_NETWORK,
    Kube,
    condition,
    container_status,
    deploy_file_server,
    e2e_namespace,
    files_url,
    pod_of,
    standin_instance,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
DOWNLOAD_S = 75
STARTUP_BUDGET_S = 10
PROBE_KILL_GRACE_S = 30  # builders.COMFYUI_PROBE_KILL_GRACE_SECONDS
LIVENESS_BUDGET_S = 60  # builders.COMFYUI_LIVENESS_PERIOD * COMFYUI_LIVENESS_FAILURES
SLACK_S = 30


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-probes") as name:
        deploy_file_server(kube, name)
        manifest = {
            "models": {
                "before_start": [
                    {
                        "url": files_url(name, f"/slow/late.safetensors?size=4194304&seconds={DOWNLOAD_S}"),
                        "local_path": "upscale_models/late.safetensors",
                    }
                ]
            }
        }
        kube.apply(
            standin_instance(
                "manifest",
                name,
                sidecar={
                    "env": [ALLOW_SERVICE_NETWORK, {"name": "MANIFEST_JSON", "value": json.dumps(manifest)}]
                },
            ),
            standin_instance(
                "nostart",
                name,
                # Never listens (the operator's ComfyUI arguments land in "$@" and are ignored); exits on
                # SIGTERM as a process without a handler does (143), so the pod does not outlive the test by
                # its grace period.
                comfyui={"command": ["sh", "-c", 'trap "exit 143" TERM; sleep infinity & wait', "sh"]},
                sidecar={"startupTimeoutSeconds": STARTUP_BUDGET_S},
            ),
            # The stand-in as a child of a shell, so a test can stop it (PID 1 ignores SIGSTOP).
            standin_instance(
                "hang",
                name,
                comfyui={"command": ["sh", "-c", 'trap "exit 143" TERM; comfyui-standin "$@" & wait', "sh"]},
            ),
        )
        yield name


def _pod(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    """The instance's pod, once the kubelet reports both containers."""

    def started() -> dict[str, Any] | None:
        pod = pod_of(kube, name, namespace)
        container_status(pod, "sidecar")
        container_status(pod, "comfyui")
        return pod

    return kube.wait(started, timeout=120, what=f"a pod of {name} with its containers")


def test_a_long_start_up_download_does_not_get_the_pod_killed(kube: Kube, namespace: str) -> None:
    seen_not_ready_while_downloading = False
    deadline = time.monotonic() + DOWNLOAD_S + 90
    while time.monotonic() < deadline:
        pod = _pod(kube, "manifest", namespace)
        sidecar = container_status(pod, "sidecar")
        assert sidecar["restartCount"] == 0, f"the sidecar was restarted during the download: {sidecar}"
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        )
        if not ready and sidecar.get("started"):
            seen_not_ready_while_downloading = True
        if ready:
            break
        time.sleep(2)
    else:
        raise AssertionError("the pod never became Ready after the download")
    assert seen_not_ready_while_downloading, "the pod was Ready before its before_start download finished"
    name = pod["metadata"]["name"]
    listed = kube.exec(namespace, name, "comfyui", "ls", "/cache/models/upscale_models")
    assert "late.safetensors" in listed.stdout, listed.stderr
    assert container_status(pod, "comfyui")["restartCount"] == 0


def test_a_comfyui_that_never_answers_is_restarted_and_the_instance_says_why(
    kube: Kube, namespace: str
) -> None:
    pod = _pod(kube, "nostart", namespace)
    started = container_status(pod, "comfyui")
    budget = STARTUP_BUDGET_S + PROBE_KILL_GRACE_S + SLACK_S

    def restarted() -> dict[str, Any] | None:
        status = container_status(pod_of(kube, "nostart", namespace), "comfyui")
        return status if status["restartCount"] >= 1 else None

    status = kube.wait(restarted, timeout=budget + 30, what="a restart of the ComfyUI that never answers")
    assert status["lastState"]["terminated"]["exitCode"] in (137, 143), status
    assert "running" in started["state"] or "waiting" in started["state"]

    def says_why() -> dict[str, Any] | None:
        ready = condition(kube.get("comfyuiinstance", "nostart", namespace), "Ready")
        return ready if ready.get("reason") == "ComfyUINotAnswering" else None

    ready = kube.wait(says_why, timeout=90, what="Ready=False/ComfyUINotAnswering on the instance")
    assert ready["status"] == "False"
    assert "/health/comfyui" in ready["message"]


def test_a_comfyui_that_hangs_is_restarted(kube: Kube, namespace: str) -> None:
    wait_instance_ready(kube, "hang", namespace)
    pod = _pod(kube, "hang", namespace)
    name = pod["metadata"]["name"]
    stopped = kube.exec(namespace, name, "comfyui", "sh", "-c", "kill -STOP -1")
    assert stopped.returncode == 0, stopped.stderr
    stopped_at = time.monotonic()

    def restarted() -> bool:
        return container_status(pod_of(kube, "hang", namespace), "comfyui")["restartCount"] >= 1

    kube.wait(
        restarted,
        timeout=LIVENESS_BUDGET_S + PROBE_KILL_GRACE_S + SLACK_S + 30,
        what="restart of the hung ComfyUI",
    )
    took = time.monotonic() - stopped_at
    assert took >= LIVENESS_BUDGET_S - 15, f"restarted after {took:.0f} s, before the liveness budget"
    wait_instance_ready(kube, "hang", namespace, timeout=120)
    after = pod_of(kube, "hang", namespace)
    assert after["metadata"]["name"] == name  # the container was restarted in place, the pod kept
    assert container_status(after, "sidecar")["restartCount"] == 0

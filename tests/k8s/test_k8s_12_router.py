"""Scenario 12: the router (spec.routing) and scale to zero (spec.scaling) on a real API server.

The operator creates the router's Deployment, PodDisruptionBudget and headless Service, and points the
instance's Service at the router pods; removing spec.routing deletes them again (the delete rights rbac.py
grants). Scaling to zero and back runs against a real comfyui-router process on loopback (kwok runs no
container): the operator reads its GET /activity, scales the Deployment to 0 after idleTimeoutSeconds, and
back to spec.replicas when a v2 job is held."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_expected import chart_settings, differences_from_builders
from k8s_instances import RESOURCE, condition, instance, owned_by, wait_condition, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess, healthz_ok
from k8s_session import Operators

ROUTER_LABEL = "app.kubernetes.io/name=comfyui-router"


def _router_objects(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Manifest | None]:
    return {
        "deployment": kubectl.get("deployment", f"{name}-router", namespace),
        "pdb": kubectl.get("poddisruptionbudget", f"{name}-router", namespace),
        "service": kubectl.get("service", f"{name}-router-peers", namespace),
    }


def test_routing_creates_the_router_and_the_service_selects_it(
    kubectl: Kubectl, operator: OperatorProcess, operators: Operators, namespace: str
) -> None:
    kubectl.apply([instance("routed", replicas=2, routing={"replicas": 2})], namespace)
    live = wait_ready(kubectl, "routed", namespace, timeout=120)
    assert differences_from_builders(kubectl, live, chart_settings(operators.release.deployment)) == []
    objects = _router_objects(kubectl, "routed", namespace)
    for kind, obj in objects.items():
        assert obj is not None, f"no router {kind}"
        assert owned_by(obj, live), f"the router {kind} is not owned by the instance"
    service = kubectl.get("service", "routed", namespace) or {}
    assert service["spec"]["selector"]["app.kubernetes.io/name"] == "comfyui-router"
    router_pods = kubectl.items("pods", namespace, selector=ROUTER_LABEL)
    assert len(router_pods) == 2
    assert all(
        not p["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        for p in router_pods
    )
    replica_pods = kubectl.items("pods", namespace, selector="app.kubernetes.io/name=comfyui")
    assert len(replica_pods) == 2  # the replicas' selector never counts a router pod
    assert live["status"]["readyReplicas"] == 2

    body = kubectl.get(RESOURCE, "routed", namespace) or {}
    del body["spec"]["routing"]
    kubectl.apply(
        [
            {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "metadata": {"name": "routed"},
                "spec": body["spec"],
            }
        ],
        namespace,
    )

    def router_gone() -> bool:
        return all(obj is None for obj in _router_objects(kubectl, "routed", namespace).values())

    wait_for(router_gone, timeout=60, what="the router objects to be deleted after spec.routing was removed")
    service = kubectl.get("service", "routed", namespace) or {}
    assert service["spec"]["selector"]["app.kubernetes.io/name"] == "comfyui"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_router(tmp_path: Path) -> Iterator[str]:
    """A real comfyui-router on loopback with no replica (the instance's pods are kwok's: nothing runs)."""
    port = _free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "REPLICAS": "", "PEER_NAME": "router-k8s"}
    env.update({"PLACEMENT_INTERVAL_S": "0.5", "HOLD_TIMEOUT_S": "600"})
    log = (tmp_path / "router.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "comfyui_router"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/health") is not None, timeout=30, what="the local router")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


@pytest.fixture
def scaling_operator(operators: Operators, local_router: str) -> Iterator[OperatorProcess]:
    """The operator configured to reach the local router (the chart's own stands aside meanwhile; the
    `operator` fixture restarts it for the next test)."""
    operators.primary.stop()
    process = operators.make("operator-scaling")
    process.extra_env.update(
        {"COMFYUI_OPERATOR_ROUTER_URL": local_router, "COMFYUI_OPERATOR_SCALING_POLL_SECONDS": "1"}
    )
    process.start()
    try:
        wait_for(lambda: any(healthz_ok(p) for p in process.ports()), timeout=60, what="the operator")
        yield process
    finally:
        process.stop()


def test_an_idle_instance_scales_to_zero_and_a_held_job_scales_it_back(
    kubectl: Kubectl, scaling_operator: OperatorProcess, local_router: str, namespace: str
) -> None:
    spec = {"routing": {}, "scaling": {"idleTimeoutSeconds": 30}}
    kubectl.apply([instance("sleepy", replicas=2, **spec)], namespace)
    wait_ready(kubectl, "sleepy", namespace, timeout=120)

    def deployment_replicas() -> int:
        return int(
            ((kubectl.get("deployment", "sleepy", namespace) or {}).get("spec") or {}).get("replicas", -1)
        )

    wait_for(lambda: deployment_replicas() == 0, timeout=90, what="the idle instance at zero replicas")
    live = kubectl.get(RESOURCE, "sleepy", namespace) or {}
    assert live["spec"]["replicas"] == 2  # the size to scale back to: /scale and an HPA still see it
    assert live["status"]["scaling"]["scaledToZero"] is True
    ready = wait_condition(kubectl, "sleepy", namespace, "Ready", status="True", reason="IdleScaledToZero")
    assert "router holds the next job" in ready["message"]
    scale = json.loads(
        kubectl.raw(
            f"/apis/comfyui.operator.dev/v1alpha1/namespaces/{namespace}/comfyuiinstances/sleepy/scale"
        )
    )
    assert scale["spec"]["replicas"] == 2
    assert (kubectl.get("deployment", "sleepy-router", namespace) or {})["spec"]["replicas"] == 2
    events = kubectl.items("events", namespace)
    assert any(e.get("reason") == "ScaledToZero" for e in events)

    request = urllib.request.Request(
        f"{local_router}/api/v2/jobs",
        data=json.dumps({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        assert json.loads(response.read())["status"] == "queued"  # held: no replica runs
    started = time.monotonic()
    wait_for(lambda: deployment_replicas() == 2, timeout=60, what="the instance scaled back for the held job")
    live = wait_ready(kubectl, "sleepy", namespace, timeout=120)
    assert live["status"]["scaling"]["scaledToZero"] is False
    assert condition(live, "Ready")["reason"] == "AllReplicasReady"  # type: ignore[index]
    print(f"scale-up seen by the operator {time.monotonic() - started:.1f} s after the job was held")

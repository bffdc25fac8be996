"""Scenario 5: `kubectl scale` through the scale subresource, and an HPA (the real controller) that reads the
scale and scales the instance (KEDA drives an HPA the same way)."""

from __future__ import annotations

import json

from k8s_instances import instance, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_operator import OperatorProcess


def _hpa(target: str, min_replicas: int = 1) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "comfyui.operator.dev/v1alpha1",
                "kind": "ComfyUIInstance",
                "name": target,
            },
            "minReplicas": min_replicas,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


def test_kubectl_scale_reaches_the_deployment(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("scaled", replicas=1)], namespace)
    wait_ready(kubectl, "scaled", namespace)
    kubectl.run("scale", "cui/scaled", "--replicas=3", "-n", namespace)

    def scaled() -> bool:
        deploy = kubectl.get("deployment", "scaled", namespace) or {}
        return bool(deploy.get("spec", {}).get("replicas") == 3)

    wait_for(scaled, timeout=60, what="the Deployment at 3 replicas")
    live = wait_ready(kubectl, "scaled", namespace)
    assert live["status"]["readyReplicas"] == 3
    scale = json.loads(
        kubectl.raw(
            f"/apis/comfyui.operator.dev/v1alpha1/namespaces/{namespace}/comfyuiinstances/scaled/scale"
        )
    )
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == live["status"]["selector"]
    assert scale["status"]["selector"], "an empty selector makes HPA unusable"


def test_hpa_targeting_the_instance_can_scale_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([instance("autoscaled", replicas=1)], namespace)
    wait_ready(kubectl, "autoscaled", namespace)
    kubectl.apply([_hpa("autoscaled")], namespace)

    def able() -> Manifest | None:
        hpa = kubectl.get("hpa", "autoscaled", namespace) or {}
        for cond in hpa.get("status", {}).get("conditions", []) or []:
            if cond["type"] == "AbleToScale" and cond["status"] == "True":
                return dict(cond)
        return None

    cond = wait_for(able, timeout=90, what="the HPA controller to read the instance's scale subresource")
    assert cond["reason"] == "SucceededGetScale"

    # Below the HPA's minimum the controller scales without any metric (none is served in this cluster):
    # it writes the instance's /scale, and the operator carries it to the pods.
    kubectl.apply([_hpa("autoscaled", min_replicas=2)], namespace)

    def scaled_by_hpa() -> Manifest | None:
        live = kubectl.get("cui", "autoscaled", namespace) or {}
        return live if live.get("spec", {}).get("replicas") == 2 else None

    wait_for(scaled_by_hpa, timeout=90, what="the HPA controller to scale the instance to its minimum of 2")
    live = wait_ready(kubectl, "autoscaled", namespace, timeout=120)
    assert live["status"]["readyReplicas"] == 2

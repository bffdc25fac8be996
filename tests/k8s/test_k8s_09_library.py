"""Scenario 9 (library): a ComfyUIModelLibrary on a real API server. The operator creates the claim (kept on
delete: no ownerReference) and one sync Job (no ServiceAccount token, the manifest in a ConfigMap the Job
owns); an instance that uses the library waits with no pods; the Job's pod ends and the library's status
comes from its termination message; the instance then mounts the claim read-only, reports ModelsReady and
becomes Ready. A sync that fails a model for good fails its Job at once and the library says which model.

kwok runs no container: the sync pod is placed on the node of the stand-in kubelet (k8s_kubelet.py, not
syncing here), where it stays scheduled, and the test writes its status the way a kubelet does when the
container exits: phase, `state.terminated` with the exit code and the termination message (the report the
real `comfyui-sidecar sync` writes, encoded by the same function). The Job controller and the operator react
to it as they would on a real node."""

from __future__ import annotations

import datetime
import json
from typing import Any

from comfyui_sidecar.library.report import ModelReport, SyncReport, encode
from k8s_instances import RESOURCE, condition, instance, wait_ready
from k8s_kubectl import Kubectl, Manifest, wait_for
from k8s_kubelet import NODE, PLACEMENT
from k8s_operator import OperatorProcess, lines_at

LIBRARY = "comfyuimodellibraries.comfyui.operator.dev"
SHA_A = "ab" * 32
SHA_B = "cd" * 32


def volume_for(namespace: str, claim: str) -> Manifest:
    """A PersistentVolume pre-bound to the claim the operator will create (no provisioner here)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}", "labels": {"k8s-tier/namespace": namespace}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/srv/k8s-tier/{namespace}/{claim}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


def library(name: str, models: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": "comfyui.operator.dev/v1alpha1",
        "kind": "ComfyUIModelLibrary",
        "metadata": {"name": name},
        "spec": {
            "storage": {"size": "1Gi", "storageClassName": "", "accessMode": "ReadWriteOnce"},
            "credentials": {"secretRef": {"name": "model-credentials"}},
            "models": models,
            "sync": {"nodeSelector": PLACEMENT["nodeSelector"], "tolerations": PLACEMENT["tolerations"]},
        },
    }


MODELS = [
    {"url": "https://models.example/a.safetensors", "target": "checkpoints/a.safetensors", "sha256": SHA_A},
    {"url": "s3://models/b.pt", "target": "upscale_models/b.pt"},
]


def sync_pod(kubectl: Kubectl, namespace: str, name: str) -> Manifest:
    def find() -> Manifest | None:
        jobs = kubectl.items("jobs", namespace, f"comfyui.operator.dev/library={name}")
        if len(jobs) != 1:
            return None
        pods = kubectl.items("pods", namespace, f"batch.kubernetes.io/job-name={jobs[0]['metadata']['name']}")
        return pods[0] if pods and pods[0]["spec"].get("nodeName") == NODE else None

    return wait_for(find, timeout=90, what=f"the sync Job's pod of {name} scheduled on {NODE}")


def container_exits(kubectl: Kubectl, pod: Manifest, exit_code: int, message: str) -> None:
    """What the kubelet writes when the sync container has exited."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    container = pod["spec"]["containers"][0]
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
        ],
    }
    kubectl.run(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "-n",
        pod["metadata"]["namespace"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def report(*models: ModelReport) -> str:
    return encode(SyncReport("", list(models)), pinned={0})


def test_library_claim_job_status_and_an_instance_that_mounts_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    log_start = operator.log_size()
    kubectl.apply([volume_for(namespace, "shared")])
    kubectl.apply(
        [library("shared", MODELS), instance("user", replicas=2, models={"libraryRef": {"name": "shared"}})],
        namespace,
    )

    claim = wait_for(lambda: kubectl.get("pvc", "shared", namespace), timeout=60, what="the library's claim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "ownerReferences" not in claim["metadata"]  # reclaimPolicy Retain: outlives the library
    pod = sync_pod(kubectl, namespace, "shared")
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not [v for v in pod["spec"]["volumes"] if "projected" in v], "a service account token is mounted"
    (job,) = kubectl.items("jobs", namespace, "comfyui.operator.dev/library=shared")
    manifest = kubectl.get("configmap", job["metadata"]["name"], namespace)
    assert manifest is not None
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert json.loads(manifest["data"]["manifest.json"])["models"][1]["target"] == "upscale_models/b.pt"

    def waiting() -> Manifest | None:
        live = kubectl.get(RESOURCE, "user", namespace)
        models = condition(live, "ModelsReady") or {}
        deployment = kubectl.get("deployment", "user", namespace)
        held = deployment is not None and deployment["spec"]["replicas"] == 0
        return live if held and models.get("reason") == "LibraryNotReady" else None

    live = wait_for(waiting, timeout=60, what="the instance waiting for its library with no pods")
    assert (condition(live, "Ready") or {}).get("reason") == "WaitingForModels"
    assert kubectl.items("pods", namespace, "app.kubernetes.io/instance=user") == []

    container_exits(
        kubectl,
        pod,
        0,
        report(ModelReport("Ready", 1234, ""), ModelReport("Ready", 99, SHA_B, downloaded=True)),
    )

    def synced() -> Manifest | None:
        lib = kubectl.get(LIBRARY, "shared", namespace)
        done = (condition(lib, "Progressing") or {}).get("reason") == "SyncComplete"
        return lib if done and (condition(lib, "Ready") or {}).get("status") == "True" else None

    lib = wait_for(synced, timeout=90, what="the library Ready from the Job's termination message")
    status = lib["status"]
    assert [(m["target"], m["phase"], m["size"], m["sha256"]) for m in status["models"]] == [
        ("checkpoints/a.safetensors", "Ready", 1234, SHA_A),
        ("upscale_models/b.pt", "Ready", 99, SHA_B),
    ]
    assert (status["readyModels"], status["totalModels"], status["claimName"]) == (2, 2, "shared")
    table = kubectl.out("get", "cuilib", "-n", namespace)
    assert table.splitlines()[0].split() == ["NAME", "READY", "MODELS", "TOTAL", "CLAIM", "AGE"], table

    live = wait_ready(kubectl, "user", namespace, timeout=120)
    assert (condition(live, "ModelsReady") or {}).get("status") == "True"
    deployment = kubectl.get("deployment", "user", namespace)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]["spec"]
    volume = next(v for v in template["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": "shared", "readOnly": True}
    for container in template["containers"] + template["initContainers"]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount["readOnly"] is True, container["name"]
    assert lines_at(operator.log_text(log_start), "error") == []


def test_a_model_that_fails_for_good_fails_the_job_at_once_and_is_named(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([volume_for(namespace, "broken")])
    kubectl.apply([library("broken", MODELS)], namespace)
    pod = sync_pod(kubectl, namespace, "broken")
    failed = ModelReport("Failed", 0, message="Error downloading file: Not Found (HTTP 404)")
    container_exits(kubectl, pod, 2, report(ModelReport("Ready", 1234, ""), failed))

    def degraded() -> Manifest | None:
        lib = kubectl.get(LIBRARY, "broken", namespace)
        return lib if (condition(lib, "Degraded") or {}).get("status") == "True" else None

    lib = wait_for(degraded, timeout=90, what="the library Degraded naming the failed model")
    cond = condition(lib, "Degraded") or {}
    assert cond["reason"] == "ModelFailed"
    assert "upscale_models/b.pt: Error downloading file: Not Found (HTTP 404)" in cond["message"]
    assert [m["phase"] for m in lib["status"]["models"]] == ["Ready", "Failed"]
    (job,) = kubectl.items("jobs", namespace, "comfyui.operator.dev/library=broken")
    failed_condition = [c for c in job["status"].get("conditions", []) if c["type"] == "Failed"]
    assert failed_condition, job["status"]
    assert failed_condition[0]["reason"] == "PodFailurePolicy"  # exit code 2: no retry of a 404
    events = [
        e for e in kubectl.items("events", namespace) if e.get("involvedObject", {}).get("name") == "broken"
    ]
    assert any(e["reason"] == "ModelFailed" and e["type"] == "Warning" for e in events), events


def test_a_new_manifest_waits_for_the_running_sync_then_runs(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply([volume_for(namespace, "resync")])
    kubectl.apply([library("resync", MODELS)], namespace)
    first = sync_pod(kubectl, namespace, "resync")
    (old,) = kubectl.items("jobs", namespace, "comfyui.operator.dev/library=resync")
    more = [*MODELS, {"url": "https://models.example/c.pt", "target": "vae/c.pt"}]
    kubectl.apply([library("resync", more)], namespace)

    def waiting() -> Manifest | None:
        lib = kubectl.get(LIBRARY, "resync", namespace)
        return (
            lib if (condition(lib, "Progressing") or {}).get("reason") == "WaitingForPreviousSync" else None
        )

    wait_for(waiting, timeout=60, what="the new manifest waiting for the running sync")
    assert [
        j["metadata"]["name"] for j in kubectl.items("jobs", namespace, "comfyui.operator.dev/library=resync")
    ] == [old["metadata"]["name"]]  # never two syncs on one volume

    container_exits(kubectl, first, 0, report(ModelReport("Ready", 1, ""), ModelReport("Ready", 2, SHA_B)))

    def replaced() -> list[str] | None:
        names = [
            j["metadata"]["name"]
            for j in kubectl.items("jobs", namespace, "comfyui.operator.dev/library=resync")
        ]
        return names if names and old["metadata"]["name"] not in names else None

    (new,) = wait_for(replaced, timeout=90, what="the older Job deleted and the new manifest's Job created")
    manifest = kubectl.get("configmap", new, namespace)
    assert manifest is not None
    assert len(json.loads(manifest["data"]["manifest.json"])["models"]) == 3

"""A tiny stand-in kubelet for one node that kwok does not manage, for what kwok does not simulate: a pod
whose Secret is missing stays in `CreateContainerConfigError` (as a real kubelet reports it) until the Secret
exists.

The node carries its own taint, so only pods that ask for it (toleration + nodeSelector) land there."""

from __future__ import annotations

import datetime
import json
import threading
import time

from k8s_cluster import GPU_TAINT, fake_node
from k8s_kubectl import CommandFailed, Kubectl, Manifest

NODE = "gpu-node-kubelet"
LABEL = "k8s-tier/kubelet"
TAINT: Manifest = {"key": LABEL, "value": "test", "effect": "NoSchedule"}
PLACEMENT: Manifest = {
    "nodeSelector": {LABEL: "test"},
    "tolerations": [
        {"key": LABEL, "operator": "Exists", "effect": "NoSchedule"},
        {"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"},
    ],
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubelet_node() -> Manifest:
    """A GPU node without kwok's annotation (kwok leaves it alone) that reports itself Ready."""
    node = fake_node(NODE, gpus=8, zone="zone-c")
    del node["metadata"]["annotations"]["kwok.x-k8s.io/node"]
    node["metadata"]["labels"][LABEL] = "test"
    node["spec"]["taints"] = [dict(GPU_TAINT), dict(TAINT)]
    node["status"]["conditions"] = [ready_condition()]
    return node


def ready_condition() -> Manifest:
    now = _now()
    return {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "k8s-tier test kubelet",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def secret_names(pod: Manifest) -> set[str]:
    """Secrets a pod needs before its containers can be created (env, envFrom and secret volumes)."""
    names: set[str] = set()
    spec = pod.get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []) or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
        for source in container.get("envFrom", []) or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                names.add(ref["name"])
    for volume in spec.get("volumes", []) or []:
        ref = volume.get("secret")
        if ref and not ref.get("optional"):
            names.add(ref["secretName"])
    return names


def pod_status(pod: Manifest, missing: list[str]) -> Manifest:
    """The status a kubelet reports: waiting in CreateContainerConfigError, or running and ready."""
    now = _now()
    containers = pod["spec"]["containers"]
    if missing:
        message = f'secret "{missing[0]}" not found'
        states = [
            {
                "name": c["name"],
                "image": c["image"],
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }
            for c in containers
        ]
        return {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "lastTransitionTime": now,
                },
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "lastTransitionTime": now,
                },
            ],
            "containerStatuses": states,
        }
    states = [
        {
            "name": c["name"],
            "image": c["image"],
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }
        for c in containers
    ]
    return {
        "phase": "Running",
        "podIP": "10.0.99.10",
        "hostIP": "10.0.99.1",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": states,
    }


class TestKubelet:
    """Keeps the node's heartbeat fresh (every `heartbeat` seconds) and, while `syncing` is set, syncs the
    statuses of the pods on it; a background thread that `stop()` ends."""

    __test__ = False  # not a pytest test class

    def __init__(self, kubectl: Kubectl, interval: float = 1.0, heartbeat: float = 15.0) -> None:
        self.kubectl = kubectl
        self.interval = interval
        self.heartbeat = heartbeat
        self.syncing = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="test-kubelet", daemon=True)
        self.reported: dict[str, str] = {}
        self.errors: list[str] = []

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        last_beat = 0.0
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - last_beat >= self.heartbeat:
                    self._patch_status("node", NODE, None, {"conditions": [ready_condition()]})
                    last_beat = time.monotonic()
                if self.syncing.is_set():
                    self.sync_pods()
            except (CommandFailed, OSError, ValueError) as error:
                self.errors.append(str(error)[:300])
                del self.errors[:-20]
            self.stop_event.wait(self.interval)

    def _patch_status(self, kind: str, name: str, namespace: str | None, status: Manifest) -> None:
        ns = ["-n", namespace] if namespace else []
        self.kubectl.run(
            "patch",
            kind,
            name,
            *ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
            timeout=30,
        )

    def sync_pods(self) -> None:
        pods = json.loads(
            self.kubectl.out(
                "get", "pods", "--all-namespaces", "-o", "json", f"--field-selector=spec.nodeName={NODE}"
            )
        )["items"]
        listed = json.loads(self.kubectl.out("get", "secrets", "--all-namespaces", "-o", "json"))["items"]
        secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in listed}
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self.kubectl.run(
                    "delete",
                    "pod",
                    meta["name"],
                    "-n",
                    meta["namespace"],
                    "--grace-period=0",
                    "--force",
                    check=False,
                )
                continue
            missing = sorted(n for n in secret_names(pod) if (meta["namespace"], n) not in secrets)
            wanted = "missing:" + ",".join(missing) if missing else "running"
            key = f"{meta['namespace']}/{meta['name']}"
            if self.reported.get(key) != wanted:
                self._patch_status("pod", meta["name"], meta["namespace"], pod_status(pod, missing))
                self.reported[key] = wanted

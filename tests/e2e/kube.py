"""A small kubectl wrapper for the real-pods tier: any cluster reachable through a kubeconfig context.

The tests drive the cluster the way a user does (kubectl, helm, HTTP through a port-forward), so nothing here
imports the operator's own Kubernetes code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from comfyui_standin.testing import upscale

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def app_version() -> str:
    match = re.search(r'^appVersion:\s*"?([^"\n]+)"?', (REPO / "helm" / "Chart.yaml").read_text(), re.M)
    assert match, "helm/Chart.yaml has no appVersion"
    return match.group(1)


SIDECAR_IMAGE = f"ghcr.io/comfyui-operator/sidecar:{app_version()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Kube:
    kubectl: str
    context: str
    helm: str | None = None

    # ---- kubectl --------------------------------------------------------------------------------------
    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl, "--context", self.context, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}"
            )
        return result

    def json(self, *args: str, check: bool = True) -> Any:
        result = self.run(*args, "-o", "json", check=check)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def apply(self, *documents: dict[str, Any], namespace: str | None = None) -> None:
        text = yaml.safe_dump_all(list(documents), sort_keys=False)
        args = ["apply", "--server-side", "--force-conflicts", "-f", "-"]
        if namespace:
            args[1:1] = ["-n", namespace]
        self.run(*args, stdin=text)

    def get(self, kind: str, name: str, namespace: str) -> Any:
        return self.json("-n", namespace, "get", kind, name, check=False)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("-n", namespace, "get", "pods", "-l", selector)["items"]
        return items

    def exec(
        self,
        namespace: str,
        pod: str,
        container: str,
        *command: str,
        check: bool = False,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "-n", namespace, "exec", pod, "-c", container, "--", *command, check=check, timeout=timeout
        )

    def create_namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def delete_namespace(self, name: str, wait: bool = True) -> None:
        self.run(
            "delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}", timeout=300
        )

    def helm_run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        assert self.helm, "helm is not available"
        return subprocess.run(
            [self.helm, "--kube-context", self.context, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # ---- waiting and access ----------------------------------------------------------------------------
    @staticmethod
    def wait(
        probe: Callable[[], T | None], *, timeout: float, interval: float = 1.0, what: str = "condition"
    ) -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except (AssertionError, subprocess.TimeoutExpired) as error:
                last = error
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"{what} not reached within {timeout:.0f} s (last: {str(last)[-1500:]})")

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, remote_port: int) -> Iterator[str]:
        """`kubectl port-forward` to a pod or service; yields http://127.0.0.1:<local port>."""
        local = free_port()
        process = subprocess.Popen(
            [
                self.kubectl,
                "--context",
                self.context,
                "-n",
                namespace,
                "port-forward",
                target,
                f"{local}:{remote_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
                if process.poll() is not None:
                    raise AssertionError(
                        f"port-forward {target} exited: {process.stderr.read() if process.stderr else ''}"
                    )
                time.sleep(0.2)
            yield f"http://127.0.0.1:{local}"
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def kube_from_env() -> Kube:
    """The cluster of E2E_KUBE_CONTEXT, else the kind cluster `make up` creates."""
    tools = os.environ.get("COMFYUI_TOOLS_BIN", "").split(":")
    kubectl = os.environ.get("KWOK_KUBECTL_BINARY") or _which("kubectl", tools)
    helm = os.environ.get("HELM_BINARY") or _which("helm", tools)
    context = os.environ.get("E2E_KUBE_CONTEXT") or f"kind-{os.environ.get('CLUSTER_NAME', 'comfyui')}"
    assert kubectl, "kubectl not found (hack/build-tools.sh k8s)"
    return Kube(kubectl, context, helm)


def _which(name: str, directories: list[str]) -> str | None:
    for directory in directories:
        candidate = Path(directory) / name
        if directory and candidate.is_file():
            return str(candidate)
    for directory in os.environ.get("PATH", "").split(":"):
        candidate = Path(directory) / name
        if directory and candidate.is_file():
            return str(candidate)
    return None


# ---- manifests -------------------------------------------------------------------------------------------


def standin_instance(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A GPU-free ComfyUIInstance running the stand-in ComfyUI (like examples/standin-instance.yaml), with
    `spec` merged over it (one level deep for the comfyui and sidecar sections)."""
    base: dict[str, Any] = {
        "replicas": 1,
        "comfyui": {
            "image": SIDECAR_IMAGE,
            "command": ["comfyui-standin"],
            "workingDir": "/tmp",
            "gpu": {"count": 0},
            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        },
        "sidecar": {
            "image": SIDECAR_IMAGE,
            "startupTimeoutSeconds": 60,
            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        },
        "cache": {"sizeLimit": "1Gi"},
        "input": {"sizeLimit": "256Mi"},
        "output": {"sizeLimit": "256Mi"},
    }
    for key, value in spec.items():
        if key in ("comfyui", "sidecar") and isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {
        "apiVersion": "comfyui.operator.dev/v1alpha1",
        "kind": "ComfyUIInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def condition(instance: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((instance or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def wait_instance_ready(kube: Kube, name: str, namespace: str, timeout: float = 240) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        instance = kube.get("comfyuiinstance", name, namespace)
        return instance if condition(instance, "Ready").get("status") == "True" else None

    return kube.wait(ready, timeout=timeout, what=f"comfyuiinstance/{name} Ready")


def pod_of(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    pods = [
        pod
        for pod in kube.pods(namespace, f"app.kubernetes.io/instance={name}")
        if not pod["metadata"].get("deletionTimestamp")
    ]
    assert pods, f"no pod of {name}"
    return pods[0]


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("initContainerStatuses", []) + (pod.get("status") or {}).get(
        "containerStatuses", []
    )
    for status in statuses:
        if status["name"] == name:
            return dict(status)
    raise AssertionError(f"no status for container {name}")


def incluster_scripts_config_map(namespace: str) -> dict[str, Any]:
    """The in-cluster helpers (tests/e2e/incluster/*.py) as a ConfigMap, run by pods of the sidecar image."""
    scripts = {
        path.name: path.read_text() for path in sorted((REPO / "tests" / "e2e" / "incluster").glob("*.py"))
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-scripts", "namespace": namespace},
        "data": scripts,
    }


# kind's Service network: in-cluster file servers are private addresses; downloads refuse them unless allowed.
ALLOW_SERVICE_NETWORK = {"name": "DOWNLOAD_ALLOW_NETWORKS", "value": "10.96.0.0/12"}


def deploy_file_server(kube: Kube, namespace: str) -> None:
    """Apply `file_server` and wait until it serves."""
    kube.apply(*file_server(namespace))
    kube.run("-n", namespace, "rollout", "status", "deployment/files", "--timeout=120s", timeout=150)


def file_server(namespace: str) -> list[dict[str, Any]]:
    """A Deployment + Service `files:8000` serving generated model files (incluster/fileserver.py)."""
    labels = {"app": "e2e-files"}
    return [
        incluster_scripts_config_map(namespace),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "files", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "files",
                                "image": SIDECAR_IMAGE,
                                "command": ["python3", "/scripts/fileserver.py", "8000"],
                                "ports": [{"containerPort": 8000, "name": "http"}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/stats", "port": 8000},
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [{"name": "scripts", "mountPath": "/scripts"}],
                            }
                        ],
                        "volumes": [{"name": "scripts", "configMap": {"name": "e2e-scripts"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "files", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 8000, "targetPort": 8000}]},
        },
    ]


def files_url(namespace: str, path: str) -> str:
    return f"http://files.{namespace}.svc.cluster.local:8000{path}"


def upscale_prompt(model_name: str, size: int = 16, prefix: str = "e2e") -> dict[str, Any]:
    """comfyui_standin.testing.upscale, 16x16 by default."""
    return upscale(model_name, size=size, prefix=prefix)


def models_volume(namespace: str, claim: str = "models") -> list[dict[str, Any]]:
    """A ReadOnlyMany PV on the node's /var/lib/comfyui-models (the host's .out/models, see kind-config.yaml)
    bound to PVC `claim` in `namespace`: the stand-in for a shared model store."""
    pv = f"e2e-models-{namespace}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "e2e-models",
                "local": {"path": "/var/lib/comfyui-models"},
                "claimRef": {"namespace": namespace, "name": claim},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "comfyui.operator.dev/model-store",
                                        "operator": "In",
                                        "values": ["true"],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "e2e-models",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


def post_json(url: str, body: Any, timeout: float = 120) -> tuple[int, Any]:
    """POST JSON, return (status, parsed body or text)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def get_text(url: str, timeout: float = 30) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


@contextlib.contextmanager
def e2e_namespace(kube: Kube, name: str) -> Iterator[str]:
    """A namespace for one test module, deleted afterwards (with its PV) unless E2E_KEEP_CLUSTER=1."""
    kube.delete_namespace(name)
    kube.create_namespace(name)
    try:
        yield name
    finally:
        if os.environ.get("E2E_KEEP_CLUSTER") != "1":
            kube.delete_namespace(name, wait=False)
            kube.run("delete", "pv", f"e2e-models-{name}", "--ignore-not-found", "--wait=false", check=False)

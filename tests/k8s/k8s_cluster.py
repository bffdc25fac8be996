"""A throw-away Kubernetes control plane: kwokctl with the binary runtime, pinned local binaries only,
fake GPU and CPU nodes simulated by kwok, and an audit log of every request made by a ServiceAccount."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml
from k8s_kubectl import CommandFailed, Kubectl, Manifest, run_tool, wait_for
from k8s_tools import Tools

STATE_ROOT = Path(tempfile.gettempdir()) / "comfyui-k8s-tier"
OWNER_FILE = "owner.pid"
OPERATOR_PIDS = "operator-pids"  # pid files of operator processes started against this cluster
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT: Manifest = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION: Manifest = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

# Every request by any ServiceAccount (the operator's identity), nothing else: small and exact.
AUDIT_POLICY: Manifest = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}

_DOWNLOAD_LINE = re.compile(r"^# Download (\S+)(?: and extract \S+)? to \S+")


def remote_downloads(dry_run_output: str) -> list[str]:
    """The remote sources in `kwokctl --dry-run create cluster` output (lines `# Download SRC ...`).

    A local path is copied, not downloaded; anything with a URL scheme would be fetched from the network."""
    found = []
    for line in dry_run_output.splitlines():
        match = _DOWNLOAD_LINE.match(line.strip())
        if match and "://" in match.group(1):
            found.append(match.group(1))
    return found


A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def fake_node(
    name: str,
    *,
    gpus: int = 0,
    zone: str = "zone-a",
    cpu: str = "64",
    memory: str = "512Gi",
    product: str = A100,
) -> Manifest:
    """A Node that kwok simulates; GPU nodes carry the NVIDIA device plugin's resource, labels and taint."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": zone,
        "type": "kwok",
    }
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "2Ti"}
    spec: Manifest = {}
    if gpus:
        labels |= {
            "node.kubernetes.io/instance-type": f"gpu-{product.split('-')[1].lower()}-x{gpus}",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.memory": "81920",
        }
        resources[GPU_RESOURCE] = str(gpus)
        spec["taints"] = [dict(GPU_TAINT)]
    else:
        labels["node.kubernetes.io/instance-type"] = "cpu-standard-64"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": spec,
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }


def default_nodes() -> list[Manifest]:
    """Two 8-GPU nodes (A100, H100) in two zones, tainted like GPU pools usually are, and one CPU node."""
    return [
        fake_node("gpu-node-a", gpus=8, zone="zone-a", product=A100),
        fake_node("gpu-node-b", gpus=8, zone="zone-b", product=H100),
        fake_node("cpu-node", zone="zone-a", cpu="32", memory="128Gi"),
    ]


def node_is_ready(node: Manifest) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KwokCluster:
    """One cluster under its own working directory; `start()` then `stop()` (idempotent)."""

    def __init__(
        self,
        tools: Tools,
        *,
        name: str | None = None,
        state_root: Path = STATE_ROOT,
        extra_args: list[str] | None = None,
    ) -> None:
        self.tools = tools
        self.extra_args = extra_args or []
        self.name = name or f"cui-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        state_root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=state_root))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        self.user_kubeconfig = self.workdir / "user-kubeconfig.yaml"
        self.audit_policy = self.workdir / "audit-policy.yaml"
        self.started = False
        self.stopped = False

    @property
    def cluster_dir(self) -> Path:
        return self.workdir / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate) written by kwokctl."""
        return self.cluster_dir / "kubeconfig.yaml"

    @property
    def logs_dir(self) -> Path:
        return self.cluster_dir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "audit.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self.workdir)
        env["KWOK_KUBE_VERSION"] = self.tools.kube_version
        env["KWOK_KUBECTL_BINARY"] = str(self.tools.kubectl)
        return env

    def create_args(self) -> list[str]:
        t = self.tools
        return [
            str(t.kwokctl),
            "create",
            "cluster",
            f"--name={self.name}",
            "--runtime=binary",
            f"--kube-apiserver-binary={t.kube_apiserver}",
            f"--kube-controller-manager-binary={t.kube_controller_manager}",
            f"--kube-scheduler-binary={t.kube_scheduler}",
            f"--kwok-controller-binary={t.kwok}",
            f"--etcd-binary={t.etcd}",
            f"--kubeconfig={self.user_kubeconfig}",
            f"--kube-audit-policy={self.audit_policy}",
            "--wait=120s",
            "--timeout=240s",
            *self.extra_args,
        ]

    def guard_no_downloads(self) -> None:
        """Fails if kwokctl would fetch anything from the network for this cluster."""
        args = [self.create_args()[0], "--dry-run", *self.create_args()[1:]]
        output = run_tool(args, env=self.env(), timeout=60)
        fetched = remote_downloads(output.stdout + output.stderr)
        if fetched:
            raise AssertionError(
                f"kwokctl would download {fetched}; every component must come from "
                f"the cache (check the KWOK_* variables of {self.tools.kwokctl.parent})"
            )

    def start(self, nodes: list[Manifest] | None = None) -> None:
        self.audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.guard_no_downloads()
        self.started = True
        run_tool(self.create_args(), env=self.env(), timeout=300)
        self.check_pod_stages()
        kubectl = self.kubectl()
        kubectl.apply(nodes if nodes is not None else default_nodes())
        expected = len(nodes if nodes is not None else default_nodes())
        wait_for(
            lambda: sum(node_is_ready(n) for n in kubectl.items("nodes")) == expected,
            timeout=90,
            what=f"{expected} fake nodes Ready",
        )
        wait_for(
            lambda: kubectl.get("serviceaccount", "default", "default"),
            timeout=90,
            what="the controller manager to create the default ServiceAccount",
        )

    def check_pod_stages(self) -> None:
        """kwok must run with pod lifecycle stages, or pods never become Running/Ready."""
        config_text = (self.cluster_dir / "kwok.yaml").read_text()
        names = {
            doc.get("metadata", {}).get("name")
            for doc in yaml.safe_load_all(config_text)
            if isinstance(doc, dict) and doc.get("kind") == "Stage"
        }
        missing = {"pod-ready", "pod-delete", "node-initialize"} - names
        if missing:
            raise AssertionError(f"kwok runs without the stages {sorted(missing)}; pods would never be Ready")

    def kubectl(self, as_user: str | None = None) -> Kubectl:
        return Kubectl(self.tools.kubectl, self.kubeconfig, as_user)

    def server_and_ca(self) -> tuple[str, Path]:
        config: dict[str, Any] = yaml.safe_load(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        return str(cluster["server"]), Path(cluster["certificate-authority"])

    def save_logs(self, destination: Path) -> None:
        """Copies the component logs (and the audit log) somewhere that outlives the cluster."""
        if self.logs_dir.is_dir():
            shutil.copytree(self.logs_dir, destination, dirs_exist_ok=True)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.started:
            with contextlib.suppress(CommandFailed, OSError, TimeoutError):
                run_tool(
                    [str(self.tools.kwokctl), "delete", "cluster", f"--name={self.name}"],
                    env=self.env(),
                    timeout=120,
                )
        shutil.rmtree(self.workdir, ignore_errors=True)


def reap_stale_clusters(tools: Tools, state_root: Path = STATE_ROOT) -> list[str]:
    """Deletes clusters left by test runs whose process died (SIGKILL, OOM): returns their names."""
    reaped: list[str] = []
    if not state_root.is_dir():
        return reaped
    for workdir in sorted(state_root.iterdir()):
        owner = workdir / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        stop_orphans(workdir / OPERATOR_PIDS)
        clusters = workdir / "clusters"
        for cluster in sorted(clusters.iterdir()) if clusters.is_dir() else []:
            env = dict(os.environ, KWOK_WORKDIR=str(workdir))
            delete = [str(tools.kwokctl), "delete", "cluster", f"--name={cluster.name}"]
            with contextlib.suppress(CommandFailed, OSError, TimeoutError):
                run_tool(delete, env=env, timeout=120)
            reaped.append(cluster.name)
        shutil.rmtree(workdir, ignore_errors=True)
    return reaped


def stop_orphans(pid_dir: Path) -> None:
    """SIGTERM operator processes a killed test run left behind (checked by their command line)."""
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if b"comfyui-operator" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)

"""Operator at scale on a real API server: N instances applied at once -> seconds until all are Ready; then
write requests per minute while nothing changes (API server metrics and audit log); operator RSS.

    python3 bench/operator_scale.py [--instances 200] [--idle-seconds 120] [--json out.json]

Needs the pinned tools (hack/build-tools.sh). Starts its own kwok cluster with enough fake GPU nodes, installs
the chart, runs `comfyui-operator` locally as the chart's ServiceAccount, and tears everything down.
Targets (issue 6): all Ready <= 60 s, idle writes 0/min, RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

from k8s_cluster import OPERATOR_PIDS, KwokCluster, fake_node
from k8s_instances import RESOURCE, instance, is_ready
from k8s_kubectl import Helm, Kubectl, Manifest, wait_for
from k8s_observe import AuditLog, counter_delta, write_requests, writes
from k8s_operator import (
    OperatorProcess,
    env_from_deployment,
    healthz_ok,
    service_account_user,
    write_service_account_kubeconfig,
)
from k8s_tools import REPO_ROOT, load_tools, skip_reason

NAMESPACE = "bench"
RELEASE = "comfyui-operator"
RELEASE_NAMESPACE = "comfyui-system"
GPUS_PER_NODE = 8


@dataclass
class Result:
    instances: int
    gpu_nodes: int
    seconds_to_all_ready: float | None = None
    seconds_to_all_deployments: float | None = None
    seconds_to_all_pods_ready: float | None = None
    ready_at_timeout: int = 0
    idle_seconds: float = 0.0
    idle_writes_per_minute_metrics: float = 0.0
    idle_writes_by_resource: dict[str, int] = field(default_factory=dict)
    idle_operator_writes_per_minute_audit: float = 0.0
    idle_operator_lease_writes_per_minute: float = 0.0
    operator_rss_mb_peak: float = 0.0
    operator_rss_mb_idle: float = 0.0
    qps_limits_disabled: bool = False


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children, in MB (10^6 bytes)."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    except psutil.Error:
        return 0.0
    return float(total) / 1e6


def nodes_for(instances: int) -> list[Manifest]:
    count = math.ceil(instances / GPUS_PER_NODE) + 1
    zones = ("zone-a", "zone-b", "zone-c")
    gpu = [fake_node(f"gpu-node-{i:03d}", gpus=GPUS_PER_NODE, zone=zones[i % 3]) for i in range(count)]
    return [*gpu, fake_node("cpu-node", cpu="32", memory="128Gi")]


def start_operator(cluster: KwokCluster, kubectl: Kubectl, workdir: Path) -> OperatorProcess:
    Helm(cluster.tools.helm, cluster.kubeconfig).run(
        "install",
        RELEASE,
        str(REPO_ROOT / "helm"),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    )
    deployment = kubectl.items("deployments", RELEASE_NAMESPACE)[0]
    account = deployment["spec"]["template"]["spec"].get("serviceAccountName", "default")
    server, ca_file = cluster.server_and_ca()
    kubeconfig = workdir / "operator.kubeconfig"
    write_service_account_kubeconfig(kubectl, server, ca_file, RELEASE_NAMESPACE, account, kubeconfig)
    env = env_from_deployment(deployment, pod_name="bench-operator-0")
    process = OperatorProcess(
        kubeconfig,
        workdir / "operator.log",
        env,
        pid_file=cluster.workdir / OPERATOR_PIDS / "bench-operator-0.pid",
    )
    process.start()

    def ready() -> bool:
        if not process.running:
            raise RuntimeError(f"operator exited:\n{process.log_text()[-3000:]}")
        return (
            any(healthz_ok(p) for p in process.ports())
            or "Initial authentication has finished" in process.log_text()
        )

    wait_for(ready, timeout=60, what="the operator to start")
    return process


def count_ready(kubectl: Kubectl) -> int:
    return sum(is_ready(item) for item in kubectl.items(RESOURCE, NAMESPACE))


def count_deployments(kubectl: Kubectl) -> int:
    return len(kubectl.out("get", "deployments", "-n", NAMESPACE, "-o", "name").split())


def count_ready_pods(kubectl: Kubectl) -> int:
    path = '{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}'
    return kubectl.out("get", "pods", "-n", NAMESPACE, "-o", f"jsonpath={path}").split().count("True")


def measure(args: argparse.Namespace, result: Result, cluster: KwokCluster, workdir: Path) -> None:
    kubectl = cluster.kubectl()
    operator = start_operator(cluster, kubectl, workdir)
    pod_spec = kubectl.items("deployments", RELEASE_NAMESPACE)[0]["spec"]["template"]["spec"]
    user = service_account_user(RELEASE_NAMESPACE, pod_spec.get("serviceAccountName", "default"))
    try:
        kubectl.run("create", "namespace", NAMESPACE)
        wait_for(
            lambda: kubectl.get("serviceaccount", "default", NAMESPACE),
            timeout=60,
            what="the bench namespace",
        )
        items = [instance(f"bench-{i:03d}") for i in range(args.instances)]
        peak = rss_mb(operator.pid)
        started = time.monotonic()
        kubectl.apply(items, NAMESPACE)
        deadline = started + args.timeout
        ready = 0
        while time.monotonic() < deadline:
            elapsed = round(time.monotonic() - started, 1)
            if result.seconds_to_all_deployments is None and count_deployments(kubectl) == args.instances:
                result.seconds_to_all_deployments = elapsed
            if result.seconds_to_all_pods_ready is None and count_ready_pods(kubectl) == args.instances:
                result.seconds_to_all_pods_ready = elapsed
            ready = count_ready(kubectl)
            peak = max(peak, rss_mb(operator.pid))
            if ready == args.instances:
                result.seconds_to_all_ready = round(time.monotonic() - started, 1)
                break
            time.sleep(1)
        result.ready_at_timeout = ready
        print(f"ready: {ready}/{args.instances} after {time.monotonic() - started:.1f} s", flush=True)

        time.sleep(args.settle_seconds)
        audit = AuditLog(cluster.audit_log)
        audit.mark()
        before = write_requests(kubectl.raw("/metrics"))
        idle_start = time.monotonic()
        while time.monotonic() - idle_start < args.idle_seconds:
            peak = max(peak, rss_mb(operator.pid))
            time.sleep(min(5.0, args.idle_seconds))
        minutes = (time.monotonic() - idle_start) / 60
        delta = counter_delta(before, write_requests(kubectl.raw("/metrics")))
        operator_writes = writes(audit.since_mark(), user)
        result.idle_seconds = round(minutes * 60, 1)
        result.idle_writes_by_resource = dict(delta)
        result.idle_writes_per_minute_metrics = round(sum(delta.values()) / minutes, 2)
        result.idle_operator_writes_per_minute_audit = round(
            sum(e.resource != "leases" for e in operator_writes) / minutes, 2
        )
        result.idle_operator_lease_writes_per_minute = round(
            sum(e.resource == "leases" for e in operator_writes) / minutes, 2
        )
        result.operator_rss_mb_idle = round(rss_mb(operator.pid), 1)
        result.operator_rss_mb_peak = round(max(peak, result.operator_rss_mb_idle), 1)
    finally:
        operator.stop()
        log_copy = Path(args.keep_log) if args.keep_log else None
        if log_copy:
            log_copy.write_text(operator.log_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for all Ready (s)")
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="pause between Ready and idle (s)")
    parser.add_argument("--idle-seconds", type=float, default=120.0, help="idle measurement window (s)")
    parser.add_argument(
        "--disable-qps-limits",
        action="store_true",
        help="lift the control plane's client QPS limits (kwokctl --disable-qps-limits)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep-log", help="copy the operator log to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.instances <= 2000:
        parser.error("--instances must be between 1 and 2000")

    tools = load_tools()
    reason = skip_reason(tools)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    nodes = nodes_for(args.instances)
    result = Result(
        instances=args.instances, gpu_nodes=len(nodes) - 1, qps_limits_disabled=args.disable_qps_limits
    )
    cluster = KwokCluster(tools, extra_args=["--disable-qps-limits"] if args.disable_qps_limits else [])
    try:
        with tempfile.TemporaryDirectory(prefix="operator-scale-") as workdir:
            cluster.start(nodes)
            measure(args, result, cluster, Path(workdir))
    finally:
        cluster.stop()
    figures = asdict(result)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if result.seconds_to_all_ready is not None else 1


if __name__ == "__main__":
    sys.exit(main())

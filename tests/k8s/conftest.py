"""Fixtures of the real-API-server tier: one kwok cluster per session, the chart installed with helm, and the
operator running locally as the chart's ServiceAccount. See docs/testing.md."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from k8s_cluster import STATE_ROOT, KwokCluster, default_nodes, reap_stale_clusters
from k8s_kubectl import CommandFailed, Helm, Kubectl, wait_for
from k8s_kubelet import TestKubelet, kubelet_node
from k8s_observe import AuditLog
from k8s_operator import (
    OperatorProcess,
)
from k8s_session import (
    CHART_DIR,
    CLEANUP,
    CRD_NAME,
    RELEASE,
    RELEASE_NAMESPACE,
    Operators,
    Release,
    chart_deployment,
    in_ci,
    wait_operator_ready,
)
from k8s_tools import Tools, load_tools, skip_reason


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The pinned binaries; skips the tier when they are not built (fails instead under CI=true)."""
    found = load_tools()
    reason = skip_reason(found)
    if reason:
        if in_ci():
            pytest.fail(reason + " (CI=true: the tier must not be skipped)", pytrace=False)
        pytest.skip(reason)
    return found


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


LOGS_ROOT = STATE_ROOT.parent / "comfyui-k8s-tier-logs"
KEEP_LOGS = 5
SAVED_LOGS: list[Path] = []


def _prune_logs(root: Path, keep: int) -> None:
    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(tools: Tools) -> Iterator[KwokCluster]:
    reap_stale_clusters(tools)
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    kwok = KwokCluster(tools)
    logs = LOGS_ROOT / kwok.name
    LOGS_ROOT.mkdir(parents=True, exist_ok=True)
    _prune_logs(LOGS_ROOT, KEEP_LOGS - 1)
    SAVED_LOGS.append(logs)
    CLEANUP.add(kwok.stop)
    CLEANUP.add(lambda: kwok.save_logs(logs))
    try:
        kwok.start([*default_nodes(), kubelet_node()])
        yield kwok
    finally:
        CLEANUP.run()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def kubectl(cluster: KwokCluster) -> Kubectl:
    """kubectl as cluster admin (the tests' own identity; the operator never uses it)."""
    return cluster.kubectl()


@pytest.fixture(scope="session")
def test_kubelet(kubectl: Kubectl) -> Iterator[TestKubelet]:
    """The stand-in kubelet of the one node kwok leaves alone (heartbeat for the whole session)."""
    kubelet = TestKubelet(kubectl)
    CLEANUP.add(kubelet.stop)
    kubelet.start()
    yield kubelet
    kubelet.stop()


@pytest.fixture
def kubelet(test_kubelet: TestKubelet) -> Iterator[TestKubelet]:
    """The stand-in kubelet syncing pod statuses during one test."""
    test_kubelet.syncing.set()
    yield test_kubelet
    test_kubelet.syncing.clear()


@pytest.fixture(scope="session")
def helm(cluster: KwokCluster, tools: Tools) -> Helm:
    return Helm(tools.helm, cluster.kubeconfig)


@pytest.fixture(scope="session")
def release(helm: Helm, kubectl: Kubectl, test_kubelet: TestKubelet) -> Release:
    """`helm install` of the chart (CRDs, RBAC, ServiceAccount, Deployment that kwok 'runs')."""
    assert (CHART_DIR / "Chart.yaml").is_file(), f"no Helm chart at {CHART_DIR} (the packaging issue)"
    out = helm.run(
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    ).stdout
    kubectl.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    deployment = chart_deployment(kubectl, RELEASE_NAMESPACE)
    account = str(deployment["spec"]["template"]["spec"].get("serviceAccountName", "default"))
    return Release(RELEASE, RELEASE_NAMESPACE, account, out, deployment)


@pytest.fixture(scope="session")
def audit(cluster: KwokCluster) -> AuditLog:
    return AuditLog(cluster.audit_log)


@pytest.fixture(scope="session")
def operators(cluster: KwokCluster, release: Release) -> Iterator[Operators]:
    log_dir = LOGS_ROOT / cluster.name / "operator"
    log_dir.mkdir(parents=True, exist_ok=True)
    group = Operators(cluster, release, log_dir, None, [])  # type: ignore[arg-type]
    group.primary = group.make("operator-0")
    group.primary.start()
    wait_operator_ready(group.primary)
    yield group
    for process in group.all():
        process.stop()


@pytest.fixture
def operator(operators: Operators) -> OperatorProcess:
    """The primary operator, restarted if a previous test left it stopped."""
    if not operators.primary.running:
        operators.primary.start()
        wait_operator_ready(operators.primary)
    return operators.primary


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting."""
    short = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    name = f"t-{short}-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", name)
    wait_for(
        lambda: kubectl.get("serviceaccount", "default", name),
        timeout=30,
        what=f"the default ServiceAccount in {name}",
    )
    request.node.k8s_namespace = name
    yield name
    with contextlib.suppress(CommandFailed):
        kubectl.run("delete", "namespace", name, "--wait=false")


@pytest.fixture(autouse=True)
def _remember_log_offsets(request: pytest.FixtureRequest) -> None:
    """Notes where the operator logs stand, so a failure report shows only this test's part."""
    if "operators" in request.fixturenames:
        group: Operators = request.getfixturevalue("operators")
        request.node.k8s_operator_offsets = {p.log_path: p.log_size() for p in group.all()}
        request.node.k8s_operators = group


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    group: Operators | None = getattr(item, "k8s_operators", None)
    offsets: dict[Path, int] = getattr(item, "k8s_operator_offsets", {})
    if group is not None:
        for process in group.all():
            text = process.log_text(offsets.get(process.log_path, 0))
            lines = text.splitlines()[-300:]
            report.sections.append((f"operator log {process.log_path.name} (this test)", "\n".join(lines)))
    namespace: str | None = getattr(item, "k8s_namespace", None)
    admin: Kubectl | None = item.funcargs.get("kubectl") if hasattr(item, "funcargs") else None
    if namespace and admin is not None:
        with contextlib.suppress(Exception):
            kinds = "comfyuiinstances,deployments,pods,pvc,events"
            state = admin.run("get", kinds, "-n", namespace, "-o", "wide", check=False)
            report.sections.append((f"objects in {namespace}", state.stdout + state.stderr))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in SAVED_LOGS:
        terminalreporter.write_line(f"k8s tier: control-plane, audit and operator logs in {path}")

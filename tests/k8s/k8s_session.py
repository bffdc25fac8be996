"""Shared pieces of the real-API-server tier that tests import: names, the Release and Operators records,
process cleanup and the operator readiness wait. Fixtures stay in conftest.py; test modules import from here,
never from `conftest` (several test directories have a conftest module, and the name collides)."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k8s_cluster import OPERATOR_PIDS, KwokCluster
from k8s_kubectl import Kubectl, wait_for
from k8s_operator import (
    OperatorProcess,
    env_from_deployment,
    healthz_ok,
    service_account_user,
    write_service_account_kubeconfig,
)
from k8s_tools import REPO_ROOT

CRD_GROUP = "comfyui.operator.dev"
CRD_NAME = f"comfyuiinstances.{CRD_GROUP}"
CHART_DIR = REPO_ROOT / "helm"
RELEASE = "comfyui-operator"
RELEASE_NAMESPACE = "comfyui-system"
OPERATOR_READY_TIMEOUT = 60.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class _Cleanup:
    """Runs registered cleanups once, whichever comes first: fixture teardown, Ctrl-C, SIGTERM or exit."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], None]] = []

    def add(self, action: Callable[[], None]) -> None:
        self.actions.append(action)

    def run(self) -> None:
        while self.actions:
            action = self.actions.pop()
            with contextlib.suppress(Exception):
                action()


CLEANUP = _Cleanup()
atexit.register(CLEANUP.run)


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    install_output: str
    deployment: dict[str, Any]

    @property
    def user(self) -> str:
        return service_account_user(self.namespace, self.service_account)


def chart_deployment(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """The chart's operator Deployment (kwok 'runs' its pod; the real operator runs locally)."""
    deployments = kubectl.items("deployments", namespace)
    assert len(deployments) == 1, f"expected one operator Deployment in {namespace}, found {len(deployments)}"
    return deployments[0]


@dataclass
class Operators:
    """The operator process(es) under test, all with the chart ServiceAccount's kubeconfig."""

    cluster: KwokCluster
    release: Release
    log_dir: Path
    primary: OperatorProcess
    extra: list[OperatorProcess]

    @property
    def user(self) -> str:
        return self.release.user

    def make(self, name: str) -> OperatorProcess:
        """A new operator process (not started) configured like the chart's pod `name`, with its own token."""
        server, ca_file = self.cluster.server_and_ca()
        kubeconfig = self.cluster.workdir / f"{name}.kubeconfig"
        credential = write_service_account_kubeconfig(
            self.cluster.kubectl(),
            server,
            ca_file,
            self.release.namespace,
            self.release.service_account,
            kubeconfig,
        )
        env = env_from_deployment(self.release.deployment, pod_name=name)
        pid_file = self.cluster.workdir / OPERATOR_PIDS / f"{name}.pid"
        process = OperatorProcess(
            kubeconfig, self.log_dir / f"{name}.log", env, credential=credential, pid_file=pid_file
        )
        CLEANUP.add(process.close)
        return process

    def spawn(self, name: str) -> OperatorProcess:
        process = self.make(name)
        self.extra.append(process)
        process.start()
        return process

    def all(self) -> list[OperatorProcess]:
        return [self.primary, *self.extra]


STANDBY_LOG = "waiting for the lease"


def wait_operator_ready(
    process: OperatorProcess, timeout: float = OPERATOR_READY_TIMEOUT, *, standby_ok: bool = False
) -> None:
    """Until the process answers its liveness endpoint (kopf runs only while it holds the leader Lease), or,
    with `standby_ok`, until it has started waiting for the Lease."""

    def ready() -> bool:
        if not process.running:
            code = process.process.returncode if process.process else None
            raise AssertionError(f"operator exited with {code}:\n{process.log_text()[-4000:]}")
        if any(healthz_ok(port) for port in process.ports()):
            return True
        return standby_ok and STANDBY_LOG in process.log_text(process.start_offset)

    wait_for(ready, timeout=timeout, what="the operator to start (its liveness endpoint)")

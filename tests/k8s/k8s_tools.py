"""Finds the pinned, Go-built binaries this tier runs (built by hack/build-tools.sh into a cache)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-tools.sh"
BUILD_HINT = "hack/build-tools.sh (or `make test-k8s`, which builds them first)"

_EXPORT = re.compile(r'^export\s+([A-Z0-9_]+)="?(.*?)"?\s*$')
_ENV_NAMES = {
    "kube_apiserver": "KWOK_KUBE_APISERVER_BINARY",
    "kube_controller_manager": "KWOK_KUBE_CONTROLLER_MANAGER_BINARY",
    "kube_scheduler": "KWOK_KUBE_SCHEDULER_BINARY",
    "kubectl": "KWOK_KUBECTL_BINARY",
    "etcd": "KWOK_ETCD_BINARY",
    "kwok": "KWOK_CONTROLLER_BINARY",
    "kwokctl": "KWOKCTL_BINARY",
    "helm": "HELM_BINARY",
}


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary the cluster and the tests need, and the Kubernetes version."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwokctl: Path
    helm: Path
    kube_version: str

    def binaries(self) -> dict[str, Path]:
        return {field: getattr(self, field) for field in _ENV_NAMES}


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME="value"` lines (what `build-tools.sh --print-env` prints) -> {NAME: value}."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _EXPORT.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def tools_from_env(env: dict[str, str]) -> Tools:
    """Builds Tools from KWOK_* / HELM_BINARY variables; raises KeyError naming a missing variable."""
    absent = [name for name in [*_ENV_NAMES.values(), "KUBE_VERSION"] if name not in env]
    if absent:
        raise KeyError(f"tool variables not set: {', '.join(absent)}")
    paths = {field: Path(env[name]) for field, name in _ENV_NAMES.items()}
    return Tools(**paths, kube_version=env["KUBE_VERSION"])


def missing_binaries(tools: Tools) -> list[Path]:
    """The binaries that are not there or not executable, in a stable order."""
    return [path for path in tools.binaries().values() if not os.access(path, os.X_OK)]


def load_tools() -> Tools:
    """Tools from the environment when `make test-k8s` exported them, else from the build script's answer."""
    env = dict(os.environ)
    if not all(name in env for name in [*_ENV_NAMES.values(), "KUBE_VERSION"]):
        printed = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-env"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        env = {**parse_exports(printed), **{k: v for k, v in env.items() if k in _ENV_NAMES.values()}}
    return tools_from_env(env)


def skip_reason(tools: Tools) -> str | None:
    """A sentence naming the first missing binary and how to build it, or None when all are present."""
    missing = missing_binaries(tools)
    if not missing:
        return None
    names = ", ".join(str(path) for path in missing)
    return f"real-API-server tier: missing binary {names}; build the pinned tools with {BUILD_HINT}"

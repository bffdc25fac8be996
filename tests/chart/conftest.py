"""Fixtures for the chart tier: pinned helm and promtool ($HELM_BINARY, $PROMTOOL_BINARY), a renderer."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tier import tool_missing, tool_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "cui"
NAMESPACE = "comfyui-system"
# The Kubernetes minor versions the rendered chart is validated against (oldest supported, newest).
KUBE_VERSIONS = ("1.30.0", "1.34.0")
HELM_TIMEOUT_S = 60

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def _helm_binary() -> str | None:
    configured = os.environ.get("HELM_BINARY")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    binary = _helm_binary()
    if binary is None:
        tool_missing(
            "helm not found: set HELM_BINARY (make test-chart exports it: hack/build-tools.sh --print-env)"
        )
    return binary


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool_path("PROMTOOL_BINARY", "promtool", "build it: hack/build-tools.sh promtool")


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False)


def template_args(values_files: list[Path], sets: list[str], kube_version: str) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    for values in values_files:
        args += ["--values", str(values)]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """Render the chart's templates (not its crds/) and return the parsed documents."""

    def _render(
        values_files: list[Path] | None = None,
        sets: list[str] | None = None,
        kube_version: str = KUBE_VERSIONS[-1],
    ) -> list[Manifest]:
        result = run_helm(helm, *template_args(values_files or [], sets or [], kube_version))
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]

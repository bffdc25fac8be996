"""NOTES.txt renders (helm prints it only after a real install, so it is rendered here through `tpl`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, run_helm

NOTES_PROBE = 'notes: {{ tpl (.Files.Get "NOTES.src") . | toJson }}\n'


def render_notes(helm: str, tmp_path: Path, sets: list[str]) -> str:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "NOTES.src")
    (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    args = ["template", "cui", str(chart), "-n", "comfyui-system", "--kube-version", "1.34.0"]
    args += ["--show-only", "templates/notes-probe.yaml"]
    for item in sets:
        args += ["--set", item]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["notes"]
    return notes


def test_notes_for_the_defaults(helm: str, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, [])
    assert "watching every namespace" in notes
    assert "rollout status deployment/cui-comfyui-operator" in notes
    assert "service/cui-comfyui-operator-metrics port 8080" in notes
    assert "metrics.serviceMonitor.enabled=true" in notes


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["watch.scope=namespaces", "watch.namespaces={ai,batch}"], "watching: ai, batch."),
        (["instances.b.spec.replicas=1", "instances.a.spec.replicas=1"], "declared in this release: a, b"),
    ],
)
def test_notes_follow_the_values(helm: str, tmp_path: Path, sets: list[str], expected: str) -> None:
    assert expected in render_notes(helm, tmp_path, sets)

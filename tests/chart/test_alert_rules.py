"""The PrometheusRule's alerts: `promtool check rules` and `promtool test rules` on the rendered rules, a
runbook for every alert, and annotations that only use labels the alert keeps."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import RELEASE, REPO, Manifest, Render, one

RULE_TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
PROMTOOL_TIMEOUT_S = 120
KEPT_ANNOTATIONS = ("summary", "runbook_url")
"""What the promtool tests compare; descriptions (prose) are checked by `check rules` and the label test."""


def alerts(rule: Manifest) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def rendered_rule(render: Render, *sets: str) -> Manifest:
    return one(render(sets=["metrics.prometheusRule.enabled=true", *sets]), "PrometheusRule")


def write_rules(rule: Manifest, directory: Path, *, keep: tuple[str, ...] | None = None) -> Path:
    groups = rule["spec"]["groups"]
    if keep is not None:
        for alert in (r for group in groups for r in group["rules"] if "alert" in r):
            alert["annotations"] = {k: v for k, v in alert["annotations"].items() if k in keep}
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False, cwd=cwd
    )


def test_rule_tests_exist() -> None:
    assert {path.name for path in RULE_TESTS} >= {"sidecar-alerts.test.yaml", "operator-alerts.test.yaml"}


@pytest.mark.parametrize("sets", [[], ["sidecarMetrics.alerts.enabled=false"]], ids=["all", "operator-only"])
def test_promtool_checks_the_rendered_rules(
    render: Render, promtool: str, tmp_path: Path, sets: list[str]
) -> None:
    rules = write_rules(rendered_rule(render, *sets), tmp_path)
    result = run_promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", rules.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_sidecar_alerts_can_be_left_out(render: Render) -> None:
    rule = rendered_rule(render, "sidecarMetrics.alerts.enabled=false")
    assert [group["name"] for group in rule["spec"]["groups"]] == ["comfyui-operator"]


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_of_the_alerts(
    render: Render, promtool: str, tmp_path: Path, test_file: Path
) -> None:
    write_rules(rendered_rule(render), tmp_path, keep=KEPT_ANNOTATIONS)
    shutil.copy(test_file, tmp_path / test_file.name)
    result = run_promtool(promtool, "test", "rules", test_file.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_sidecar_alert_has_a_promtool_test(render: Render) -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    groups = {group["name"]: group for group in rendered_rule(render)["spec"]["groups"]}
    names = {rule["alert"] for rule in groups["comfyui-sidecars"]["rules"]}
    assert names == {
        "ComfyUIDown",
        "ComfyUIQueueStuck",
        "ComfyUIModelCacheThrashing",
        "ComfyUIWebhookFailures",
    }
    assert names <= tested, f"no firing promtool test for {names - tested}"


def test_thresholds_come_from_values(render: Render) -> None:
    rule = rendered_rule(
        render,
        "sidecarMetrics.alerts.comfyDownFor=2m",
        "sidecarMetrics.alerts.queueStuckFor=2h",
        "sidecarMetrics.alerts.cacheEvictionsPerHour=7",
        "sidecarMetrics.alerts.webhookFailurePercent=25",
    )
    by_name = {a["alert"]: a for a in alerts(rule)}
    assert by_name["ComfyUIDown"]["for"] == "2m"
    assert by_name["ComfyUIQueueStuck"]["for"] == "2h"
    assert "[2h]" in by_name["ComfyUIQueueStuck"]["expr"]
    assert ">= 7" in by_name["ComfyUIModelCacheThrashing"]["expr"]
    assert by_name["ComfyUIWebhookFailures"]["expr"].rstrip().endswith("> 0.25")


def test_alerts_have_severity_summary_and_runbook(render: Render) -> None:
    found = alerts(rendered_rule(render))
    assert len(found) >= 9
    for alert in found:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), alert["alert"]
        assert len(annotations["description"]) > 40, alert["alert"]
        assert annotations["runbook_url"].endswith("#" + alert["alert"].lower())
        expr = alert["expr"]
        assert f"{RELEASE}-comfyui-operator-metrics" in expr or re.search(r"comfyui_(operator|api)_", expr)
    assert any(alert["labels"]["severity"] == "critical" for alert in found)


def test_runbooks_exist_for_every_alert(render: Render) -> None:
    text = RUNBOOKS.read_text().lower()
    for alert in alerts(rendered_rule(render)):
        assert f"### {alert['alert'].lower()}" in text, f"no runbook section for {alert['alert']}"
        assert alert["annotations"]["runbook_url"].startswith(
            "https://github.com/comfyui-operator/comfyui-operator/blob/main/docs/runbooks.md#"
        )


def _kept_labels(expr: str) -> set[str] | None:
    """The labels an aggregated alert keeps: those of its first `by (...)`; None when not aggregated."""
    match = re.search(r"\bby \(([^)]*)\)", expr)
    return None if match is None else {label.strip() for label in match[1].split(",")}


def test_annotations_use_only_labels_the_alert_keeps(render: Render) -> None:
    for alert in alerts(rendered_rule(render)):
        kept = _kept_labels(alert["expr"])
        if kept is None:
            continue
        for text in alert["annotations"].values():
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert used <= kept, f"{alert['alert']} uses {used - kept}, which `by ({kept})` drops"

"""values.schema.json and the templates reject bad values with a message that names the problem."""

from __future__ import annotations

import pytest

from .conftest import run_helm, template_args

# (id, --set arguments, a fragment the error must contain)
SCHEMA_REJECTIONS = [
    ("negative-replicas", ["replicaCount=-1"], "replicaCount"),
    ("replicas-not-a-number", ["replicaCount=two"], "replicaCount"),
    ("typo-top-level", ["imagee.tag=x"], "imagee"),
    ("typo-nested", ["image.tagg=x"], "tagg"),
    ("bad-pull-policy", ["image.pullPolicy=Sometimes"], "pullPolicy"),
    ("bad-scope", ["watch.scope=everywhere"], "scope"),
    ("namespaces-scope-without-namespaces", ["watch.scope=namespaces"], "namespaces"),
    ("bad-namespace-name", ["watch.scope=namespaces", "watch.namespaces={Team_A}"], "namespaces"),
    ("bad-log-format", ["logFormat=xml"], "logFormat"),
    ("bad-log-level", ["logLevel=verbose"], "logLevel"),
    ("port-out-of-range", ["metrics.port=70000"], "port"),
    ("health-path-without-slash", ["health.path=healthz"], "path"),
    ("bad-service-type", ["metrics.service.type=ExternalName"], "type"),
    ("bad-scrape-interval", ["metrics.serviceMonitor.interval=30 seconds"], "interval"),
    ("bad-runbook-url", ["metrics.prometheusRule.runbookBaseUrl=docs/runbooks"], "runbookBaseUrl"),
    ("bad-quantity", ["resources.requests.cpu=lots"], "cpu"),
    ("bad-env-name", ["extraEnv.1BAD=x"], "1BAD"),
    ("bad-instance-name", ["instances.Image_Edit.spec.replicas=1"], "Image_Edit"),
    ("instance-without-spec", ["instances.image-edit.namespace=ai"], "spec"),
    ("bad-image-tag", ["image.tag=has space"], "tag"),
    ("typo-pod-monitor", ["sidecarMetrics.podMonitor.enable=true"], "enable"),
    ("bad-alert-delay", ["sidecarMetrics.alerts.comfyDownFor=5 minutes"], "comfyDownFor"),
    (
        "webhook-percent-above-100",
        ["sidecarMetrics.alerts.webhookFailurePercent=150"],
        "webhookFailurePercent",
    ),
    ("zero-evictions-per-hour", ["sidecarMetrics.alerts.cacheEvictionsPerHour=0"], "cacheEvictionsPerHour"),
    ("bad-dashboard-namespace", ["dashboard.namespace=Monitoring"], "namespace"),
]

# Rules a JSON schema can not express well: enforced by `fail` in the templates.
TEMPLATE_REJECTIONS = [
    (
        "service-monitor-without-service",
        ["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"],
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
    ),
    (
        "two-replicas-without-leader-election",
        ["replicaCount=2", "leaderElection.enabled=false"],
        "replicaCount > 1 needs leaderElection.enabled=true",
    ),
    (
        "no-service-account-name",
        ["serviceAccount.create=false"],
        "serviceAccount.name is required",
    ),
]


@pytest.mark.parametrize(
    ("sets", "fragment"), [c[1:] for c in SCHEMA_REJECTIONS], ids=[c[0] for c in SCHEMA_REJECTIONS]
)
def test_schema_rejects(helm: str, sets: list[str], fragment: str) -> None:
    result = run_helm(helm, *template_args([], sets, "1.34.0"))
    assert result.returncode != 0, f"accepted {sets}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("sets", "message"), [c[1:] for c in TEMPLATE_REJECTIONS], ids=[c[0] for c in TEMPLATE_REJECTIONS]
)
def test_templates_reject(helm: str, sets: list[str], message: str) -> None:
    result = run_helm(helm, *template_args([], sets, "1.34.0"))
    assert result.returncode != 0, f"accepted {sets}"
    assert message in result.stderr, result.stderr


def test_the_same_checks_accept_good_values(helm: str) -> None:
    good = [
        "replicaCount=3",
        "watch.scope=namespaces",
        "watch.namespaces={ai}",
        "logFormat=text",
        "metrics.serviceMonitor.interval=1m30s",
        "resources.requests.cpu=250m",
        "extraEnv.HTTP_PROXY=x",
        "instances.image-edit.spec.replicas=1",
    ]
    result = run_helm(helm, *template_args([], good, "1.34.0"))
    assert result.returncode == 0, result.stderr


def test_helm_lint_reports_schema_errors(helm: str) -> None:
    from .conftest import CHART

    result = run_helm(helm, "lint", str(CHART), "--set", "replicaCount=-1")
    assert result.returncode != 0
    assert "replicaCount" in result.stdout + result.stderr

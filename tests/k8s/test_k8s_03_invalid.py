"""Scenario 3: the invalid examples are rejected by the API server (schema, CEL) with a readable message that
holds one of their `# expect:` texts; those marked `# expect-condition: <Reason>` (accepted by the server on
purpose) are reported by the operator as a condition and a Warning Event with that reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_instances import EXAMPLES, RESOURCE, in_namespace, instance, load_documents
from k8s_kubectl import Kubectl, Manifest, dump_manifests, wait_for
from k8s_operator import OperatorProcess
from k8s_session import Release

ALL_INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def expectations(path: Path, marker: str = "expect") -> list[str]:
    """The `# <marker>: <text>` lines of an invalid example."""
    prefix = f"# {marker}:"
    lines = path.read_text().splitlines()
    return [line.removeprefix(prefix).strip() for line in lines if line.startswith(prefix)]


REJECTED = [p for p in ALL_INVALID if not expectations(p, "expect-condition")]
REPORTED = [p for p in ALL_INVALID if expectations(p, "expect-condition")]


@pytest.fixture(scope="module")
def invalid_namespace(kubectl: Kubectl, release: Release) -> Iterator[str]:
    name = "t-invalid-specs"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def test_there_are_at_least_fifteen_invalid_examples() -> None:
    assert len(REJECTED) >= 15, [p.name for p in REJECTED]


@pytest.mark.parametrize("path", REJECTED, ids=[p.stem for p in REJECTED])
def test_invalid_example_is_rejected(path: Path, kubectl: Kubectl, invalid_namespace: str) -> None:
    documents = in_namespace(load_documents(path), invalid_namespace)
    result = kubectl.run(
        "create", "--dry-run=server", "-f", "-", input_text=dump_manifests(documents), check=False
    )
    message = result.stderr.strip()
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert "is invalid" in message or "unknown field" in message or "strict decoding" in message, message
    assert "goroutine" not in message
    assert "panic" not in message.lower()
    assert len(message) < 2000, f"an unreadably long answer ({len(message)} chars)"
    wanted = expectations(path)
    assert wanted, f"{path.name} has no `# expect:` line"
    assert any(text in message for text in wanted), f"expected one of {wanted} in:\n{message}"


@pytest.mark.parametrize("path", REPORTED, ids=[p.stem for p in REPORTED])
def test_invalid_example_is_reported_by_the_operator(
    path: Path, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    reason = expectations(path, "expect-condition")[0]
    documents = in_namespace(load_documents(path), namespace)
    kubectl.apply(documents)
    name = documents[0]["metadata"]["name"]

    def reported() -> Manifest | None:
        live = kubectl.get(RESOURCE, name, namespace) or {}
        for cond in live.get("status", {}).get("conditions", []) or []:
            if cond.get("reason") == reason and cond.get("status") == "True":
                return dict(cond)
        return None

    cond = wait_for(reported, timeout=60, what=f"a condition with reason {reason}")
    assert cond["message"]
    events = [
        e
        for e in kubectl.items("events", namespace)
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
    ]
    assert events, f"no Event with reason {reason}"
    assert events[0]["type"] == "Warning"
    assert operator.running, "an invalid spec must not crash the operator"


def test_an_instance_in_an_excluded_namespace_is_refused(kubectl: Kubectl, operator: OperatorProcess) -> None:
    """Cluster-wide, the operator could create pods (that mount any Secret there) in every namespace; the
    cluster's own namespaces are excluded: nothing is created, the status and a Warning Event say why."""
    name, excluded = "not-here", "kube-system"
    kubectl.apply([instance(name)], excluded)
    try:

        def refused() -> Manifest | None:
            live = kubectl.get(RESOURCE, name, excluded) or {}
            for cond in live.get("status", {}).get("conditions", []) or []:
                if cond.get("type") == "Degraded" and cond.get("reason") == "NamespaceExcluded":
                    return dict(cond)
            return None

        cond = wait_for(refused, timeout=60, what="a NamespaceExcluded condition")
        assert f"namespace {excluded} is excluded" in cond["message"]
        assert kubectl.get("deployment", name, excluded) is None
        assert kubectl.get("configmap", f"{name}-config", excluded) is None

        def events() -> list[Manifest]:
            return [
                e
                for e in kubectl.items("events", excluded)
                if e.get("involvedObject", {}).get("name") == name and e.get("reason") == "NamespaceExcluded"
            ]

        posted = wait_for(events, timeout=30, what="a NamespaceExcluded Event")
        assert [event["type"] for event in posted] == ["Warning"]
    finally:
        kubectl.run("delete", "cui", name, "-n", excluded, "--wait=false", check=False)

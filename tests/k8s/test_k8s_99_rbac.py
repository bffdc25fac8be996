"""Scenario 99: the operator's ServiceAccount has exactly the documented minimal rights (no wildcard, no
Secret access unless documented), and nothing it did in the whole session was refused (no 403).

This module runs last (file order), so the 403 checks cover every scenario that ran before it."""

from __future__ import annotations

import re

from comfyui_operator import rbac
from k8s_kubectl import Kubectl
from k8s_observe import AuditLog, denied_by_rbac, forbidden
from k8s_operator import forbidden_lines, service_account_user
from k8s_session import Operators, Release

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)
_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def parse_can_i_list(text: str) -> set[Rule]:
    """`kubectl auth can-i --list` table -> {(group, resource, verb)}; rows limited to resource names and
    non-resource URLs are kept apart by giving them a marker group."""
    rules: set[Rule] = set()
    for line in text.splitlines()[1:]:
        match = _ROW.match(line.rstrip()) if line.strip() else None
        if not match:
            continue
        resource_group, urls, names, verbs = match.groups()
        if not resource_group:
            rules |= {("<url>", url, verb) for url in urls.split() for verb in verbs.split()}
            continue
        resource, _, group = resource_group.partition(".")
        if "/" in group:  # `resource.group/subresource` is not kubectl's form, but be lenient
            group, _, sub = group.partition("/")
            resource = f"{resource}/{sub}"
        marker = f"<named:{names}>" if names else ""
        rules |= {(group + marker, resource, verb) for verb in verbs.split()}
    return rules


def expand(rules: tuple[rbac.PolicyRule, ...]) -> set[Rule]:
    return {(g, r, v) for rule in rules for g in rule.api_groups for r in rule.resources for v in rule.verbs}


def granted(kubectl: Kubectl, user: str, namespace: str) -> set[Rule]:
    return parse_can_i_list(kubectl.out("auth", "can-i", "--list", f"--as={user}", "-n", namespace))


def _compare(actual: set[Rule], expected: set[Rule]) -> str:
    extra = sorted(actual - expected)
    missing = sorted(expected - actual)
    return f"granted but not documented: {extra}\ndocumented but not granted: {missing}"


def test_service_account_rights_equal_the_documented_minimal_set(
    kubectl: Kubectl, release: Release, namespace: str
) -> None:
    kubectl.run("create", "serviceaccount", "rbac-baseline", "-n", namespace)
    baseline = granted(kubectl, service_account_user(namespace, "rbac-baseline"), namespace)
    actual = granted(kubectl, release.user, namespace) - baseline
    assert not any("*" in part for rule in actual for part in rule), f"wildcards: {sorted(actual)}"
    documented = expand(rbac.WORKLOAD_RULES)
    if not any(r == "secrets" for _, r, _ in documented):
        secret_rules = [rule for rule in actual if rule[1] == "secrets"]
        assert not secret_rules, f"Secret access that rbac.py does not document: {secret_rules}"
    assert actual == documented, _compare(actual, documented)

    home = granted(kubectl, release.user, release.namespace) - baseline
    home_documented = documented | expand(rbac.LEADER_ELECTION_RULES)
    assert home == home_documented, _compare(home, home_documented)


def test_no_request_of_the_operator_was_denied_by_rbac(operators: Operators, audit: AuditLog) -> None:
    events = audit.all()
    assert any(e.user == operators.user and e.decision == "allow" for e in events), (
        "the audit log has no authorization decisions for the operator: the check would prove nothing"
    )
    denied = [e.describe() for e in denied_by_rbac(events, operators.user)]
    assert denied == [], f"RBAC denied the operator during the session: {denied[:20]}"


# The one 403 that is not about permissions: NamespaceLifecycle admission refuses to create objects in a
# namespace that is being deleted. Tests delete their namespaces while the operator may be re-creating a
# just-deleted Deployment; the operator treats that answer as "nothing to do" (no status, no Event, healthy).
NAMESPACE_TERMINATING = "because it is being terminated"


def test_no_request_of_the_operator_got_a_403(operators: Operators, audit: AuditLog) -> None:
    """Every 403, admission refusals included, except creations in a namespace that is being deleted."""
    refused = [
        e.describe() for e in forbidden(audit.all(), operators.user) if NAMESPACE_TERMINATING not in e.message
    ]
    assert refused == [], f"{len(refused)} answers 403 to the operator during the session: {refused[:5]}"


def test_no_forbidden_in_operator_logs(operators: Operators) -> None:
    lines = [f"{p.log_path.name}: {line}" for p in operators.all() for line in forbidden_lines(p.log_text())]
    assert lines == [], "\n".join(lines[:20])


def test_parse_can_i_list_reads_resources_subresources_and_urls() -> None:
    table = (
        "Resources                                     Non-Resource URLs   Resource Names   Verbs\n"
        "deployments.apps                              []                  []               [get create]\n"
        "comfyuiinstances.comfyui.operator.dev/status  []                  []               [patch]\n"
        "pods                                          []                  []               [list]\n"
        "configmaps                                    []                  [only-this]      [get]\n"
        "                                              [/healthz]          []               [get]\n"
    )
    assert parse_can_i_list(table) == {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "create"),
        ("comfyui.operator.dev", "comfyuiinstances/status", "patch"),
        ("", "pods", "list"),
        ("<named:only-this>", "configmaps", "get"),
        ("<url>", "/healthz", "get"),
    }
    assert expand((rbac.PolicyRule(("", "apps"), ("a",), ("get",), "why"),)) == {
        ("", "a", "get"),
        ("apps", "a", "get"),
    }

"""The chart grants exactly the rules in comfyui_operator.rbac: no more, no less, in every scope."""

from __future__ import annotations

from typing import Any

from comfyui_operator import rbac

from .conftest import NAMESPACE, RELEASE, Manifest, Render, by_kind, one

FULLNAME = f"{RELEASE}-comfyui-operator"


def normalized(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    """Rules as sorted tuples, so the comparison ignores order inside and between rules."""
    return sorted(
        (
            tuple(sorted(rule.get("apiGroups", []))),
            tuple(sorted(rule.get("resources", []))),
            tuple(sorted(rule.get("verbs", []))),
            tuple(sorted(rule.get("resourceNames", []))),
        )
        for rule in rules
    )


def rbac_objects(docs: list[Manifest]) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] in {"ClusterRole", "Role"}]


def test_cluster_scope_grants_exactly_the_workload_and_leader_election_rules(render: Render) -> None:
    docs = render()
    cluster_role = one(docs, "ClusterRole")
    assert normalized(cluster_role["rules"]) == normalized(rbac.workload_rules())
    leader = one(docs, "Role")
    assert leader["metadata"]["namespace"] == NAMESPACE
    assert normalized(leader["rules"]) == normalized(rbac.leader_election_rules())
    assert len(rbac_objects(docs)) == 2


def test_namespaced_scope_grants_the_workload_rules_per_namespace(render: Render) -> None:
    docs = render(sets=["watch.scope=namespaces", "watch.namespaces={ai,batch}"])
    assert not by_kind(docs, "ClusterRole")
    workload_roles = [role for role in by_kind(docs, "Role") if role["metadata"]["name"] == FULLNAME]
    assert sorted(role["metadata"]["namespace"] for role in workload_roles) == ["ai", "batch"]
    for role in workload_roles:
        assert normalized(role["rules"]) == normalized(rbac.workload_rules())


def test_no_wildcards_and_no_secret_access(render: Render) -> None:
    for role in rbac_objects(render()):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "secrets" not in rule["resources"], rule


def test_leader_election_off_drops_its_role(render: Render) -> None:
    docs = render(sets=["leaderElection.enabled=false"])
    assert not by_kind(docs, "Role")
    assert normalized(one(docs, "ClusterRole")["rules"]) == normalized(rbac.workload_rules())


def test_every_binding_points_at_a_rendered_role_and_the_service_account(render: Render) -> None:
    for sets in ([], ["watch.scope=namespaces", "watch.namespaces={ai}"]):
        docs = render(sets=sets)
        roles = {
            (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
            for doc in rbac_objects(docs)
        }
        service_account = one(docs, "ServiceAccount")["metadata"]["name"]
        bindings = by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
        assert len(bindings) == len(roles)
        for binding in bindings:
            ref = binding["roleRef"]
            namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
            assert (ref["kind"], namespace, ref["name"]) in roles
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}
            ]

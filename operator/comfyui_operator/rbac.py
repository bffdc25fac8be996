"""The operator's least-privilege RBAC, as data. The chart's templates must grant exactly these rules.

`WORKLOAD_RULES` go into a ClusterRole (cluster-wide mode) or a Role in each watched namespace.
`LEADER_ELECTION_RULES` go into a Role in the operator's own namespace.

No wildcards. No Secret access at all: a missing Secret reference is seen on the pods
(CreateContainerConfigError) and reported as a `MissingReference` condition; a library's credentials Secret
is only named in its sync Job's environment. Delete only for objects the operator stops wanting while their
owner lives: the PodDisruptionBudget when an instance scales down to one replica, the router's Deployment,
PodDisruptionBudget and headless Service when `spec.routing` is removed (each only when the instance owns
it), and a library's sync Jobs of superseded manifests; everything else is garbage-collected through
ownerReferences. Neither the router nor the pods get API access: the operator scales to zero and back from
the router's `GET /activity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfyui_operator import api, library_api


@dataclass(frozen=True)
class PolicyRule:
    """One RBAC rule plus why the operator needs it."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def as_manifest(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


WORKLOAD_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        (api.GROUP,),
        (api.PLURAL,),
        ("get", "list", "watch", "patch"),
        "watch instances; kopf patches its progress annotations (and drops an older build's finalizer)",
    ),
    PolicyRule(
        (api.GROUP,), (f"{api.PLURAL}/status",), ("get", "patch"), "write status (only when it changed)"
    ),
    PolicyRule(
        ("apps",),
        ("deployments",),
        ("get", "list", "watch", "create", "patch", "delete"),
        "server-side apply the Deployments (replicas, router); watch them to refresh status; delete the "
        "router's when spec.routing is removed",
    ),
    PolicyRule(
        ("",),
        ("services",),
        ("get", "create", "patch", "delete"),
        "server-side apply the Services; delete the routers' headless Service when spec.routing is removed",
    ),
    PolicyRule(
        ("",),
        ("configmaps",),
        ("get", "create", "patch"),
        "server-side apply the generated ConfigMap; check that a referenced warmup ConfigMap exists",
    ),
    PolicyRule(
        ("policy",),
        ("poddisruptionbudgets",),
        ("get", "create", "patch", "delete"),
        "server-side apply the PodDisruptionBudgets; delete one when replicas drop to 1 or less, or the "
        "router's when spec.routing is removed",
    ),
    PolicyRule(
        (api.GROUP,),
        (library_api.PLURAL,),
        ("get", "list", "watch", "patch"),
        "watch model libraries; kopf patches its progress annotations",
    ),
    PolicyRule(
        (api.GROUP,),
        (f"{library_api.PLURAL}/status",),
        ("get", "patch"),
        "write library status (only when it changed)",
    ),
    PolicyRule(
        ("batch",),
        ("jobs",),
        ("get", "list", "watch", "create", "delete"),
        "create a library's sync Job and watch it; delete the Jobs of superseded manifests",
    ),
    PolicyRule(
        ("",),
        ("persistentvolumeclaims",),
        ("get", "create", "patch"),
        "check that referenced model/custom-node PVCs exist; server-side apply a library's claim",
    ),
    PolicyRule(
        ("",), ("pods",), ("get", "list", "watch"), "derive status (unschedulable, image pull, crash loops)"
    ),
    PolicyRule(
        ("",),
        ("events",),
        ("list", "create", "patch"),
        "post Events on instances; read pod warnings such as FailedMount",
    ),
)

LEADER_ELECTION_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "create", "update"),
        "hold the leader-election Lease so two operator replicas never act at once",
    ),
)


def workload_rules() -> list[dict[str, Any]]:
    """The rules of the operator's ClusterRole (or of each per-namespace Role)."""
    return [rule.as_manifest() for rule in WORKLOAD_RULES]


def leader_election_rules() -> list[dict[str, Any]]:
    """The rules of the Role in the operator's own namespace."""
    return [rule.as_manifest() for rule in LEADER_ELECTION_RULES]

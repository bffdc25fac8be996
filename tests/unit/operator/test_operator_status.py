"""Status derivation from Deployment/pod/event states (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest
from comfyui_operator import status
from comfyui_operator.status import Observed, Problem

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def deployment(
    replicas: int = 1,
    ready: int = 0,
    updated: int | None = None,
    conditions: list[Any] | None = None,
    generation: int = 1,
    observed: int = 1,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conditions or [],
        },
    }


def pod(
    name: str = "p-1",
    phase: str = "Pending",
    conditions: list[Any] | None = None,
    containers: list[Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = T0
    return {
        "metadata": meta,
        "status": {"phase": phase, "conditions": conditions or [], "containerStatuses": containers or []},
    }


def waiting(
    reason: str,
    message: str = "",
    name: str = "comfyui",
    restarts: int = 0,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "state": {"waiting": {"reason": reason, "message": message}},
        "restartCount": restarts,
    }
    if last:
        entry["lastState"] = {"terminated": last}
    return entry


UNSCHEDULABLE_POD = pod(
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
    ]
)
MISSING_PVC_POD = pod(
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": 'persistentvolumeclaim "comfyui-models" not found',
        }
    ]
)

# (id, observed, expected {type: (status, reason)}, substring expected in the Degraded message)
CASES: list[tuple[str, Observed, dict[str, tuple[str, str]], str]] = [
    (
        "all-ready",
        Observed(1, 2, deployment(2, 2)),
        {
            "Ready": ("True", "AllReplicasReady"),
            "Progressing": ("False", "RolloutComplete"),
            "Degraded": ("False", "AsExpected"),
        },
        "",
    ),
    (
        "starting",
        Observed(1, 1, deployment(1, 0), [pod(phase="Running")]),
        {
            "Ready": ("False", "ReplicasNotReady"),
            "Progressing": ("True", "RollingOut"),
            "Degraded": ("False", "AsExpected"),
        },
        "",
    ),
    (
        "no-deployment-yet",
        Observed(1, 1, None),
        {
            "Ready": ("False", "DeploymentMissing"),
            "Progressing": ("True", "DeploymentMissing"),
            "Degraded": ("False", "AsExpected"),
        },
        "",
    ),
    (
        "gpu-unschedulable",
        Observed(1, 1, deployment(1, 0), [UNSCHEDULABLE_POD]),
        {
            "Ready": ("False", "Unschedulable"),
            "Progressing": ("True", "Unschedulable"),
            "Degraded": ("True", "Unschedulable"),
        },
        "Insufficient nvidia.com/gpu",
    ),
    (
        "image-pull",
        Observed(1, 1, deployment(1, 0), [pod(containers=[waiting("ImagePullBackOff", "Back-off pulling")])]),
        {
            "Ready": ("False", "ImagePullFailed"),
            "Progressing": ("True", "ImagePullFailed"),
            "Degraded": ("True", "ImagePullFailed"),
        },
        "ImagePullBackOff",
    ),
    (
        "invalid-image-name",
        Observed(1, 1, deployment(1, 0), [pod(containers=[waiting("InvalidImageName")])]),
        {"Degraded": ("True", "ImagePullFailed")},
        "InvalidImageName",
    ),
    (
        "crash-loop",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                pod(
                    phase="Running",
                    containers=[
                        waiting("CrashLoopBackOff", restarts=5, last={"reason": "Error", "exitCode": 1})
                    ],
                )
            ],
        ),
        {"Ready": ("False", "CrashLoop"), "Degraded": ("True", "CrashLoop")},
        "5 restarts, exit code 1",
    ),
    (
        "comfyui-not-answering",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                pod(
                    phase="Running",
                    containers=[
                        waiting("CrashLoopBackOff", restarts=3, last={"reason": "Error", "exitCode": 137})
                    ],
                )
            ],
        ),
        {"Ready": ("False", "ComfyUINotAnswering"), "Degraded": ("True", "ComfyUINotAnswering")},
        "did not answer GET /health/comfyui",
    ),
    (
        "comfyui-restarted-and-starting-again",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                pod(
                    phase="Running",
                    containers=[
                        {
                            "name": "comfyui",
                            "state": {"running": {}},
                            "started": False,
                            "ready": False,
                            "restartCount": 1,
                            "lastState": {"terminated": {"reason": "Error", "exitCode": 143}},
                        }
                    ],
                )
            ],
        ),
        {"Ready": ("False", "ComfyUINotAnswering")},
        "1 restarts",
    ),
    (
        "oom",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                pod(
                    phase="Running",
                    containers=[
                        waiting("CrashLoopBackOff", restarts=2, last={"reason": "OOMKilled", "exitCode": 137})
                    ],
                )
            ],
        ),
        {"Degraded": ("True", "OOMKilled")},
        "too much memory",
    ),
    (
        "missing-secret",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                pod(
                    containers=[
                        waiting("CreateContainerConfigError", 'secret "hf" not found', name="sidecar")
                    ]
                )
            ],
        ),
        {"Ready": ("False", "MissingReference"), "Degraded": ("True", "MissingReference")},
        'secret "hf" not found',
    ),
    (
        "missing-pvc",
        Observed(1, 1, deployment(1, 0), [MISSING_PVC_POD]),
        {"Degraded": ("True", "MissingReference")},
        "comfyui-models",
    ),
    (
        "missing-configmap-event",
        Observed(
            1,
            1,
            deployment(1, 0),
            [pod()],
            events=[
                {
                    "type": "Warning",
                    "reason": "FailedMount",
                    "involvedObject": {"name": "p-1"},
                    "message": 'MountVolume.SetUp failed for volume "warmup" : configmap "wu" not found',
                }
            ],
        ),
        {"Degraded": ("True", "MissingReference")},
        'configmap "wu" not found',
    ),
    (
        "operator-found-missing-reference",
        Observed(
            1,
            1,
            deployment(1, 0),
            problems=[
                Problem("MissingReference", 'PersistentVolumeClaim "m" (spec.models.claimName) not found')
            ],
        ),
        {"Ready": ("False", "MissingReference"), "Degraded": ("True", "MissingReference")},
        '"m"',
    ),
    (
        "missing-reference-while-pods-report-ready",  # a simulated node, or a race: still not Ready
        Observed(
            1,
            1,
            deployment(1, 1),
            problems=[Problem("MissingReference", 'ConfigMap "wu" (spec.warmup.configMapRef) not found')],
        ),
        {"Ready": ("False", "MissingReference"), "Degraded": ("True", "MissingReference")},
        '"wu"',
    ),
    (
        "namespace-excluded",
        Observed(1, 1, None, problems=[Problem("NamespaceExcluded", "namespace kube-system is excluded")]),
        {
            "Ready": ("False", "NamespaceExcluded"),
            "Progressing": ("False", "NamespaceExcluded"),
            "Degraded": ("True", "NamespaceExcluded"),
        },
        "kube-system",
    ),
    (
        "invalid-spec",
        Observed(3, 1, deployment(1, 1), problems=[Problem("InvalidSpec", "spec.replicas: bad")]),
        {
            "Ready": ("False", "InvalidSpec"),
            "Progressing": ("False", "InvalidSpec"),
            "Degraded": ("True", "InvalidSpec"),
        },
        "spec.replicas: bad",
    ),
    (
        "apply-failed",
        Observed(
            1, 1, deployment(1, 1), problems=[Problem("ApplyFailed", "Deployment demo was refused: bad")]
        ),
        {"Ready": ("False", "ApplyFailed"), "Degraded": ("True", "ApplyFailed")},
        "was refused",
    ),
    (
        "replica-failure",
        Observed(
            1,
            1,
            deployment(
                0,
                0,
                conditions=[
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": "FailedCreate",
                        "message": 'pods "x" is forbidden: exceeded quota',
                    }
                ],
            ),
        ),
        {"Degraded": ("True", "ReplicaFailure")},
        "exceeded quota",
    ),
    (
        "rollout-stuck",
        Observed(
            1,
            1,
            deployment(
                1,
                0,
                conditions=[
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet has timed out progressing.",
                    }
                ],
            ),
        ),
        {
            "Progressing": ("False", "ProgressDeadlineExceeded"),
            "Degraded": ("True", "ProgressDeadlineExceeded"),
        },
        "timed out",
    ),
    (
        "scaled-to-zero",
        Observed(1, 0, deployment(0, 0)),
        {
            "Ready": ("False", "ScaledToZero"),
            "Progressing": ("False", "RolloutComplete"),
            "Degraded": ("False", "AsExpected"),
        },
        "",
    ),
    (
        "rolling-update-old-pods-still-there",
        Observed(2, 2, deployment(3, 2, updated=1, generation=2, observed=2)),
        {"Ready": ("False", "ReplicasNotReady"), "Progressing": ("True", "RollingOut")},
        "",
    ),
    (
        "deployment-not-yet-observed",
        Observed(2, 1, deployment(1, 1, generation=2, observed=1)),
        {"Ready": ("False", "ReplicasNotReady")},
        "",
    ),
    (
        "terminating-pod-ignored",
        Observed(
            1, 1, deployment(1, 1), [pod(deleting=True, containers=[waiting("CrashLoopBackOff", restarts=9)])]
        ),
        {"Ready": ("True", "AllReplicasReady"), "Degraded": ("False", "AsExpected")},
        "",
    ),
    (
        "missing-reference-beats-unschedulable",
        Observed(
            1,
            1,
            deployment(1, 0),
            [
                UNSCHEDULABLE_POD,
                pod(
                    "p-2",
                    containers=[
                        waiting("CreateContainerConfigError", 'secret "wh" not found', name="sidecar")
                    ],
                ),
            ],
        ),
        {"Degraded": ("True", "MissingReference")},
        'secret "wh"',
    ),
]


@pytest.mark.parametrize(
    ("observed", "expected", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_conditions(observed: Observed, expected: dict[str, tuple[str, str]], message: str) -> None:
    conditions = {c["type"]: c for c in status.desired_conditions(observed)}
    assert set(conditions) == {"Ready", "Progressing", "Degraded"}
    for kind, (state, reason) in expected.items():
        assert (conditions[kind]["status"], conditions[kind]["reason"]) == (state, reason), kind
    assert message in conditions["Degraded"]["message"]


def test_transition_time_kept_when_status_unchanged() -> None:
    first = status.derive_status(Observed(1, 1, deployment(1, 0), [UNSCHEDULABLE_POD]), None, T0)
    # same status values, a different reason: the transition time stays
    second = status.derive_status(
        Observed(2, 1, deployment(1, 0), [pod(containers=[waiting("ErrImagePull")])]), first, T1
    )
    by_type = {c["type"]: c for c in second["conditions"]}
    assert by_type["Degraded"]["reason"] == "ImagePullFailed"
    assert by_type["Degraded"]["lastTransitionTime"] == T0
    assert by_type["Degraded"]["observedGeneration"] == 2
    third = status.derive_status(Observed(2, 1, deployment(1, 1)), second, T1)
    by_type = {c["type"]: c for c in third["conditions"]}
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Degraded"]["lastTransitionTime"] == T1
    assert by_type["Ready"]["lastTransitionTime"] == T1


def test_unchanged_observation_means_no_write() -> None:
    observed = Observed(1, 1, deployment(1, 1), selector="a=b", endpoint="http://x:3000")
    first = status.derive_status(observed, None, T0, {"comfyuiImage": "c", "sidecarImage": "s"})
    again = status.derive_status(observed, first, T1, {"comfyuiImage": "c", "sidecarImage": "s"})
    assert again == first
    assert not status.status_changed(first, again)
    assert status.status_changed(None, first)
    assert status.status_changed(first, {**first, "readyReplicas": 0})


def test_status_fields() -> None:
    result = status.derive_status(
        Observed(4, 2, deployment(2, 1), selector="a=b", endpoint="http://e:3000"), None, T0
    )
    assert result["observedGeneration"] == 4
    assert (result["replicas"], result["readyReplicas"]) == (2, 1)
    assert result["selector"] == "a=b"
    assert result["endpoint"] == "http://e:3000"
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == T0 for c in result["conditions"])


def test_foreign_conditions_are_kept() -> None:
    previous = {
        "conditions": [
            {
                "type": "ModelsReady",
                "status": "True",
                "reason": "Synced",
                "message": "",
                "lastTransitionTime": T0,
            }
        ]
    }
    result = status.derive_status(Observed(1, 1, deployment(1, 1)), previous, T1)
    assert "ModelsReady" in {c["type"] for c in result["conditions"]}


def test_long_messages_are_truncated() -> None:
    long = "x" * 5000
    conditions = status.desired_conditions(
        Observed(1, 1, deployment(1, 0), problems=[Problem("MissingReference", long)])
    )
    assert all(len(c["message"]) <= 1024 for c in conditions)


def test_many_pods_with_the_same_problem_are_summarised() -> None:
    pods = [pod(f"p-{i}", containers=[waiting("ErrImagePull")]) for i in range(4)]
    degraded = {c["type"]: c for c in status.desired_conditions(Observed(1, 4, deployment(4, 0), pods))}[
        "Degraded"
    ]
    assert "pod p-0 " in degraded["message"]
    assert "pod p-1 " in degraded["message"]
    assert degraded["message"].endswith("(and 2 more)")


def test_ready_state() -> None:
    assert status.ready_state(None) == "Unknown"
    ready = status.derive_status(Observed(1, 1, deployment(1, 1)), None, T0)
    assert status.ready_state(ready) == "True"

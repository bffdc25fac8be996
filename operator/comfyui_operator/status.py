"""Status derivation: (observed Deployment, pods, events, previous status) -> the instance's status. Pure.

Conditions (metav1.Condition shape):
  Ready        True when every desired replica of the current spec is ready.
  Progressing  True while the Deployment works towards the spec (also while blocked but still retrying).
  Degraded     True when something needs a human: a missing reference, an image that can not be pulled,
               a crash loop, pods no node can take, an invalid spec, an excluded namespace, a stuck
               rollout.
`lastTransitionTime` only changes when a condition's status changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfyui_operator.api import ComfyUIInstanceSpec
from comfyui_operator.builders import is_comfyui_container

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"

# Reasons (CamelCase; also used as Event reasons).
NAMESPACE_EXCLUDED = "NamespaceExcluded"
INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
MISSING_REFERENCE = "MissingReference"
IMAGE_PULL_FAILED = "ImagePullFailed"
CRASH_LOOP = "CrashLoop"
COMFYUI_NOT_ANSWERING = "ComfyUINotAnswering"
OOM_KILLED = "OOMKilled"
UNSCHEDULABLE = "Unschedulable"
REPLICA_FAILURE = "ReplicaFailure"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
ALL_REPLICAS_READY = "AllReplicasReady"
SCALED_TO_ZERO = "ScaledToZero"
IDLE_SCALED_TO_ZERO = "IdleScaledToZero"
ROUTER_NOT_READY = "RouterNotReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
ROLLING_OUT = "RollingOut"
ROLLOUT_COMPLETE = "RolloutComplete"
AS_EXPECTED = "AsExpected"
DEPLOYMENT_MISSING = "DeploymentMissing"

_IMAGE_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_MAX_MESSAGE = 1024
_LISTED_PROBLEMS = 2

# Most specific problem first: what a human must fix before anything else helps.
_PROBLEM_ORDER = (
    NAMESPACE_EXCLUDED,
    INVALID_SPEC,
    APPLY_FAILED,
    MISSING_REFERENCE,
    IMAGE_PULL_FAILED,
    OOM_KILLED,
    COMFYUI_NOT_ANSWERING,
    CRASH_LOOP,
    UNSCHEDULABLE,
    REPLICA_FAILURE,
    PROGRESS_DEADLINE_EXCEEDED,
)


# Problems for which nothing is applied at all.
NOT_APPLIED = frozenset({NAMESPACE_EXCLUDED, INVALID_SPEC})


@dataclass(frozen=True)
class Problem:
    """Something that keeps the instance from being ready."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything status derivation looks at."""

    generation: int
    desired_replicas: int
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    events: Sequence[Mapping[str, Any]] = ()
    problems: Sequence[Problem] = field(default_factory=tuple)  # found by the operator itself
    selector: str | None = None
    endpoint: str | None = None
    # spec.models.libraryRef (library_link): the ModelsReady condition, and why no pods are started yet
    extra_conditions: Sequence[Mapping[str, Any]] = ()
    waiting: Problem | None = None
    notes: Sequence[str] = ()
    scaled_to_zero: bool = False
    """spec.scaling: the operator scaled the replicas to zero because the instance was idle."""
    router: Mapping[str, Any] | None = None
    """spec.routing: the router Deployment ({} while it does not exist); None without routing."""
    """Facts about the spec worth knowing, added to the Ready condition's message (`spec_notes`)."""


def spec_notes(spec: ComfyUIInstanceSpec) -> list[str]:
    """Notes on a spec that works but may not do what its author expects."""
    gpu = spec.comfyui.gpu
    if gpu.count > 1 and gpu.mode == "OneComfyUI":
        return [
            f"only one GPU is used: spec.comfyui.gpu.count is {gpu.count}, but one ComfyUI uses one GPU "
            f"(the other {gpu.count - 1} per pod idle unless custom nodes use them); set "
            "spec.comfyui.gpu.mode: ComfyUIPerGPU to run one ComfyUI per GPU"
        ]
    return []


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# Exit codes of a container the kubelet stopped: SIGTERM (143, or 0 when the process handles it and exits
# cleanly) or SIGKILL after the grace period (137). For the ComfyUI container, with no OOM, that is most
# often a failed startup or liveness probe (the kubelet's events tell for sure).
_KILLED_EXIT_CODES = {0, 137, 143}


def _stopped_for_not_answering(status: Mapping[str, Any]) -> bool:
    last = _get(status, "lastState", "terminated") or {}
    return (
        is_comfyui_container(str(status.get("name")))
        and not status.get("ready", False)
        and int(status.get("restartCount", 0)) > 0
        and last.get("reason") != "OOMKilled"
        and last.get("exitCode") in _KILLED_EXIT_CODES
    )


def _container_problems(pod_name: str, statuses: Iterable[Mapping[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    for status in statuses:
        name = status.get("name", "?")
        waiting = _get(status, "state", "waiting") or {}
        reason = waiting.get("reason", "")
        message = waiting.get("message", "")
        where = f"pod {pod_name} container {name}"
        if _stopped_for_not_answering(status):
            problems.append(
                Problem(
                    COMFYUI_NOT_ANSWERING,
                    f"{where} was restarted by the kubelet ({status.get('restartCount')} restarts): ComfyUI "
                    "did not answer GET /health/comfyui within spec.sidecar.startupTimeoutSeconds of "
                    "starting, or stopped answering for 60 s, or exited (kubectl describe pod; kubectl logs "
                    "-c comfyui --previous)",
                )
            )
        elif reason in _IMAGE_PULL_WAITING:
            problems.append(Problem(IMAGE_PULL_FAILED, f"{where}: {reason}: {message}".rstrip(": ")))
        elif reason == "CrashLoopBackOff":
            last = _get(status, "lastState", "terminated") or {}
            if last.get("reason") == "OOMKilled":
                problems.append(
                    Problem(OOM_KILLED, f"{where} was killed for using too much memory (OOMKilled)")
                )
            else:
                detail = f"exit code {last['exitCode']}" if "exitCode" in last else message
                restarts = status.get("restartCount", 0)
                problems.append(
                    Problem(CRASH_LOOP, f"{where} keeps crashing ({restarts} restarts, {detail})")
                )
        elif reason == "CreateContainerConfigError":
            problems.append(Problem(MISSING_REFERENCE, f"{where}: {message or reason}"))
    return problems


def pod_problems(pod: Mapping[str, Any]) -> list[Problem]:
    """Problems visible on one pod's status."""
    name = _get(pod, "metadata", "name") or "?"
    problems: list[Problem] = []
    for condition in _get(pod, "status", "conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            detail = condition.get("message", "no node fits")
            if "persistentvolumeclaim" in detail.lower() and "not found" in detail.lower():
                problems.append(Problem(MISSING_REFERENCE, f"pod {name}: {detail}"))
            else:
                problems.append(Problem(UNSCHEDULABLE, f"pod {name} can not be scheduled: {detail}"))
    for key in ("initContainerStatuses", "containerStatuses"):
        problems += _container_problems(name, _get(pod, "status", key) or [])
    return problems


def event_problems(events: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Problems reported only through Events (e.g. a ConfigMap volume that does not exist)."""
    problems = []
    for event in events:
        if event.get("type") != "Warning":
            continue
        message = event.get("message", "")
        if event.get("reason") == "FailedMount" and "not found" in message:
            pod = _get(event, "involvedObject", "name") or "?"
            problems.append(Problem(MISSING_REFERENCE, f"pod {pod}: {message}"))
    return problems


def deployment_problems(deployment: Mapping[str, Any] | None) -> list[Problem]:
    problems = []
    for condition in _get(deployment, "status", "conditions") or []:
        kind, status, reason = condition.get("type"), condition.get("status"), condition.get("reason")
        if kind == "ReplicaFailure" and status == "True":
            problems.append(Problem(REPLICA_FAILURE, condition.get("message", "pods can not be created")))
        if kind == "Progressing" and reason == "ProgressDeadlineExceeded":
            problems.append(Problem(PROGRESS_DEADLINE_EXCEEDED, condition.get("message", "rollout is stuck")))
    return problems


def _first_problem(problems: Sequence[Problem]) -> Problem | None:
    for reason in _PROBLEM_ORDER:
        matching = list(dict.fromkeys(problem.message for problem in problems if problem.reason == reason))
        if matching:
            extra = len(matching) - _LISTED_PROBLEMS
            message = "; ".join(matching[:_LISTED_PROBLEMS]) + (f" (and {extra} more)" if extra > 0 else "")
            return Problem(reason, _truncate(message))
    return None


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": _truncate(message),
    }


def desired_conditions(observed: Observed) -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded without timestamps."""
    dep = observed.deployment
    desired = observed.desired_replicas
    all_problems = list(observed.problems)
    all_problems += deployment_problems(dep)
    for pod in observed.pods:
        if not _get(pod, "metadata", "deletionTimestamp"):
            all_problems += pod_problems(pod)
    all_problems += event_problems(observed.events)
    problem = _first_problem(all_problems)

    ready = int(_get(dep, "status", "readyReplicas") or 0)
    updated = int(_get(dep, "status", "updatedReplicas") or 0)
    total = int(_get(dep, "status", "replicas") or 0)
    dep_generation = int(_get(dep, "status", "observedGeneration") or 0)
    dep_current = dep is not None and dep_generation >= int(_get(dep, "metadata", "generation") or 0)
    rolled_out = dep_current and updated >= desired and total <= desired and ready >= desired
    if problem is not None and problem.reason in (APPLY_FAILED, MISSING_REFERENCE):
        # ApplyFailed: the pods still run an older spec. MissingReference: the pods need a PVC, ConfigMap or
        # Secret that is not there, so they can not really serve (a simulated node may still call them ready).
        rolled_out = False

    if problem is not None and problem.reason in NOT_APPLIED:
        why = "the spec is invalid" if problem.reason == INVALID_SPEC else "the namespace is excluded"
        return [
            _condition(READY, False, problem.reason, problem.message),
            _condition(PROGRESSING, False, problem.reason, f"{why}; nothing is applied until it is fixed"),
            _condition(DEGRADED, True, problem.reason, problem.message),
        ]
    if dep is None:
        message = problem.message if problem else "the Deployment does not exist yet"
        reason = problem.reason if problem else DEPLOYMENT_MISSING
        return [
            _condition(READY, False, reason, message),
            _condition(PROGRESSING, True, reason, message),
            _condition(DEGRADED, problem is not None, problem.reason if problem else AS_EXPECTED, message),
        ]

    if desired == 0 and observed.scaled_to_zero:
        message = "idle: the replicas are at zero; the router holds the next job and the operator scales up"
        ready_condition = _condition(READY, True, IDLE_SCALED_TO_ZERO, message)
    elif desired == 0:
        ready_condition = _condition(READY, False, SCALED_TO_ZERO, "the instance is scaled to zero replicas")
    elif rolled_out:
        ready_condition = _condition(READY, True, ALL_REPLICAS_READY, f"{ready}/{desired} replicas ready")
    elif problem is not None:
        ready_condition = _condition(
            READY, False, problem.reason, f"{ready}/{desired} replicas ready: {problem.message}"
        )
    else:
        ready_condition = _condition(READY, False, REPLICAS_NOT_READY, f"{ready}/{desired} replicas ready")
    if observed.router is not None and ready_condition["status"] == "True":
        routers = int(_get(observed.router, "status", "readyReplicas") or 0)
        if routers == 0:
            message = "no router pod is ready: the instance's Service has no endpoint"
            ready_condition = _condition(READY, False, ROUTER_NOT_READY, message)
    if observed.notes:
        note = "; ".join(observed.notes)
        ready_condition["message"] = _truncate(f"{note}. {ready_condition['message']}")

    if rolled_out or (desired == 0 and total == 0):
        progressing = _condition(PROGRESSING, False, ROLLOUT_COMPLETE, "the Deployment matches the spec")
    elif problem is not None and problem.reason == PROGRESS_DEADLINE_EXCEEDED:
        progressing = _condition(PROGRESSING, False, problem.reason, problem.message)
    elif problem is not None:
        progressing = _condition(PROGRESSING, True, problem.reason, problem.message)
    else:
        progressing = _condition(
            PROGRESSING, True, ROLLING_OUT, f"{updated}/{desired} pods updated, {ready}/{desired} ready"
        )

    if problem is not None:
        degraded = _condition(DEGRADED, True, problem.reason, problem.message)
    else:
        degraded = _condition(DEGRADED, False, AS_EXPECTED, "no problem found")
    return [ready_condition, progressing, degraded]


def _with_models(observed: Observed, conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods held back for the library (not a problem: Degraded is left alone), plus ModelsReady."""
    waiting = observed.waiting
    if waiting is not None:
        for index, cond in enumerate(conditions):
            if cond["type"] in (READY, PROGRESSING) and not (
                cond["type"] == READY and cond["status"] == "True"
            ):
                conditions[index] = _condition(
                    cond["type"], cond["type"] == PROGRESSING, waiting.reason, waiting.message
                )
    return [*conditions, *(dict(cond) for cond in observed.extra_conditions)]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    wanted: Sequence[Mapping[str, Any]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Stamp `wanted` with observedGeneration and lastTransitionTime (kept when the status did not change).
    Conditions of other types in `previous` (e.g. ModelsReady, written elsewhere) are kept unchanged."""
    old = {str(cond.get("type")): cond for cond in previous or []}
    merged: list[dict[str, Any]] = []
    wanted_types = set()
    for cond in wanted:
        wanted_types.add(cond["type"])
        before = old.get(cond["type"])
        keep_time = (
            before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime")
        )
        merged.append(
            {
                **cond,
                "lastTransitionTime": before["lastTransitionTime"] if keep_time and before else now,
                "observedGeneration": generation,
            }
        )
    merged += [dict(cond) for kind, cond in old.items() if kind not in wanted_types]
    return merged


def derive_status(
    observed: Observed, previous: Mapping[str, Any] | None, now: str, images: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The full status object to write (camelCase keys)."""
    dep = observed.deployment
    status: dict[str, Any] = {
        "observedGeneration": observed.generation,
        "replicas": int(_get(dep, "status", "replicas") or 0),
        "readyReplicas": int(_get(dep, "status", "readyReplicas") or 0),
    }
    if observed.selector:
        status["selector"] = observed.selector
    if observed.endpoint:
        status["endpoint"] = observed.endpoint
    for key, value in sorted((images or {}).items()):
        status[key] = value
    previous_conditions = (previous or {}).get("conditions")
    status["conditions"] = merge_conditions(
        previous_conditions, _with_models(observed, desired_conditions(observed)), observed.generation, now
    )
    return status


def status_changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing `new` would change the stored status (keys the operator does not own are ignored)."""
    previous = previous or {}
    return any(previous.get(key) != value for key, value in new.items())


def ready_state(status: Mapping[str, Any] | None) -> str:
    """'True', 'False' or 'Unknown': the Ready condition's status (for metrics)."""
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == READY:
            return str(cond.get("status", "Unknown"))
    return "Unknown"

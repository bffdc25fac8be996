"""Status of a ComfyUIModelLibrary, and the ModelsReady condition of the instances that use it. Pure.

Per model: the newest report of the current sync Job's pods (their termination message,
comfyui_sidecar.library.report) says Ready (size, sha256) or Failed (message, bytes fetched); a model the
running pod has not reported yet is Downloading (with the bytes an earlier attempt fetched), one no pod ran
for is Pending. The Job's pod has no API access, so nothing is known while it runs but what earlier attempts
said; `kubectl logs job/<name>` shows live progress.

Conditions: Ready (every model Ready), Progressing (a sync is running or waiting for the previous one),
Degraded (the sync gave up, or the spec, the claim or an object is wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfyui_sidecar.library.report import ModelReport, SyncReport, decode

from comfyui_operator import library_api, status
from comfyui_operator.status import AS_EXPECTED, DEGRADED, PROGRESSING, READY, Problem, _condition, _get

MODELS_READY = "ModelsReady"
ALL_MODELS_READY = "AllModelsReady"
SYNCING = "Syncing"
RETRYING = "Retrying"
WAITING_FOR_PREVIOUS_SYNC = "WaitingForPreviousSync"
SYNC_COMPLETE = "SyncComplete"
MODEL_FAILED = "ModelFailed"
SYNC_FAILED = "SyncFailed"
CLAIM_CONFLICT = "ClaimConflict"
LIBRARY_NOT_FOUND = "LibraryNotFound"
LIBRARY_NOT_READY = "LibraryNotReady"
WAITING_FOR_MODELS = "WaitingForModels"
LIBRARY_READY = "LibraryReady"
_PROBLEM_ORDER = (
    status.INVALID_SPEC,
    status.NAMESPACE_EXCLUDED,
    status.APPLY_FAILED,
    CLAIM_CONFLICT,
    status.MISSING_REFERENCE,
)


@dataclass(frozen=True)
class SyncObserved:
    """Everything the library's status is derived from."""

    generation: int
    spec: library_api.ComfyUIModelLibrarySpec | None
    claim: str | None = None
    digest: str | None = None
    job: Mapping[str, Any] | None = None  # the current manifest's Job
    pods: Sequence[Mapping[str, Any]] = ()  # its pods
    previous_job_running: str | None = None  # an older sync that must end first
    problems: Sequence[Problem] = field(default_factory=tuple)


def job_finished(job: Mapping[str, Any] | None) -> str | None:
    """'Complete', 'Failed' or None (still running, or no Job)."""
    for cond in _get(job, "status", "conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for container in _get(pod, "status", "containerStatuses") or []:
        state = _get(container, "state", "terminated")
        if state:
            return dict(state)
    return None


def _running(pods: Sequence[Mapping[str, Any]]) -> bool:
    return any(_get(p, "status", "phase") in ("Pending", "Running") and _terminated(p) is None for p in pods)


def latest_report(pods: Sequence[Mapping[str, Any]]) -> tuple[SyncReport | None, str]:
    """The newest report among the pods' termination messages, and the newest message that is not a report
    (the end of a crashed container's log, which the kubelet puts there instead)."""
    ordered = sorted(pods, key=lambda p: str(_get(p, "metadata", "creationTimestamp") or ""), reverse=True)
    other = ""
    for pod in ordered:
        state = _terminated(pod)
        if state is None:
            continue
        report = decode(state.get("message"))
        if report is not None:
            return report, other
        if not other:
            other = " ".join(str(state.get("message") or state.get("reason") or "").split())[-500:]
    return None, other


def model_statuses(observed: SyncObserved, previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    spec = observed.spec
    assert spec is not None
    report, _ = latest_report(observed.pods)
    running = _running(observed.pods)
    before = {m.get("target"): m for m in (previous or {}).get("models") or []}
    out: list[dict[str, Any]] = []
    for index, model in enumerate(spec.models):
        item: dict[str, Any] = {"target": model.target, "url": model.url}
        reported = (
            report.models[index] if report is not None and index < len(report.models) else ModelReport()
        )
        old = before.get(model.target) or {}
        if reported.phase == "Ready":
            item |= {"phase": "Ready", "size": reported.size, "sha256": reported.sha256 or model.sha256}
        elif observed.job is None and old.get("phase") == "Ready" and old.get("url") == model.url:
            item |= {k: old[k] for k in ("phase", "size", "sha256") if k in old}  # a deleted Job's result
        elif running:
            item["phase"] = "Downloading"
            if reported.phase == "Failed":
                item |= {"size": reported.size, "message": f"retrying after: {reported.message}"[:1024]}
        elif reported.phase == "Failed":
            item |= {"phase": "Failed", "size": reported.size, "message": reported.message[:1024]}
        else:
            item["phase"] = "Pending"
        if item.get("sha256") in ("", None):
            item.pop("sha256", None)
        out.append(item)
    return out


def _first(problems: Sequence[Problem]) -> Problem | None:
    for reason in _PROBLEM_ORDER:
        for problem in problems:
            if problem.reason == reason:
                return problem
    return problems[0] if problems else None


def desired_conditions(observed: SyncObserved, models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    problem = _first(observed.problems)
    if problem is not None and observed.spec is None:
        return [
            _condition(READY, False, problem.reason, problem.message),
            _condition(PROGRESSING, False, problem.reason, "nothing is synced until the spec is fixed"),
            _condition(DEGRADED, True, problem.reason, problem.message),
        ]
    total = len(models)
    ready = sum(1 for m in models if m.get("phase") == "Ready")
    failed = [m for m in models if m.get("phase") == "Failed"]
    counts = f"{ready}/{total} models ready"
    finished = job_finished(observed.job)
    _, crash = latest_report(observed.pods)
    report, _ = latest_report(observed.pods)
    sync_error = (report.error if report is not None else "") or (crash if finished == "Failed" else "")
    if finished == "Failed" and not failed and not sync_error:
        sync_error = _job_failure(observed.job)

    if problem is not None:
        degraded = _condition(DEGRADED, True, problem.reason, problem.message)
        progressing = _condition(PROGRESSING, True, problem.reason, problem.message)
        ready_cond = _condition(
            READY, ready == total and total > 0, problem.reason, f"{counts}: {problem.message}"
        )
        return [ready_cond, progressing, degraded]

    if observed.previous_job_running:
        why = f"waiting for sync Job {observed.previous_job_running} (an earlier manifest) to end; {counts}"
        progressing = _condition(PROGRESSING, True, WAITING_FOR_PREVIOUS_SYNC, why)
    elif observed.job is not None and finished is None:
        retrying = [m for m in models if str(m.get("message", "")).startswith("retrying after")]
        if retrying:
            why = f"{counts}; {retrying[0]['target']}: {retrying[0]['message']}"
            progressing = _condition(PROGRESSING, True, RETRYING, why)
        else:
            progressing = _condition(PROGRESSING, True, SYNCING, f"sync Job {_name(observed.job)}: {counts}")
    elif finished == "Failed":
        progressing = _condition(PROGRESSING, False, SYNC_FAILED, f"sync Job {_name(observed.job)} failed")
    else:
        progressing = _condition(PROGRESSING, False, SYNC_COMPLETE, counts)

    if failed and finished is not None:
        names = "; ".join(f"{m['target']}: {m.get('message', '')}" for m in failed[:2])
        more = f" (and {len(failed) - 2} more)" if len(failed) > 2 else ""
        degraded = _condition(
            DEGRADED, True, MODEL_FAILED, f"{len(failed)} of {total} models failed: {names}{more}"
        )
    elif sync_error and finished == "Failed":
        degraded = _condition(DEGRADED, True, SYNC_FAILED, f"sync Job {_name(observed.job)}: {sync_error}")
    else:
        degraded = _condition(DEGRADED, False, AS_EXPECTED, "no problem found")

    if ready == total:
        ready_cond = _condition(READY, True, ALL_MODELS_READY, counts)
    elif degraded["status"] == "True":
        ready_cond = _condition(READY, False, degraded["reason"], f"{counts}: {degraded['message']}")
    else:
        ready_cond = _condition(READY, False, progressing["reason"], progressing["message"])
    return [ready_cond, progressing, degraded]


def _name(job: Mapping[str, Any] | None) -> str:
    return str(_get(job, "metadata", "name") or "?")


def _job_failure(job: Mapping[str, Any] | None) -> str:
    for cond in _get(job, "status", "conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    return "failed"


def derive_status(observed: SyncObserved, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The full status object to write (camelCase keys)."""
    models = model_statuses(observed, previous) if observed.spec is not None else []
    new: dict[str, Any] = {"observedGeneration": observed.generation}
    if observed.spec is not None:
        ready = [m for m in models if m["phase"] == "Ready"]
        new |= {
            "claimName": observed.claim,
            "manifest": observed.digest,
            "syncJob": _name(observed.job) if observed.job is not None else None,
            "totalModels": len(models),
            "readyModels": len(ready),
            "failedModels": sum(1 for m in models if m["phase"] == "Failed"),
            "readyBytes": sum(int(m.get("size") or 0) for m in ready),
            "models": models,
        }
    conditions = desired_conditions(observed, models)
    previous_conditions = (previous or {}).get("conditions")
    new["conditions"] = status.merge_conditions(previous_conditions, conditions, observed.generation, now)
    return new


# ---- the instance's side -------------------------------------------------------------------------------


def condition_of(library: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    for cond in _get(library, "status", "conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def library_ready(library: Mapping[str, Any] | None) -> bool:
    return condition_of(library, READY).get("status") == "True"


def models_ready_condition(name: str, library: Mapping[str, Any] | None, pods_held: bool) -> dict[str, Any]:
    """The instance's ModelsReady condition (without timestamps)."""
    if library is None:
        return _condition(
            MODELS_READY,
            False,
            LIBRARY_NOT_FOUND,
            f'ComfyUIModelLibrary "{name}" (spec.models.libraryRef) not found; the pods are left as they are '
            "(none are started for a new instance) until it exists and is Ready",
        )
    counts = f"{_get(library, 'status', 'readyModels') or 0}/{_get(library, 'status', 'totalModels') or 0}"
    if library_ready(library):
        return _condition(MODELS_READY, True, LIBRARY_READY, f'library "{name}": {counts} models ready')
    ready = condition_of(library, READY)
    detail = (
        f'library "{name}" is not Ready ({ready.get("reason", "NotObserved")}: {ready.get("message", "")})'
    )
    if pods_held:
        detail += "; no pods are started until it is Ready"
    else:
        detail += "; running pods keep serving the models already on the volume"
    return _condition(MODELS_READY, False, LIBRARY_NOT_READY, detail)

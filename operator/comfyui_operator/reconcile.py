"""Reconciliation of one ComfyUIInstance: validate, check references, server-side apply the owned objects,
derive and (only when it changed) write status, post Events on transitions.

The kopf handlers in `comfyui_operator.handlers` only call into this module. API calls go through `Kube`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from comfyui_operator import api, builders, library_link, library_status, metrics, router_builders, status
from comfyui_operator.kube import Kube, KubeError
from comfyui_operator.scaling import ScaleToZero
from comfyui_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# (body of the instance, "Normal" | "Warning", reason, message)
EventPoster = Callable[[Mapping[str, Any], str, str, str], None]
Key = tuple[str, str]


@dataclass(frozen=True)
class Reference:
    """An object the spec refers to but the operator does not own."""

    kind: str
    name: str
    key: str | None = None
    field: str = ""


def references(spec: api.ComfyUIInstanceSpec) -> list[Reference]:
    """Referenced PVCs and ConfigMaps (Secrets are never read; a missing one shows on the pods)."""
    refs: list[Reference] = []
    if spec.models is not None and spec.models.claim_name:  # a libraryRef: library_link
        refs.append(Reference("PersistentVolumeClaim", spec.models.claim_name, field="spec.models.claimName"))
    if spec.custom_nodes is not None:
        refs.append(
            Reference("PersistentVolumeClaim", spec.custom_nodes.claim_name, field="spec.customNodes")
        )
    if spec.warmup is not None and spec.warmup.config_map_ref is not None:
        ref = spec.warmup.config_map_ref
        refs.append(Reference("ConfigMap", ref.name, ref.key, field="spec.warmup.configMapRef"))
    return refs


def reference_problem(ref: Reference, found: Mapping[str, Any] | None) -> status.Problem | None:
    """The problem with one reference given the object found (None when it is missing), or None if fine."""
    if found is None:
        return status.Problem(status.MISSING_REFERENCE, f'{ref.kind} "{ref.name}" ({ref.field}) not found')
    if ref.key is not None and ref.key not in (found.get("data") or {}):
        return status.Problem(
            status.MISSING_REFERENCE, f'ConfigMap "{ref.name}" has no key "{ref.key}" ({ref.field})'
        )
    return None


def validation_message(exc: Exception) -> str:
    """A short, clear message for an invalid spec (pydantic locations use the camelCase field names)."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors()[:3]:
            location = ".".join(str(part) for part in ("spec", *error["loc"]))
            parts.append(f"{location}: {error['msg'].removeprefix('Value error, ')}")
        more = exc.error_count() - 3
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return str(exc)


# The API server refused the object itself (invalid, too large...): report it, retry with backoff.
REFUSED_STATUSES = frozenset({400, 404, 409, 413, 415, 422})
# The operator can not work at all: no connection, bad credentials, missing permissions.
CRITICAL_STATUSES = frozenset({0, 401, 403})
RETRIED_REASONS = frozenset({status.MISSING_REFERENCE, status.APPLY_FAILED})


def result_label(problems: list[status.Problem]) -> str:
    """The `result` label of comfyui_operator_reconcile_total for a finished reconciliation."""
    reasons = {problem.reason for problem in problems}
    for reason, label in (
        (status.NAMESPACE_EXCLUDED, "namespace_excluded"),
        (status.INVALID_SPEC, "invalid_spec"),
        (status.APPLY_FAILED, "apply_failed"),
        (status.MISSING_REFERENCE, "missing_reference"),
    ):
        if reason in reasons:
            return label
    return "success"


async def apply_or_refused(kube: Kube, obj: Mapping[str, Any]) -> list[status.Problem]:
    """Server-side apply `obj`; an object the API server refuses (4xx) is an ApplyFailed problem."""
    try:
        await kube.apply(obj)
    except KubeError as exc:
        if exc.status in REFUSED_STATUSES:
            name = f"{obj['kind']} {obj['metadata']['name']}"
            return [status.Problem(status.APPLY_FAILED, f"{name} was refused: {exc.message}")]
        raise
    return []


def instance_ref(body: Mapping[str, Any]) -> builders.InstanceRef:
    meta = body["metadata"]
    return builders.InstanceRef(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 1),
    )


def retry_delay(retry: int, settings: OperatorSettings) -> int:
    """Exponential backoff: base, 2*base, 4*base... capped."""
    return int(min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** min(retry, 16)))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def transition_events(
    previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """Events to post for a status change: (type, reason, message). Pure."""

    def find(conds: Any, kind: str) -> Mapping[str, Any]:
        for cond in conds or []:
            if cond.get("type") == kind:
                return dict(cond)
        return {}

    old_conditions = (previous or {}).get("conditions")
    events: list[tuple[str, str, str]] = []
    old_degraded = find(old_conditions, status.DEGRADED)
    new_degraded = find(new.get("conditions"), status.DEGRADED)
    if new_degraded.get("status") == "True" and (
        old_degraded.get("status") != "True" or old_degraded.get("reason") != new_degraded.get("reason")
    ):
        events.append(("Warning", str(new_degraded["reason"]), str(new_degraded.get("message", ""))))
    old_ready = find(old_conditions, status.READY)
    new_ready = find(new.get("conditions"), status.READY)
    if new_ready.get("status") == "True" and old_ready.get("status") != "True":
        events.append(("Normal", "Ready", str(new_ready.get("message", ""))))
    return events


@dataclass
class Reconciler:
    kube: Kube
    settings: OperatorSettings
    post_event: EventPoster
    tracker: metrics.InstanceTracker = field(default_factory=metrics.InstanceTracker)
    clock: Callable[[], str] = _now
    _problems: dict[Key, list[status.Problem]] = field(default_factory=dict)
    _generations: dict[Key, int] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    scaler: ScaleToZero = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = ScaleToZero(self.kube, self.settings, self.post_event, self.clock)

    async def reconcile(self, body: Mapping[str, Any]) -> list[status.Problem]:
        """Converge the owned objects to the spec and refresh status. Returns the problems found."""
        instance = instance_ref(body)
        key = (instance.namespace, instance.name)
        with metrics.timed_reconcile():
            try:
                problems, spec = self._validate(instance, body)
                if spec is not None:
                    problems = await self._check_references(instance.namespace, spec)
                    scaled = self.scaler.scaled_to_zero(key, spec, body)
                    problems += await self._apply_all(instance, spec, scaled)
                self._remember(key, instance.generation, problems)
                await self.refresh_by_name(*key)
            except KubeError as exc:
                if exc.namespace_terminating:
                    logger.info("namespace %s is being deleted; nothing to converge for %s", *key)
                    self._record(key, "namespace_terminating")
                    return []
                self._record(key, "error", critical=exc.status in CRITICAL_STATUSES)
                raise
            except Exception:
                self._record(key, "error")
                raise
        self._record(key, result_label(problems))
        return problems

    def _validate(
        self, instance: builders.InstanceRef, body: Mapping[str, Any]
    ) -> tuple[list[status.Problem], api.ComfyUIInstanceSpec | None]:
        """The spec to apply, or why nothing is applied: an excluded namespace, an invalid name or spec."""
        if instance.namespace in self.settings.excluded_namespaces:
            return [status.Problem(status.NAMESPACE_EXCLUDED, excluded_message(instance.namespace))], None
        try:
            api.check_instance_name(instance.name)
            return [], api.parse_spec(dict(body.get("spec") or {}))
        except (ValidationError, ValueError) as exc:
            return [status.Problem(status.INVALID_SPEC, validation_message(exc))], None

    def _record(self, key: Key, result: str, *, critical: bool = False) -> None:
        self.tracker.record(_key_text(key), result, critical=critical)

    async def _apply_all(
        self, instance: builders.InstanceRef, spec: api.ComfyUIInstanceSpec, scaled_to_zero: bool
    ) -> list[status.Problem]:
        """Apply every owned object. An object the API server refuses (4xx) becomes an ApplyFailed problem."""
        objects, problems = await self._objects(instance, spec, scaled_to_zero)
        for obj in objects:
            refused = await apply_or_refused(self.kube, obj)
            if refused:
                return refused
        if not builders.wants_pdb(spec):
            await self._delete_owned(instance, "PodDisruptionBudget", instance.name)
        if spec.routing is None:
            await self._delete_router(instance)
        return problems

    async def _objects(
        self, instance: builders.InstanceRef, spec: api.ComfyUIInstanceSpec, scaled_to_zero: bool
    ) -> tuple[list[dict[str, Any]], list[status.Problem]]:
        """The owned objects; with a libraryRef, its claim mounted and the pods gated (library_link)."""
        link = await library_link.find_link(self.kube, instance.namespace, spec)
        if link is None:
            return builders.build_all(instance, spec, self.settings, scaled_to_zero=scaled_to_zero), []
        mounted = library_link.mounted_spec(spec, link)
        objects = builders.build_all(instance, mounted, self.settings, scaled_to_zero=scaled_to_zero)
        problem = link.problem()
        if problem is not None:
            return library_link.without_deployment(objects), [problem]
        if not link.ready:
            deployment = await self.kube.get("Deployment", instance.namespace, instance.name)
            if link.hold_pods(deployment):
                return library_link.held(objects), []
        return objects, []

    def _remember(self, key: Key, generation: int, problems: list[status.Problem]) -> None:
        self._problems[key] = problems
        self._generations[key] = generation

    async def _check_references(self, namespace: str, spec: api.ComfyUIInstanceSpec) -> list[status.Problem]:
        problems = []
        for ref in references(spec):
            found = await self.kube.get(ref.kind, namespace, ref.name)
            problem = reference_problem(ref, found)
            if problem is not None:
                problems.append(problem)
        return problems

    async def _delete_owned(self, instance: builders.InstanceRef, kind: str, name: str) -> None:
        """Delete an object this instance owns (a PDB after scaling to one replica, the router objects after
        spec.routing was removed); someone else's object of that name is left alone."""
        found = await self.kube.get(kind, instance.namespace, name)
        owners = (found or {}).get("metadata", {}).get("ownerReferences") or []
        if any(owner.get("uid") == instance.uid for owner in owners):
            await self.kube.delete(kind, instance.namespace, name)

    async def _delete_router(self, instance: builders.InstanceRef) -> None:
        """spec.routing is off: delete the router objects if this instance has them (they are applied
        together; their headless Service tells, one GET for an instance that never had a router)."""
        kind, name = router_builders.owned_router_objects(instance)[-1]
        found = await self.kube.get(kind, instance.namespace, name)
        owners = (found or {}).get("metadata", {}).get("ownerReferences") or []
        if not any(owner.get("uid") == instance.uid for owner in owners):
            return
        for kind, name in router_builders.owned_router_objects(instance):
            await self._delete_owned(instance, kind, name)

    async def check_scaling(self, namespace: str, name: str, spec: api.ComfyUIInstanceSpec) -> None:
        """spec.scaling: scale to zero or back when the router's activity says so (scaling.ScaleToZero)."""
        await self.scaler.check(namespace, name, spec, self.reconcile)

    async def close(self) -> None:
        await self.scaler.close()

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def refresh_by_name(self, namespace: str, name: str) -> None:
        """Observe the owned Deployment and pods, derive status and write it only when it changed.

        Every status refresh of the operator goes through here, one per instance at a time: the instance is
        read inside the lock, so each refresh compares against the status the previous one wrote (never an
        older observation over a newer one, never an Event posted twice)."""
        key = (namespace, name)
        async with self._lock(key):
            body = await self.kube.get(api.KIND, namespace, name)
            if body is None:
                self.forget(namespace, name)
                return
            await self._refresh(body, self._spec_to_show(key, body))

    def _spec_to_show(self, key: Key, body: Mapping[str, Any]) -> api.ComfyUIInstanceSpec | None:
        """The parsed spec, or None when nothing is applied for it (refused, or it does not parse)."""
        if any(problem.reason in status.NOT_APPLIED for problem in self._problems.get(key, [])):
            return None
        try:
            return api.parse_spec(dict(body.get("spec") or {}))
        except ValidationError:
            return None

    async def _refresh(self, body: Mapping[str, Any], spec: api.ComfyUIInstanceSpec | None) -> None:
        instance = instance_ref(body)
        key = (instance.namespace, instance.name)
        deployment = await self.kube.get("Deployment", instance.namespace, instance.name)
        pods = await self.kube.list(
            "Pod", instance.namespace, label_selector=builders.selector_string(instance)
        )
        pending = {
            pod["metadata"]["name"] for pod in pods if (pod.get("status") or {}).get("phase") == "Pending"
        }
        events: list[dict[str, Any]] = []
        if pending:
            warnings = await self.kube.list(
                "Event", instance.namespace, field_selector="type=Warning,involvedObject.kind=Pod"
            )
            events = [
                event for event in warnings if (event.get("involvedObject") or {}).get("name") in pending
            ]
        scaled = self.scaler.scaled_to_zero(key, spec, body)
        desired = 0 if scaled else spec.replicas if spec is not None else _raw_replicas(body)
        router = None
        if spec is not None and spec.routing is not None:
            router_name = router_builders.router_name(instance)
            router = await self.kube.get("Deployment", instance.namespace, router_name) or {}
        link = await library_link.find_link(self.kube, instance.namespace, spec) if spec is not None else None
        extra: list[dict[str, Any]] = []
        waiting = None
        if link is not None:
            running = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
            held = link.library is not None and not link.ready and running == 0 and desired > 0
            extra.append(link.condition(held))
            if held:
                waiting = status.Problem(
                    library_status.WAITING_FOR_MODELS, f"no pods yet: {extra[0]['message']}"
                )
        observed = status.Observed(
            generation=self._generations.get(key, instance.generation),
            desired_replicas=desired,
            deployment=deployment,
            pods=pods,
            events=events,
            problems=self._problems.get(key, []),
            selector=builders.selector_string(instance),
            endpoint=builders.endpoint(instance, spec, self.settings) if spec is not None else None,
            extra_conditions=extra,
            waiting=waiting,
            notes=status.spec_notes(spec) if spec is not None else (),
            scaled_to_zero=scaled,
            router=router,
        )
        previous = dict(body.get("status") or {})
        new = status.derive_status(observed, previous, self.clock(), _images(deployment))
        if previous.get("scaling") and (spec is None or spec.scaling is None):
            new["scaling"] = None  # spec.scaling was removed: so is its status (a merge patch deletes it)
        if status.status_changed(previous, new):
            await self.kube.patch_status(instance.namespace, instance.name, new)
            metrics.STATUS_WRITES_TOTAL.inc()
            for event_type, reason, message in transition_events(previous, new):
                # Expected states (a missing reference, no GPU free...) are the user's to fix: they are in
                # status and an Event; the log gets one info line per transition, not one per retry.
                logger.info("%s/%s: %s %s: %s", *key, event_type, reason, message)
                self.post_event(body, event_type, reason, message)
        self.tracker.set(_key_text(key), status.ready_state(new))

    def forget(self, namespace: str, name: str) -> None:
        self.scaler.forget((namespace, name))
        self._problems.pop((namespace, name), None)
        self._generations.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)
        self.tracker.forget(_key_text((namespace, name)))


def _key_text(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def excluded_message(namespace: str) -> str:
    return (
        f"namespace {namespace} is excluded: the operator does not manage instances there (its pods could "
        "mount any Secret of that namespace); create the instance in another namespace, or remove "
        f"{namespace} from COMFYUI_OPERATOR_EXCLUDED_NAMESPACES (chart value watch.excludedNamespaces)"
    )


def _raw_replicas(body: Mapping[str, Any]) -> int:
    """spec.replicas of a spec that did not parse (0 when it is not a usable number either)."""
    value = (body.get("spec") or {}).get("replicas")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _images(deployment: Mapping[str, Any] | None) -> dict[str, str]:
    pod = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    images = {}
    for container in containers:
        if container.get("name") == "comfyui":
            images["comfyuiImage"] = str(container.get("image"))
        elif container.get("name") == "sidecar":
            images["sidecarImage"] = str(container.get("image"))
    return images

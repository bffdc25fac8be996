"""Reconciliation of one ComfyUIModelLibrary: the claim, one sync Job at a time, status from the Job's pods.

    1. parse the spec (invalid: status says why, nothing is created);
    2. the claim: server-side apply the one the operator creates (refused when a claim of that name exists
       that is not the library's), or check that spec.storage.claimName exists;
    3. the sync: the Job named after the digest of the manifest and pod template. None yet and no older sync
       running: create it, then its manifest ConfigMap (owned by the Job). An older sync still running: wait
       for it (never two syncs on one volume). Older finished Jobs are deleted (their pods and ConfigMaps go
       with them). A Job deleted by hand whose manifest was not fully synced runs again;
    4. status from the current Job and its pods (library_status), written only when it changed, Events on
       transitions.

Retries of a failed sync are the Job controller's (spec.sync.backoffLimit, exponential backoff); a failure
only a spec change can fix stops the Job at once (exit code 2). The kopf handlers in `handlers` call in here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from comfyui_operator import library_api, library_builders, library_status, metrics, status
from comfyui_operator.kube import Kube, KubeError
from comfyui_operator.reconcile import (
    REFUSED_STATUSES,
    EventPoster,
    _now,
    apply_or_refused,
    instance_ref,
    transition_events,
    validation_message,
)
from comfyui_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)
Key = tuple[str, str]


def is_ours(obj: Mapping[str, Any], library: library_builders.LibraryRef) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(library_builders.LIBRARY_LABEL) == library.name


@dataclass
class LibraryReconciler:
    kube: Kube
    settings: OperatorSettings
    post_event: EventPoster
    _problems: dict[Key, list[status.Problem]] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        self._problems.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)

    def parse(
        self, library: library_builders.LibraryRef, body: Mapping[str, Any]
    ) -> tuple[library_api.ComfyUIModelLibrarySpec | None, list[status.Problem]]:
        if library.namespace in self.settings.excluded_namespaces:
            message = f"namespace {library.namespace} is excluded: the operator manages no library there"
            return None, [status.Problem(status.NAMESPACE_EXCLUDED, message)]
        try:
            library_api.check_library_name(library.name)
            return library_api.parse_library_spec(dict(body.get("spec") or {})), []
        except (ValidationError, ValueError) as exc:
            return None, [status.Problem(status.INVALID_SPEC, validation_message(exc))]

    async def reconcile(self, body: Mapping[str, Any]) -> list[status.Problem]:
        """Converge the claim and the sync to the spec, then refresh status. Returns the problems found."""
        library = instance_ref(body)
        key = (library.namespace, library.name)
        spec, problems = self.parse(library, body)
        if spec is not None:
            problems = await self._claim(library, spec)
            if not problems:
                problems = await self._sync(library, spec)
        self._problems[key] = problems
        await self.refresh_by_name(*key)
        return problems

    async def _claim(
        self, library: library_builders.LibraryRef, spec: library_api.ComfyUIModelLibrarySpec
    ) -> list[status.Problem]:
        name = library_builders.claim_name(library, spec)
        found = await self.kube.get("PersistentVolumeClaim", library.namespace, name)
        if spec.storage.claim_name is not None:
            if found is None:
                message = f'PersistentVolumeClaim "{name}" (spec.storage.claimName) not found'
                return [status.Problem(status.MISSING_REFERENCE, message)]
            return []
        if found is not None and not is_ours(found, library):
            message = (
                f'PersistentVolumeClaim "{name}" exists and is not this library\'s: use '
                "spec.storage.claimName to sync into it, or delete it"
            )
            return [status.Problem(library_status.CLAIM_CONFLICT, message)]
        return await apply_or_refused(self.kube, library_builders.build_claim(library, spec))

    async def _jobs(self, library: library_builders.LibraryRef) -> list[dict[str, Any]]:
        selector = f"{library_builders.LIBRARY_LABEL}={library.name}"
        return await self.kube.list("Job", library.namespace, label_selector=selector)

    async def _sync(
        self, library: library_builders.LibraryRef, spec: library_api.ComfyUIModelLibrarySpec
    ) -> list[status.Problem]:
        digest = library_builders.sync_digest(library, spec, self.settings)
        name = library_builders.sync_job_name(library, digest)
        jobs = [job for job in await self._jobs(library) if is_ours(job, library)]
        current = next((job for job in jobs if job["metadata"]["name"] == name), None)
        older = [job for job in jobs if job["metadata"]["name"] != name]
        for job in older:
            if library_status.job_finished(job) is not None and not job["metadata"].get("deletionTimestamp"):
                await self.kube.delete(
                    "Job", library.namespace, job["metadata"]["name"], propagation="Background"
                )
        if any(library_status.job_finished(job) is None for job in older):
            return []  # one sync per volume: this one starts when the older one has ended
        if current is None:
            if await self._synced(library, digest):
                return []
            job = library_builders.build_sync_job(library, spec, self.settings, digest)
            try:
                current = await self.kube.create(job)
            except KubeError as exc:
                if exc.status == 409:  # created meanwhile (a concurrent pass); the next pass reads it
                    return []
                if exc.status in REFUSED_STATUSES:
                    return [status.Problem(status.APPLY_FAILED, f"Job {name} was refused: {exc.message}")]
                raise
            logger.info("%s/%s: started sync Job %s", library.namespace, library.name, name)
        if library_status.job_finished(current) is None:
            return await apply_or_refused(
                self.kube, library_builders.build_manifest_config_map(library, spec, current)
            )
        return []

    async def _synced(self, library: library_builders.LibraryRef, digest: str) -> bool:
        """True when the status says this manifest's sync ended with every model Ready (its Job was deleted
        since, e.g. by hand: nothing to do). A manifest not fully synced gets a new Job."""
        body = await self.kube.get(library_api.KIND, library.namespace, library.name)
        current = (body or {}).get("status") or {}
        return bool(
            current.get("manifest") == digest
            and library_status.library_ready(body)
            and current.get("models") is not None
        )

    async def reconcile_by_name(self, namespace: str, name: str) -> None:
        body = await self.kube.get(library_api.KIND, namespace, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            await self.reconcile(body)

    async def refresh_by_name(self, namespace: str, name: str) -> None:
        """Observe the Job and its pods, derive status, write it when it changed (one at a time per
        library)."""
        key = (namespace, name)
        async with self._lock(key):
            body = await self.kube.get(library_api.KIND, namespace, name)
            if body is None:
                self.forget(namespace, name)
                return
            await self._refresh(body)

    async def _refresh(self, body: Mapping[str, Any]) -> None:
        library = instance_ref(body)
        key = (library.namespace, library.name)
        spec, parse_problems = self.parse(library, body)
        problems = parse_problems or self._problems.get(key, [])
        observed = library_status.SyncObserved(generation=library.generation, spec=spec, problems=problems)
        if spec is not None:
            digest = library_builders.sync_digest(library, spec, self.settings)
            name = library_builders.sync_job_name(library, digest)
            jobs = [job for job in await self._jobs(library) if is_ours(job, library)]
            job = next((j for j in jobs if j["metadata"]["name"] == name), None)
            running = [
                j["metadata"]["name"]
                for j in jobs
                if j is not job
                and library_status.job_finished(j) is None
                and not j["metadata"].get("deletionTimestamp")
            ]
            pods: list[dict[str, Any]] = []
            if job is not None:
                selector = f"{library_builders.JOB_NAME_LABEL}={name}"
                pods = await self.kube.list("Pod", library.namespace, label_selector=selector)
            observed = library_status.SyncObserved(
                generation=library.generation,
                spec=spec,
                claim=library_builders.claim_name(library, spec),
                digest=digest,
                job=job,
                pods=pods,
                previous_job_running=running[0] if running and job is None else None,
                problems=problems,
            )
        previous = dict(body.get("status") or {})
        new = library_status.derive_status(observed, previous, _now())
        if status.status_changed(previous, new):
            await self.kube.patch_status(library.namespace, library.name, new, kind=library_api.KIND)
            metrics.STATUS_WRITES_TOTAL.inc()
            for event_type, reason, message in transition_events(previous, new):
                logger.info("%s/%s: %s %s: %s", *key, event_type, reason, message)
                self.post_event(body, event_type, reason, message)

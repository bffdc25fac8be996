"""kopf handlers of ComfyUIModelLibrary (thin, like `handlers`): converge on create/update/resume, refresh
status when a sync Job changes, and re-reconcile the instances that use a library when it changes (their
pods may start, their ModelsReady changes). No finalizer: a library can be deleted while no operator runs;
its instances report it (library_link)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from comfyui_operator import api, builders, library_api, library_builders
from comfyui_operator.kube import KubeError
from comfyui_operator.library_reconcile import LibraryReconciler
from comfyui_operator.reconcile import RETRIED_REASONS, Reconciler, retry_delay
from comfyui_operator.scheduling import Debouncer, Retrier
from comfyui_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)
JOB_LABELS = {
    "app.kubernetes.io/managed-by": builders.MANAGER,
    "app.kubernetes.io/name": "comfyui-library",
}


def register_library(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings
) -> None:
    libraries = LibraryReconciler(reconciler.kube, settings, reconciler.post_event)
    # A Job event reconciles (not only refreshes): when the sync of an older manifest ends, the waiting one
    # starts.
    resync = Debouncer(libraries.reconcile_by_name)

    async def reconcile_instance(namespace: str, name: str) -> None:
        body = await reconciler.kube.get(api.KIND, namespace, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            await reconciler.reconcile(body)

    instances = Debouncer(reconcile_instance)

    async def converge_again(namespace: str, name: str, first_attempt: int) -> None:
        """Reconcile again with backoff while the claim is missing or an object is refused."""
        attempt = first_attempt
        while True:
            await asyncio.sleep(retry_delay(attempt - 1, settings))
            try:
                body = await reconciler.kube.get(library_api.KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                if not [p for p in await libraries.reconcile(body) if p.reason in RETRIED_REASONS]:
                    return
            except KubeError as exc:
                logger.debug("%s/%s: %s", namespace, name, exc)
            attempt += 1

    retrier = Retrier(converge_again)
    resource = (api.GROUP, api.VERSION, library_api.PLURAL)

    @kopf.on.resume(*resource, id="library_converge", registry=registry)
    @kopf.on.create(*resource, id="library_converge", registry=registry)
    @kopf.on.update(*resource, id="library_converge", field="spec", registry=registry)
    async def library_converge(body: kopf.Body, meta: kopf.Meta, retry: int, **_: Any) -> None:
        namespace, name = str(meta["namespace"]), str(meta["name"])
        retrier.cancel(namespace, name)
        try:
            problems = await libraries.reconcile(body)
        except KubeError as exc:
            raise kopf.TemporaryError(str(exc), delay=retry_delay(retry, settings)) from exc
        if any(problem.reason in RETRIED_REASONS for problem in problems):
            retrier.start(namespace, name, first_attempt=1)

    @kopf.on.event(*resource, id="library_seen", registry=registry)
    async def library_seen(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        """A library changed (its status too) or was deleted: the instances that use it converge again."""
        namespace, name = str(meta["namespace"]), str(meta["name"])
        if event.get("type") == "DELETED":
            retrier.cancel(namespace, name)
            libraries.forget(namespace, name)
        for item in await reconciler.kube.list(api.KIND, namespace):
            ref = ((item.get("spec") or {}).get("models") or {}).get("libraryRef") or {}
            if ref.get("name") == name:
                instances.schedule(namespace, item["metadata"]["name"])

    @kopf.on.event("batch", "v1", "jobs", id="sync_job_changed", labels=JOB_LABELS, registry=registry)
    async def sync_job_changed(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        library = meta.labels.get(library_builders.LIBRARY_LABEL)
        if not library:
            return
        namespace = str(meta["namespace"])
        if event.get("type") == "DELETED":
            retrier.start(namespace, library, first_attempt=1)  # e.g. deleted by hand: run it again if needed
            return
        resync.schedule(namespace, library)

    @kopf.on.cleanup(id="stop_library_tasks", registry=registry)
    async def stop_library_tasks(**_: Any) -> None:
        await resync.close()
        await instances.close()
        await retrier.close()

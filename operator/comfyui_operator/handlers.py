"""kopf handlers (thin): they only translate kopf's callbacks into `Reconciler` calls.

Registered into an explicit registry by `register()`, so the operator process and tests build the same set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from comfyui_operator import api, builders, status
from comfyui_operator.kube import KubeError
from comfyui_operator.reconcile import RETRIED_REASONS, Debouncer, Reconciler, retry_delay
from comfyui_operator.settings import OperatorSettings

MANAGED_LABELS = {"app.kubernetes.io/managed-by": builders.MANAGER, "app.kubernetes.io/name": "comfyui"}
INSTANCE_LABEL = "app.kubernetes.io/instance"
# Attempts to re-create a deleted Deployment (about 80 min of backoff with the default settings).
REAPPLY_ATTEMPTS = 20

logger = logging.getLogger(__name__)


def post_kopf_event(body: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event on the instance through kopf's event poster."""
    kopf.event(body, type=event_type, reason=reason, message=message)  # type: ignore[arg-type]


def configure_kopf(kopf_config: kopf.OperatorSettings) -> kopf.OperatorSettings:
    """kopf's own settings: storage and finalizer names under the API group, no CRD/namespace scanning."""
    kopf_config.persistence.finalizer = f"{api.GROUP}/finalizer"
    kopf_config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    kopf_config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    kopf_config.scanning.disabled = True  # no cluster-wide CRD/namespace watches (and no RBAC for them)
    kopf_config.posting.level = logging.WARNING  # kopf's own log lines become Events only for warnings
    kopf_config.posting.reporting_component = builders.MANAGER
    kopf_config.watching.server_timeout = 300
    kopf_config.watching.client_timeout = 330
    return kopf_config


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """Fresh kopf settings configured for this operator."""
    return configure_kopf(kopf.OperatorSettings())


def register(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings
) -> Debouncer:
    """Register every handler of the operator into `registry`. Returns the debouncer of status refreshes."""
    refresher = Debouncer(reconciler.refresh_by_name)

    async def reapply(namespace: str, name: str) -> None:
        """Re-apply an instance whose Deployment was deleted; API errors and a refused apply are retried with
        the operator's backoff, a bounded number of times."""
        for attempt in range(REAPPLY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(retry_delay(attempt - 1, settings))
            try:
                body = await reconciler.kube.get(api.KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                if not attempt:
                    logger.info("Deployment of %s/%s was deleted; re-applying", namespace, name)
                problems = await reconciler.reconcile(body)
                refused = [p.message for p in problems if p.reason == status.APPLY_FAILED]
                if not refused:
                    return
                error = "; ".join(refused)
            except KubeError as exc:
                error = str(exc)
            logger.warning("re-applying %s/%s failed (attempt %d): %s", namespace, name, attempt + 1, error)
        logger.error(
            "gave up re-applying %s/%s after %d attempts; the next spec change re-applies it",
            namespace,
            name,
            REAPPLY_ATTEMPTS,
        )

    reapplier = Debouncer(reapply, delay_seconds=0)  # one re-apply (with its retries) per instance at a time
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    @kopf.on.resume(*resource, id="converge", registry=registry)
    @kopf.on.create(*resource, id="converge", registry=registry)
    @kopf.on.update(*resource, id="converge", field="spec", registry=registry)
    async def converge(body: kopf.Body, retry: int, **_: Any) -> None:
        try:
            problems = await reconciler.reconcile(body)
        except KubeError as exc:  # API unreachable, 5xx, forbidden: a clear log line, retried with backoff
            raise kopf.TemporaryError(str(exc), delay=retry_delay(retry, settings)) from exc
        retried = [problem.message for problem in problems if problem.reason in RETRIED_REASONS]
        if retried:
            raise kopf.TemporaryError("; ".join(retried), delay=retry_delay(retry, settings))

    @kopf.timer(
        *resource,
        id="periodic_refresh",
        interval=settings.status_refresh_seconds,
        initial_delay=5,
        registry=registry,
    )
    async def periodic_refresh(body: kopf.Body, meta: kopf.Meta, **_: Any) -> None:
        refresher.schedule(str(meta["namespace"]), str(meta["name"]))

    # A watch event, not an on.delete handler: without a finalizer kopf never calls deletion handlers.
    @kopf.on.event(*resource, id="forget", registry=registry)
    async def forget(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        if event.get("type") == "DELETED":
            reconciler.forget(str(meta["namespace"]), str(meta["name"]))

    @kopf.on.event(
        "apps", "v1", "deployments", id="deployment_changed", labels=MANAGED_LABELS, registry=registry
    )
    async def deployment_changed(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        instance = meta.labels.get(INSTANCE_LABEL)
        if not instance:
            return
        namespace = str(meta["namespace"])
        if event.get("type") == "DELETED":
            reapplier.schedule(namespace, instance)
            return
        refresher.schedule(namespace, instance)

    @kopf.on.event("", "v1", "pods", id="pod_changed", labels=MANAGED_LABELS, registry=registry)
    async def pod_changed(meta: kopf.Meta, **_: Any) -> None:
        instance = meta.labels.get(INSTANCE_LABEL)
        if instance:
            refresher.schedule(str(meta["namespace"]), instance)

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as our client: in-cluster token, else KUBECONFIG / ~/.kube/config."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.probe(id="instances", registry=registry)
    def instances_probe(**_: Any) -> dict[str, int]:
        return reconciler.tracker.counts()

    @kopf.on.cleanup(id="stop_refresher", registry=registry)
    async def stop_refresher(**_: Any) -> None:
        await refresher.close()
        await reapplier.close()

    return refresher

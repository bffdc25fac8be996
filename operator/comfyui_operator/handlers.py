"""kopf handlers (thin): they only translate kopf's callbacks into `Reconciler` calls.

Registered into an explicit registry by `register()`, so the operator process and tests build the same set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from comfyui_operator import api, builders
from comfyui_operator.kube import KubeError
from comfyui_operator.library_handlers import register_library
from comfyui_operator.reconcile import RETRIED_REASONS, Reconciler, retry_delay
from comfyui_operator.scaling import ScalingLoop
from comfyui_operator.scheduling import Debouncer, PeriodicRefresh, Retrier
from comfyui_operator.settings import OperatorSettings

MANAGED_LABELS = {"app.kubernetes.io/managed-by": builders.MANAGER, "app.kubernetes.io/name": "comfyui"}
INSTANCE_LABEL = "app.kubernetes.io/instance"

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
    """Register every handler of the operator into `registry`. Returns the debouncer of status refreshes.

    No handler makes kopf add its finalizer (no deletion handler, timer or daemon): the periodic refresh and
    the retries are the operator's own tasks, so an instance can be deleted while no operator runs."""
    refresher = Debouncer(reconciler.refresh_by_name)
    periodic = PeriodicRefresh(refresher.schedule, settings.status_refresh_seconds)
    scaler = ScalingLoop(reconciler.check_scaling, settings.scaling_poll_seconds)

    async def converge_again(namespace: str, name: str, first_attempt: int) -> None:
        """Reconcile again with the operator's backoff (capped at RETRY_MAX_SECONDS) while a retried problem
        (a missing reference, an object the API server refused) or an API error remains: until it is fixed,
        the instance is deleted, or a new spec starts a new loop."""
        attempt = first_attempt
        while True:
            if attempt:
                await asyncio.sleep(retry_delay(attempt - 1, settings))
            try:
                body = await reconciler.kube.get(api.KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                if not attempt:
                    logger.info("Deployment of %s/%s was deleted; re-applying", namespace, name)
                retried = [p.message for p in await reconciler.reconcile(body) if p.reason in RETRIED_REASONS]
                if not retried:
                    return
                error = "; ".join(retried)
            except KubeError as exc:
                error = str(exc)
            attempt += 1
            logger.debug("%s/%s not converged (attempt %d): %s", namespace, name, attempt, error)

    retrier = Retrier(converge_again)
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    @kopf.on.resume(*resource, id="converge", registry=registry)
    @kopf.on.create(*resource, id="converge", registry=registry)
    @kopf.on.update(*resource, id="converge", field="spec", registry=registry)
    async def converge(body: kopf.Body, meta: kopf.Meta, retry: int, **_: Any) -> None:
        namespace, name = str(meta["namespace"]), str(meta["name"])
        retrier.cancel(namespace, name)  # this call applies the newest spec; a new retry loop starts below
        try:
            problems = await reconciler.reconcile(body)
        except KubeError as exc:  # API unreachable, 5xx, forbidden: a clear log line, retried with backoff
            raise kopf.TemporaryError(str(exc), delay=retry_delay(retry, settings)) from exc
        if any(problem.reason in RETRIED_REASONS for problem in problems):
            # An expected state, already in status and an Event: retried quietly (kopf would log each retry
            # of a TemporaryError at error level and post it as an Event).
            retrier.start(namespace, name, first_attempt=1)

    @kopf.on.event(*resource, id="instance_seen", registry=registry)
    async def instance_seen(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        """Keeps the sets of instances the periodic refresh and the scaling checks walk; forgets a deleted
        instance (kopf calls no deletion handler for an object without its finalizer)."""
        namespace, name = str(meta["namespace"]), str(meta["name"])
        if event.get("type") == "DELETED":
            periodic.discard(namespace, name)
            scaler.track(namespace, name, None)
            retrier.cancel(namespace, name)
            reconciler.forget(namespace, name)
        else:
            periodic.add(namespace, name)
            scaler.track(namespace, name, _parsed((event.get("object") or {}).get("spec")))
            # Started here, not at startup: its task inherits a watch handler's context, where kopf can post
            # Events (the ScaledToZero / ScaledUp ones).
            scaler.start()

    @kopf.on.event(
        "apps", "v1", "deployments", id="deployment_changed", labels=MANAGED_LABELS, registry=registry
    )
    async def deployment_changed(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        instance = meta.labels.get(INSTANCE_LABEL)
        if not instance:
            return
        namespace = str(meta["namespace"])
        if event.get("type") == "DELETED":
            retrier.start(namespace, instance)  # re-applies it unless the instance is being deleted
            return
        refresher.schedule(namespace, instance)

    @kopf.on.event("", "v1", "pods", id="pod_changed", labels=MANAGED_LABELS, registry=registry)
    async def pod_changed(meta: kopf.Meta, **_: Any) -> None:
        instance = meta.labels.get(INSTANCE_LABEL)
        if instance:
            refresher.schedule(str(meta["namespace"]), instance)

    register_library(registry, reconciler, settings)

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as our client: in-cluster token, else KUBECONFIG / ~/.kube/config."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.probe(id="instances", registry=registry)
    def instances_probe(**_: Any) -> dict[str, int]:
        return reconciler.tracker.counts()

    @kopf.on.startup(id="start_periodic_refresh", registry=registry)
    async def start_periodic_refresh(**_: Any) -> None:
        periodic.start()

    @kopf.on.cleanup(id="stop_refresher", registry=registry)
    async def stop_refresher(**_: Any) -> None:
        await periodic.close()
        await scaler.close()
        await refresher.close()
        await retrier.close()
        await reconciler.close()

    return refresher


def _parsed(spec: Any) -> api.ComfyUIInstanceSpec | None:
    try:
        return api.parse_spec(dict(spec or {}))
    except ValueError:
        return None

"""All Kubernetes API I/O of the operator (except what kopf does itself): a thin JSON-over-HTTP layer on the
official client's connection handling (kubeconfig, in-cluster token, TLS). Calls are synchronous and run in a
thread (`asyncio.to_thread`) so the event loop never blocks. Objects are plain camelCase dicts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config

from comfyui_operator import api, library_api

FIELD_MANAGER = "comfyui-operator"
REQUEST_TIMEOUT_SECONDS = 30
LIST_PAGE_SIZE = 500
MAX_LIST_PAGES = 20  # a list reads at most this many pages (10,000 objects)

logger = logging.getLogger(__name__)


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for connection errors)."""

    def __init__(self, status: int, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.causes = causes  # `details.causes[].reason` of the server's Status, e.g. "NamespaceTerminating"

    @property
    def namespace_terminating(self) -> bool:
        """Creating an object in a namespace being deleted: not a permission problem, nothing to do."""
        return self.status == 403 and "NamespaceTerminating" in self.causes


@dataclass(frozen=True)
class Kind:
    """Where objects of one kind live in the REST API."""

    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str

    def collection(self, namespace: str) -> str:
        return f"{self.prefix}/namespaces/{quote(namespace)}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name)}"


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Service": Kind("/api/v1", "services"),
    "Pod": Kind("/api/v1", "pods"),
    "Event": Kind("/api/v1", "events"),
    "PersistentVolumeClaim": Kind("/api/v1", "persistentvolumeclaims"),
    "Deployment": Kind("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": Kind("/apis/policy/v1", "poddisruptionbudgets"),
    "Lease": Kind("/apis/coordination.k8s.io/v1", "leases"),
    "Job": Kind("/apis/batch/v1", "jobs"),
    api.KIND: Kind(f"/apis/{api.API_VERSION}", api.PLURAL),
    library_api.KIND: Kind(f"/apis/{api.API_VERSION}", library_api.PLURAL),
}


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    """The operator's API calls. Every method is async and returns plain dicts.

    Calls run in `executor` (default: asyncio's shared thread pool, a handful of threads on a small node).
    Give a caller that must never queue behind reconciliation traffic, the Lease renewal, its own."""

    def __init__(self, api_client: client.ApiClient, executor: Executor | None = None) -> None:
        self._client = api_client
        self._executor = executor

    def _request_sync(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        *,
        none_if_missing: bool = True,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, data, post = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._client.call_api(
                method,
                url,
                header_params=headers,
                body=data,
                post_params=post,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
            raw = response.read()  # type: ignore[no-untyped-call]
        except client.ApiException as exc:
            raise KubeError(exc.status or 0, str(exc.reason)) from exc
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out: no answer at all
            raise KubeError(0, f"{type(exc).__name__}: {exc}"[:500]) from exc
        if response.status == 404 and none_if_missing:
            return None
        if response.status >= 300:
            raise KubeError(response.status, _error_message(raw), _error_causes(raw))
        return json.loads(raw) if raw else {}

    async def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        *,
        none_if_missing: bool = True,
    ) -> dict[str, Any] | None:
        """The answer's JSON; None for 404 when `none_if_missing` (a read or delete of an object that is not
        there), else a 404 raises like any other error (a write into a namespace that does not exist)."""
        call = functools.partial(
            self._request_sync, method, path, query, body, content_type, none_if_missing=none_if_missing
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        return await self._request("GET", KINDS[kind].path(namespace, name))

    async def list(
        self, kind: str, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object that matches, read page by page (at most MAX_LIST_PAGES pages)."""
        query = {"limit": str(LIST_PAGE_SIZE)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        for _ in range(MAX_LIST_PAGES):
            result = await self._request("GET", KINDS[kind].collection(namespace), query) or {}
            items += result.get("items") or []
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": str(token)}
        logger.warning("listing %s in %s stopped after %d objects", kind, namespace, len(items))
        return items

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager, forcing ownership of the fields it sets."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta["namespace"], meta["name"])
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        result = await self._request(
            "PATCH", path, query, dict(obj), "application/apply-patch+yaml", none_if_missing=False
        )
        return result or {}

    async def delete(self, kind: str, namespace: str, name: str, *, propagation: str | None = None) -> bool:
        """Delete the object (dependents per `propagation`, e.g. Background); False when it did not exist."""
        query = {"propagationPolicy": propagation} if propagation else None
        return await self._request("DELETE", KINDS[kind].path(namespace, name), query) is not None

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, kind: str = api.KIND
    ) -> None:
        """Merge-patch the status subresource of an instance (or of another kind of ours)."""
        path = KINDS[kind].path(namespace, name) + "/status"
        await self._request("PATCH", path, None, {"status": dict(status)}, "application/merge-patch+json")

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        collection = KINDS[obj["kind"]].collection(meta["namespace"])
        result = await self._request("POST", collection, None, dict(obj), none_if_missing=False)
        return result or {}

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion (optimistic concurrency; a conflict raises KubeError 409)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta["namespace"], meta["name"])
        result = await self._request("PUT", path, None, dict(obj), none_if_missing=False)
        return result or {}


def _error_causes(raw: bytes) -> tuple[str, ...]:
    try:
        body = json.loads(raw)
    except ValueError:
        return ()
    details = body.get("details") if isinstance(body, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        return ()
    # A StatusCause's type is serialized as "reason".
    return tuple(str(c.get("reason")) for c in causes if isinstance(c, dict) and c.get("reason"))


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:500]
    return str(body.get("message") or body)[:500] if isinstance(body, dict) else str(body)[:500]

"""An instance's `spec.models.libraryRef`: which claim its pods mount, whether they may start, ModelsReady.

What an instance does while its library is not Ready: **pods are not created** (the Deployment is applied
with 0 replicas) unless the Deployment already runs pods: a library that syncs again after a manifest change
(or has one failed model) does not take running pods away; they keep serving the models already on the
volume, and ModelsReady says why it is False. A library that does not exist (never created, or deleted while
instances use it) is a MissingReference: the Deployment is not applied at all, so running pods are left as
they are (a retained claim stays mounted), the instance is Degraded and an Event is posted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfyui_operator import api, library_api, library_status, status
from comfyui_operator.kube import Kube


@dataclass(frozen=True)
class LibraryLink:
    name: str
    library: Mapping[str, Any] | None

    @property
    def claim(self) -> str | None:
        return (self.library or {}).get("status", {}).get("claimName") or _spec_claim(self.name, self.library)

    @property
    def ready(self) -> bool:
        return library_status.library_ready(self.library)

    def problem(self) -> status.Problem | None:
        if self.library is None:
            message = f'ComfyUIModelLibrary "{self.name}" (spec.models.libraryRef) not found'
            return status.Problem(status.MISSING_REFERENCE, message)
        return None

    def hold_pods(self, deployment: Mapping[str, Any] | None) -> bool:
        """True when the pods must not start: the library is not Ready and no pod runs yet."""
        running = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
        return not self.ready and running == 0

    def condition(self, pods_held: bool) -> dict[str, Any]:
        return library_status.models_ready_condition(self.name, self.library, pods_held)


def _spec_claim(name: str, library: Mapping[str, Any] | None) -> str | None:
    if library is None:
        return None
    storage = (library.get("spec") or {}).get("storage") or {}
    return str(storage.get("claimName") or name)


async def find_link(kube: Kube, namespace: str, spec: api.ComfyUIInstanceSpec) -> LibraryLink | None:
    """The library the spec refers to (None when it refers to none)."""
    if spec.models is None or spec.models.library_ref is None:
        return None
    name = spec.models.library_ref.name
    return LibraryLink(name, await kube.get(library_api.KIND, namespace, name))


def mounted_spec(spec: api.ComfyUIInstanceSpec, link: LibraryLink) -> api.ComfyUIInstanceSpec:
    """The spec the builders get: the library's claim in place of the reference (mounted read-only)."""
    assert spec.models is not None
    models = api.Models(claim_name=link.claim or link.name, sub_path=spec.models.sub_path)
    return spec.model_copy(update={"models": models})


def held(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`objects` with the Deployment at 0 replicas."""
    out = []
    for obj in objects:
        if obj["kind"] == "Deployment":
            out.append({**obj, "spec": {**obj["spec"], "replicas": 0}})
        else:
            out.append(obj)
    return out


def without_deployment(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] != "Deployment"]

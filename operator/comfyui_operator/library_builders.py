"""Pure builders of a ComfyUIModelLibrary's objects: (library metadata, spec, operator settings) -> manifests.

    PersistentVolumeClaim <name>     only with spec.storage.size; no ownerReference unless reclaimPolicy is
                                     Delete (a retained claim outlives the library)
    Job <name>-sync-<digest>         `comfyui-sidecar sync` in the sidecar image, the volume read-write, no
                                     API access (no ServiceAccount token); reports through its termination
                                     message (comfyui_sidecar.library.report)
    ConfigMap <name>-sync-<digest>   the manifest (immutable), owned by its Job

The digest covers the manifest and the Job's pod template: a change to either is a new sync.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from comfyui_sidecar.library.manifest import LibraryManifest, LibraryModel

from comfyui_operator import api, builders, library_api
from comfyui_operator.builders import InstanceRef, _container_security, _env, _resources, _secret_env
from comfyui_operator.builders import labels as instance_labels
from comfyui_operator.settings import OperatorSettings

LIBRARY_ROOT = "/library"
MANIFEST_DIR = "/etc/comfyui-library"
MANIFEST_KEY = "manifest.json"
TERMINATION_LOG = "/dev/termination-log"
TMP_DIR = "/tmp"  # noqa: S108 - a pod-private emptyDir
SYNC_CONTAINER = "sync"
LIBRARY_LABEL = f"{api.GROUP}/library"
DIGEST_ANNOTATION = f"{api.GROUP}/manifest-digest"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PLACEHOLDER = "<sync>"


LibraryRef = InstanceRef  # name, namespace, uid, generation: the same metadata as an instance's


def labels(library: LibraryRef) -> dict[str, str]:
    return {
        **instance_labels(library),
        "app.kubernetes.io/name": "comfyui-library",
        LIBRARY_LABEL: library.name,
    }


def owner_reference(library: LibraryRef) -> dict[str, Any]:
    return builders.owner_reference(library, library_api.KIND)


def claim_name(library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec) -> str:
    return spec.storage.claim_name or library.name


def manifest(spec: library_api.ComfyUIModelLibrarySpec) -> LibraryManifest:
    return LibraryManifest(
        models=[
            LibraryModel(url=m.url, target=m.target, sha256=m.sha256, revision=m.revision)
            for m in spec.models
        ],
        prune=spec.prune,
        extra_folders=list(spec.extra_model_folders or []),
    )


def build_claim(library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec) -> dict[str, Any]:
    """The claim the operator creates (spec.storage.size)."""
    storage = spec.storage
    claim_spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
        "volumeMode": "Filesystem",
    }
    if storage.storage_class_name is not None:
        claim_spec["storageClassName"] = storage.storage_class_name
    metadata: dict[str, Any] = {
        "name": claim_name(library, spec),
        "namespace": library.namespace,
        "labels": labels(library),
    }
    if storage.reclaim_policy == "Delete":
        metadata["ownerReferences"] = [owner_reference(library)]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def _sync_env(spec: library_api.ComfyUIModelLibrarySpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": TMP_DIR},
        {"name": "HF_HOME", "value": f"{TMP_DIR}/huggingface"},
    ]
    if spec.credentials is not None:
        secret = spec.credentials.secret_ref.name
        for key in library_api.CREDENTIAL_KEYS:
            item = _secret_env(key, api.SecretKeyRef(name=secret, key=key))
            item["valueFrom"]["secretKeyRef"]["optional"] = True
            env.append(item)
    return [*env, *_env(spec.sync.env)]


def _pod_template(
    library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec, settings: OperatorSettings, name: str
) -> dict[str, Any]:
    sync, security = spec.sync, spec.security_context
    container = {
        "name": SYNC_CONTAINER,
        "image": sync.image or settings.sidecar_image,
        "imagePullPolicy": sync.image_pull_policy,
        "command": ["comfyui-sidecar"],
        "args": [
            "sync",
            "--manifest",
            f"{MANIFEST_DIR}/{MANIFEST_KEY}",
            "--root",
            LIBRARY_ROOT,
            "--report",
            TERMINATION_LOG,
        ],
        "env": _sync_env(spec),
        "resources": _resources(sync.resources),
        "volumeMounts": [
            {"name": "library", "mountPath": LIBRARY_ROOT},
            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
        "securityContext": _container_security(True),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": security.run_as_user,
            "runAsGroup": security.run_as_group,
            "fsGroup": security.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "library", "persistentVolumeClaim": {"claimName": claim_name(library, spec)}},
            {"name": "manifest", "configMap": {"name": name}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if sync.node_selector:
        pod["nodeSelector"] = dict(sorted(sync.node_selector.items()))
    if sync.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sync.tolerations]
    return {"metadata": {"labels": labels(library)}, "spec": pod}


def sync_digest(
    library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec, settings: OperatorSettings
) -> str:
    """16 hex digits naming a sync: the manifest and the pod template (image, env, credentials...)."""
    template = _pod_template(library, spec, settings, PLACEHOLDER)
    text = manifest(spec).text() + json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sync_job_name(library: LibraryRef, digest: str) -> str:
    return f"{library.name}-sync-{digest}"


def build_sync_job(
    library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec, settings: OperatorSettings, digest: str
) -> dict[str, Any]:
    """One sync. Exit code 2 (only failures a spec change fixes) fails the Job at once; exit 1 is retried
    with the Job controller's backoff up to spec.sync.backoffLimit; evictions and drains do not count."""
    name = sync_job_name(library, digest)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": library.namespace,
            "labels": labels(library),
            "annotations": {DIGEST_ANNOTATION: digest},
            "ownerReferences": [owner_reference(library)],
        },
        "spec": {
            "backoffLimit": spec.sync.backoff_limit,
            "activeDeadlineSeconds": spec.sync.active_deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": SYNC_CONTAINER, "operator": "In", "values": [2]},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": _pod_template(library, spec, settings, name),
        },
    }


def build_manifest_config_map(
    library: LibraryRef, spec: library_api.ComfyUIModelLibrarySpec, job: dict[str, Any]
) -> dict[str, Any]:
    """The manifest of one sync, owned by its Job (deleted with it)."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": meta["name"],
            "namespace": library.namespace,
            "labels": labels(library),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "immutable": True,
        "data": {MANIFEST_KEY: manifest(spec).text()},
    }

"""The `ComfyUIModelLibrary` API (comfyui.operator.dev/v1alpha1): a shared model volume that fills itself from
a manifest. Pydantic models of spec and status; `crdgen` turns them into the CRD, as for the instance.

The manifest's rules (a target's path and folder) have one owner, `comfyui_sidecar.library.manifest`: the
target path is checked here too (and as CEL by the API server), the folder by the sync Job, per model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from comfyui_sidecar.library.manifest import target_path_problem
from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from comfyui_operator.api import (
    DNS_LABEL,
    LIBRARY_TARGET,
    MODEL_URL,
    SHA256_HEX,
    ApiModel,
    Condition,
    EnvVar,
    LocalObjectReference,
    PodSecurity,
    PullPolicy,
    ResourceName,
    ResourceRequirements,
    Size,
    StringMap,
    Toleration,
    _cel,
)

KIND = "ComfyUIModelLibrary"
PLURAL = "comfyuimodellibraries"
SINGULAR = "comfyuimodellibrary"
SHORT_NAMES = ["cuilib"]
MAX_MODELS = 200

LIBRARY_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_LIBRARY_NAME = 40  # "<name>-sync-<16 hex>" must stay a 63-character label (the Job's pod label)
NAME_MESSAGE = (
    "must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter) of at most "
    f"{MAX_LIBRARY_NAME} characters: it names the sync Job"
)
NAME_RULE: JsonDict = {
    "rule": f"self.metadata.name.size() <= {MAX_LIBRARY_NAME} && "
    f"self.metadata.name.matches('{LIBRARY_NAME}')",
    "message": NAME_MESSAGE,
    "messageExpression": f'self.metadata.name + " {NAME_MESSAGE}"',
    "fieldPath": ".metadata.name",
    "reason": "FieldValueInvalid",
}

# Keys of the credentials Secret, each optional; each becomes the environment variable of the same name.
CREDENTIAL_KEYS = (
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTP_AUTH_HEADER_VALUE",
)


class LibraryStorage(ApiModel):
    """Where the models live: an existing claim, or a claim the operator creates."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.claimName) != has(self.size)",
                    "exactly one of storage.claimName or storage.size",
                ),
                _cel(
                    "!has(self.claimName) || !has(self.storageClassName)",
                    "storage.storageClassName applies to a claim the operator creates (storage.size)",
                ),
            ]
        }
    )

    claim_name: ResourceName | None = Field(
        default=None,
        description="An existing PersistentVolumeClaim (the sync Job mounts it read-write, instances "
        "read-only).",
    )
    size: Size | None = Field(
        default=None, description="Size of a claim the operator creates, named after the library."
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the created claim (default: the cluster's).",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description="Access mode of the created claim. ReadWriteMany lets instances on every node mount it; "
        "ReadWriteOnce only works when the sync Job and every instance pod run on one node.",
    )
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="Retain: the created claim (and its models) outlives the library; Delete: it is deleted "
        "with the library.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> LibraryStorage:
        if (self.claim_name is None) == (self.size is None):
            raise ValueError("exactly one of storage.claimName or storage.size")
        if self.claim_name is not None and self.storage_class_name is not None:
            raise ValueError(
                "storage.storageClassName applies to a claim the operator creates (storage.size)"
            )
        return self


class LibraryModelSpec(ApiModel):
    """One model: where it comes from and where it goes."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=MODEL_URL,
        description="Hugging Face (https://huggingface.co/<repo>/resolve/<revision>/<file>), http(s) or "
        "s3://<bucket>/<key>.",
    )
    target: str = Field(
        min_length=3,
        max_length=512,
        pattern=LIBRARY_TARGET,
        description="<model folder>/<file name> in the library, e.g. checkpoints/sdxl.safetensors; the "
        "folder is one of ComfyUI's model folders or of spec.extraModelFolders.",
    )
    sha256: str | None = Field(
        default=None,
        max_length=64,
        pattern=SHA256_HEX,
        description="Expected sha256; a file that differs is not kept.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Hugging Face revision (branch, tag or commit) used instead of 'main' in the URL.",
    )

    @field_validator("target")
    @classmethod
    def _safe_target(cls, value: str) -> str:
        problem = target_path_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class LibraryCredentials(ApiModel):
    """A Secret in the library's namespace. The operator never reads it: the sync Job's container gets its
    keys HF_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HTTP_AUTH_HEADER_VALUE (each
    optional) as environment variables of the same name."""

    secret_ref: LocalObjectReference = Field(description="The Secret.")


class LibrarySync(ApiModel):
    """The sync Job: the sidecar image running `comfyui-sidecar sync`."""

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Image with comfyui-sidecar; default: the operator's sidecar image.",
    )
    image_pull_policy: PullPolicy = Field(default="IfNotPresent", description="Image pull policy.")
    resources: ResourceRequirements | None = Field(default=None, description="CPU and memory of the Job.")
    env: Annotated[list[EnvVar], Field(max_length=64)] | None = Field(
        default=None,
        description="Extra environment: AWS_REGION, AWS_ENDPOINT_URL_S3, HF_ENDPOINT, "
        "DOWNLOAD_ALLOW_NETWORKS (an in-cluster mirror), DOWNLOAD_ATTEMPTS...",
    )
    backoff_limit: int = Field(
        default=4,
        ge=0,
        le=20,
        description="Retries of a sync that failed for a reason another attempt may fix (network, 5xx, full "
        "volume), with the Job controller's exponential backoff (10 s, 20 s, 40 s ... 6 min).",
    )
    active_deadline_seconds: int = Field(
        default=21600, ge=60, le=604800, description="Longest a sync may run, retries included."
    )
    node_selector: StringMap | None = Field(default=None, description="Node labels the sync pod requires.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Tolerations of the sync pod."
    )


class ComfyUIModelLibrarySpec(ApiModel):
    """Desired state of a model library: a volume and the models it must hold."""

    storage: LibraryStorage = Field(description="The volume.")
    models: Annotated[list[LibraryModelSpec], Field(max_length=MAX_MODELS)] = Field(
        default_factory=list,
        description="The models. Targets are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["target"]},
    )
    extra_model_folders: (
        Annotated[list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]], Field(max_length=32)] | None
    ) = Field(
        default=None,
        description="Folders besides ComfyUI's own that targets may use (custom nodes' model folders); "
        "instances list every folder found on the volume.",
    )
    prune: bool = Field(
        default=False,
        description="Delete files an earlier sync wrote whose target is no longer in models (never files "
        "placed by other means).",
    )
    credentials: LibraryCredentials | None = Field(
        default=None, description="Secret with download credentials (Hugging Face token, S3 keys)."
    )
    sync: LibrarySync = Field(
        default_factory=LibrarySync, json_schema_extra={"default": {}}, description="The sync Job."
    )
    security_context: PodSecurity = Field(
        default_factory=PodSecurity,
        json_schema_extra={"default": {}},
        description="Non-root user and groups of the sync pod (fsGroup makes the volume writable).",
    )

    @field_validator("models")
    @classmethod
    def _unique_targets(cls, models: list[LibraryModelSpec]) -> list[LibraryModelSpec]:
        seen: set[str] = set()
        for model in models:
            if model.target in seen:
                raise ValueError(f"target {model.target!r} is listed twice")
            seen.add(model.target)
        return models


ModelPhase = Literal["Pending", "Downloading", "Ready", "Failed"]


class ModelStatus(ApiModel):
    """One model as the last sync left it."""

    model_config = ConfigDict(extra="ignore")

    target: str = Field(description="Where the model is, relative to the volume.")
    url: str = Field(description="Where it comes from.")
    phase: ModelPhase = Field(
        description="Pending (no sync ran for it yet), Downloading (the running sync has not reported it), "
        "Ready or Failed."
    )
    size: int | None = Field(
        default=None, description="Ready: bytes of the file; Failed: bytes fetched before the failure."
    )
    sha256: str | None = Field(default=None, description="sha256 of the file (Ready).")
    message: str | None = Field(default=None, max_length=1024, description="Why it failed.")


class ComfyUIModelLibraryStatus(ApiModel):
    """Observed state, written by the operator through the status subresource."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="metadata.generation last acted on.")
    claim_name: str | None = Field(default=None, description="The claim instances mount.")
    manifest: str | None = Field(default=None, description="Digest of the manifest of the current sync.")
    sync_job: str | None = Field(default=None, description="The sync Job of the current manifest.")
    total_models: int | None = Field(default=None, description="Models in the spec.")
    ready_models: int | None = Field(default=None, description="Models on the volume and verified.")
    failed_models: int | None = Field(default=None, description="Models that failed.")
    ready_bytes: int | None = Field(default=None, description="Bytes of the Ready models.")
    models: Annotated[list[ModelStatus], Field(max_length=MAX_MODELS)] | None = Field(
        default=None,
        description="Per model, in spec order.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["target"]},
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def check_library_name(name: str) -> None:
    if len(name) > MAX_LIBRARY_NAME or not re.match(LIBRARY_NAME, name):
        raise ValueError(f"metadata.name {NAME_MESSAGE}")


def parse_library_spec(spec: dict[str, Any]) -> ComfyUIModelLibrarySpec:
    """Parse and validate a spec as stored by the API server (camelCase). Raises pydantic.ValidationError."""
    return ComfyUIModelLibrarySpec.model_validate(spec)

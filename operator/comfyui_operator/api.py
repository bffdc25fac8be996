"""The `ComfyUIInstance` API (comfyui.operator.dev/v1alpha1): pydantic models of spec and status.

These models are the single source of truth: `comfyui_operator.crdgen` turns them into the CRD's
structural OpenAPI schema (descriptions, defaults, enums, bounds, CEL rules from `x-kubernetes-validations`),
and the operator parses every object's spec with them. Cross-field rules are written twice on purpose: as CEL
for the API server and as a pydantic validator, so the operator (and offline tests) reject the same specs
with the same message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from comfyui_operator.quantity import QUANTITY_PATTERN, is_quantity

GROUP = "comfyui.operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ComfyUIInstance"
PLURAL = "comfyuiinstances"
SINGULAR = "comfyuiinstance"
SHORT_NAMES = ["cui"]
CATEGORIES = ["comfyui", "all"]

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# An extended resource name needs a domain prefix (e.g. nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915).
EXTENDED_RESOURCE_NAME = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# Sizes of emptyDirs: unsigned, no milli units, no exponent.
SIZE_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$"
INT_OR_PERCENT = r"^([0-9]+%?)$"
ABSOLUTE_PATH = r"^/"
PUBLIC_URL = r"^https?://[^/?#\s]+(/[^?#\s]*)?$"
# ComfyUIModelLibrary (library_api.py): a model URL, a target path inside the library, a sha256.
MODEL_URL = r"^[a-z][a-z0-9+.-]*://[^\s]+$"
LIBRARY_TARGET = r"^[A-Za-z0-9_][-A-Za-z0-9_]*(/[^./\\\x00-\x1f][^/\\\x00-\x1f]*)+$"
SHA256_HEX = r"^[0-9a-f]{64}$"
MAX_NAME = 253
MAX_QUANTITY = 64  # longest quantity string; bounds the CEL cost of checking it

# What each pattern means, in the words the API server answers with when a value does not match (crdgen turns
# every pattern into a CEL rule with this message and the value; a bare pattern would answer with the regex)
# and that `kubectl explain` shows. Every pattern used in the models must be here.
PATTERN_MESSAGES: dict[str, str] = {
    DNS_SUBDOMAIN: "must be an object name: lower-case letters, digits, '-' and '.', starting and ending "
    "with a letter or digit (e.g. comfyui-models)",
    DNS_LABEL: "must be lower-case letters, digits and '-', starting and ending with a letter or digit "
    "(e.g. loras)",
    CONFIG_KEY: "must be a ConfigMap or Secret key: letters, digits, '-', '_' and '.' (e.g. workflow.json)",
    ENV_NAME: "must be an environment variable name: letters, digits, '_', '-' and '.', not starting "
    "with a digit",
    EXTENDED_RESOURCE_NAME: "must be an extended resource name with a domain, e.g. nvidia.com/gpu, "
    "amd.com/gpu or gpu.intel.com/i915",
    SIZE_PATTERN: "must be a size such as 20Gi, 512Mi or 100G (suffixes Ki, Mi, Gi, Ti or k, M, G, T; "
    "GB and MB are not Kubernetes units)",
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 24Gi, 512Mi, 500m or 2 (GB and MB are not "
    "Kubernetes units)",
    INT_OR_PERCENT: "must be a number of pods or a percentage, e.g. 1 or 25%",
    ABSOLUTE_PATH: "must be an absolute path (starting with /)",
    PUBLIC_URL: "must be an http(s) URL without query or fragment, e.g. https://comfy.example.com/api",
    MODEL_URL: "must be a URL such as https://huggingface.co/<repo>/resolve/main/<file> or s3://bucket/key",
    LIBRARY_TARGET: "must be <model folder>/<file name>, e.g. checkpoints/model.safetensors: no '..', '.' "
    "or hidden path segments, no backslashes",
    SHA256_HEX: "must be a sha256: 64 lower-case hex digits",
}


def _check_quantity(value: int | str) -> int | str:
    if not is_quantity(value) or len(str(value)) > MAX_QUANTITY:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 100Gi, 512Mi, 500m, 2)")
    return value


def _check_size(value: int | str) -> int | str:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{value!r} is not a size (examples: 20Gi, 512Mi)")
    if isinstance(value, str) and (len(value) > MAX_QUANTITY or not re.match(SIZE_PATTERN, value)):
        raise ValueError(f"{value!r} is not a size (examples: 20Gi, 512Mi)")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": MAX_QUANTITY,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
Size = Annotated[
    int | str,
    AfterValidator(_check_size),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": MAX_QUANTITY,
            "pattern": SIZE_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
IntOrPercent = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": MAX_QUANTITY,
            "pattern": INT_OR_PERCENT,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
ResourceName = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=DNS_SUBDOMAIN)]
StringMap = Annotated[dict[str, str], Field(max_length=64)]
FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """Base: camelCase JSON names, unknown fields rejected, values also accepted by Python name."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the instance's namespace. Secret values are never written into the spec."""

    name: ResourceName = Field(description="Name of the Secret in the same namespace.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=MAX_NAME,
        pattern=CONFIG_KEY,
        description="Key in the Secret.",
    )


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the instance's namespace."""

    name: ResourceName = Field(description="Name of the ConfigMap in the same namespace.")
    key: str = Field(
        default="workflow.json",
        min_length=1,
        max_length=MAX_NAME,
        pattern=CONFIG_KEY,
        description="Key in the ConfigMap holding the API-format prompt (JSON).",
    )


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: ResourceName = Field(description="Name of the referenced object.")


class ResourceRequirements(ApiModel):
    """CPU, memory and other resources, as in a Kubernetes container's `resources`."""

    requests: Annotated[dict[str, Quantity], Field(max_length=16)] | None = Field(
        default=None, description="Minimum resources, e.g. {cpu: '2', memory: 16Gi}."
    )
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] | None = Field(
        default=None, description="Maximum resources, e.g. {memory: 24Gi}."
    )


GPUMode = Literal["OneComfyUI", "ComfyUIPerGPU"]


class GPU(ApiModel):
    """GPUs per pod: added to the requests and limits of the ComfyUI container (OneComfyUI), or one to each of
    `count` ComfyUI containers (ComfyUIPerGPU)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.mode) || self.mode != 'ComfyUIPerGPU' || !has(self.count) || self.count >= 1",
                    "gpu.mode ComfyUIPerGPU runs one ComfyUI per GPU: gpu.count must be at least 1",
                )
            ]
        }
    )

    count: int = Field(
        default=1, ge=0, le=16, description="Number of GPUs per pod; 0 runs ComfyUI without a GPU."
    )
    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=MAX_NAME,
        pattern=EXTENDED_RESOURCE_NAME,
        description="GPU extended resource name, e.g. nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915.",
    )
    mode: GPUMode = Field(
        default="OneComfyUI",
        description="OneComfyUI: one ComfyUI container gets all `count` GPUs (ComfyUI itself uses one; the "
        "status says so when count > 1). ComfyUIPerGPU: `count` ComfyUI containers, one GPU each (the device "
        "plugin gives each its own), on ports 8188, 8189, ...; the sidecar sends each prompt to the one that "
        "holds its models, else the shortest queue. comfyui.resources apply to each container.",
    )

    @model_validator(mode="after")
    def _per_gpu_needs_gpus(self) -> GPU:
        if self.mode == "ComfyUIPerGPU" and self.count < 1:
            raise ValueError("gpu.mode ComfyUIPerGPU runs one ComfyUI per GPU: gpu.count must be at least 1")
        return self

    @property
    def comfyui_count(self) -> int:
        """ComfyUI containers per pod."""
        return self.count if self.mode == "ComfyUIPerGPU" else 1


class EnvVar(ApiModel):
    """An environment variable: a literal `value` or a `valueFrom` source (Kubernetes EnvVarSource)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.value) && has(self.valueFrom))", "value and valueFrom are mutually exclusive"
                )
            ]
        }
    )

    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value. Use valueFrom for anything secret.")
    value_from: FreeObject | None = Field(
        default=None, description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef...)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("value and valueFrom are mutually exclusive")
        return self


class VolumeMount(ApiModel):
    """Mounts one of `spec.extraVolumes` into the ComfyUI container."""

    name: str = Field(
        min_length=1, max_length=57, pattern=DNS_LABEL, description="Name of an entry of spec.extraVolumes."
    )
    mount_path: str = Field(
        min_length=1, max_length=4096, pattern=ABSOLUTE_PATH, description="Absolute path in the container."
    )
    read_only: bool = Field(default=True, description="Mount read-only (default true).")
    sub_path: str | None = Field(default=None, max_length=4096, description="Sub-path inside the volume.")


PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class ComfyUIContainer(ApiModel):
    """The ComfyUI container. It listens on 127.0.0.1:8188 only; the operator adds the listen, port,
    directory and extra-model-paths arguments after `args`."""

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="ComfyUI image; default: the operator's COMFYUI_OPERATOR_COMFYUI_IMAGE.",
    )
    image_pull_policy: PullPolicy = Field(default="IfNotPresent", description="Image pull policy.")
    command: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=32)] | None = Field(
        default=None,
        description="Entrypoint; default: the operator's ComfyUI command (python main.py).",
    )
    working_dir: str | None = Field(
        default=None,
        max_length=4096,
        pattern=ABSOLUTE_PATH,
        description="Working directory; default /opt/ComfyUI.",
    )
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] | None = Field(
        default=None,
        description="Extra ComfyUI arguments, e.g. [--normalvram]. --listen and --port are the operator's.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!self.exists(a, a.startsWith('--listen') || a.startsWith('--port'))",
                    "comfyui.args must not set --listen or --port: ComfyUI always listens on 127.0.0.1:8188",
                )
            ]
        },
    )
    env: Annotated[list[EnvVar], Field(max_length=64)] | None = Field(
        default=None, description="Extra environment."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory requests and limits."
    )
    gpu: GPU = Field(default_factory=GPU, json_schema_extra={"default": {}}, description="GPUs per pod.")
    extra_volume_mounts: Annotated[list[VolumeMount], Field(max_length=16)] | None = Field(
        default=None, description="Mounts of spec.extraVolumes into the ComfyUI container."
    )
    read_only_root_filesystem: bool = Field(
        default=True, description="Run with a read-only root filesystem (writable dirs are emptyDirs)."
    )

    @model_validator(mode="after")
    def _no_listen(self) -> ComfyUIContainer:
        for arg in self.args or []:
            if arg.startswith(("--listen", "--port")):
                raise ValueError(
                    "comfyui.args must not set --listen or --port: ComfyUI always listens on 127.0.0.1:8188"
                )
        return self


class Sidecar(ApiModel):
    """The comfyui-api compatible sidecar container (port 3000) that the Service exposes."""

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Sidecar image. Defaults to the operator's default (COMFYUI_OPERATOR_SIDECAR_IMAGE).",
    )
    image_pull_policy: PullPolicy = Field(default="IfNotPresent", description="Image pull policy.")
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory for the sidecar."
    )
    max_queue_depth: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="/ready reports 503 when ComfyUI's queue reaches this depth; 0 = off.",
    )
    prompt_timeout_seconds: int = Field(
        default=600,
        ge=1,
        le=86400,
        description="Longest a prompt may take from queueing to completion (then 504).",
    )
    startup_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=7200,
        description="How long ComfyUI may take to answer after its container starts before the kubelet "
        "restarts it (the startup probe, through the sidecar's GET /health/comfyui). The warmup runs after "
        "that and only holds readiness.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Sidecar log level."
    )
    env: Annotated[list[EnvVar], Field(max_length=64)] | None = Field(
        default=None, description="Extra sidecar environment (e.g. SSRF allow lists, AWS settings)."
    )


class Models(ApiModel):
    """The shared model store: exactly one of claimName (a ReadOnlyMany PVC) or libraryRef."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.claimName) != has(self.libraryRef)",
                    "exactly one of models.claimName or models.libraryRef must be set",
                )
            ]
        }
    )

    claim_name: ResourceName | None = Field(
        default=None, description="PersistentVolumeClaim with the models (ReadOnlyMany), mounted read-only."
    )
    library_ref: LocalObjectReference | None = Field(
        default=None,
        description="A ComfyUIModelLibrary in the same namespace: its claim is mounted read-only and the "
        "instance reports ModelsReady. Pods start once the library is Ready (running pods are kept when it "
        "syncs again).",
    )
    sub_path: str | None = Field(
        default=None, max_length=4096, description="Sub-path of the volume to mount."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Models:
        if (self.claim_name is None) == (self.library_ref is None):
            raise ValueError("exactly one of models.claimName or models.libraryRef must be set")
        return self


StorageMedium = Literal["", "Memory"]


class Cache(ApiModel):
    """Per-pod emptyDir for URL-downloaded models; the sidecar keeps it under the limit with LRU eviction."""

    size_limit: Size = Field(default="20Gi", description="emptyDir sizeLimit; the LRU budget is 90% of it.")
    medium: StorageMedium = Field(default="", description="emptyDir medium: '' (node disk) or Memory.")


class ScratchDir(ApiModel):
    """An emptyDir shared by ComfyUI and the sidecar."""

    size_limit: Size = Field(default="10Gi", description="emptyDir sizeLimit.")
    medium: StorageMedium = Field(default="", description="emptyDir medium: '' (node disk) or Memory.")


class CustomNodes(ApiModel):
    """Custom nodes from a PVC, mounted read-only over the image's custom_nodes directory."""

    claim_name: ResourceName = Field(description="PersistentVolumeClaim holding the custom_nodes tree.")
    sub_path: str | None = Field(
        default=None, max_length=4096, description="Sub-path of the volume to mount."
    )
    mount_path: str = Field(
        default="/opt/ComfyUI/custom_nodes",
        max_length=4096,
        pattern=ABSOLUTE_PATH,
        description="Where to mount it.",
    )


class Warmup(ApiModel):
    """A prompt run once at start (and after a ComfyUI restart) before the pod reports ready."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.configMapRef) != has(self.prompt)",
                    "exactly one of warmup.configMapRef or warmup.prompt must be set",
                )
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="ConfigMap key holding the API-format prompt."
    )
    prompt: FreeObject | None = Field(default=None, description="The API-format prompt inline.")

    @model_validator(mode="after")
    def _one_source(self) -> Warmup:
        if (self.config_map_ref is None) == (self.prompt is None):
            raise ValueError("exactly one of warmup.configMapRef or warmup.prompt must be set")
        return self


class HuggingFace(ApiModel):
    """Hugging Face access for model downloads."""

    token_secret_ref: SecretKeyRef = Field(description="Secret key with the Hugging Face token (HF_TOKEN).")


class Webhook(ApiModel):
    """Signing of webhook deliveries (Standard Webhooks)."""

    secret_ref: SecretKeyRef = Field(
        description="Secret key with the base64 signing secret (WEBHOOK_SECRET)."
    )


class ApiAuth(ApiModel):
    """Bearer-token authentication of the sidecar's HTTP API (the token is read from a Secret by the pod)."""

    token_secret_ref: SecretKeyRef = Field(
        description="Secret key with the bearer token (API_TOKEN); clients send it as "
        "'Authorization: Bearer <token>'.",
    )
    scope: Literal["v2", "all"] = Field(
        default="v2",
        description="v2: the token guards /api/v2 only; all: also the comfyui-api routes (/prompt, "
        "/interrupt, /models, /download). /health, /ready, /metrics and /docs stay open.",
    )


class Api(ApiModel):
    """Comfy API v2 (/api/v2, for the official Comfy SDKs) and authentication, served by every replica."""

    auth: ApiAuth | None = Field(default=None, description="Require a bearer token (default: no auth).")
    public_base_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=PUBLIC_URL,
        description="External URL clients use (e.g. https://gw.example/comfy): absolute output URLs are "
        "built from it and its path prefixes the job links.",
    )
    trust_forwarded_headers: bool = Field(
        default=False,
        description="Build external URLs from X-Forwarded-Proto/-Host/-Prefix; only behind a proxy that "
        "sets them.",
    )
    job_retention_seconds: int = Field(
        default=86400,
        ge=60,
        le=604800,
        description="How long a v2 job and its outputs stay readable (then 404).",
    )
    max_event_streams: int = Field(
        default=100, ge=1, le=10000, description="Open v2 event streams per pod (more get 429)."
    )


class Routing(ApiModel):
    """A router in front of the replicas (docs/router.md): each job goes to the replica that already holds its
    models, and jobs are held while no replica is ready. The instance's Service then points at the router;
    clients keep the same address."""

    replicas: int = Field(
        default=2, ge=2, le=20, description="Router pods (at least two: no single point of failure)."
    )
    affinity_max_queue: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="A replica holding a job's models gets the job while its queue (per ComfyUI, the running "
        "job included) is at most this long; beyond it the least-loaded replica does. Waiting behind N jobs "
        "should cost less than a model load.",
    )
    max_held_jobs: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="Jobs waiting for a ready replica at most (v2 jobs held plus comfyui-api requests "
        "waiting); beyond it 429 with Retry-After.",
    )
    hold_timeout_seconds: int | None = Field(
        default=None,
        ge=10,
        le=86400,
        description="Longest a job waits for a ready replica (then a v2 job fails with no_replica_ready, a "
        "request gets 503). Default: sidecar.promptTimeoutSeconds.",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="CPU and memory of each router pod (default: requests cpu 100m and memory 128Mi, "
        "limit memory 512Mi).",
    )


class Scaling(ApiModel):
    """Scale to zero: with no job for idleTimeoutSeconds the replicas go to zero; the router holds the next
    job and the operator scales back to spec.replicas. Needs spec.routing."""

    idle_timeout_seconds: int = Field(
        ge=30, le=604800, description="Seconds without any job before the replicas are scaled to zero."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.operator != 'Exists' || !has(self.value)",
                    "value must be empty when operator is Exists",
                ),
                _cel("has(self.key) || self.operator == 'Exists'", "an empty key requires operator Exists"),
            ]
        }
    )

    key: str | None = Field(
        default=None, max_length=316, description="Taint key; empty with Exists matches all."
    )
    operator: Literal["Equal", "Exists"] = Field(default="Equal", description="Equal or Exists.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, ge=0, description="For NoExecute: how long to stay.")

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("value must be empty when operator is Exists")
        if self.key is None and self.operator != "Exists":
            raise ValueError("an empty key requires operator Exists")
        return self


class Service(ApiModel):
    """The Service in front of the sidecar. Only the sidecar's port is exposed; ComfyUI's never is."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Service type."
    )
    port: int = Field(default=3000, ge=1, le=65535, description="Service port (targets the sidecar's 3000).")
    annotations: StringMap | None = Field(default=None, description="Annotations for the Service.")


class UpdateStrategy(ApiModel):
    """How pods are replaced when the spec changes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.type == 'RollingUpdate' || (!has(self.maxSurge) && !has(self.maxUnavailable))",
                    "maxSurge and maxUnavailable are only allowed with type RollingUpdate",
                )
            ]
        }
    )

    type: Literal["RollingUpdate", "Recreate"] = Field(
        default="RollingUpdate",
        description="RollingUpdate or Recreate (frees the GPU before the new pod starts).",
    )
    max_surge: IntOrPercent | None = Field(
        default=None, description="Extra pods during an update (default 1)."
    )
    max_unavailable: IntOrPercent | None = Field(
        default=None, description="Pods that may be down (default 0)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> UpdateStrategy:
        if self.type != "RollingUpdate" and (self.max_surge is not None or self.max_unavailable is not None):
            raise ValueError("maxSurge and maxUnavailable are only allowed with type RollingUpdate")
        for value in (self.max_surge, self.max_unavailable):
            if isinstance(value, str) and not re.fullmatch(r"[0-9]+%?", value):
                raise ValueError(f"{value!r} is not an integer or a percentage such as 25%")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{value!r} must not be negative")
        if str(self.max_surge) in {"0", "0%"} and str(self.max_unavailable) in {"0", "0%"}:
            raise ValueError("maxSurge and maxUnavailable must not both be zero")
        return self


class PodSecurity(ApiModel):
    """User and group the pod runs as (always non-root)."""

    run_as_user: int = Field(
        default=1000, ge=1, le=2147483647, description="UID of both containers (non-root)."
    )
    run_as_group: int = Field(default=1000, ge=0, le=2147483647, description="GID of both containers.")
    fs_group: int = Field(default=1000, ge=0, le=2147483647, description="fsGroup for the volumes.")


class ExtraVolume(ApiModel):
    """A Kubernetes Volume (any source) for spec.comfyui.extraVolumeMounts."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    name: str = Field(min_length=1, max_length=57, pattern=DNS_LABEL, description="Volume name.")


_RESERVED_LABEL_PREFIX = "app.kubernetes.io/"
SCALING_RULE = "!has(self.scaling) || has(self.routing)"
SCALING_MESSAGE = "scaling needs routing: only the router can hold a job while no replica runs"


class ComfyUIInstanceSpec(ApiModel):
    """Desired state of a ComfyUI service: ComfyUI plus the comfyui-api sidecar behind a Service."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.comfyui) || !has(self.comfyui.extraVolumeMounts) || "
                    "self.comfyui.extraVolumeMounts.all(m, has(self.extraVolumes) && "
                    "self.extraVolumes.exists(v, v.name == m.name))",
                    "every comfyui.extraVolumeMounts[].name must name an entry of extraVolumes",
                ),
                _cel(SCALING_RULE, SCALING_MESSAGE, ".scaling"),
            ]
        }
    )

    replicas: int = Field(
        default=1, ge=0, le=1000, description="Number of pods (each with its own GPU and cache)."
    )
    comfyui: ComfyUIContainer = Field(
        default_factory=ComfyUIContainer,
        json_schema_extra={"default": {}},
        description="The ComfyUI container.",
    )
    sidecar: Sidecar = Field(
        default_factory=Sidecar, json_schema_extra={"default": {}}, description="The comfyui-api sidecar."
    )
    models: Models | None = Field(default=None, description="Shared, read-only model store (optional).")
    cache: Cache = Field(
        default_factory=Cache, json_schema_extra={"default": {}}, description="Per-pod model download cache."
    )
    input: ScratchDir = Field(
        default_factory=ScratchDir, json_schema_extra={"default": {}}, description="emptyDir for input files."
    )
    output: ScratchDir = Field(
        default_factory=ScratchDir,
        json_schema_extra={"default": {}},
        description="emptyDir for output files.",
    )
    custom_nodes: CustomNodes | None = Field(
        default=None, description="Custom nodes from a PVC (else the image's)."
    )
    warmup: Warmup | None = Field(default=None, description="Warmup prompt run before the pod is ready.")
    hugging_face: HuggingFace | None = Field(
        default=None, description="Hugging Face token (Secret reference)."
    )
    webhook: Webhook | None = Field(default=None, description="Webhook signing secret (Secret reference).")
    api: Api = Field(
        default_factory=Api,
        json_schema_extra={"default": {}},
        description="Comfy API v2 and bearer-token auth of the sidecar's HTTP API.",
    )
    routing: Routing | None = Field(
        default=None, description="A model-aware router in front of the replicas (docs/router.md)."
    )
    scaling: Scaling | None = Field(
        default=None, description="Scale to zero when idle, back up when a job arrives (needs routing)."
    )
    extra_volumes: Annotated[list[ExtraVolume], Field(max_length=16)] | None = Field(
        default=None, description="Extra pod volumes for comfyui.extraVolumeMounts."
    )
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] | None = Field(
        default=None, description="Secrets for pulling private images."
    )
    service_account_name: ResourceName | None = Field(
        default=None, description="ServiceAccount of the pods; its token is not mounted."
    )
    node_selector: StringMap | None = Field(default=None, description="Node labels the pods require.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None,
        description="Tolerations. Pods that request GPUs also tolerate the GPU resource's taint "
        "(key = gpu.resourceName, NoSchedule) unless a toleration for that key is given here.",
    )
    affinity: FreeObject | None = Field(default=None, description="A Kubernetes Affinity.")
    topology_spread_constraints: Annotated[list[FreeObject], Field(max_length=8)] | None = Field(
        default=None,
        description="Kubernetes TopologySpreadConstraints (labelSelector defaults to the pods').",
    )
    priority_class_name: ResourceName | None = Field(default=None, description="PriorityClass of the pods.")
    runtime_class_name: ResourceName | None = Field(default=None, description="RuntimeClass, e.g. nvidia.")
    security_context: PodSecurity = Field(
        default_factory=PodSecurity,
        json_schema_extra={"default": {}},
        description="Non-root user and groups.",
    )
    service: Service = Field(
        default_factory=Service, json_schema_extra={"default": {}}, description="The Service."
    )
    pod_annotations: StringMap | None = Field(default=None, description="Extra pod annotations.")
    pod_labels: StringMap | None = Field(
        default=None, description="Extra pod labels (keys under app.kubernetes.io/ are reserved)."
    )
    update_strategy: UpdateStrategy = Field(
        default_factory=UpdateStrategy, json_schema_extra={"default": {}}, description="Pod update strategy."
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=0,
        le=90000,
        description="Time for running prompts to finish when a pod is removed (rollout, scale-down, drain). "
        "Default: sidecar.promptTimeoutSeconds + 35, so a prompt that just started still finishes.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ComfyUIInstanceSpec:
        volumes = {volume.name for volume in self.extra_volumes or []}
        for mount in self.comfyui.extra_volume_mounts or []:
            if mount.name not in volumes:
                raise ValueError("every comfyui.extraVolumeMounts[].name must name an entry of extraVolumes")
        if self.scaling is not None and self.routing is None:
            raise ValueError(SCALING_MESSAGE)
        for key in self.pod_labels or {}:
            if key.startswith(_RESERVED_LABEL_PREFIX):
                raise ValueError(
                    f"podLabels key {key!r} is reserved (app.kubernetes.io/ labels are the operator's)"
                )
        return self


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A standard condition (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=316, description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason, e.g. Unschedulable, ImagePullFailed.")
    message: str = Field(max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation the condition reflects."
    )


class ScalingStatus(ApiModel):
    """Scale to zero (spec.scaling), written by the operator when it scales the replicas down or back."""

    model_config = ConfigDict(extra="ignore")

    scaled_to_zero: bool = Field(description="The replicas are at zero because the instance was idle.")
    last_transition_time: str = Field(description="When the operator last scaled down or back (RFC 3339).")
    message: str = Field(max_length=1024, description="Why.")


class ComfyUIInstanceStatus(ApiModel):
    """Observed state, written by the operator through the status subresource."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="metadata.generation last acted on.")
    replicas: int | None = Field(default=None, description="Pods of the current Deployment.")
    ready_replicas: int | None = Field(default=None, description="Pods ready to serve.")
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoint: str | None = Field(default=None, description="In-cluster URL of the comfyui-api service.")
    comfyui_image: str | None = Field(default=None, description="ComfyUI image the pods run.")
    sidecar_image: str | None = Field(default=None, description="Sidecar image the pods run.")
    scaling: ScalingStatus | None = Field(default=None, description="Scale to zero (spec.scaling).")
    conditions: Annotated[list[Condition], Field(max_length=16)] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


INSTANCE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_INSTANCE_NAME = 55
NAME_MESSAGE = (
    "must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter) "
    f"of at most {MAX_INSTANCE_NAME} characters: it names the Service"
)
# On the root (only there does CEL see metadata.name); fieldPath makes the answer name the field, not <nil>.
NAME_RULE: JsonDict = {
    "rule": f"self.metadata.name.size() <= {MAX_INSTANCE_NAME} && "
    f"self.metadata.name.matches('{INSTANCE_NAME}')",
    "message": NAME_MESSAGE,
    "messageExpression": f'self.metadata.name + " {NAME_MESSAGE}"',
    "fieldPath": ".metadata.name",
    "reason": "FieldValueInvalid",
}


def check_instance_name(name: str) -> None:
    """Raise ValueError when `name` can not name the instance's Service (same rule as the CRD's)."""
    if len(name) > MAX_INSTANCE_NAME or not re.match(INSTANCE_NAME, name):
        raise ValueError(f"metadata.name {NAME_MESSAGE}")


def parse_spec(spec: dict[str, Any]) -> ComfyUIInstanceSpec:
    """Parse and validate a spec as stored by the API server (camelCase). Raises pydantic.ValidationError."""
    return ComfyUIInstanceSpec.model_validate(spec)

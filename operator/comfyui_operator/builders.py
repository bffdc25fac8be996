"""Pure builders: (instance metadata, spec, operator settings) -> manifest dicts for server-side apply.

Every function here is deterministic and does no I/O. The pod layout (see docs/operator.md):

    sidecar  native sidecar (init container, restartPolicy Always): :3000 in attach mode, models (ro),
             cache (rw), input, output, tmp, config/warmup (ro). It starts first and stops last.
    comfyui  main container: 127.0.0.1:8188, read-only root, models (ro), cache (ro), input, output, tmp,
             config (ro). Probed through the sidecar (GET /health/comfyui); its preStop hook is the sidecar's
             GET /drain, so running prompts finish before ComfyUI gets SIGTERM.
    comfyui-<i>  with gpu.mode ComfyUIPerGPU, instead: one per GPU, 127.0.0.1:8188+i, one GPU each, its own
             temp and user directories; probed through GET /health/comfyui/<i>, preStop GET /drain/<i>.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from comfyui_operator import api, router_builders
from comfyui_operator.quantity import parse_quantity
from comfyui_operator.settings import OperatorSettings

MANAGER = "comfyui-operator"
COMFYUI_CONTAINER = "comfyui"  # status.py reads its restarts by this name
COMFYUI_PORT = 8188
SIDECAR_PORT = 3000
CONFIG_HASH_ANNOTATION = f"{api.GROUP}/config-hash"

MODELS_ROOT = "/models"
CACHE_ROOT = "/cache"
CACHE_MODELS_ROOT = f"{CACHE_ROOT}/models"
INPUT_DIR = "/data/input"
OUTPUT_DIR = "/data/output"
TMP_DIR = "/tmp"  # noqa: S108 - a pod-private emptyDir, not the node's /tmp
CONFIG_DIR = "/etc/comfyui-operator"
WARMUP_DIR = "/etc/comfyui-warmup"
# ComfyUI's extra_model_paths.yaml, in the cache volume: the sidecar writes it (comfyui_sidecar.model_paths,
# the one owner of the model-folder list, from the sidecar's own settings) before its /health answers, so
# before the kubelet starts ComfyUI, which is pointed at it with --extra-model-paths-config.
MODEL_PATHS_FILE = f"{CACHE_ROOT}/extra_model_paths.yaml"
WARMUP_KEY = "warmup.json"
PROGRESS_MARGIN_SECONDS = 600  # image pulls of multi-GB ComfyUI images, on top of the startup budget
# Pod removal (docs/operator.md, "Pod lifecycle"): the ComfyUI container's preStop hook is the sidecar's
# GET /drain, which keeps taking prompts for DRAIN_DELAY_SECONDS while the Service forgets the pod, then waits
# for the running ones; ComfyUI and the sidecar then need STOP_MARGIN_SECONDS to exit and deliver webhooks.
DRAIN_DELAY_SECONDS = 5
STOP_MARGIN_SECONDS = 30
# ComfyUI is restarted when it has not answered for COMFYUI_LIVENESS_PERIOD * COMFYUI_LIVENESS_FAILURES s.
COMFYUI_LIVENESS_PERIOD = 10
COMFYUI_LIVENESS_FAILURES = 6
COMFYUI_STARTUP_PERIOD = 5
# A ComfyUI that failed its probes is stopped within this, not the pod's (long) grace period.
COMFYUI_PROBE_KILL_GRACE_SECONDS = 30
SIDECAR_STARTUP_PERIOD = 1
SIDECAR_STARTUP_FAILURES = 60


@dataclass(frozen=True)
class InstanceRef:
    """What the builders need from the custom resource's metadata."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


def labels(instance: InstanceRef) -> dict[str, str]:
    """Labels on every owned object."""
    return {
        "app.kubernetes.io/name": "comfyui",
        "app.kubernetes.io/instance": instance.name,
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/part-of": "comfyui-operator",
    }


def selector_labels(instance: InstanceRef) -> dict[str, str]:
    """The pods' selector (immutable once the Deployment exists)."""
    return {"app.kubernetes.io/name": "comfyui", "app.kubernetes.io/instance": instance.name}


def selector_string(instance: InstanceRef) -> str:
    """The selector as the string the scale subresource reports in status.selector."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(instance).items())


def config_map_name(instance: InstanceRef) -> str:
    return f"{instance.name}-config"


def endpoint(instance: InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings) -> str:
    """In-cluster URL of the comfyui-api service."""
    return f"http://{instance.name}.{instance.namespace}.svc.{settings.cluster_domain}:{spec.service.port}"


def owner_reference(instance: InstanceRef, kind: str = api.KIND) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": kind,
        "name": instance.name,
        "uid": instance.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(instance: InstanceRef, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": instance.namespace,
        "labels": labels(instance),
        "ownerReferences": [owner_reference(instance)],
    }
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta


# ---- ConfigMap ----


def config_data(spec: api.ComfyUIInstanceSpec) -> dict[str, str]:
    """The generated ConfigMap's data: the inline warmup prompt (ComfyUI's model paths are the sidecar's)."""
    data: dict[str, str] = {}
    if spec.warmup is not None and spec.warmup.prompt is not None:
        data[WARMUP_KEY] = json.dumps(spec.warmup.prompt, indent=2, sort_keys=True) + "\n"
    return data


def config_hash(spec: api.ComfyUIInstanceSpec) -> str:
    """Hash of the generated configuration; a change rolls the pods."""
    text = json.dumps(config_data(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_config_map(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(instance, config_map_name(instance)),
        "data": config_data(spec),
    }


# ---- Deployment ----


def _resources(resources: api.ResourceRequirements | None, gpu: api.GPU | None = None) -> dict[str, Any]:
    out: dict[str, dict[str, int | str]] = {}
    if resources is not None:
        if resources.requests:
            out["requests"] = dict(resources.requests)
        if resources.limits:
            out["limits"] = dict(resources.limits)
    if gpu is not None and gpu.count > 0:
        out.setdefault("requests", {})[gpu.resource_name] = gpu.count
        out.setdefault("limits", {})[gpu.resource_name] = gpu.count
    return {key: dict(sorted(value.items())) for key, value in out.items()}


def _env(entries: list[api.EnvVar] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries or []:
        item: dict[str, Any] = {"name": entry.name}
        if entry.value_from is not None:
            item["valueFrom"] = entry.value_from
        else:
            item["value"] = entry.value or ""
        out.append(item)
    return out


def _secret_env(name: str, ref: api.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def pod_security(security: api.PodSecurity) -> dict[str, Any]:
    """The pod's securityContext: non-root with the spec's user and groups, seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "fsGroup": security.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cache_size_bytes(spec: api.ComfyUIInstanceSpec) -> int:
    return int(parse_quantity(spec.cache.size_limit))


def warmup_file(spec: api.ComfyUIInstanceSpec) -> str | None:
    if spec.warmup is None:
        return None
    if spec.warmup.config_map_ref is not None:
        return f"{WARMUP_DIR}/{spec.warmup.config_map_ref.key}"
    return f"{CONFIG_DIR}/{WARMUP_KEY}"


def per_gpu(spec: api.ComfyUIInstanceSpec) -> bool:
    """One ComfyUI container per GPU (gpu.mode ComfyUIPerGPU)."""
    return spec.comfyui.gpu.mode == "ComfyUIPerGPU"


def is_comfyui_container(name: str) -> bool:
    """`comfyui`, or `comfyui-<i>` in the per-GPU mode (status.py reads their restarts)."""
    return name == COMFYUI_CONTAINER or name.removeprefix(f"{COMFYUI_CONTAINER}-").isdigit()


def comfyui_tmp(index: int | None) -> str:
    """The directory ComfyUI gets as --temp-directory (it writes to `<it>/temp`) and holds its user dir."""
    return TMP_DIR if index is None else f"{TMP_DIR}/comfyui-{index}"


def comfyui_args(spec: api.ComfyUIInstanceSpec, index: int | None = None) -> list[str]:
    """User arguments first, then the operator's (ComfyUI's argparse keeps the last value of a flag).
    `index`: the per-GPU ComfyUI (its own port, temp and user directories), None for the one ComfyUI."""
    tmp = comfyui_tmp(index)
    return [
        *(spec.comfyui.args or []),
        "--listen",
        "127.0.0.1",
        "--port",
        str(COMFYUI_PORT + (index or 0)),
        "--extra-model-paths-config",
        MODEL_PATHS_FILE,
        "--input-directory",
        INPUT_DIR,
        "--output-directory",
        OUTPUT_DIR,
        "--temp-directory",
        tmp,
        "--user-directory",
        f"{tmp}/user",
    ]


def _shared_mounts(spec: api.ComfyUIInstanceSpec, cache_read_only: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    if spec.models is not None:
        models: dict[str, Any] = {"name": "models", "mountPath": MODELS_ROOT, "readOnly": True}
        if spec.models.sub_path:
            models["subPath"] = spec.models.sub_path
        mounts.append(models)
    mounts += [
        {"name": "cache", "mountPath": CACHE_ROOT, "readOnly": cache_read_only},
        {"name": "input", "mountPath": INPUT_DIR},
        {"name": "output", "mountPath": OUTPUT_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    return mounts


def build_comfyui_containers(
    spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The one ComfyUI container, or one per GPU (each requesting one GPU, so the device plugin gives each
    its own device)."""
    if not per_gpu(spec):
        return [build_comfyui_container(spec, settings)]
    return [build_comfyui_container(spec, settings, index) for index in range(spec.comfyui.gpu.count)]


def build_comfyui_container(
    spec: api.ComfyUIInstanceSpec, settings: OperatorSettings, index: int | None = None
) -> dict[str, Any]:
    comfy = spec.comfyui
    suffix = "" if index is None else f"/{index}"
    gpu = comfy.gpu if index is None else comfy.gpu.model_copy(update={"count": 1})
    mounts = _shared_mounts(spec, cache_read_only=True)
    if spec.custom_nodes is not None:
        custom: dict[str, Any] = {
            "name": "custom-nodes",
            "mountPath": spec.custom_nodes.mount_path,
            "readOnly": True,
        }
        if spec.custom_nodes.sub_path:
            custom["subPath"] = spec.custom_nodes.sub_path
        mounts.append(custom)
    for extra in comfy.extra_volume_mounts or []:
        mount: dict[str, Any] = {
            "name": f"extra-{extra.name}",
            "mountPath": extra.mount_path,
            "readOnly": extra.read_only,
        }
        if extra.sub_path:
            mount["subPath"] = extra.sub_path
        mounts.append(mount)
    container: dict[str, Any] = {
        "name": COMFYUI_CONTAINER if index is None else f"{COMFYUI_CONTAINER}-{index}",
        "image": comfy.image or settings.comfyui_image,
        "imagePullPolicy": comfy.image_pull_policy,
        "command": list(comfy.command or settings.comfyui_command),
        "args": comfyui_args(spec, index),
        "workingDir": comfy.working_dir or settings.comfyui_workdir,
        "env": [{"name": "HOME", "value": TMP_DIR}, *_env(comfy.env)],
        "resources": _resources(comfy.resources, gpu),
        "volumeMounts": mounts,
        "securityContext": _container_security(comfy.read_only_root_filesystem),
        # ComfyUI listens on loopback only: the kubelet probes it through the sidecar, which is up before
        # ComfyUI starts (native sidecar with a startup probe).
        "startupProbe": _probe(
            f"/health/comfyui{suffix}",
            COMFYUI_STARTUP_PERIOD,
            -(-spec.sidecar.startup_timeout_seconds // COMFYUI_STARTUP_PERIOD),
            port=SIDECAR_PORT,
            kill_grace=COMFYUI_PROBE_KILL_GRACE_SECONDS,
        ),
        "livenessProbe": _probe(
            f"/health/comfyui{suffix}",
            COMFYUI_LIVENESS_PERIOD,
            COMFYUI_LIVENESS_FAILURES,
            port=SIDECAR_PORT,
            kill_grace=COMFYUI_PROBE_KILL_GRACE_SECONDS,
        ),
        "lifecycle": {"preStop": {"httpGet": {"path": f"/drain{suffix}", "port": SIDECAR_PORT}}},
    }
    return container


def termination_grace_seconds(spec: api.ComfyUIInstanceSpec) -> int:
    """The spec's value, else long enough for a prompt that just started to finish during a rollout."""
    if spec.termination_grace_period_seconds is not None:
        return spec.termination_grace_period_seconds
    return spec.sidecar.prompt_timeout_seconds + DRAIN_DELAY_SECONDS + STOP_MARGIN_SECONDS


def drain_wait_seconds(spec: api.ComfyUIInstanceSpec) -> int:
    """How long the sidecar waits for running prompts on removal: the grace period minus the drain delay and
    the time ComfyUI and the sidecar need to exit."""
    return max(0, termination_grace_seconds(spec) - DRAIN_DELAY_SECONDS - STOP_MARGIN_SECONDS)


def peers_service_name(instance: InstanceRef) -> str:
    """The headless Service whose DNS records are the pods (the sidecars' peers)."""
    return f"{instance.name}-peers"


def api_env(
    instance: InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Comfy API v2, auth and peer discovery (comfyui_sidecar.v2.settings). Each pod names itself by its IP;
    ids are tagged with the instance's UID; uploads and kept outputs may use half of their emptyDirs."""
    spec_api = spec.api
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "PEERS_DNS",
            "value": f"{peers_service_name(instance)}.{instance.namespace}.svc.{settings.cluster_domain}",
        },
        {"name": "PEER_PORT", "value": str(SIDECAR_PORT)},
        {"name": "ID_KEY", "value": instance.uid},
        {"name": "JOB_RETENTION_S", "value": str(spec_api.job_retention_seconds)},
        {"name": "MAX_EVENT_STREAMS", "value": str(spec_api.max_event_streams)},
        {"name": "ASSET_MAX_BYTES", "value": str(int(parse_quantity(spec.input.size_limit)) // 2)},
        {"name": "OUTPUT_MAX_BYTES", "value": str(int(parse_quantity(spec.output.size_limit)) // 2)},
    ]
    return env + access_env(spec)


def access_env(spec: api.ComfyUIInstanceSpec) -> list[dict[str, Any]]:
    """How clients reach and authenticate (spec.api): the same on the sidecars and the router."""
    spec_api = spec.api
    env: list[dict[str, Any]] = []
    if spec_api.public_base_url:
        env.append({"name": "PUBLIC_BASE_URL", "value": spec_api.public_base_url})
    if spec_api.trust_forwarded_headers:
        env.append({"name": "TRUST_FORWARDED_HEADERS", "value": "true"})
    if spec_api.auth is not None:
        env.append(_secret_env("API_TOKEN", spec_api.auth.token_secret_ref))
        env.append({"name": "API_TOKEN_SCOPE", "value": spec_api.auth.scope})
    return env


def sidecar_env(
    instance: InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Environment of the sidecar, named as in comfyui_sidecar.settings (upstream comfyui-api names)."""
    env: list[dict[str, Any]] = [
        {"name": "SIDECAR_MODE", "value": "attach"},
        {"name": "PORT", "value": str(SIDECAR_PORT)},
        {"name": "COMFYUI_URL", "value": f"http://127.0.0.1:{COMFYUI_PORT}"},
        {"name": "MODEL_DIR", "value": MODELS_ROOT if spec.models is not None else CACHE_MODELS_ROOT},
        {"name": "INPUT_DIR", "value": INPUT_DIR},
        {"name": "OUTPUT_DIR", "value": OUTPUT_DIR},
        {"name": "TEMP_DIR", "value": f"{TMP_DIR}/temp"},
        {"name": "CACHE_DIR", "value": CACHE_ROOT},
        {"name": "CACHE_SIZE_LIMIT_BYTES", "value": str(cache_size_bytes(spec))},
        {"name": "EXTRA_MODEL_PATHS_FILE", "value": MODEL_PATHS_FILE},
        {"name": "MAX_QUEUE_DEPTH", "value": str(spec.sidecar.max_queue_depth)},
        {"name": "PROMPT_TIMEOUT_S", "value": str(spec.sidecar.prompt_timeout_seconds)},
        {"name": "STARTUP_CHECK_MAX_TRIES", "value": str(spec.sidecar.startup_timeout_seconds)},
        {"name": "SHUTDOWN_GRACE_PERIOD_S", "value": str(drain_wait_seconds(spec))},
        {"name": "DRAIN_DELAY_S", "value": str(DRAIN_DELAY_SECONDS)},
        {"name": "LOG_LEVEL", "value": spec.sidecar.log_level},
        {"name": "LOG_FORMAT", "value": "json"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": TMP_DIR},
    ]
    if per_gpu(spec):
        indexes = range(spec.comfyui.gpu.count)
        urls = ",".join(f"http://127.0.0.1:{COMFYUI_PORT + i}" for i in indexes)
        temps = ",".join(f"{comfyui_tmp(i)}/temp" for i in indexes)
        env += [{"name": "COMFYUI_URLS", "value": urls}, {"name": "COMFYUI_TEMP_DIRS", "value": temps}]
    warmup = warmup_file(spec)
    if warmup is not None:
        env.append({"name": "WARMUP_PROMPT_FILE", "value": warmup})
    if spec.hugging_face is not None:
        env.append(_secret_env("HF_TOKEN", spec.hugging_face.token_secret_ref))
    if spec.webhook is not None:
        env.append(_secret_env("WEBHOOK_SECRET", spec.webhook.secret_ref))
    return [*env, *api_env(instance, spec, settings), *_env(spec.sidecar.env)]


def _probe(
    path: str,
    period: int,
    failures: int,
    *,
    timeout: int = 5,
    port: int | str = "http",
    kill_grace: int | None = None,
) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }
    if kill_grace is not None:
        probe["terminationGracePeriodSeconds"] = kill_grace
    return probe


def build_sidecar_container(
    instance: InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> dict[str, Any]:
    side = spec.sidecar
    mounts = _shared_mounts(spec, cache_read_only=False)
    if spec.warmup is not None and spec.warmup.config_map_ref is not None:
        mounts.append({"name": "warmup", "mountPath": WARMUP_DIR, "readOnly": True})
    return {
        "name": "sidecar",
        "image": side.image or settings.sidecar_image,
        "imagePullPolicy": side.image_pull_policy,
        "ports": [{"name": "http", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "env": sidecar_env(instance, spec, settings),
        "resources": _resources(side.resources),
        "volumeMounts": mounts,
        # /health answers as soon as the sidecar listens (start-up downloads run in the background); ComfyUI
        # starts once this probe passes. /ready holds the pod out of the Service until ComfyUI is up and warm.
        "startupProbe": _probe("/health", SIDECAR_STARTUP_PERIOD, SIDECAR_STARTUP_FAILURES),
        "livenessProbe": _probe("/health", 10, 3),
        "readinessProbe": _probe("/ready", 5, 1),
        "securityContext": _container_security(True),
        "restartPolicy": "Always",
    }


def _empty_dir(size: int | str, medium: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"sizeLimit": size}
    if medium:
        empty["medium"] = medium
    return {"emptyDir": empty}


def build_volumes(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = []
    if spec.models is not None:
        claim = spec.models.claim_name or (spec.models.library_ref.name if spec.models.library_ref else "")
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    volumes += [
        {"name": "cache", **_empty_dir(spec.cache.size_limit, spec.cache.medium)},
        {"name": "input", **_empty_dir(spec.input.size_limit, spec.input.medium)},
        {"name": "output", **_empty_dir(spec.output.size_limit, spec.output.medium)},
        {"name": "tmp", **_empty_dir(f"{2 * spec.comfyui.gpu.comfyui_count}Gi", "")},
        {"name": "config", "configMap": {"name": config_map_name(instance)}},
    ]
    if spec.warmup is not None and spec.warmup.config_map_ref is not None:
        ref = spec.warmup.config_map_ref
        volumes.append(
            {"name": "warmup", "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]}}
        )
    if spec.custom_nodes is not None:
        volumes.append(
            {
                "name": "custom-nodes",
                "persistentVolumeClaim": {"claimName": spec.custom_nodes.claim_name, "readOnly": True},
            }
        )
    for extra in spec.extra_volumes or []:
        volume = extra.model_dump(by_alias=True, exclude_none=True)
        volume["name"] = f"extra-{extra.name}"
        volumes.append(volume)
    return volumes


def _strategy(spec: api.ComfyUIInstanceSpec) -> dict[str, Any]:
    strategy = spec.update_strategy
    if strategy.type == "Recreate":
        return {"type": "Recreate"}
    return {
        "type": "RollingUpdate",
        "rollingUpdate": {
            "maxSurge": strategy.max_surge if strategy.max_surge is not None else 1,
            "maxUnavailable": strategy.max_unavailable if strategy.max_unavailable is not None else 0,
        },
    }


def _topology_spread(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> list[dict[str, Any]]:
    out = []
    for constraint in spec.topology_spread_constraints or []:
        item = dict(constraint)
        item.setdefault("labelSelector", {"matchLabels": selector_labels(instance)})
        out.append(item)
    return out


def build_tolerations(spec: api.ComfyUIInstanceSpec) -> list[dict[str, Any]]:
    """The spec's tolerations, plus one for the GPU resource's taint when GPUs are requested.

    GPU nodes are commonly tainted with the resource name (e.g. `nvidia.com/gpu=present:NoSchedule`), as the
    ExtendedResourceToleration admission plugin assumes; a pod that asks for GPUs tolerates that taint, unless
    the spec already has a toleration for that key.
    """
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    gpu = spec.comfyui.gpu
    if gpu.count > 0 and not any(t.get("key") == gpu.resource_name for t in tolerations):
        tolerations.append({"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def build_pod_spec(
    instance: InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> dict[str, Any]:
    security = spec.security_context
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": pod_security(security),
        # The sidecar is a native sidecar (restartable init container): it listens before ComfyUI starts (so
        # ComfyUI can be probed through it) and is stopped only after ComfyUI, whose preStop hook drains it.
        "initContainers": [build_sidecar_container(instance, spec, settings)],
        "containers": build_comfyui_containers(spec, settings),
        "volumes": build_volumes(instance, spec),
    }
    optional: dict[str, Any] = {
        "serviceAccountName": spec.service_account_name,
        "imagePullSecrets": [{"name": ref.name} for ref in spec.image_pull_secrets or []] or None,
        "nodeSelector": dict(sorted(spec.node_selector.items())) if spec.node_selector else None,
        "tolerations": build_tolerations(spec) or None,
        "affinity": spec.affinity,
        "topologySpreadConstraints": _topology_spread(instance, spec) or None,
        "priorityClassName": spec.priority_class_name,
        "runtimeClassName": spec.runtime_class_name,
    }
    pod.update({key: value for key, value in optional.items() if value is not None})
    return pod


def build_deployment(
    instance: InstanceRef,
    spec: api.ComfyUIInstanceSpec,
    settings: OperatorSettings,
    *,
    scaled_to_zero: bool = False,
) -> dict[str, Any]:
    """The replicas; `scaled_to_zero` (spec.scaling, idle) sets 0 pods and keeps spec.replicas as the size
    to scale back to."""
    pod_labels = {**(spec.pod_labels or {}), **labels(instance)}
    pod_annotations = {
        "kubectl.kubernetes.io/default-container": "sidecar",
        **(spec.pod_annotations or {}),
        CONFIG_HASH_ANNOTATION: config_hash(spec),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(instance, instance.name),
        "spec": {
            "replicas": 0 if scaled_to_zero else spec.replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.sidecar.startup_timeout_seconds + PROGRESS_MARGIN_SECONDS,
            "selector": {"matchLabels": selector_labels(instance)},
            "strategy": _strategy(spec),
            "template": {
                "metadata": {
                    "labels": dict(sorted(pod_labels.items())),
                    "annotations": dict(sorted(pod_annotations.items())),
                },
                "spec": build_pod_spec(instance, spec, settings),
            },
        },
    }


# ---- Service and PodDisruptionBudget ----


def build_service(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> dict[str, Any]:
    """The instance's address. With spec.routing it leads to the router pods, which pass each job on to a
    replica (reached by the router through <name>-peers); clients keep the same address either way."""
    selector = router_builders.selector_labels(instance) if spec.routing else selector_labels(instance)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(instance, instance.name, spec.service.annotations),
        "spec": {
            "type": spec.service.type,
            "selector": selector,
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_peers_service(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> dict[str, Any]:
    """Headless, with not-ready pods too: a sidecar finds the pod that owns a job by its IP even while that
    pod is not ready (queue full, draining), and a forged id can only ever name one of these pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(instance, peers_service_name(instance)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(instance),
            "ports": [{"name": "http", "port": SIDECAR_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def wants_pdb(spec: api.ComfyUIInstanceSpec) -> bool:
    return spec.replicas > 1


def build_pdb(instance: InstanceRef, spec: api.ComfyUIInstanceSpec) -> dict[str, Any]:
    """At most one pod of the instance voluntarily disrupted at a time (only built when replicas > 1)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(instance, instance.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(instance)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_all(
    instance: InstanceRef,
    spec: api.ComfyUIInstanceSpec,
    settings: OperatorSettings,
    *,
    scaled_to_zero: bool = False,
) -> list[dict[str, Any]]:
    """Every object the instance should own, in apply order (the ConfigMap before the pods that mount it)."""
    objects = [
        build_config_map(instance, spec),
        build_service(instance, spec),
        build_peers_service(instance, spec),
        build_deployment(instance, spec, settings, scaled_to_zero=scaled_to_zero),
    ]
    if wants_pdb(spec):
        objects.append(build_pdb(instance, spec))
    return objects + router_builders.build_router_objects(instance, spec, settings)

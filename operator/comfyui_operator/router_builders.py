"""Pure builders of the router objects (spec.routing; docs/router.md): a Deployment of router pods, their
PodDisruptionBudget and a headless Service through which the routers find each other. The instance's Service
`<name>` then selects the router pods (builders.build_service); the routers reach the replicas through the
replicas' headless `<name>-peers` Service.

    router   comfyui-router from the sidecar image, :3000, no GPU; held v2 jobs journaled in an emptyDir;
             preferably one per node (anti-affinity), at most one down at a time (PDB).
"""

from __future__ import annotations

from typing import Any

# The pod-building helpers of `builders` are shared on purpose (one way to write probes, resources, security).
from comfyui_operator import api, builders
from comfyui_operator.settings import OperatorSettings

COMPONENT = "comfyui-router"
ROUTER_CONTAINER = "router"
HOLD_DIR = "/var/lib/comfyui-router"
HOLD_VOLUME_LIMIT = "1Gi"
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
SHARED_SIDECAR_ENV = (
    "MAX_BODY_SIZE_MB",
    "MAX_JSON_VALUES",
    "RETRY_AFTER_S",
    "EVENT_HEARTBEAT_S",
    "EXTRA_MODEL_LOADERS",
    "LOG_FORMAT",
)
"""Settings the router shares with the sidecars: copied from spec.sidecar.env when set there."""


def router_name(instance: builders.InstanceRef) -> str:
    return f"{instance.name}-router"


def router_peers_name(instance: builders.InstanceRef) -> str:
    return f"{instance.name}-router-peers"


def selector_labels(instance: builders.InstanceRef) -> dict[str, str]:
    """The router pods' selector; neither the replicas' Deployment nor <name>-peers picks a router."""
    return {"app.kubernetes.io/name": COMPONENT, "app.kubernetes.io/instance": instance.name}


def _pod_labels(instance: builders.InstanceRef) -> dict[str, str]:
    return {**builders.labels(instance), **selector_labels(instance), "app.kubernetes.io/component": "router"}


def _metadata(instance: builders.InstanceRef, name: str) -> dict[str, Any]:
    """Owned like every other object; the Deployment keeps the operator's labels (app.kubernetes.io/name:
    comfyui), so the operator's Deployment watch sees it (re-applied when deleted)."""
    meta = builders._metadata(instance, name)
    meta["labels"] = {**meta["labels"], "app.kubernetes.io/component": "router"}
    return meta


def _dns(instance: builders.InstanceRef, service: str, settings: OperatorSettings) -> str:
    return f"{service}.{instance.namespace}.svc.{settings.cluster_domain}"


def hold_timeout_seconds(spec: api.ComfyUIInstanceSpec) -> int:
    routing = spec.routing or api.Routing()
    return routing.hold_timeout_seconds or spec.sidecar.prompt_timeout_seconds


def router_env(
    instance: builders.InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Environment of comfyui-router (comfyui_router.settings)."""
    routing = spec.routing or api.Routing()
    port = str(builders.SIDECAR_PORT)
    env: list[dict[str, Any]] = [
        {"name": "PORT", "value": port},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "REPLICAS_DNS", "value": _dns(instance, builders.peers_service_name(instance), settings)},
        {"name": "REPLICA_PORT", "value": port},
        {"name": "PEERS_DNS", "value": _dns(instance, router_peers_name(instance), settings)},
        {"name": "PEER_PORT", "value": port},
        {"name": "ID_KEY", "value": instance.uid},
        {"name": "JOB_RETENTION_S", "value": str(spec.api.job_retention_seconds)},
        {"name": "AFFINITY_MAX_QUEUE", "value": str(routing.affinity_max_queue)},
        {"name": "MAX_HELD_JOBS", "value": str(routing.max_held_jobs)},
        {"name": "HOLD_TIMEOUT_S", "value": str(hold_timeout_seconds(spec))},
        {"name": "HOLD_DIR", "value": HOLD_DIR},
        {"name": "SHUTDOWN_GRACE_PERIOD_S", "value": str(builders.drain_wait_seconds(spec))},
        {"name": "DRAIN_DELAY_S", "value": str(builders.DRAIN_DELAY_SECONDS)},
        {"name": "LOG_LEVEL", "value": spec.sidecar.log_level},
        {"name": "LOG_FORMAT", "value": "json"},
    ]
    shared = [entry for entry in builders._env(spec.sidecar.env) if entry["name"] in SHARED_SIDECAR_ENV]
    by_name = {entry["name"]: entry for entry in [*env, *builders.access_env(spec), *shared]}  # later wins
    return list(by_name.values())


def build_router_deployment(
    instance: builders.InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> dict[str, Any]:
    routing = spec.routing or api.Routing()
    resources = builders._resources(routing.resources) if routing.resources else DEFAULT_RESOURCES
    container = {
        "name": ROUTER_CONTAINER,
        "image": spec.sidecar.image or settings.sidecar_image,
        "imagePullPolicy": spec.sidecar.image_pull_policy,
        "command": ["comfyui-router"],
        "ports": [{"name": "http", "containerPort": builders.SIDECAR_PORT, "protocol": "TCP"}],
        "env": router_env(instance, spec, settings),
        "resources": resources,
        "volumeMounts": [{"name": "held", "mountPath": HOLD_DIR}],
        "startupProbe": builders._probe("/health", 1, 30),
        "livenessProbe": builders._probe("/health", 10, 3),
        "readinessProbe": builders._probe("/ready", 5, 1),
        "securityContext": builders._container_security(True),
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": builders.termination_grace_seconds(spec),
        "securityContext": builders.pod_security(spec.security_context),
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector_labels(instance)},
                        },
                    }
                ]
            }
        },
        "containers": [container],
        "volumes": [{"name": "held", "emptyDir": {"sizeLimit": HOLD_VOLUME_LIMIT}}],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(instance, router_name(instance)),
        "spec": {
            "replicas": routing.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(instance)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(sorted(_pod_labels(instance).items()))}, "spec": pod},
        },
    }


def build_router_peers_service(instance: builders.InstanceRef) -> dict[str, Any]:
    """Headless: its DNS records are the ready router pods, which copy held jobs to each other."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(instance, router_peers_name(instance)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(instance),
            "ports": [
                {"name": "http", "port": builders.SIDECAR_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_router_pdb(instance: builders.InstanceRef) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(instance, router_name(instance)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(instance)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_router_objects(
    instance: builders.InstanceRef, spec: api.ComfyUIInstanceSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The router objects when spec.routing is set (none otherwise)."""
    if spec.routing is None:
        return []
    return [
        build_router_peers_service(instance),
        build_router_deployment(instance, spec, settings),
        build_router_pdb(instance),
    ]


def owned_router_objects(instance: builders.InstanceRef) -> list[tuple[str, str]]:
    """(kind, name) of every router object, to delete when spec.routing is removed."""
    name = router_name(instance)
    return [("Deployment", name), ("PodDisruptionBudget", name), ("Service", router_peers_name(instance))]

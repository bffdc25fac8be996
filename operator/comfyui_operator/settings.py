"""Operator settings: one pydantic-settings model read from COMFYUI_OPERATOR_* environment variables."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from comfyui_operator import __version__

DEFAULT_COMFYUI_IMAGE = "ghcr.io/saladtechnologies/comfyui-api:comfy0.19.3-torch2.8.0-cuda12.8-runtime"
DEFAULT_SIDECAR_IMAGE = f"ghcr.io/comfyui-operator/sidecar:{__version__}"
# One Lease for every copy of the operator, wherever it runs: the chart's pods (POD_NAMESPACE is the release
# namespace) and a local `comfyui-operator` (the namespace the docs install the chart into).
LEASE_NAME = "comfyui-operator"
OPERATOR_NAMESPACE = "comfyui-system"
# The cluster's own namespaces: an instance there could run pods that mount their Secrets.
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


class OperatorSettings(BaseSettings):
    """Everything the operator process is configured with. Example: COMFYUI_OPERATOR_NAMESPACES=ai,batch."""

    model_config = SettingsConfigDict(
        env_prefix="COMFYUI_OPERATOR_", extra="ignore", frozen=True, populate_by_name=True
    )

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma separated; empty means cluster-wide.",
    )
    excluded_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDED_NAMESPACES),
        description="Namespaces whose instances are refused (status NamespaceExcluded), comma separated.",
    )
    sidecar_image: str = Field(
        default=DEFAULT_SIDECAR_IMAGE, min_length=1, description="Default sidecar image."
    )
    comfyui_image: str = Field(
        default=DEFAULT_COMFYUI_IMAGE, min_length=1, description="Default ComfyUI image."
    )
    comfyui_command: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["python", "main.py"],
        description="Default ComfyUI entrypoint, space separated (run in comfyui_workdir).",
    )
    comfyui_workdir: str = Field(
        default="/opt/ComfyUI", pattern=r"^/", description="Default ComfyUI directory."
    )
    cluster_domain: str = Field(
        default="cluster.local", description="Cluster DNS domain (for status.endpoint)."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Log format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Prometheus /metrics port; 0 = off.")
    liveness_port: int = Field(default=8081, ge=0, le=65535, description="Liveness /healthz port; 0 = off.")
    leader_election: bool = Field(
        default=True, description="Run only while holding the Lease (for >1 replica)."
    )
    lease_name: str = Field(default=LEASE_NAME, description="Name of the leader-election Lease.")
    lease_namespace: str = Field(
        default=OPERATOR_NAMESPACE,
        validation_alias=AliasChoices("COMFYUI_OPERATOR_LEASE_NAMESPACE", "POD_NAMESPACE", "lease_namespace"),
        description="Namespace of the Lease: COMFYUI_OPERATOR_LEASE_NAMESPACE, else POD_NAMESPACE (the "
        "chart's pod), else comfyui-system (where the chart is installed), so a local run and the chart "
        "contend for the same Lease.",
    )
    lease_duration_seconds: int = Field(default=15, ge=5, le=300, description="Lease validity.")
    status_refresh_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Periodic status refresh of every instance (besides watch events).",
    )
    retry_base_seconds: int = Field(default=10, ge=1, le=600, description="First retry delay after an error.")
    scaling_poll_seconds: float = Field(
        default=5.0,
        ge=1,
        le=300,
        description="How often the router of an instance with spec.scaling is asked for its activity "
        "(GET /activity): the delay before a held job starts the scale-up.",
    )
    router_url: str = Field(
        default="http://{name}.{namespace}.svc.{cluster_domain}:{port}",
        pattern=r"^https?://",
        description="Where the operator reaches an instance's router ({name}, {namespace}, "
        "{cluster_domain}, {port} are filled in): the instance's Service. Change it only for an operator "
        "running outside the cluster.",
    )
    retry_max_seconds: int = Field(
        default=300, ge=1, le=3600, description="Longest retry delay (backoff cap)."
    )

    @field_validator("namespaces", "excluded_namespaces", "comfyui_command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            separator = "," if "," in value else None
            return [part.strip() for part in value.split(separator) if part.strip()]
        return value

    @field_validator("namespaces", "excluded_namespaces")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):  # DNS-1123 label
                raise ValueError(f"{name!r} is not a namespace name")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> OperatorSettings:
        if self.metrics_port and self.metrics_port == self.liveness_port:
            raise ValueError(f"metrics_port and liveness_port are both {self.metrics_port}")
        return self

    @model_validator(mode="after")
    def _watched_not_excluded(self) -> OperatorSettings:
        both = sorted(set(self.namespaces) & set(self.excluded_namespaces))
        if both:
            raise ValueError(
                f"namespaces {both} are both watched and excluded (COMFYUI_OPERATOR_EXCLUDED_NAMESPACES)"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def load_settings() -> OperatorSettings:
    """Read the settings from the environment (raises pydantic.ValidationError with a clear message)."""
    return OperatorSettings()

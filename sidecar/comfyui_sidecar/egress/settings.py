"""Settings of outbound requests (environment variables; the cache's and sidecar's settings inherit them)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from comfyui_sidecar.egress.addresses import PRIVATE_NETWORKS


def split_list(value: Any) -> Any:
    """A comma list or a JSON list from the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class EgressSettings(BaseSettings):
    """Every outbound request: downloads, uploads, webhooks. Each field is an environment variable."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    download_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Internal networks or host names that downloads, uploads and webhooks may reach although "
        "the egress policy refuses them by default (comma or JSON list of CIDRs, addresses, host names), "
        "e.g. 10.0.0.0/8,minio.local. Metadata, link-local and ComfyUI's own address stay refused.",
    )
    webhook_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description="Internal networks webhooks may reach in addition (in-cluster receivers). Default: the "
        "private ranges 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7; empty = none. Loopback, metadata, "
        "link-local and ComfyUI's and the sidecar's own ports stay refused.",
    )
    download_max_redirects: int = Field(
        default=10, ge=0, le=30, description="Redirects followed per download."
    )
    download_connect_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Connect timeout of downloads and uploads."
    )
    download_read_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest silence while reading a response before it counts as cut."
    )
    upload_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Longest one output upload (one PUT, or one S3 part) may take."
    )

    @field_validator("download_allow_networks", "webhook_allow_networks", mode="before")
    @classmethod
    def _network_lists(cls, value: Any) -> Any:
        return split_list(value)

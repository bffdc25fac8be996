"""Every setting of the router, read from the environment (`comfyui-router --help` prints them).

The router shares the sidecars' v2 settings (API_TOKEN, ID_KEY, PUBLIC_BASE_URL, JOB_RETENTION_S,
RETRY_AFTER_S, ...; the operator sets them to the same values on both). Its PEERS / PEERS_DNS are the other
routers of the instance; REPLICAS / REPLICAS_DNS are the sidecars it routes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from comfyui_sidecar.logs import LogFormat
from comfyui_sidecar.request_body import BodyLimits
from comfyui_sidecar.v2.settings import ApiSettings, parse_peers
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict


class RouterSettings(ApiSettings):
    """The router process: where it listens, the replicas it routes to, the routing policy, held jobs."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    port: int = Field(3000, ge=1, le=65535, description="Port the router listens on.")
    host: str = Field("::", description="Address the router binds to ('::' = all interfaces).")
    replicas: str = Field(
        "",
        description="Static replica list 'name=http://host:port,...' (tests; names as the sidecars' "
        "PEER_NAME).",
    )
    replicas_dns: str | None = Field(
        None,
        description="DNS name whose A/AAAA records are the replicas (the instance's headless "
        "<name>-peers Service); each is named by its IP, as the sidecars name themselves.",
    )
    replica_port: int = Field(3000, ge=1, le=65535, description="Port of replicas found through DNS.")
    placement_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often each replica's GET /internal/placement is read."
    )
    replica_lost_s: float = Field(
        10.0,
        gt=0,
        description="A replica that left discovery, or has not answered GET /internal/placement for this "
        "long, is gone: requests it was answering fail at once with 502 (never hang).",
    )
    routing_policy: Literal["models", "round_robin"] = Field(
        "models",
        description="models: each job goes to the replica that holds its models unless that replica's queue "
        "is longer than AFFINITY_MAX_QUEUE, else to the least-loaded; round_robin: in turn (a plain "
        "Service's behaviour; for comparisons).",
    )
    affinity_max_queue: int = Field(
        3,
        ge=0,
        le=10000,
        description="Longest queue (per ComfyUI of the replica) at which a replica that holds a job's models "
        "still gets the job; beyond it the least-loaded replica does.",
    )
    max_held_jobs: int = Field(
        100,
        ge=1,
        le=100000,
        description="Jobs waiting for a replica at most (v2 jobs held plus comfyui-api requests waiting); "
        "beyond it 429 with Retry-After.",
    )
    max_held_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Bytes of held v2 job bodies at most (beyond it 429)."
    )
    hold_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest a job waits for a ready replica: a held v2 job then fails (no_replica_ready), "
        "a waiting comfyui-api request gets 503.",
    )
    hold_dir: Path | None = Field(
        None,
        description="Directory where held v2 jobs are journaled (an emptyDir: they survive a restart of the "
        "router's container). Unset: memory and the other routers only.",
    )
    max_body_size_mb: int = Field(100, gt=0, description="Largest request body read, in MiB (else 413).")
    max_json_values: int = Field(250_000, ge=1000, description="Most JSON values in a body (else 413).")
    body_read_timeout_s: float = Field(30.0, gt=0, description="Longest silence while a body arrives.")
    body_total_timeout_s: float = Field(300.0, gt=0, description="Longest a body may take in all.")
    shutdown_grace_period_s: float = Field(
        60.0, ge=0, description="On SIGTERM, how long requests in flight may finish."
    )
    drain_delay_s: float = Field(
        5.0, ge=0, description="On SIGTERM, seconds /ready is 503 while requests are still taken."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: LogFormat = Field(
        "text",
        description="json: one JSON object per line, with the id of the job being handled (the operator sets "
        "it); text: lines for a terminal.",
    )

    @field_validator("replicas")
    @classmethod
    def _valid_replicas(cls, value: str) -> str:
        try:
            parse_peers(value)
        except ValueError as error:
            raise ValueError(str(error).replace("PEERS entry", "REPLICAS entry")) from None
        return value

    def static_replicas(self) -> dict[str, str]:
        return parse_peers(self.replicas)

    @property
    def body_limits(self) -> BodyLimits:
        return BodyLimits(
            max_bytes=self.max_body_size_mb * 1024 * 1024,
            idle_timeout_s=self.body_read_timeout_s,
            total_timeout_s=self.body_total_timeout_s,
            max_values=self.max_json_values,
        )

"""Settings of Comfy API v2, bearer-token auth and the replicas ("peers") of one instance.

A mixin listed in the bases of `comfyui_sidecar.settings.Settings`; every field is an environment variable of
the same name in upper case (`comfyui-sidecar --help` prints them).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PEER_NAME_MAX = 64


def parse_peers(text: str) -> dict[str, str]:
    """'name=http://host:port,name2=...' -> {name: base URL}. Raises ValueError with the bad entry."""
    peers: dict[str, str] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        parts = urlsplit(url)
        if not sep or not name or len(name) > PEER_NAME_MAX or parts.scheme not in ("http", "https"):
            raise ValueError(f"PEERS entry {entry!r} is not name=http(s)://host:port")
        if not parts.hostname or parts.query or parts.fragment or parts.path:
            raise ValueError(f"PEERS entry {entry!r}: the URL must be scheme://host:port only")
        peers[name] = url
    return peers


class ApiSettings(BaseSettings):
    """Comfy API v2 (/api/v2), auth, backpressure answers and peer discovery."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    api_token: SecretStr | None = Field(
        None,
        description="Bearer token required on /api/v2 (and with API_TOKEN_SCOPE=all on the comfyui-api "
        "routes). Unset: no authentication. /health, /ready, /metrics and /docs stay open. Never logged.",
    )
    api_token_scope: Literal["v2", "all"] = Field(
        "v2",
        description="v2: only /api/v2 needs the token; all: also /prompt, /interrupt, /models, /download.",
    )
    public_base_url: str | None = Field(
        None,
        description="External URL of the instance (e.g. https://gw.example/comfy): absolute output and asset "
        "URLs are built from it, and its path is the prefix of the host-relative job links.",
    )
    trust_forwarded_headers: bool = Field(
        False,
        description="Build external URLs from X-Forwarded-Proto/-Host/-Prefix (set only behind a proxy that "
        "overwrites them). Ignored when PUBLIC_BASE_URL is set.",
    )
    job_retention_s: int = Field(
        86400, ge=60, le=604800, description="A v2 job, its record and its outputs are kept this long."
    )
    max_retained_jobs: int = Field(
        10000, ge=10, description="Job records kept per pod at most; the oldest finished ones go first."
    )
    output_max_bytes: int = Field(
        0,
        ge=0,
        description="Bytes of v2 outputs kept per pod (0 = no limit); beyond it the oldest finished jobs "
        "expire early.",
    )
    asset_max_bytes: int = Field(
        0,
        ge=0,
        description="Bytes of uploaded v2 assets kept per pod (0 = no limit); beyond it the oldest unused "
        "assets are deleted, and an upload that still does not fit gets 413.",
    )
    max_event_streams: int = Field(
        100, ge=1, description="Open /api/v2 event streams per pod; more get 429 too_many_streams."
    )
    event_heartbeat_s: float = Field(
        15.0,
        gt=0,
        le=40,
        description="Idle event streams send a comment line this often (clients wait 45 s).",
    )
    retry_after_s: int = Field(
        5, ge=1, le=3600, description="Retry-After (seconds) of 429 answers (queue full, too many streams)."
    )
    peer_name: str | None = Field(
        None,
        max_length=PEER_NAME_MAX,
        description="This sidecar's name among its peers; job and asset ids carry it (default: POD_IP, "
        "else 'local').",
    )
    pod_ip: str | None = Field(None, description="The pod's IP (downward API); the default PEER_NAME.")
    peers: str = Field(
        "",
        description="Static peer list 'name=http://host:port,...' (this sidecar included or not); for tests "
        "and deployments without Kubernetes DNS.",
    )
    peers_dns: str | None = Field(
        None,
        description="DNS name whose A/AAAA records are the peers (a headless Service with "
        "publishNotReadyAddresses); each peer is named by its IP and reached on PEER_PORT.",
    )
    peer_port: int = Field(3000, ge=1, le=65535, description="Port of the peers found through PEERS_DNS.")
    peer_refresh_s: float = Field(5.0, gt=0, description="How often PEERS_DNS is resolved again.")
    peer_timeout_s: float = Field(
        20.0, gt=0, description="Timeout of a call to a peer (streams and downloads: time to first byte)."
    )
    peer_connect_timeout_s: float = Field(
        3.0,
        gt=0,
        description="How long connecting to a peer may take (a deleted pod's address never answers).",
    )
    id_key: SecretStr | None = Field(
        None,
        description="Key of the tags that make job, asset and cursor ids tamper-evident; the same on every "
        "peer (the operator passes the instance's UID). Unset: a fixed key (tags only catch typos).",
    )

    @field_validator("public_base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("PUBLIC_BASE_URL must be http(s)://host[:port][/path] without query or fragment")
        return value.strip().rstrip("/")

    @field_validator("peers")
    @classmethod
    def _valid_peers(cls, value: str) -> str:
        parse_peers(value)
        return value

    @property
    def self_name(self) -> str:
        return self.peer_name or self.pod_ip or "local"

    def static_peers(self) -> dict[str, str]:
        return parse_peers(self.peers)

    def token(self) -> str | None:
        """The API token's text, only for the comparison and for calls to peers."""
        return self.api_token.get_secret_value() if self.api_token else None

    def tag_key(self) -> bytes:
        return (self.id_key.get_secret_value() if self.id_key else "comfyui-sidecar").encode()

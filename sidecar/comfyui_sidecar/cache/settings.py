"""Settings of the model and media cache (environment variables; upstream names kept where they exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GIB = 1024**3

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]i?|k|)\s*$")
_FACTORS = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}


def parse_quantity(value: str | int) -> int:
    """Bytes of a Kubernetes quantity (`100Gi`, `500M`, `1073741824`)."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"not a byte quantity: {value!r} (examples: 100Gi, 500M, 1073741824)")
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class CacheSettings(BaseSettings):
    """Model and media cache. Every field is an environment variable of the same name (upper case)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "comfyui-api",
        description="Cache root: blobs/, models/<folder>/ links, tmp/ and extra_model_paths.yaml live here. "
        "Mount it at the same path in the ComfyUI container.",
    )
    lru_cache_size_gb: float = Field(
        default=0.0,
        ge=0,
        description="Cache budget in GiB (upstream name). 0 = none (see CACHE_SIZE_LIMIT_BYTES).",
    )
    cache_size_limit_bytes: int | None = Field(
        default=None,
        description="Size limit of the cache volume (emptyDir sizeLimit; bytes or a quantity like 100Gi). "
        "The budget is this minus CACHE_HEADROOM_FRACTION, so the kubelet never evicts the pod.",
    )
    cache_headroom_fraction: float = Field(
        default=0.1,
        ge=0,
        le=0.9,
        description="Fraction of CACHE_SIZE_LIMIT_BYTES kept free (metadata, links, file system overhead).",
    )
    cache_reserve_timeout_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a download waits for space held by running prompts before failing.",
    )
    http_auth_header_name: str | None = Field(
        default=None, description="Header added to HTTP downloads and uploads that carry no other auth."
    )
    http_auth_header_value: SecretStr | None = Field(
        default=None, description="Value of HTTP_AUTH_HEADER_NAME (secret)."
    )
    hf_token: SecretStr | None = Field(
        default=None, description="Hugging Face token for downloads and uploads (secret)."
    )
    hf_token_path: Path | None = Field(
        default=None,
        description="File holding the Hugging Face token (a mounted Secret); used when HF_TOKEN is unset.",
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        description="Hugging Face Hub endpoint; URLs on this origin go through huggingface_hub.",
    )
    manifest: Path | None = Field(
        default=None,
        description="Path of a model manifest (.json/.yaml) downloaded at start (upstream name).",
    )
    manifest_json: str | None = Field(
        default=None, description="Inline JSON manifest; wins over MANIFEST (upstream name)."
    )
    download_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Internal networks or host names downloads may reach although the SSRF guard refuses "
        "them by default (comma or JSON list of CIDRs, addresses, host names), e.g. 10.0.0.0/8,minio.local.",
    )
    download_max_bytes: int = Field(
        default=200 * GIB,
        gt=0,
        description="Largest response a download accepts (bytes or quantity); larger ones are cut off.",
    )
    download_max_redirects: int = Field(
        default=10, ge=0, le=30, description="Redirects followed per download."
    )
    download_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per download (connection errors, 5xx, 429, cut bodies)."
    )
    download_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubled per attempt, capped at 30 s."
    )
    download_connect_timeout_seconds: float = Field(default=30.0, gt=0, description="Connect timeout.")
    download_read_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest silence while reading a response before it counts as cut."
    )
    download_progress_interval_seconds: float = Field(
        default=10.0, gt=0, description="Progress of large downloads is logged this often."
    )
    extra_model_folders: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra model folder names (custom nodes) accepted by POST /download and listed in "
        "extra_model_paths.yaml; folders named in EXTRA_MODEL_LOADERS are added automatically.",
    )
    extra_model_paths_file: Path | None = Field(
        default=None,
        description="Where to write the extra_model_paths.yaml for ComfyUI; "
        "default <CACHE_DIR>/extra_model_paths.yaml.",
    )

    @field_validator("download_allow_networks", "extra_model_folders", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("cache_size_limit_bytes", "download_max_bytes", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str | int) and not isinstance(value, bool):
            return parse_quantity(value)
        return value

    def cache_budget_bytes(self) -> int | None:
        """The LRU byte budget: the smaller of LRU_CACHE_SIZE_GB and the volume limit minus headroom."""
        budgets: list[int] = []
        if self.lru_cache_size_gb > 0:
            budgets.append(int(self.lru_cache_size_gb * GIB))
        if self.cache_size_limit_bytes:
            budgets.append(int(self.cache_size_limit_bytes * (1.0 - self.cache_headroom_fraction)))
        return min(budgets) if budgets else None

    def hf_token_value(self) -> str | None:
        """The Hugging Face token: HF_TOKEN, else the file at HF_TOKEN_PATH."""
        if self.hf_token is not None and self.hf_token.get_secret_value():
            return self.hf_token.get_secret_value()
        if self.hf_token_path is not None and self.hf_token_path.is_file():
            text = self.hf_token_path.read_text(encoding="utf-8").strip()
            return text or None
        return None

    def global_auth_header(self) -> tuple[str, str] | None:
        if self.http_auth_header_name and self.http_auth_header_value is not None:
            return (self.http_auth_header_name, self.http_auth_header_value.get_secret_value())
        return None

    def model_paths_file(self) -> Path:
        return self.extra_model_paths_file or self.cache_dir / "extra_model_paths.yaml"

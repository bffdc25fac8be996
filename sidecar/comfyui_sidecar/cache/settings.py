"""Settings of the model and media cache (environment variables; upstream names kept where they exist)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from comfyui_sidecar.egress.settings import EgressSettings, split_list
from comfyui_sidecar.sources.settings import SourceSettings

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


class CacheSettings(SourceSettings, EgressSettings):
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
    manifest: Path | None = Field(
        default=None,
        description="Path of a model manifest (.json/.yaml) downloaded at start (upstream name).",
    )
    manifest_json: str | None = Field(
        default=None, description="Inline JSON manifest; wins over MANIFEST (upstream name)."
    )
    download_max_bytes: int = Field(
        default=200 * GIB,
        gt=0,
        description="Largest response a download accepts (bytes or quantity); larger ones are cut off.",
    )
    download_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per download (connection errors, 5xx, 429, cut bodies)."
    )
    download_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubled per attempt, capped at 30 s."
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

    @field_validator("extra_model_folders", mode="before")
    @classmethod
    def _folder_list(cls, value: Any) -> Any:
        return split_list(value)

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

    def model_paths_file(self) -> Path:
        return self.extra_model_paths_file or self.cache_dir / "extra_model_paths.yaml"

"""Comfy API v2 bodies as pydantic models (shapes only, no I/O); /docs and the handlers use them.

Responses follow the contract strictly (spec/comfy-api-v2.md section 2): every required key is present even
when null, timestamps carry a timezone (UTC, `Z`), enums only take their listed values. Optional keys that are
None are left out (`dump`), required nullable ones never are.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

JobStatus = Literal["queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "canceled", "failed", "expired"})
OutputType = Literal["image", "video", "audio", "text", "file", "latent"]

HASH_PATTERN = r"^blake3:[0-9a-f]{64}$"
LABEL_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
MAX_LABELS = 16
MAX_LABEL_VALUE_BYTES = 256
MAX_LABEL_FILTERS = 3
IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


class _Out(BaseModel):
    """A response body. `dump()` leaves out the optional keys listed in `_omit_none` when they are None."""

    model_config = ConfigDict(extra="forbid")
    _omit_none: ClassVar[frozenset[str]] = frozenset()

    def dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        return _drop_none(self, data)


def _drop_none(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    omit: frozenset[str] = getattr(model, "_omit_none", frozenset())
    for name in list(data):
        value = getattr(model, name, None)
        if isinstance(value, BaseModel) and isinstance(data[name], dict):
            data[name] = _drop_none(value, data[name])
        elif isinstance(value, list):
            data[name] = [
                _drop_none(item, part) if isinstance(item, BaseModel) else part
                for item, part in zip(value, data[name], strict=True)
            ]
        if name in omit and data[name] is None:
            del data[name]
    return data


def utc(timestamp: float) -> datetime:
    """An aware UTC datetime (milliseconds) from epoch seconds."""
    return datetime.fromtimestamp(round(timestamp, 3), UTC)


# ---- jobs --------------------------------------------------------------------------------------------------
class Progress(_Out):
    _omit_none = frozenset({"current_node", "current_node_class", "step", "steps", "message"})
    value: float = Field(ge=0.0, le=1.0)
    nodes_done: int = Field(ge=0)
    nodes_total: int = Field(ge=0)
    current_node: str | None = None
    current_node_class: str | None = None
    step: int | None = None
    steps: int | None = None
    message: str | None = None


class JobError(_Out):
    _omit_none = frozenset({"node_id", "class_type", "traceback"})
    code: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    traceback: str | None = None


class Output(_Out):
    _omit_none = frozenset({"job_id"})
    node_id: str
    name: str
    type: OutputType
    content_type: str
    size_bytes: int = Field(ge=0)
    id: str
    hash: str | None
    url: str = Field(pattern=r"^https?://")
    url_expires_at: AwareDatetime
    job_id: str | None = None


class JobUrls(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    self_: str = Field(alias="self", serialization_alias="self")
    events: str
    cancel: str

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Job(_Out):
    _omit_none = frozenset({"metrics", "metadata"})
    id: str
    status: JobStatus
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    completed_at: AwareDatetime | None
    expires_at: AwareDatetime
    queue_position: int | None
    progress: Progress | None
    outputs: list[Output]
    error: JobError | None
    urls: JobUrls
    metrics: dict[str, int | None] | None = None
    metadata: dict[str, str] | None = None

    def dump(self) -> dict[str, Any]:
        data = super().dump()
        data["urls"] = self.urls.dump()
        return data


class JobListItem(_Out):
    """A stored job record as GET /api/v2/jobs lists it (no outputs, no links)."""

    id: str
    status: JobStatus
    create_time: AwareDatetime
    update_time: AwareDatetime
    metadata: dict[str, str]


class JobList(_Out):
    _omit_none = frozenset({"next_cursor"})
    jobs: list[JobListItem]
    next_cursor: str | None = None


class JobWorkflow(_Out):
    workflow: dict[str, Any]
    format: Literal["api", "save"]


# ---- assets ------------------------------------------------------------------------------------------------
class Asset(_Out):
    _omit_none = frozenset({"file_path", "created_new", "expires_at", "job_id"})
    id: str
    hash: str | None
    size_bytes: int = Field(ge=0)
    content_type: str
    created_at: AwareDatetime
    url: str = Field(pattern=r"^https?://")
    url_expires_at: AwareDatetime
    file_path: str | None = None
    created_new: bool | None = None
    expires_at: AwareDatetime | None = None
    job_id: str | None = None


# ---- errors ------------------------------------------------------------------------------------------------
class ErrorBody(_Out):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(_Out):
    error: ErrorBody


# ---- event stream payloads ---------------------------------------------------------------------------------
class StatusEvent(_Out):
    status: JobStatus
    queue_position: int | None = None


class PreviewEvent(_Out):
    node_id: str
    content_type: str
    data_base64: str


# ---- requests ----------------------------------------------------------------------------------------------
class ExtraData(BaseModel):
    """Closed: only the partner-node key. Forwarded to execution, never stored or echoed."""

    model_config = ConfigDict(extra="forbid")
    api_key_comfy_org: str = Field(min_length=1, max_length=4096)


class SubmitRequest(BaseModel):
    """POST /api/v2/jobs. Unknown top-level keys are ignored, except the reserved webhook_url and inputs."""

    model_config = ConfigDict(extra="allow")
    workflow: dict[str, Any]
    extra_data: ExtraData | None = None
    metadata: dict[str, Any] | None = None


class FromHashRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hash: str = Field(pattern=HASH_PATTERN)
    file_path: str | None = Field(None, min_length=1, max_length=1024)
    tags: list[str] | None = None
    expires_in: int | None = None

    @field_validator("file_path")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValueError("file_path must not contain control characters")
        return value


def label_problem(metadata: dict[str, Any]) -> str | None:
    """Why a metadata label map is refused (422 metadata_invalid), or None when it is fine."""
    if len(metadata) > MAX_LABELS:
        return f"metadata has {len(metadata)} pairs; at most {MAX_LABELS} are allowed"
    for key, value in metadata.items():
        if not LABEL_KEY.match(key):
            return f"metadata key {key!r} must be 1-40 characters from A-Z a-z 0-9 _ - ."
        if not isinstance(value, str):
            return f"metadata value of {key!r} must be a string"
        if len(value.encode()) > MAX_LABEL_VALUE_BYTES:
            return f"metadata value of {key!r} is longer than {MAX_LABEL_VALUE_BYTES} bytes"
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
            return f"metadata value of {key!r} contains control or formatting characters"
    return None


def looks_like_ui_format(workflow: dict[str, Any]) -> bool:
    """A UI export (what the editor saves), not the API format ComfyUI runs."""
    return isinstance(workflow.get("nodes"), list) and "links" in workflow

"""Request and response models of the HTTP API (contract section 2); /docs is generated from them."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comfyui_sidecar.fetching import Credential
from comfyui_sidecar.upload_targets import HfUpload, HttpUpload, S3Upload

VERSION = "1.18.0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Node(_Model):
    """One node of a ComfyUI API-format prompt."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    inputs: dict[str, Any]
    class_type: str = Field(min_length=1)
    meta: Any = Field(None, alias="_meta")


class JpegOptions(_Model):
    quality: int = Field(80, ge=1, le=100)
    progressive: bool = False
    chromaSubsampling: Literal["4:2:0", "4:2:2", "4:4:4"] = "4:2:0"
    optimizeCoding: bool = True
    mozjpeg: bool = False
    trellisQuantisation: bool = False
    overshootDeringing: bool = False
    optimizeScans: bool = False
    quantisationTable: int = Field(0, ge=0, le=8)


class WebpOptions(_Model):
    quality: int = Field(80, ge=1, le=100)
    alphaQuality: int = Field(100, ge=0, le=100)
    lossless: bool = False
    nearLossless: bool = False
    smartSubsample: bool = False
    preset: Literal["default", "photo", "picture", "drawing", "icon", "text"] = "default"
    effort: int = Field(4, ge=0, le=6)


class ConvertOutput(_Model):
    """Re-encode image outputs. `options` are read as WebP options for webp, JPEG options otherwise."""

    format: Literal["jpeg", "jpg", "webp"]
    options: JpegOptions | WebpOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _options_by_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            model = WebpOptions if data.get("format") == "webp" else JpegOptions
            return {**data, "options": model.model_validate(data["options"])}
        return data


def _new_id() -> str:
    return str(uuid.uuid4())


class PromptRequest(_Model):
    prompt: dict[str, Node] = Field(description="ComfyUI API-format prompt: node id -> node.")
    id: str = Field(
        default_factory=_new_id,
        min_length=1,
        max_length=200,
        description="Request id: output file prefix, webhook id and interrupt handle (default: a UUID).",
    )
    webhook: str | None = Field(None, description="Deprecated: one unsigned POST per output file.")
    webhook_v2: str | None = Field(
        None, description="One signed (Standard Webhooks) POST with the whole result."
    )
    convert_output: ConvertOutput | None = None
    credentials: list[Credential] | None = Field(
        None, description="Credentials for model URLs (never echoed)."
    )
    s3: S3Upload | None = Field(None, description="Upload outputs to s3://<bucket>/<prefix><filename>.")
    hf_upload: HfUpload | None = None
    http_upload: HttpUpload | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if "/" in value or "\\" in value or ".." in value or any(ord(c) < 32 for c in value):
            raise ValueError("id must not contain '/', '\\\\', '..' or control characters")
        return value


class PromptResponse(PromptRequest):
    """The validated request (with the rewritten prompt) plus the results."""

    images: list[str] | None = Field(None, description="base64 file contents, or upload URLs.")
    filenames: list[str] | None = None
    status: Literal["ok"] | None = Field(None, description="'ok' in 202 answers.")
    stats: dict[str, Any] | None = None


class ErrorResponse(_Model):
    error: str
    location: str | None = None


class ServerError(_Model):
    statusCode: int
    code: str | None = Field(None, description="Fastify's error code (408, 413, 415).")
    error: str
    message: str
    comfy_error: dict[str, Any] | None = Field(
        None, description="ComfyUI's own error: node, class, exception."
    )


class HealthResponse(_Model):
    version: str = VERSION
    status: Literal["healthy", "not healthy"]


class ReadyResponse(_Model):
    version: str = VERSION
    status: Literal["ready", "not ready"]


class InterruptRequest(_Model):
    id: str = Field(min_length=1)


class InterruptResponse(_Model):
    id: str
    interrupted: Literal["success", "failed"]

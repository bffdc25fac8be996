"""Settings of the download sources and S3 uploads (environment variables; upstream names kept)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1 << 20


class SourceSettings(BaseSettings):
    """HTTP auth, the Hugging Face Hub and S3. Each field is an environment variable of the same name."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

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
    s3_multipart_threshold_bytes: int = Field(
        default=64 * MIB,
        ge=5 * MIB,
        description="S3 outputs at least this large are sent as multipart uploads.",
    )
    s3_multipart_part_bytes: int = Field(
        default=16 * MIB, ge=5 * MIB, description="Part size of S3 multipart uploads (S3's minimum is 5 MiB)."
    )

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

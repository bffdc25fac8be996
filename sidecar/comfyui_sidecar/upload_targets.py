"""The upload blocks of a prompt request (contract 2.4, 3.6): schema only, no I/O (`uploads` sends)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HttpUpload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    url_prefix: str = Field(description="Each file is PUT to <url_prefix>/<filename>.")
    async_: bool = Field(False, alias="async", description="Answer 202 at once and upload in the background.")


class HfUpload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    repo: str = Field(description="Hub repository id, e.g. my-org/outputs.")
    repo_type: Literal["model", "dataset"] = "model"
    revision: str = "main"
    directory: str = Field("/", description="Directory inside the repository.")
    async_: bool = Field(False, alias="async", description="Answer 202 at once and upload in the background.")


class S3Upload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    bucket: str = Field(min_length=1, description="Bucket the outputs go to.")
    prefix: str = Field(
        description="Key prefix; each file goes to s3://<bucket>/<prefix><filename> (no '/' added)."
    )
    async_: bool = Field(False, alias="async", description="Answer 202 at once and upload in the background.")

"""Uploads of a prompt's outputs (contract 3.6): `http_upload` (HTTP PUT) and `hf_upload` (Hugging Face Hub).

Failures raise `UploadError` with a clear message (never swallowed; upstream quirk 10 fixed). S3 is not
supported. Upload targets pass the same SSRF guard as downloads (DOWNLOAD_ALLOW_NETWORKS).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Sequence
from typing import Literal, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from comfyui_sidecar.cache.credentials import request_auth
from comfyui_sidecar.cache.naming import redact_url, safe_basename, strip_userinfo
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.ssrf import BlockedURLError, GuardedResolver, guard_from_settings

UPLOAD_TIMEOUT_SECONDS = 300.0


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


class UploadError(Exception):
    """An upload failed; the message is safe to return to the client (no credentials)."""


class UploadFile(Protocol):
    """What an output file offers (the sidecar core's `OutputFile`)."""

    @property
    def filename(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


def http_upload_url(url_prefix: str, filename: str) -> str:
    """`<url_prefix without trailing slashes>/<filename>` (filename reduced to a safe basename, quoted)."""
    name = safe_basename(filename)
    if not name:
        raise UploadError(f"invalid output file name: {filename!r}")
    return f"{url_prefix.rstrip('/')}/{quote(name)}"


def content_type_of(url: str) -> str:
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or "application/octet-stream"


def hf_path_in_repo(directory: str, filename: str) -> str:
    """Path of an output inside the repository: `<directory>/<filename>` without empty segments."""
    name = safe_basename(filename)
    parts = [p for p in directory.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or not name:
        raise UploadError(f"invalid hf_upload directory or file name: {directory!r}, {filename!r}")
    return "/".join([*parts, name])


def hf_file_url(endpoint: str, upload: HfUpload, path_in_repo: str) -> str:
    kind = "datasets/" if upload.repo_type == "dataset" else ""
    return (
        f"{endpoint.rstrip('/')}/{kind}{upload.repo}/resolve/{quote(upload.revision, safe='')}/"
        f"{quote(path_in_repo)}"
    )


async def upload_outputs(
    files: Sequence[UploadFile],
    *,
    http_upload: HttpUpload | None,
    hf_upload: HfUpload | None,
    settings: CacheSettings,
) -> list[str]:
    """Upload every file and return their URLs in order. `http_upload` wins if both are given."""
    if http_upload is not None:
        return await _http_put_all(files, http_upload, settings)
    if hf_upload is not None:
        return await _hf_commit(files, hf_upload, settings)
    raise UploadError("no upload target given")


async def _http_put_all(
    files: Sequence[UploadFile], upload: HttpUpload, settings: CacheSettings
) -> list[str]:
    guard = guard_from_settings(settings.download_allow_networks)
    headers = request_auth(None, url=upload.url_prefix, global_header=settings.global_auth_header()).headers
    prefix = strip_userinfo(upload.url_prefix)
    urls = [http_upload_url(prefix, f.filename) for f in files]
    try:
        for url in urls:
            guard.check_url(url)
    except BlockedURLError as exc:
        raise UploadError(str(exc)) from None
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard))
    timeout = aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:

        async def put(url: str, file: UploadFile) -> None:
            req_headers = {**headers, "Content-Type": content_type_of(url)}
            try:
                async with session.put(
                    url, data=file.data, headers=req_headers, allow_redirects=False
                ) as resp:
                    if resp.status >= 300:
                        raise UploadError(
                            f"upload of {file.filename} to {redact_url(url)} failed: HTTP {resp.status} "
                            f"{resp.reason or ''}".rstrip()
                        )
            except BlockedURLError as exc:
                raise UploadError(str(exc)) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                text = str(exc).strip() or type(exc).__name__
                raise UploadError(f"upload of {file.filename} to {redact_url(url)} failed: {text}") from None

        await asyncio.gather(*(put(url, f) for url, f in zip(urls, files, strict=True)))
    return urls


async def _hf_commit(files: Sequence[UploadFile], upload: HfUpload, settings: CacheSettings) -> list[str]:
    """One commit with every output, through huggingface_hub."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = settings.hf_token_value()
    if not token:
        raise UploadError("hf_upload needs a Hugging Face token (HF_TOKEN or HF_TOKEN_PATH)")
    paths = [hf_path_in_repo(upload.directory, f.filename) for f in files]
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=f.data)
        for path, f in zip(paths, files, strict=True)
    ]
    api = HfApi(endpoint=settings.hf_endpoint, token=token)
    try:
        await asyncio.to_thread(
            api.create_commit,
            repo_id=upload.repo,
            operations=operations,
            commit_message=f"Upload {len(files)} output file(s) from comfyui-sidecar",
            repo_type=upload.repo_type,
            revision=upload.revision,
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise UploadError(
            f"hf_upload to {upload.repo} failed: {type(exc).__name__}"
            + (f" (HTTP {status})" if status else "")
        ) from None
    except Exception as exc:  # network errors inside the Hub client
        raise UploadError(f"hf_upload to {upload.repo} failed: {type(exc).__name__}") from None
    return [hf_file_url(settings.hf_endpoint, upload, path) for path in paths]

"""Uploads of a prompt's outputs (contract 3.6): `s3` (S3 PutObject, multipart for large files), `hf_upload`
(Hugging Face Hub) and `http_upload` (HTTP PUT), chosen in upstream's order S3 → HF → HTTP.

Targets are checked when the prompt is accepted (`Uploader.check`: a refused target is a 400 before anything
runs) and every connection is checked again when sending: HTTP PUTs and S3 go through the egress upload
client. Failures raise `UploadError` with a clear message (never swallowed; upstream quirk 10 fixed).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from comfyui_sidecar.egress.client import EgressError, describe
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl, parse_url
from comfyui_sidecar.fetching import Credential, S3Auth
from comfyui_sidecar.filenames import safe_basename
from comfyui_sidecar.sources.credentials import credential_of_type, request_auth
from comfyui_sidecar.sources.s3_client import S3Clients, S3Failure, explain
from comfyui_sidecar.sources.settings import SourceSettings
from comfyui_sidecar.upload_targets import HfUpload, HttpUpload, S3Upload

__all__ = ["HfUpload", "HttpUpload", "S3Upload", "UploadError", "UploadTargets", "Uploader"]


class UploadError(Exception):
    """An upload failed or its target is refused; the message is safe to return (no credentials). `location`
    names the request field when the target itself is at fault."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location


class UploadFile(Protocol):
    """What an output file offers (the sidecar core's `OutputFile`)."""

    @property
    def filename(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


@dataclass(frozen=True)
class UploadTargets:
    s3: S3Upload | None = None
    hf_upload: HfUpload | None = None
    http_upload: HttpUpload | None = None
    credentials: Sequence[Credential] = ()

    @property
    def chosen(self) -> S3Upload | HfUpload | HttpUpload | None:
        """The block that is used: the first present in upstream's order S3 → HF → HTTP."""
        return self.s3 or self.hf_upload or self.http_upload


def http_upload_url(url_prefix: str, filename: str) -> str:
    """`<url_prefix without trailing slashes>/<filename>` (filename reduced to a safe basename, quoted)."""
    name = safe_basename(filename)
    if not name:
        raise UploadError(f"invalid output file name: {filename!r}")
    return f"{url_prefix.rstrip('/')}/{quote(name)}"


def s3_upload_url(upload: S3Upload, filename: str) -> str:
    """`s3://<bucket>/<prefix><filename>`: the prefix verbatim, no '/' added (as upstream)."""
    name = safe_basename(filename)
    if not name:
        raise UploadError(f"invalid output file name: {filename!r}")
    return f"s3://{upload.bucket}/{upload.prefix}{name}"


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


class Uploader:
    """Sends outputs where a request asks. `close` closes its S3 client."""

    def __init__(self, egress: Egress, settings: SourceSettings) -> None:
        self.egress = egress
        self.settings = settings
        limits = egress.upload.timeout
        self.s3 = S3Clients(
            egress.upload, connect_timeout=limits.sock_connect or 30.0, read_timeout=limits.total or 300.0
        )

    async def close(self) -> None:
        await self.s3.close()

    def _s3_auth(self, url: str, targets: UploadTargets) -> S3Auth | None:
        auth = credential_of_type(parse_url(url), targets.credentials, lambda a: isinstance(a, S3Auth))
        return auth if isinstance(auth, S3Auth) else None

    async def check(self, targets: UploadTargets) -> None:
        """Refuse, before the prompt runs, a target that cannot work: a URL the egress policy refuses, a bad
        bucket name, an hf_upload without a token."""
        chosen = targets.chosen
        try:
            if isinstance(chosen, S3Upload):
                url = s3_upload_url(chosen, "output.png")
                parse_url(url)
                self.s3.check_endpoint(self._s3_auth(url, targets))
            elif isinstance(chosen, HfUpload):
                if not self.settings.hf_token_value():
                    raise UploadError(
                        "hf_upload needs a Hugging Face token (HF_TOKEN or HF_TOKEN_PATH)", "hf_upload"
                    )
            elif isinstance(chosen, HttpUpload):
                await self.egress.upload.check_target(chosen.url_prefix)
        except (InvalidUrl, EgressRefused) as exc:
            raise UploadError(exc.message, _location(chosen)) from None
        except S3Failure as exc:
            raise UploadError(exc.message, "s3") from None

    async def upload(self, files: Sequence[UploadFile], targets: UploadTargets) -> list[str]:
        """Upload every file and return their URLs in order."""
        chosen = targets.chosen
        if isinstance(chosen, S3Upload):
            return await self._s3_put_all(files, chosen, targets)
        if isinstance(chosen, HfUpload):
            return await self._hf_commit(files, chosen)
        if isinstance(chosen, HttpUpload):
            return await self._http_put_all(files, chosen)
        raise UploadError("no upload target given")

    async def _http_put_all(self, files: Sequence[UploadFile], upload: HttpUpload) -> list[str]:
        try:
            prefix = parse_url(upload.url_prefix)
        except InvalidUrl as exc:
            raise UploadError(exc.message, "http_upload.url_prefix") from None
        auth = request_auth(None, url=prefix, global_header=self.settings.global_auth_header())
        urls = [http_upload_url(prefix.public, f.filename) for f in files]

        async def put(url: str, file: UploadFile) -> None:
            shown = parse_url(url).redacted
            try:
                async with self.egress.upload.request(
                    "PUT",
                    parse_url(url),
                    data=file.data,
                    headers={"Content-Type": content_type_of(url)},
                    auth=auth,
                ) as resp:
                    if resp.status >= 300:
                        reason = f" {resp.reason}" if resp.reason else ""
                        raise UploadError(
                            f"upload of {file.filename} to {shown} failed: HTTP {resp.status}{reason}"
                        )
            except (EgressRefused, EgressError, InvalidUrl) as exc:
                raise UploadError(f"upload of {file.filename} to {shown} failed: {exc.message}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UploadError(f"upload of {file.filename} to {shown} failed: {describe(exc)}") from None

        await asyncio.gather(*(put(url, f) for url, f in zip(urls, files, strict=True)))
        return urls

    async def _s3_put_all(
        self, files: Sequence[UploadFile], upload: S3Upload, targets: UploadTargets
    ) -> list[str]:
        urls = [s3_upload_url(upload, f.filename) for f in files]
        for url, file in zip(urls, files, strict=True):
            key = url[len(f"s3://{upload.bucket}/") :]
            try:
                async with self.s3.client(self._s3_auth(url, targets)) as client:
                    await self._s3_put(client, upload.bucket, key, file.data, content_type_of(url))
            except S3Failure as exc:
                raise UploadError(f"s3 upload of {file.filename} failed: {exc.message}") from None
            except Exception as exc:  # every failure of the AWS client is a clear error, never a 500
                failure = explain(exc, url)
                raise UploadError(f"s3 upload of {file.filename} failed: {failure.message}") from None
        return urls

    async def _s3_put(self, client: Any, bucket: str, key: str, data: bytes, content_type: str) -> None:
        """PutObject, or a multipart upload (aborted on failure) from S3_MULTIPART_THRESHOLD_BYTES on."""
        if len(data) < self.settings.s3_multipart_threshold_bytes:
            await client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            return
        started = await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
        upload_id = started["UploadId"]
        step = self.settings.s3_multipart_part_bytes
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), step), start=1):
                answer = await client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[offset : offset + step],
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with suppress(Exception):
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    async def _hf_commit(self, files: Sequence[UploadFile], upload: HfUpload) -> list[str]:
        """One commit with every output, through huggingface_hub (it talks to HF_ENDPOINT only)."""
        token = self.settings.hf_token_value()
        if not token:
            raise UploadError("hf_upload needs a Hugging Face token (HF_TOKEN or HF_TOKEN_PATH)", "hf_upload")
        paths = [hf_path_in_repo(upload.directory, f.filename) for f in files]
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=f.data)
            for path, f in zip(paths, files, strict=True)
        ]
        api = HfApi(endpoint=self.settings.hf_endpoint, token=token)
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
        return [hf_file_url(self.settings.hf_endpoint, upload, path) for path in paths]


def _location(chosen: object) -> str:
    if isinstance(chosen, S3Upload):
        return "s3"
    if isinstance(chosen, HfUpload):
        return "hf_upload"
    return "http_upload.url_prefix"

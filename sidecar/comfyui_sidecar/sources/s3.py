"""`s3` source: `s3://<bucket>/<key>` model and media inputs, streamed into the cache (Range resume)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from comfyui_sidecar.egress.client import EgressError, iter_body
from comfyui_sidecar.egress.urls import Url
from comfyui_sidecar.fetching import Credential, DownloadAuth, S3Auth
from comfyui_sidecar.filenames import path_extension
from comfyui_sidecar.sources.base import Fetched, FetchOptions, Reference, Sink, SourceError, with_retries
from comfyui_sidecar.sources.credentials import credential_of_type
from comfyui_sidecar.sources.s3_client import S3Clients, S3Failure, explain


@dataclass(frozen=True)
class S3Ref(Reference):
    bucket: str
    object_key: str


def parse_s3(url: Url) -> S3Ref | None:
    """`s3://bucket/key` (the key as written, percent-decoded); None for other schemes or an empty key."""
    if url.scheme != "s3":
        return None
    key = unquote(url.path.lstrip("/"))
    if not key or url.port is not None or url.has_userinfo:
        return None
    return S3Ref(url, "s3", url.host, key)


def _failure(error: BaseException, ref: S3Ref) -> SourceError:
    failed = error if isinstance(error, S3Failure) else explain(error, ref.url.redacted)
    return SourceError(f"Error downloading file: {failed.message}", retryable=failed.retryable)


class S3Source:
    name = "s3"
    schemes = frozenset({"s3"})

    def __init__(self, clients: S3Clients) -> None:
        self.clients = clients

    def claim(self, url: Url) -> Reference | None:
        return parse_s3(url)

    def credential(self, ref: Reference, credentials: Sequence[Credential]) -> DownloadAuth | None:
        return credential_of_type(ref.url, credentials, lambda auth: isinstance(auth, S3Auth))

    async def head(self, ref: Reference, auth: DownloadAuth | None) -> int | None:
        assert isinstance(ref, S3Ref)
        try:
            async with self.clients.client(auth if isinstance(auth, S3Auth) else None) as client:
                answer = await client.head_object(Bucket=ref.bucket, Key=ref.object_key)
        except Exception as exc:  # the AWS client raises many kinds (ResponseParserError is no BotoCoreError)
            failed = exc if isinstance(exc, S3Failure) else explain(exc, ref.url.redacted)
            raise SourceError(f"Authentication failed: {failed.message}") from None
        return int(answer.get("ContentLength", 0))

    async def fetch(
        self, ref: Reference, auth: DownloadAuth | None, sink: Sink, options: FetchOptions
    ) -> Fetched:
        assert isinstance(ref, S3Ref)
        s3_auth = auth if isinstance(auth, S3Auth) else None

        async def attempt() -> int:
            try:
                async with self.clients.client(s3_auth) as client:
                    return await self._get(client, ref, sink, options)
            except SourceError:
                raise
            except Exception as exc:  # every failure of the AWS client is a clear error, never a 500
                raise _failure(exc, ref) from None

        size = await with_retries(ref.url.redacted, attempt, options, lambda: sink.size)
        return Fetched(size=size, sha256=await sink.digest(), extension=path_extension(ref.key))

    async def _get(self, client: Any, ref: S3Ref, sink: Sink, options: FetchOptions) -> int:
        start = sink.size
        extra = {"Range": f"bytes={start}-"} if start else {}
        answer = await client.get_object(Bucket=ref.bucket, Key=ref.object_key, **extra)
        body = answer["Body"]
        async with body:
            length = int(answer.get("ContentLength", 0))
            if start and "ContentRange" not in answer:  # the whole object again
                await sink.reset()
                start = 0
            total = start + length
            if total > options.max_bytes:
                raise SourceError(
                    f"Error downloading file: object of {total} bytes exceeds the maximum download size "
                    f"of {options.max_bytes} bytes"
                )
            await sink.claim(total)
            try:
                async for data in iter_body(body.raw_stream, max_bytes=options.max_bytes, already=start):
                    await sink.write(data)
            except EgressError:
                raise SourceError(
                    "Error downloading file: object exceeds the maximum download size of "
                    f"{options.max_bytes} bytes"
                ) from None
        if sink.size != total:
            raise SourceError(
                f"Error downloading file: connection closed after {sink.size} of {total} bytes",
                retryable=True,
            )
        return total

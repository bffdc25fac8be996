"""`http` source: any http(s) URL no other source claims. Streaming GET through the egress download client,
with retries, Range resume (If-Range on the validator), the byte cap and space claimed before bytes are
written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from comfyui_sidecar.egress.client import EgressClient, EgressError, RequestAuth, describe, iter_body
from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import HTTP_SCHEMES, InvalidUrl, Url
from comfyui_sidecar.fetching import Credential, DownloadAuth
from comfyui_sidecar.filenames import infer_extension
from comfyui_sidecar.sources.base import Fetched, FetchOptions, Reference, Sink, SourceError, with_retries
from comfyui_sidecar.sources.credentials import match_credential, request_auth

GROWTH_STEP = 64 << 20  # reservation step when the size is unknown
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class HttpResult:
    """What one streamed download learnt about the response (for the extension rules)."""

    size: int
    sha256: str
    content_disposition: str | None = None
    content_type: str | None = None
    final_url: str | None = None


@dataclass
class _State:
    resumable: bool = False
    validator: str | None = None
    result: HttpResult | None = None


def _content_range_start(header: str | None) -> int | None:
    # "bytes 100-199/200"
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


async def stream_url(
    client: EgressClient, url: Url, auth: RequestAuth, sink: Sink, options: FetchOptions
) -> HttpResult:
    """GET `url` into `sink`: redirects followed and checked, `auth` only to the URL's origin, cut or failed
    attempts retried with backoff and resumed with Range when the server allows it."""
    state = _State()

    async def attempt() -> HttpResult:
        resume_from = sink.size if state.resumable else 0
        if sink.size and not resume_from:
            await sink.reset()
        headers = {"Accept-Encoding": "identity"}
        if resume_from:
            headers["Range"] = f"bytes={resume_from}-"
            if state.validator:
                headers["If-Range"] = state.validator
        try:
            async with client.request("GET", url, headers=headers, auth=auth, follow_redirects=True) as resp:
                return await _read_body(resp, sink, options, state, resume_from)
        except (EgressRefused, InvalidUrl) as exc:
            raise SourceError(exc.message) from None
        except EgressError as exc:
            raise SourceError(f"Error downloading file: {exc.message}", retryable=exc.retryable) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise SourceError(f"Error downloading file: {describe(exc)}", retryable=True) from None

    return await with_retries(url.redacted, attempt, options, lambda: sink.size)


async def _read_body(
    resp: aiohttp.ClientResponse, sink: Sink, options: FetchOptions, state: _State, resume_from: int
) -> HttpResult:
    if resume_from and resp.status == 206:
        if _content_range_start(resp.headers.get("Content-Range")) != resume_from:
            raise SourceError("Error downloading file: server sent a wrong range")
    elif resp.status == 200:
        if sink.size:
            await sink.reset()
    elif resp.status >= 400:
        reason = f"{resp.reason} " if resp.reason else ""
        raise SourceError(
            f"Error downloading file: {reason}(HTTP {resp.status})", retryable=resp.status in RETRY_STATUSES
        )
    else:
        raise SourceError(f"Error downloading file: unexpected status {resp.status}")
    length = resp.content_length
    total = sink.size + length if length is not None else None
    if total is not None and total > options.max_bytes:
        raise SourceError(
            f"Error downloading file: response of {total} bytes exceeds the maximum download size "
            f"of {options.max_bytes} bytes"
        )
    state.resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes" or resp.status == 206
    if resp.status == 200:
        etag = resp.headers.get("ETag")
        state.validator = resp.headers.get("Last-Modified") if not etag or etag.startswith("W/") else etag
        state.result = HttpResult(
            size=0,
            sha256="",
            content_disposition=resp.headers.get("Content-Disposition"),
            content_type=resp.headers.get("Content-Type"),
            final_url=str(resp.url),
        )
    claimed = total if total is not None else sink.size + GROWTH_STEP
    await sink.claim(claimed)
    try:
        async for data in iter_body(resp, max_bytes=options.max_bytes, already=sink.size):
            size = sink.size + len(data)
            if total is not None and size > total:
                raise SourceError("Error downloading file: more bytes than Content-Length", retryable=True)
            if size > claimed:
                claimed = size + GROWTH_STEP
                await sink.claim(claimed)
            await sink.write(data)
    except EgressError:  # the byte cap: not worth another attempt
        raise SourceError(
            f"Error downloading file: response exceeds the maximum download size of {options.max_bytes} bytes"
        ) from None
    if total is not None and sink.size != total:
        raise SourceError(
            f"Error downloading file: connection closed after {sink.size} of {total} bytes", retryable=True
        )
    result = state.result or HttpResult(size=0, sha256="")
    result.size = sink.size
    result.sha256 = await sink.digest()
    return result


class HttpSource:
    """Plain http(s) URLs. Per-request auth, else `user:pass@` in the URL, else the global header."""

    name = "http"
    schemes = HTTP_SCHEMES

    def __init__(self, client: EgressClient, *, global_header: Callable[[], tuple[str, str] | None]) -> None:
        self.client = client
        self._global_header = global_header

    def claim(self, url: Url) -> Reference | None:
        return Reference(url, self.name) if url.scheme in self.schemes else None

    def credential(self, ref: Reference, credentials: Sequence[Credential]) -> DownloadAuth | None:
        return match_credential(ref.key, credentials)

    def _auth(self, ref: Reference, auth: DownloadAuth | None) -> RequestAuth:
        return request_auth(auth, url=ref.url, global_header=self._global_header())

    async def head(self, ref: Reference, auth: DownloadAuth | None) -> int | None:
        """HEAD, falling back to `GET Range: bytes=0-0` when HEAD is not allowed (405)."""
        request = self._auth(ref, auth)
        try:
            async with self.client.request("HEAD", ref.url, auth=request) as resp:
                status, reason, length = resp.status, resp.reason, resp.content_length
            if status == 405:
                ranged = {"Range": "bytes=0-0"}
                async with self.client.request("GET", ref.url, headers=ranged, auth=request) as resp:
                    status, reason, length = resp.status, resp.reason, None
        except (EgressRefused, EgressError) as exc:
            raise SourceError(f"Authentication check failed: {exc.message}") from None
        if status in (401, 403):
            raise SourceError(f"Authentication failed: {status} {reason or ''}".strip())
        return length

    async def fetch(
        self, ref: Reference, auth: DownloadAuth | None, sink: Sink, options: FetchOptions
    ) -> Fetched:
        result = await stream_url(self.client, ref.url, self._auth(ref, auth), sink, options)
        extension = infer_extension(
            ref.key,
            content_disposition=result.content_disposition,
            final_url=result.final_url,
            content_type=result.content_type,
        )
        return Fetched(size=result.size, sha256=result.sha256, extension=extension)

"""`hf` source: Hugging Face Hub `resolve` URLs on HF_ENDPOINT
(`<endpoint>/[datasets/|spaces/]<repo>/resolve/<revision>/<path>`).

The Hub's metadata (final location, size, sha256 of LFS files) comes from `huggingface_hub`, which talks only
to HF_ENDPOINT (set by the operator, not by callers). The bytes are then streamed by the egress download
client into the budgeted cache (no second copy in an HF cache directory), the sha256 and size checked against
the Hub's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError

from comfyui_sidecar.egress.client import EgressClient, RequestAuth
from comfyui_sidecar.egress.urls import HTTP_SCHEMES, Url, parse_url
from comfyui_sidecar.fetching import BearerAuth, Credential, DownloadAuth
from comfyui_sidecar.filenames import path_extension
from comfyui_sidecar.sources.base import Fetched, FetchOptions, Reference, Sink, SourceError
from comfyui_sidecar.sources.credentials import credential_of_type
from comfyui_sidecar.sources.http import stream_url

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HfRef(Reference):
    repo_id: str
    repo_type: str  # "model", "dataset" or "space"
    revision: str
    path: str


@dataclass(frozen=True)
class HfTarget:
    url: str
    sha256: str | None
    size: int | None


def parse_hf(url: Url, endpoint: Url) -> HfRef | None:
    """The Hub file `url` points at, or None if it is not a Hub `resolve` URL of `endpoint`."""
    if url.origin != endpoint.origin:
        return None
    prefix = endpoint.path.rstrip("/")
    if not url.path.startswith(prefix + "/"):
        return None
    segs = [unquote(s) for s in url.path[len(prefix) + 1 :].split("/")]
    repo_type = "model"
    if segs and segs[0] in ("datasets", "spaces"):
        repo_type = segs[0][:-1]
        segs = segs[1:]
    if "resolve" not in segs:
        return None
    i = segs.index("resolve")
    if i not in (1, 2) or len(segs) < i + 3 or not all(segs[: i + 2]) or not segs[-1]:
        return None
    path = "/".join(segs[i + 2 :])
    if any(p in ("", ".", "..") for p in path.split("/")):
        return None
    return HfRef(url, "hf", "/".join(segs[:i]), repo_type, segs[i + 1], path)


async def hub_metadata(ref: HfRef, *, endpoint: str, token: str | None, wait_seconds: float) -> HfTarget:
    """Ask the Hub (through huggingface_hub) where the file's bytes are, how large it is and its sha256."""
    url = huggingface_hub.hf_hub_url(
        ref.repo_id, ref.path, repo_type=ref.repo_type, revision=ref.revision, endpoint=endpoint
    )
    try:
        meta = await asyncio.to_thread(
            huggingface_hub.get_hf_file_metadata,
            url,
            token=token or False,
            endpoint=endpoint,
            timeout=wait_seconds,
            retry_on_errors=True,
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise SourceError(
            f"Error downloading file: Hugging Face {type(exc).__name__} for {ref.repo_id}/{ref.path}"
            + (f" (HTTP {status})" if status else ""),
            retryable=status is not None and status >= 500,
        ) from None
    except Exception as exc:  # network errors from the Hub client
        raise SourceError(
            f"Error downloading file: Hugging Face metadata request failed: {type(exc).__name__}",
            retryable=True,
        ) from None
    etag = (meta.etag or "").lower()
    return HfTarget(url=meta.location or url, sha256=etag if _SHA256.match(etag) else None, size=meta.size)


class HfSource:
    """Hub files. The token is a per-request `bearer` credential, else HF_TOKEN / HF_TOKEN_PATH; it goes to
    the Hub origin only, never to the CDN it redirects to."""

    name = "hf"
    schemes = HTTP_SCHEMES

    def __init__(
        self, client: EgressClient, *, endpoint: str, token: Callable[[], str | None], wait_seconds: float
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self._endpoint_url = parse_url(endpoint)
        self._token = token
        self._wait_seconds = wait_seconds

    def claim(self, url: Url) -> Reference | None:
        return parse_hf(url, self._endpoint_url)

    def credential(self, ref: Reference, credentials: Sequence[Credential]) -> DownloadAuth | None:
        return credential_of_type(ref.url, credentials, lambda auth: isinstance(auth, BearerAuth))

    async def head(self, ref: Reference, auth: DownloadAuth | None) -> int | None:
        return None  # the Hub has no cheap validator: a matching credential is what is required

    async def fetch(
        self, ref: Reference, auth: DownloadAuth | None, sink: Sink, options: FetchOptions
    ) -> Fetched:
        assert isinstance(ref, HfRef)
        token = auth.token if isinstance(auth, BearerAuth) else self._token()
        target = await hub_metadata(ref, endpoint=self.endpoint, token=token, wait_seconds=self._wait_seconds)
        if target.size is not None:
            if target.size > options.max_bytes:
                raise SourceError(
                    f"Error downloading file: {target.size} bytes exceed the maximum download size "
                    f"of {options.max_bytes} bytes"
                )
            await sink.claim(target.size)
        location = parse_url(target.url)
        on_hub = location.origin == self._endpoint_url.origin
        headers = {"Authorization": f"Bearer {token}"} if token and on_hub else {}
        result = await stream_url(self.client, location, RequestAuth(headers=headers), sink, options)
        if target.size is not None and result.size != target.size:
            raise SourceError(f"Error downloading file: got {result.size} bytes, expected {target.size}")
        if target.sha256 and result.sha256 != target.sha256:
            raise SourceError(
                f"Error downloading file: sha256 mismatch (got {result.sha256}, expected {target.sha256})"
            )
        # the extension comes from the Hub path, not from the CDN location
        return Fetched(size=result.size, sha256=result.sha256, extension=path_extension(ref.key))

"""Hugging Face Hub URLs: `<endpoint>/[datasets/|spaces/]<repo>/resolve/<revision>/<path>`.

Metadata (final location, size, sha256 of LFS files) comes from `huggingface_hub`; the bytes are then
streamed by the cache's own downloader so they land in the budgeted cache (no second copy in an HF cache
directory), with the sha256 checked against the Hub's.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from comfyui_sidecar.cache.download import DownloadError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HfFile:
    repo_id: str
    repo_type: str  # "model", "dataset" or "space"
    revision: str
    path: str


@dataclass(frozen=True)
class HfTarget:
    url: str
    sha256: str | None
    size: int | None


def parse_hf_url(url: str, endpoint: str) -> HfFile | None:
    """The Hub file a URL points at, or None if the URL is not a Hub `resolve` URL of `endpoint`."""
    parts, base = urlsplit(url), urlsplit(endpoint)
    if (parts.scheme, parts.hostname, parts.port) != (base.scheme, base.hostname, base.port):
        return None
    prefix = base.path.rstrip("/")
    if not parts.path.startswith(prefix + "/"):
        return None
    segs = [unquote(s) for s in parts.path[len(prefix) + 1 :].split("/")]
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
    return HfFile(repo_id="/".join(segs[:i]), repo_type=repo_type, revision=segs[i + 1], path=path)


async def resolve_hf(file: HfFile, *, endpoint: str, token: str | None, wait_seconds: float) -> HfTarget:
    """Ask the Hub (through huggingface_hub) where the file's bytes are, how large it is and its sha256."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    url = huggingface_hub.hf_hub_url(
        file.repo_id, file.path, repo_type=file.repo_type, revision=file.revision, endpoint=endpoint
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
        kind = type(exc).__name__
        raise DownloadError(
            f"Error downloading file: Hugging Face {kind} for {file.repo_id}/{file.path}"
            + (f" (HTTP {status})" if status else ""),
            retryable=status is not None and status >= 500,
        ) from None
    except Exception as exc:  # network errors from the Hub client
        raise DownloadError(
            f"Error downloading file: Hugging Face metadata request failed: {type(exc).__name__}",
            retryable=True,
        ) from None
    etag = (meta.etag or "").lower()
    return HfTarget(url=meta.location or url, sha256=etag if _SHA256.match(etag) else None, size=meta.size)

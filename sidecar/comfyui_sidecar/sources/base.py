"""The `Source` protocol: where a URL's bytes come from. One implementation per file (`http`, `hf`, `s3`),
listed in `sources.registry`; the cache only talks to this protocol.

A URL is parsed once (`egress.urls.parse_url`) and claimed once by a source (`Source.claim`), which returns a
typed `Reference`; everything after that reads the reference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from comfyui_sidecar.egress.urls import Url
from comfyui_sidecar.fetching import Credential, DownloadAuth

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
T = TypeVar("T")


class SourceError(Exception):
    """A fetch failed; `message` is safe to show (no credentials, no query strings). `status` is the HTTP
    status the sidecar answers with; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, status: int = 400, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class Reference:
    """A URL claimed by a source. `url.text` is the cache key (exactly what the caller wrote)."""

    url: Url
    source: str

    @property
    def key(self) -> str:
        return self.url.text


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int
    attempts: int
    backoff_seconds: float


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    extension: str
    """The blob's extension (with the dot), or ""."""


class Sink(Protocol):
    """Where a fetch writes: the cache's temporary file (hashing, space reservation, progress)."""

    @property
    def size(self) -> int:
        """Bytes written so far (where a resumed attempt continues)."""
        ...

    async def claim(self, total: int) -> None:
        """Reserve cache space for `total` bytes before they are written; raises when there is no room."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def reset(self) -> None:
        """Start over (the server ignored a Range request)."""
        ...

    async def digest(self) -> str:
        """The sha256 of everything written (waits for writes still under way)."""
        ...


class Source(Protocol):
    name: str
    schemes: frozenset[str]

    def claim(self, url: Url) -> Reference | None:
        """A typed reference when this source serves `url`, else None. Pure."""
        ...

    def credential(self, ref: Reference, credentials: Sequence[Credential]) -> DownloadAuth | None:
        """The caller's credential that applies to `ref` (contract 4.4), or None."""
        ...

    async def head(self, ref: Reference, auth: DownloadAuth | None) -> int | None:
        """Ask the origin about `ref` with `auth`: its size when known. Raises SourceError (401/403 among
        others); used for the auth-required rule on cache hits."""
        ...

    async def fetch(
        self, ref: Reference, auth: DownloadAuth | None, sink: Sink, options: FetchOptions
    ) -> Fetched:
        """Write the bytes of `ref` into `sink`, retrying and resuming where the origin allows it."""
        ...


async def with_retries(
    what: str, attempt: Callable[[], Awaitable[T]], options: FetchOptions, progress: Callable[[], int]
) -> T:
    """Run `attempt` until it succeeds, a SourceError is not retryable, or the attempts are used up; the wait
    doubles from `options.backoff_seconds` (capped at 30 s)."""
    for number in range(1, options.attempts + 1):
        try:
            return await attempt()
        except SourceError as exc:
            if not exc.retryable or number == options.attempts:
                raise
            delay = min(MAX_BACKOFF, options.backoff_seconds * 2 ** (number - 1))
            log.warning(
                "download %s: attempt %d/%d failed (%s); retrying in %.1fs from byte %d",
                what,
                number,
                options.attempts,
                exc.message,
                delay,
                progress(),
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: attempts >= 1")

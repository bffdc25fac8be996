"""Streaming HTTP download into a temporary file: SSRF-checked redirects, retries with backoff, Range resume,
sha256 while streaming, space reserved before bytes are written, maximum size, progress logs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from comfyui_sidecar.cache.credentials import RequestAuth, with_query
from comfyui_sidecar.cache.naming import infer_extension, redact_url, strip_userinfo
from comfyui_sidecar.cache.ssrf import AddressGuard, BlockedURLError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes handed to the writer thread at a time
GROWTH_STEP = 64 << 20  # reservation step when the size is unknown
PROGRESS_MIN_BYTES = 64 << 20
MAX_BACKOFF = 30.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

ClaimSpace = Callable[[int], Awaitable[None]]


class DownloadError(Exception):
    """A download failed; the message is safe to show (no credentials, no query strings)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class DownloadOptions:
    max_bytes: int
    max_redirects: int
    attempts: int
    backoff_seconds: float
    progress_interval_seconds: float


@dataclass(frozen=True)
class DownloadResult:
    size: int
    sha256: str
    extension: str
    final_url: str


class _Sink:
    """The temporary file and the running sha256; written from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.hash.update(chunk)
        views = [memoryview(c) for c in chunks]
        while views:
            n = os.writev(self.fd, views)
            self.size += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.hash = hashlib.sha256()
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _content_range_start(header: str | None) -> int | None:
    # "bytes 100-199/200"
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


class HttpDownloader:
    def __init__(self, session: aiohttp.ClientSession, guard: AddressGuard, options: DownloadOptions) -> None:
        self.session = session
        self.guard = guard
        self.options = options

    async def fetch(
        self,
        url: str,
        *,
        auth: RequestAuth,
        dest: Path,
        claim: ClaimSpace,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> DownloadResult:
        """Download `url` into `dest` (which must not exist). Retries cut or failed attempts with backoff and
        resumes with Range when the server honours it. `claim(total)` reserves cache space for `total` bytes
        before they are written; it raises when there is no room."""
        sink = _Sink(dest)
        state = _State()
        try:
            for attempt in range(1, self.options.attempts + 1):
                try:
                    await self._attempt(url, auth, sink, claim, state)
                    break
                except DownloadError as exc:
                    if not exc.retryable or attempt == self.options.attempts:
                        raise
                    delay = min(MAX_BACKOFF, self.options.backoff_seconds * 2 ** (attempt - 1))
                    log.warning(
                        "download %s: attempt %d/%d failed (%s); retrying in %.1fs from byte %d",
                        redact_url(url),
                        attempt,
                        self.options.attempts,
                        exc.message,
                        delay,
                        sink.size,
                    )
                    await asyncio.sleep(delay)
        finally:
            sink.close()
        digest = sink.hash.hexdigest()
        if expected_size is not None and sink.size != expected_size:
            raise DownloadError(f"Error downloading file: got {sink.size} bytes, expected {expected_size}")
        if expected_sha256 and digest != expected_sha256.lower():
            raise DownloadError(
                f"Error downloading file: sha256 mismatch (got {digest}, expected {expected_sha256})"
            )
        ext = infer_extension(
            url,
            content_disposition=state.content_disposition,
            final_url=state.final_url,
            content_type=state.content_type,
        )
        return DownloadResult(size=sink.size, sha256=digest, extension=ext, final_url=state.final_url or url)

    async def _attempt(
        self, url: str, auth: RequestAuth, sink: _Sink, claim: ClaimSpace, state: _State
    ) -> None:
        resume_from = sink.size if state.resumable else 0
        if not resume_from and sink.size:
            await asyncio.to_thread(sink.reset)
        try:
            async with self._open(url, auth, resume_from, state) as resp:
                await self._read_body(url, resp, sink, claim, state=state, resume_from=resume_from)
        except BlockedURLError as exc:
            raise DownloadError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            # the connector may wrap the guard's refusal
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, BlockedURLError):
                raise DownloadError(str(cause)) from None
            if isinstance(exc, aiohttp.InvalidURL):
                raise DownloadError(f"Invalid URL: {redact_url(url)}") from None
            text = str(exc).strip() or type(exc).__name__
            dns_failure = isinstance(exc, aiohttp.ClientConnectorDNSError)
            raise DownloadError(f"Error downloading file: {text}", retryable=not dns_failure) from None

    def _open(self, url: str, auth: RequestAuth, resume_from: int, state: _State) -> _Response:
        return _Response(self, url, auth, resume_from, state)

    async def _read_body(
        self,
        url: str,
        resp: aiohttp.ClientResponse,
        sink: _Sink,
        claim: ClaimSpace,
        *,
        state: _State,
        resume_from: int,
    ) -> None:
        if resume_from and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != resume_from:
                raise DownloadError("Error downloading file: server sent a wrong range", retryable=False)
        elif resp.status == 200:
            if sink.size:
                await asyncio.to_thread(sink.reset)
        else:
            raise DownloadError(f"Error downloading file: unexpected status {resp.status}")
        length = resp.content_length
        total = (sink.size + length) if length is not None else None
        if total is not None and total > self.options.max_bytes:
            raise DownloadError(
                f"Error downloading file: response of {total} bytes exceeds the maximum download size "
                f"of {self.options.max_bytes} bytes"
            )
        state.resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes" or resp.status == 206
        state.validator = resp.headers.get("ETag") if resp.status == 200 else state.validator
        if state.validator and state.validator.startswith("W/"):
            state.validator = resp.headers.get("Last-Modified")
        if resp.status == 200:
            state.content_disposition = resp.headers.get("Content-Disposition")
            state.content_type = resp.headers.get("Content-Type")
            state.final_url = str(resp.url)
        state.total = total
        claimed = total if total is not None else sink.size + GROWTH_STEP
        await claim(claimed)
        progress = _Progress(url, total, self.options.progress_interval_seconds)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        chunks: list[bytes] = []
        buffered = 0
        received = sink.size
        try:
            while True:
                data = await resp.content.readany()
                if not data:
                    break
                received += len(data)
                if received > self.options.max_bytes:
                    raise DownloadError(
                        f"Error downloading file: response exceeds the maximum download size of "
                        f"{self.options.max_bytes} bytes"
                    )
                if total is not None and received > total:
                    raise DownloadError(
                        "Error downloading file: more bytes than Content-Length", retryable=True
                    )
                if received > claimed:
                    claimed = received + GROWTH_STEP
                    await claim(claimed)
                chunks.append(data)
                buffered += len(data)
                if buffered >= CHUNK:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, sink.write, chunks)
                    chunks, buffered = [], 0
                progress.update(received)
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            # keep the bytes that did arrive, so the next attempt resumes after them
            if pending is not None:
                await pending
                pending = None
            if chunks:
                await asyncio.to_thread(sink.write, chunks)
            raise
        finally:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
        if pending is not None:
            await pending
        if chunks:
            await asyncio.to_thread(sink.write, chunks)
        if total is not None and sink.size != total:
            raise DownloadError(
                f"Error downloading file: connection closed after {sink.size} of {total} bytes",
                retryable=True,
            )
        progress.done(sink.size)


@dataclass
class _State:
    resumable: bool = False
    validator: str | None = None
    content_disposition: str | None = None
    content_type: str | None = None
    final_url: str | None = None
    total: int | None = None


class _Response:
    """Async context manager: the final response of a GET after following redirects one by one, each hop's
    URL checked by the guard (its addresses are checked by the connector's resolver)."""

    def __init__(
        self, downloader: HttpDownloader, url: str, auth: RequestAuth, resume_from: int, state: _State
    ) -> None:
        self.d = downloader
        self.url = url
        self.auth = auth
        self.resume_from = resume_from
        self.state = state
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        origin = self.url
        current = with_query(strip_userinfo(self.url), self.auth.query)
        headers = dict(self.auth.headers)
        for _ in range(self.d.options.max_redirects + 1):
            self.d.guard.check_url(current)
            req_headers = {"Accept-Encoding": "identity", **headers}
            if self.resume_from:
                req_headers["Range"] = f"bytes={self.resume_from}-"
                if self.state.validator:
                    req_headers["If-Range"] = self.state.validator
            resp = await self.d.session.get(current, headers=req_headers, allow_redirects=False)
            if resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
                resp.release()
                try:
                    location = urljoin(current, resp.headers["Location"])
                except ValueError:
                    raise DownloadError(f"Invalid URL in a redirect from {redact_url(current)}") from None
                if not _same_origin(origin, location):
                    headers = {}  # never send credentials to another origin
                current = location
                continue
            if resp.status >= 400:
                reason = resp.reason or ""
                resp.release()
                raise DownloadError(
                    f"Error downloading file: {reason} (HTTP {resp.status})".replace(":  (", ": ("),
                    retryable=resp.status in RETRY_STATUSES,
                )
            self.resp = resp
            return resp
        raise DownloadError(f"Error downloading file: more than {self.d.options.max_redirects} redirects")

    async def __aexit__(self, *exc: object) -> None:
        if self.resp is not None:
            if exc[0] is not None:
                self.resp.close()
            else:
                self.resp.release()


class _Progress:
    def __init__(self, url: str, total: int | None, interval: float) -> None:
        self.url = redact_url(url)
        self.total = total
        self.interval = interval
        self.start = time.monotonic()
        self.last = self.start
        self.enabled = total is None or total >= PROGRESS_MIN_BYTES

    def update(self, received: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = received / max(now - self.start, 1e-6) / (1 << 20)
        if self.total:
            log.info(
                "download %s: %d / %d MiB (%.0f%%), %.0f MiB/s",
                self.url,
                received >> 20,
                self.total >> 20,
                100 * received / self.total,
                rate,
            )
        else:
            log.info("download %s: %d MiB, %.0f MiB/s", self.url, received >> 20, rate)

    def done(self, size: int) -> None:
        if self.enabled:
            elapsed = max(time.monotonic() - self.start, 1e-6)
            log.info("download %s: done, %d MiB in %.1fs", self.url, size >> 20, elapsed)

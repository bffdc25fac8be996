"""`ModelCache`: the sidecar's `Fetcher`. It keeps what is its own: the index, reservations, pins and
eviction.

Each URL is claimed by a source (`sources.registry`) and downloaded once into `blobs/` (disk layout and links:
`cache.layout`), with an LRU byte budget that in-flight downloads count against; files stay pinned while a
prompt uses them. `POST /download` and the manifest are wired by the app (`cache.routes`, `cache.manifest`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyui_sidecar.cache import metrics
from comfyui_sidecar.cache.folders import canonical_folder
from comfyui_sidecar.cache.layout import CacheLayout
from comfyui_sidecar.cache.lru import Entry, LruIndex, NoSpaceError, Reservation
from comfyui_sidecar.cache.metadata import now_iso
from comfyui_sidecar.cache.naming import cache_name, link_name, url_hash
from comfyui_sidecar.cache.partfile import PartFile
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.singleflight import SingleFlight
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.urls import HTTP_SCHEMES, InvalidUrl, parse_url
from comfyui_sidecar.fetching import Credential, DownloadAuth, Fetch, FetchError
from comfyui_sidecar.model_paths import configured_folders, write_model_paths
from comfyui_sidecar.sources.base import FetchOptions, Reference, SourceError
from comfyui_sidecar.sources.credentials import auth_fingerprint
from comfyui_sidecar.sources.registry import SourceRegistry, build_registry
from comfyui_sidecar.sources.s3_client import S3Clients

log = logging.getLogger(__name__)

MAX_ACQUIRE_ROUNDS = 3


@dataclass(frozen=True)
class Downloaded:
    """The result of `ModelCache.download` (POST /download and the manifest)."""

    entry: Entry
    link: Path
    link_name: str
    seconds: float


def download_sources(
    settings: CacheSettings, egress: Egress
) -> tuple[SourceRegistry, S3Clients, FetchOptions]:
    """The sources (http, hf, s3) downloading through `egress`, their S3 clients (close them) and the fetch
    options from the settings: shared by the cache and the model library's sync."""
    s3 = S3Clients(
        egress.download,
        connect_timeout=settings.download_connect_timeout_seconds,
        read_timeout=settings.download_read_timeout_seconds,
    )
    registry = build_registry(settings, egress, s3, wait_seconds=settings.download_connect_timeout_seconds)
    options = FetchOptions(
        max_bytes=settings.download_max_bytes,
        attempts=settings.download_attempts,
        backoff_seconds=settings.download_backoff_seconds,
    )
    return registry, s3, options


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class ModelCache:
    """The model and media cache. Call `start()` before use and `close()` at shutdown. Without an `egress`,
    the cache makes its own; it closes the egress it made, or the one given with `close_egress=True`."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        input_dir: Path,
        model_dir: Path | None = None,
        egress: Egress | None = None,
        close_egress: bool | None = None,
    ) -> None:
        self.settings = settings
        self.root = settings.cache_dir
        self.layout = CacheLayout(
            self.root,
            input_dir=input_dir,
            model_dir=model_dir,
            folders=configured_folders(settings),
            write_model_paths=functools.partial(write_model_paths, settings, model_dir),
        )
        self.index = LruIndex(settings.cache_budget_bytes())
        self._own_egress = egress is None if close_egress is None else close_egress
        self.egress = egress or Egress(settings)
        self.registry, self.s3, self.options = download_sources(settings, self.egress)
        self._flight: SingleFlight[Entry] = SingleFlight()
        self._space = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()

    # shortcuts the tests and the routes read
    @property
    def blobs(self) -> Path:
        return self.layout.blobs

    @property
    def tmp(self) -> Path:
        return self.layout.tmp

    @property
    def models_root(self) -> Path:
        return self.layout.models_root

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild state from disk and write extra_model_paths.yaml."""
        await asyncio.to_thread(self.layout.prepare, self.index)
        await self.egress.start()
        metrics.CACHE_BYTES.set(self.index.stored_bytes())
        log.info(
            "cache ready at %s: %d entries, %d bytes, budget %s",
            self.root,
            len(self.index.entries),
            self.index.stored_bytes(),
            self.index.budget or "unlimited",
        )

    def run_in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task owned by the cache (cancelled by `close`)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._flight.cancel_all()
        await self.s3.close()
        if self._own_egress:
            await self.egress.close()

    # -- the Fetcher protocol ---------------------------------------------------------------------------

    def reference(self, item: Fetch | str) -> Reference:
        """The source's typed reference of a prompt input or a URL; FetchError for a URL no source serves."""
        try:
            if isinstance(item, str):
                return self.registry.reference(item)
            return self.registry.reference(item.ref if item.ref is not None else parse_url(item.url))
        except InvalidUrl as exc:
            raise FetchError(exc.message, item=item if isinstance(item, Fetch) else None) from None

    async def check_reachable(self, ref: Reference) -> None:
        """Refuse now (not in a background download) a URL the egress policy refuses, its host name resolved.
        Raises InvalidUrl or EgressRefused."""
        if ref.url.scheme in HTTP_SCHEMES:
            await self.egress.download.check_resolved(ref.url)

    @asynccontextmanager
    async def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AsyncIterator[Mapping[Fetch, str]]:
        """Download (or reuse) every item, link it, and keep the blobs pinned until the context exits."""
        refs = {item.url: self.reference(item) for item in items}
        urls = list(refs)
        tasks = [asyncio.ensure_future(self._acquire(refs[url], credentials)) for url in urls]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            # cancelled (client gone): the acquisitions that already finished hold pins; release them
            for task in tasks:
                task.cancel()
                task.add_done_callback(self._unpin_acquired)
            raise
        pinned = [r for r in results if isinstance(r, Entry)]
        try:
            for url, result in zip(urls, results, strict=True):
                if isinstance(result, FetchError) and result.item is None:
                    result.item = next(item for item in items if item.url == url)
                if isinstance(result, BaseException):
                    raise result
            by_url = dict(zip(urls, pinned, strict=True))
            yield {item: self.layout.link_item(by_url[item.url], item) for item in items}
        finally:
            for entry in pinned:
                self.index.unpin(entry.name)
            if pinned:
                async with self._space:
                    self._space.notify_all()

    def _unpin_acquired(self, task: asyncio.Future[Entry]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.index.unpin(task.result().name)

    async def download(
        self, url: str, *, folder: str, filename: str | None = None, credentials: Sequence[Credential] = ()
    ) -> Downloaded:
        """Download `url` into model folder `folder` (POST /download, manifest). Not pinned afterwards."""
        start = time.monotonic()
        entry = await self._acquire(self.reference(url), credentials)
        try:
            name = link_name(filename, entry.name)
            link = self.layout.link_model(entry, canonical_folder(folder), name)
        finally:
            self.index.unpin(entry.name)
        return Downloaded(entry=entry, link=link, link_name=name, seconds=time.monotonic() - start)

    def is_model_folder(self, folder: str) -> bool:
        return self.layout.is_model_folder(folder)

    def cached_models(self) -> list[str]:
        """`<folder>/<name>` of the models in the cache's model tree (GET /internal/placement)."""
        return self.layout.model_links()

    def model_folders(self) -> list[str]:
        return self.layout.model_folders()

    # -- acquisition --------------------------------------------------------------------------------------

    async def _acquire(self, ref: Reference, credentials: Sequence[Credential]) -> Entry:
        """A pinned entry for `ref`: from the cache (auth rule applied) or downloaded once for all callers."""
        source = self.registry.source(ref)
        auth = source.credential(ref, credentials)
        key = url_hash(ref.key)
        for _ in range(MAX_ACQUIRE_ROUNDS):
            entry = self.index.find_prefix(key)
            if entry is not None:
                self.index.pin(entry.name)
                try:
                    if entry.auth_required:
                        await self._check_auth(ref, auth)
                except BaseException:
                    self.index.unpin(entry.name)
                    raise
                self.layout.touch(entry)
                metrics.REQUESTS.labels(result="hit").inc()
                return entry
            try:
                # one download per URL and credential: a caller must not share a failure (401) of a download
                # made with other credentials, or none; a success proves this caller's access
                flight = f"{auth_fingerprint(auth)} {ref.key}"
                fresh = await self._flight.do(flight, lambda: self._download(ref, auth))
            except FetchError:
                metrics.REQUESTS.labels(result="error").inc()
                raise
            current = self.index.get(fresh.name)
            if current is None:
                continue  # evicted between the download and this caller resuming
            self.index.pin(current.name)
            metrics.REQUESTS.labels(result="miss").inc()
            return current
        raise FetchError(
            f"cache entry for {ref.url.public} was evicted repeatedly; the cache budget is too small"
        )

    async def _check_auth(self, ref: Reference, auth: DownloadAuth | None) -> None:
        """The auth-required rule: a cached file fetched with credentials is only given to callers whose
        matching credentials the origin still accepts."""
        if auth is None:
            raise FetchError(f"Authentication required to access cached file for URL: {ref.url.public}")
        try:
            await self.registry.source(ref).head(ref, auth)
        except SourceError as exc:
            raise FetchError(exc.message) from None

    async def _download(self, ref: Reference, auth: DownloadAuth | None) -> Entry:
        reservation = self.index.open_reservation()
        started = time.monotonic()

        async def claim(total: int) -> None:
            await self._reserve(reservation, total)

        path = self.layout.new_part()
        try:
            part = PartFile(
                path,
                claim=claim,
                name=ref.url.redacted,
                progress_interval=self.settings.download_progress_interval_seconds,
            )
            try:
                fetched = await self.registry.source(ref).fetch(ref, auth, part, self.options)
            finally:
                await part.close()
            entry = Entry(
                name=cache_name(ref.key, fetched.extension),
                url=ref.url.public,
                size=fetched.size,
                sha256=fetched.sha256,
                auth_required=auth is not None,
                cached_at=now_iso(),
            )
            existing = self.index.get(entry.name)
            if existing is not None:  # a download of the same URL with other credentials finished first
                return existing
            self.layout.publish(path, entry)  # in the loop: a rename and a small write, seen atomically
            self.index.commit(reservation, entry)
        except SourceError as exc:
            raise FetchError(exc.message, status=exc.status) from None
        except NoSpaceError as exc:
            status = 507 if exc.permanent else 503
            raise FetchError(f"Error downloading file: {exc.message}", status=status) from None
        except OSError as exc:  # the cache's disk (a full or read-only volume), not the network
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = exc.strerror or type(exc).__name__
            raise FetchError(
                f"Error downloading file: cannot write to the cache: {reason}", status=507 if full else 500
            ) from None
        finally:
            self.index.release(reservation)
            path.unlink(missing_ok=True)
            async with self._space:
                self._space.notify_all()
        elapsed = time.monotonic() - started
        metrics.DOWNLOAD_SECONDS.observe(elapsed)
        metrics.CACHE_BYTES.set(self.index.stored_bytes())
        log.info("cached %s as %s (%d bytes, %.2fs)", ref.url.redacted, entry.name, entry.size, elapsed)
        return entry

    async def _reserve(self, reservation: Reservation, total: int) -> None:
        """Grow `reservation` to `total` bytes, evicting LRU entries; waits (bounded) for pinned space."""
        deadline = time.monotonic() + self.settings.cache_reserve_timeout_seconds
        while True:
            try:
                victims = self.index.plan_growth(reservation, total)
            except NoSpaceError as exc:
                remaining = deadline - time.monotonic()
                if exc.permanent or remaining <= 0:
                    raise
                async with self._space:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._space.wait(), timeout=min(remaining, 1.0))
                continue
            self.index.evict(victims)
            self.index.grow(reservation, total)
            retired = [self.layout.detach(victim) for victim in victims]
            for victim in victims:
                metrics.EVICTIONS.inc()
                log.info("evicted %s (%d bytes) from the cache", victim.name, victim.size)
            if victims:
                metrics.CACHE_BYTES.set(self.index.stored_bytes())
                # freeing a large file takes long: not in the event loop, but before the bytes come
                await asyncio.to_thread(_unlink_all, retired)
            return

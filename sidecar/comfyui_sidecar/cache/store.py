"""`ModelCache`: the sidecar's `Fetcher`.

It downloads each URL once into `<cache>/blobs/`, links it where ComfyUI looks (`<cache>/models/<folder>/`
for models, the input directory for media), keeps an LRU byte budget that in-flight downloads count
against, and pins files while a prompt uses them.

Layout under CACHE_DIR:
    blobs/<hash32><ext>        the bytes, named as comfyui-api names them
    blobs/<hash32><ext>.meta   JSON metadata (url without userinfo, sha256, size, authRequired, cachedAt)
    models/<folder>/<name>     relative symlinks to blobs (an extra model path root for ComfyUI)
    tmp/                       downloads in progress (emptied at start)
    extra_model_paths.yaml     written at start
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from comfyui_sidecar.cache import metrics
from comfyui_sidecar.cache.credentials import (
    RequestAuth,
    auth_fingerprint,
    match_credential,
    request_auth,
    with_query,
)
from comfyui_sidecar.cache.download import DownloadError, DownloadOptions, DownloadResult, HttpDownloader
from comfyui_sidecar.cache.folders import canonical_folder
from comfyui_sidecar.cache.hf import parse_hf_url, resolve_hf
from comfyui_sidecar.cache.lru import Entry, LruIndex, NoSpaceError, Reservation
from comfyui_sidecar.cache.metadata import (
    META_SUFFIX,
    entry_from_json,
    meta_path,
    now_iso,
    read_meta,
    write_meta,
)
from comfyui_sidecar.cache.naming import (
    cache_name,
    link_name,
    path_extension,
    redact_url,
    safe_basename,
    strip_userinfo,
    url_hash,
)
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.singleflight import SingleFlight
from comfyui_sidecar.cache.ssrf import BlockedURLError, GuardedResolver, guard_from_settings
from comfyui_sidecar.cache.upstream import adopt_upstream_files
from comfyui_sidecar.fetching import BearerAuth, Credential, DownloadAuth, Fetch, FetchError
from comfyui_sidecar.model_paths import configured_folders, write_model_paths

if TYPE_CHECKING:
    from comfyui_sidecar.cache.manifest import Manifest

log = logging.getLogger(__name__)

MAX_ACQUIRE_ROUNDS = 3
MAX_SCAN_ENTRIES = 100_000


@dataclass(frozen=True)
class Downloaded:
    """The result of `ModelCache.download` (POST /download and the manifest)."""

    entry: Entry
    link: Path
    link_name: str
    seconds: float


def _atomic_symlink(target: str, link: Path) -> None:
    """Point `link` at `target`, replacing whatever is there, without a moment where it is missing."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_segments(folder: str) -> list[str]:
    """Split a relative folder into safe segments; refuse traversal and absolute paths."""
    if not folder:
        return []
    parts = folder.replace("\\", "/").split("/")
    if folder.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FetchError(f"invalid folder name: {folder!r}")
    cleaned = [safe_basename(p) for p in parts]
    if any(c != p for c, p in zip(cleaned, parts, strict=True)):
        raise FetchError(f"invalid folder name: {folder!r}")
    return parts


class ModelCache:
    """The model and media cache. Call `start()` before use and `close()` at shutdown."""

    def __init__(self, settings: CacheSettings, *, input_dir: Path, model_dir: Path | None = None) -> None:
        self.settings = settings
        self.root = settings.cache_dir
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.models_root = self.root / "models"
        self.input_dir = input_dir
        self.model_dir = model_dir
        self.folders = configured_folders(settings)
        self.index = LruIndex(settings.cache_budget_bytes())
        self.guard = guard_from_settings(settings.download_allow_networks)
        self._links: dict[str, set[Path]] = {}
        self._flight: SingleFlight[Entry] = SingleFlight()
        self._space = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._downloader: HttpDownloader | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.manifest_errors: list[str] = []
        self._manifest: Manifest | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild state from disk, write extra_model_paths.yaml, open the download session. Quick: the
        manifest's downloads are `preload`'s. An unreadable manifest raises ManifestError before anything is
        opened."""
        from comfyui_sidecar.cache.manifest import load_manifest

        self._manifest = load_manifest(self.settings)
        await asyncio.to_thread(self._prepare_disk)
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.guard), limit=64, ttl_dns_cache=30)
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.download_connect_timeout_seconds,
            sock_read=self.settings.download_read_timeout_seconds,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
            read_bufsize=1 << 22,
        )
        options = DownloadOptions(
            max_bytes=self.settings.download_max_bytes,
            max_redirects=self.settings.download_max_redirects,
            attempts=self.settings.download_attempts,
            backoff_seconds=self.settings.download_backoff_seconds,
            progress_interval_seconds=self.settings.download_progress_interval_seconds,
        )
        self._downloader = HttpDownloader(self._session, self.guard, options)
        metrics.CACHE_BYTES.set(self.index.stored_bytes())
        log.info(
            "cache ready at %s: %d entries, %d bytes, budget %s",
            self.root,
            len(self.index.entries),
            self.index.stored_bytes(),
            self.index.budget or "unlimited",
        )

    def routes(self) -> list[web.RouteDef]:
        """`POST /download`; the sidecar app registers the routes of a fetcher that has them."""
        from comfyui_sidecar.cache.routes import download_routes

        return download_routes(self)

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
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def preload(self) -> None:
        """MANIFEST / MANIFEST_JSON: `before_start` models (the app runs this after `start`, in the
        background, and holds /ready until it returns), then `after_start` in the background. A failed item is
        logged and kept in `manifest_errors`; it does not stop the sidecar."""
        from comfyui_sidecar.cache.manifest import run_manifest_phase, warn_unsupported

        manifest = self._manifest
        if manifest is None:
            return
        warn_unsupported(manifest)
        self.manifest_errors.extend(await run_manifest_phase(self, manifest, "before_start"))

        async def after() -> None:
            self.manifest_errors.extend(await run_manifest_phase(self, manifest, "after_start"))

        if manifest.models.after_start:
            self.run_in_background(after())

    def _prepare_disk(self) -> None:
        for d in (self.blobs, self.tmp, self.models_root):
            d.mkdir(parents=True, exist_ok=True)
        for folder in self.folders:
            (self.models_root / folder).mkdir(exist_ok=True)
        for stale in self.tmp.iterdir():
            if stale.is_dir() and not stale.is_symlink():
                continue
            stale.unlink(missing_ok=True)
        adopt_upstream_files(self.root, self.blobs)
        self._rebuild_index()
        self._rebuild_links()
        for victim in self.index.over_budget():
            self.index.remove(victim.name)
            self._delete_entry_files(victim)
        self._write_model_paths()

    def _rebuild_index(self) -> None:
        found: list[tuple[float, Entry]] = []
        for count, path in enumerate(sorted(self.blobs.iterdir())):
            if count >= MAX_SCAN_ENTRIES:
                break
            name = path.name
            if name.startswith(".") or not path.is_file() or path.is_symlink():
                if name.startswith("."):
                    path.unlink(missing_ok=True)
                continue
            if name.endswith(META_SUFFIX):
                if not (self.blobs / name[: -len(META_SUFFIX)]).is_file():
                    path.unlink(missing_ok=True)  # metadata of a blob that is gone
                continue
            st = path.stat()
            data = read_meta(path)
            entry = entry_from_json(name, data, st.st_size) if data is not None else None
            if entry is None:
                log.warning("cache: dropping %s (no or inconsistent metadata)", name)
                path.unlink(missing_ok=True)
                meta_path(path).unlink(missing_ok=True)
                continue
            found.append((max(st.st_atime, st.st_mtime), entry))
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            self.index.add(entry)

    def _rebuild_links(self) -> None:
        """Record links into blobs; remove the ones whose blob is gone."""
        roots = [self.models_root, self.input_dir]
        blobs_dir = str(self.blobs.resolve())
        scanned = 0
        for root in roots:
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                depth = Path(dirpath).relative_to(root).parts
                if len(depth) >= 2:
                    dirnames[:] = []
                for fname in filenames + list(dirnames):
                    scanned += 1
                    if scanned > MAX_SCAN_ENTRIES:
                        return
                    path = Path(dirpath) / fname
                    if not path.is_symlink():
                        continue
                    target = os.path.normpath(os.path.join(dirpath, os.readlink(path)))
                    if os.path.dirname(target) != blobs_dir and not target.startswith(blobs_dir + os.sep):
                        # relative links resolve against the real directory
                        target = str(Path(target).resolve()) if Path(target).exists() else target
                    if os.path.dirname(target) != blobs_dir:
                        continue
                    name = os.path.basename(target)
                    if name in self.index.entries:
                        self._links.setdefault(name, set()).add(path)
                    else:
                        path.unlink(missing_ok=True)

    def _write_model_paths(self) -> None:
        write_model_paths(self.settings, self.model_dir)

    # -- the Fetcher protocol ---------------------------------------------------------------------------

    @asynccontextmanager
    async def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AsyncIterator[Mapping[Fetch, str]]:
        """Download (or reuse) every item, link it, and keep the blobs pinned until the context exits."""
        urls = list(dict.fromkeys(item.url for item in items))
        tasks = [asyncio.ensure_future(self._acquire(url, credentials)) for url in urls]
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
            resolved = {item: self._link_item_or_fail(by_url[item.url], item) for item in items}
            yield resolved
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
        self,
        url: str,
        *,
        folder: str,
        filename: str | None = None,
        credentials: Sequence[Credential] = (),
    ) -> Downloaded:
        """Download `url` into model folder `folder` (POST /download, manifest). Not pinned afterwards."""
        start = time.monotonic()
        entry = await self._acquire(url, credentials)
        try:
            name = link_name(filename, entry.name)
            link = self._link_model(entry, canonical_folder(folder), name)
        finally:
            self.index.unpin(entry.name)
        return Downloaded(entry=entry, link=link, link_name=name, seconds=time.monotonic() - start)

    def is_model_folder(self, folder: str) -> bool:
        folder = canonical_folder(folder)
        if folder in self.folders:
            return True
        return (
            self.model_dir is not None
            and folder == safe_basename(folder)
            and (self.model_dir / folder).is_dir()
        )

    def model_folders(self) -> list[str]:
        names = set(self.folders)
        if self.model_dir is not None and self.model_dir.is_dir():
            names.update(
                p.name for p in self.model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        return sorted(names)

    # -- acquisition --------------------------------------------------------------------------------------

    async def _acquire(self, url: str, credentials: Sequence[Credential]) -> Entry:
        """A pinned entry for `url`: from the cache (auth rule applied) or downloaded once for all callers."""
        auth = match_credential(url, credentials)
        key = url_hash(url)
        for _ in range(MAX_ACQUIRE_ROUNDS):
            entry = self.index.find_prefix(key)
            if entry is not None:
                self.index.pin(entry.name)
                try:
                    if entry.auth_required:
                        await self._check_auth(url, auth)
                except BaseException:
                    self.index.unpin(entry.name)
                    raise
                self._touch(entry)
                metrics.REQUESTS.labels(result="hit").inc()
                return entry
            try:
                # one download per URL and credential: a caller must not share a failure (401) of a download
                # made with other credentials, or none; a success proves this caller's access
                flight = f"{auth_fingerprint(auth)} {url}"
                fresh = await self._flight.do(flight, lambda: self._download(url, auth))
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
            f"cache entry for {strip_userinfo(url)} was evicted repeatedly; the cache budget is too small"
        )

    def _touch(self, entry: Entry) -> None:
        with suppress(OSError):
            os.utime(self.blobs / entry.name)

    async def _check_auth(self, url: str, auth: DownloadAuth | None) -> None:
        """The auth-required rule: a cached file fetched with credentials is only given to callers whose
        matching credentials the origin still accepts."""
        if auth is None:
            raise FetchError(f"Authentication required to access cached file for URL: {strip_userinfo(url)}")
        assert self._session is not None
        hf = parse_hf_url(url, self.settings.hf_endpoint)
        headers = dict(request_auth(auth, url=url).headers)
        if hf is not None:
            return  # the Hub has no cheap validator; a matching credential is required (above)
        probe = with_query(strip_userinfo(url), request_auth(auth, url=url).query)
        try:
            self.guard.check_url(probe)
            async with self._session.head(probe, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                reason = resp.reason
            if status == 405:
                async with self._session.get(
                    probe, headers={**headers, "Range": "bytes=0-0"}, allow_redirects=False
                ) as resp:
                    status = resp.status
                    reason = resp.reason
        except (aiohttp.ClientError, TimeoutError, BlockedURLError) as exc:
            raise FetchError(f"Authentication check failed: {type(exc).__name__}") from None
        if status in (401, 403):
            raise FetchError(f"Authentication failed: {status} {reason or ''}".strip())

    async def _download(self, url: str, auth: DownloadAuth | None) -> Entry:
        assert self._downloader is not None
        try:
            self.guard.check_url(url)
        except BlockedURLError as exc:
            raise FetchError(str(exc)) from None
        reservation = self.index.open_reservation()
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        started = time.monotonic()
        try:
            result = await self._fetch_with_provider(url, auth, tmp, reservation)
            name = cache_name(url, result.extension)
            entry = Entry(
                name=name,
                url=strip_userinfo(url),
                size=result.size,
                sha256=result.sha256,
                auth_required=auth is not None,
                cached_at=now_iso(),
            )
            existing = self.index.get(name)
            if existing is not None:  # a download of the same URL with other credentials finished first
                return existing
            blob = self.blobs / name
            self._publish(tmp, blob, entry)  # in the loop: a rename and a small write, seen atomically
            self.index.commit(reservation, entry)
        except DownloadError as exc:
            raise FetchError(exc.message) from None
        except NoSpaceError as exc:
            raise FetchError(
                f"Error downloading file: {exc.message}", status=507 if exc.permanent else 503
            ) from None
        except OSError as exc:  # the cache's disk (a full or read-only volume), not the network
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = exc.strerror or type(exc).__name__
            raise FetchError(
                f"Error downloading file: cannot write to the cache: {reason}", status=507 if full else 500
            ) from None
        finally:
            self.index.release(reservation)
            tmp.unlink(missing_ok=True)
            async with self._space:
                self._space.notify_all()
        elapsed = time.monotonic() - started
        metrics.DOWNLOAD_SECONDS.observe(elapsed)
        metrics.CACHE_BYTES.set(self.index.stored_bytes())
        log.info("cached %s as %s (%d bytes, %.2fs)", redact_url(url), entry.name, entry.size, elapsed)
        return entry

    def _publish(self, tmp: Path, blob: Path, entry: Entry) -> None:
        write_meta(blob, entry)
        os.replace(tmp, blob)

    async def _fetch_with_provider(
        self, url: str, auth: DownloadAuth | None, tmp: Path, reservation: Reservation
    ) -> DownloadResult:
        assert self._downloader is not None

        async def claim(total: int) -> None:
            await self._reserve(reservation, total)

        hf = parse_hf_url(url, self.settings.hf_endpoint)
        if hf is None:
            req = request_auth(auth, url=url, global_header=self.settings.global_auth_header())
            return await self._downloader.fetch(url, auth=req, dest=tmp, claim=claim)
        token = auth.token if isinstance(auth, BearerAuth) else self.settings.hf_token_value()
        target = await resolve_hf(
            hf,
            endpoint=self.settings.hf_endpoint,
            token=token,
            wait_seconds=self.settings.download_connect_timeout_seconds,
        )
        if target.size is not None:
            await claim(target.size)
        headers = {}
        if token and parse_hf_url(target.url, self.settings.hf_endpoint) is not None:
            headers = {"Authorization": f"Bearer {token}"}
        result = await self._downloader.fetch(
            target.url,
            auth=RequestAuth(headers=headers),
            dest=tmp,
            claim=claim,
            expected_sha256=target.sha256,
            expected_size=target.size,
        )
        # the extension comes from the Hub path, not from the CDN location
        return DownloadResult(
            size=result.size,
            sha256=result.sha256,
            extension=path_extension(url) or result.extension,
            final_url=result.final_url,
        )

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
            for victim in victims:
                self._delete_entry_files(victim)
                metrics.EVICTIONS.inc()
                log.info("evicted %s (%d bytes) from the cache", victim.name, victim.size)
            if victims:
                metrics.CACHE_BYTES.set(self.index.stored_bytes())
            return

    def _delete_entry_files(self, entry: Entry) -> None:
        """Remove an evicted blob, its metadata and every link to it (no dangling links)."""
        blob = self.blobs / entry.name
        for link in self._links.pop(entry.name, set()):
            with suppress(OSError):
                if link.is_symlink() and os.path.basename(os.readlink(link)) == entry.name:
                    link.unlink()
        meta_path(blob).unlink(missing_ok=True)
        blob.unlink(missing_ok=True)

    # -- links --------------------------------------------------------------------------------------------

    def _link_item_or_fail(self, entry: Entry, item: Fetch) -> str:
        try:
            return self._link_item(entry, item)
        except FetchError as error:
            error.item = error.item or item
            raise

    def _link_item(self, entry: Entry, item: Fetch) -> str:
        if item.kind == "model":
            folder = canonical_folder(item.folder)
            if not self.is_model_folder(folder):
                raise FetchError(f"unknown model folder: {item.folder!r}")
            self._link_model(entry, folder, entry.name)
            return entry.name
        segments = _safe_segments(item.folder)
        directory = self.input_dir.joinpath(*segments)
        self._make_link(directory, entry.name, str((self.blobs / entry.name).resolve()), entry)
        return "/".join([*segments, entry.name])

    def _link_model(self, entry: Entry, folder: str, name: str) -> Path:
        segments = _safe_segments(folder)
        if len(segments) != 1:
            raise FetchError(f"invalid model folder: {folder!r}")
        directory = self.models_root / segments[0]
        target = os.path.relpath(self.blobs / entry.name, directory)
        return self._make_link(directory, name, target, entry)

    def _make_link(self, directory: Path, name: str, target: str, entry: Entry) -> Path:
        if not name or name != safe_basename(name):
            raise FetchError(f"invalid file name: {name!r}")
        link = directory / name
        if link in self._links.get(entry.name, ()):
            with suppress(OSError):
                if os.readlink(link) == target:
                    return link  # the common cache hit: one syscall
        real_dir = directory.resolve()  # before mkdir, which would follow a symlink out of the root
        for root in (self.models_root.resolve(), self.input_dir.resolve()):
            if real_dir == root or root in real_dir.parents:
                break
        else:
            raise FetchError(f"refusing to write outside the cache and input directories: {name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            current = os.readlink(link) if link.is_symlink() else None
        except OSError:
            current = None
        if current != target:
            _atomic_symlink(target, link)
        self._links.setdefault(entry.name, set()).add(link)
        return link

"""`comfyui-sidecar sync`: fill a model library volume from its manifest, model by model.

Built on the cache's download code: the same sources (`http`, `hf`, `s3`, one registry), the same egress
policy, the same `PartFile` (sha256 while streaming, retries that resume with Range). The library's own part:
files land at `<root>/<folder>/<file>` after checks (the sha256 when the manifest gives one; the volume's free
space before the bytes come, in 64 MiB steps when the size is unknown), a file already there with the right
size and hash is not fetched again, and every model ends Ready or Failed on its own (a bad URL, hash, path or
folder, or a full volume fails that model only). After each model the report line (`library.report`) is
rewritten.

Exit codes: 0 every model Ready; 1 a failure another attempt may fix (network, 5xx, full volume); 2 only
failures that need a spec change (404, wrong sha256, bad target) or an unreadable manifest.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pydantic import ValidationError

from comfyui_sidecar.cache.partfile import PartFile
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import download_sources
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.urls import InvalidUrl
from comfyui_sidecar.library.manifest import LibraryManifest, LibraryModel, sha256_problem, target_problem
from comfyui_sidecar.library.report import ModelReport, SyncReport, encode
from comfyui_sidecar.library.store import LibraryStore, OutsideRoot
from comfyui_sidecar.sources.base import FetchOptions, Reference, SourceError
from comfyui_sidecar.sources.hf import HfRef
from comfyui_sidecar.sources.registry import SourceRegistry

log = logging.getLogger(__name__)

EXIT_OK, EXIT_RETRY, EXIT_PERMANENT = 0, 1, 2
FREE_SPACE_MARGIN = 16 << 20  # kept free on the volume (state file, file system metadata)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ModelFailed(Exception):
    def __init__(self, message: str, *, retryable: bool = False, written: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.written = written


@dataclass
class Sync:
    """One sync run over `manifest` into `store`; `report` receives the report line after every model."""

    manifest: LibraryManifest
    store: LibraryStore
    registry: SourceRegistry
    options: FetchOptions
    progress_interval: float
    report: Callable[[str], None]

    async def run(self) -> SyncReport:
        await asyncio.to_thread(self.store.prepare)
        digest = self.manifest.digest()
        results = [ModelReport() for _ in self.manifest.models]
        self._emit(SyncReport(digest, results))
        pruned: list[str] = []
        if self.manifest.prune:  # first: frees space for the downloads
            keep = {model.target for model in self.manifest.models}
            pruned = await asyncio.to_thread(self.store.prune, keep)
            for target in pruned:
                log.info("library: pruned %s (no model names it any more)", target)
        for index, model in enumerate(self.manifest.models):
            results[index] = await self.sync_model(model)
            self._emit(SyncReport(digest, results, len(pruned)))
        return SyncReport(digest, results, len(pruned))

    def _emit(self, report: SyncReport) -> None:
        pinned = {i for i, model in enumerate(self.manifest.models) if model.sha256}
        self.report(encode(report, pinned))

    async def sync_model(self, model: LibraryModel) -> ModelReport:
        started = time.monotonic()
        try:
            ref = self._reference(model)
            found = await asyncio.to_thread(self.store.present, model.target, ref.key, model.sha256)
            if found is not None:
                log.info("library: %s is present (%d bytes), not downloaded", model.target, found.size)
                return ModelReport("Ready", found.size, found.sha256)
            size, sha256 = await self._download(model, ref)
        except ModelFailed as failed:
            log.error("library: %s failed: %s", model.target, failed.message)
            return ModelReport("Failed", failed.written, message=failed.message, retryable=failed.retryable)
        log.info(
            "library: %s ready (%d bytes, sha256 %s, %.1fs)",
            model.target,
            size,
            sha256,
            time.monotonic() - started,
        )
        return ModelReport("Ready", size, sha256, downloaded=True)

    def _reference(self, model: LibraryModel) -> Reference:
        problem = target_problem(model.target, self.manifest.folders()) or sha256_problem(model.sha256)
        if problem is not None:
            raise ModelFailed(problem)
        try:
            ref = self.registry.reference(model.url)
            if model.revision is not None:
                ref = self._at_revision(ref, model.revision)
            self.store.path(model.target)
        except InvalidUrl as exc:
            raise ModelFailed(exc.message) from None
        except OutsideRoot as exc:
            raise ModelFailed(str(exc)) from None
        return ref

    def _at_revision(self, ref: Reference, revision: str) -> Reference:
        """The Hub URL at `revision`: replaces `main` in `/resolve/main/`; another revision in the URL that
        differs is a conflict."""
        if not isinstance(ref, HfRef):
            raise ModelFailed("revision applies to Hugging Face URLs only (…/resolve/<revision>/…)")
        if ref.revision == revision:
            return ref
        if ref.revision != "main":
            raise ModelFailed(f"the URL names revision {ref.revision!r} but revision is {revision!r}")
        pinned = ref.key.replace("/resolve/main/", f"/resolve/{quote(revision, safe='')}/", 1)
        return self.registry.reference(pinned)

    async def _download(self, model: LibraryModel, ref: Reference) -> tuple[int, str]:
        path = self.store.new_part()
        part: PartFile | None = None

        async def claim(total: int) -> None:
            needed = total - (part.size if part is not None else 0)
            free = await asyncio.to_thread(self.store.free_bytes)
            if needed > free - FREE_SPACE_MARGIN:
                raise ModelFailed(
                    f"volume full: {total} bytes needed for {model.target}, {max(0, free)} bytes free on the "
                    "library volume (grow spec.storage.size, or prune models)",
                    retryable=True,
                    written=part.size if part is not None else 0,
                )

        try:
            part = PartFile(
                path, claim=claim, name=ref.url.redacted, progress_interval=self.progress_interval
            )
            try:
                fetched = await self.registry.source(ref).fetch(ref, None, part, self.options)
            finally:
                written = part.size
                await part.close()
            if model.sha256 is not None and fetched.sha256 != model.sha256:
                raise ModelFailed(
                    f"sha256 mismatch: expected {model.sha256}, got {fetched.sha256} ({fetched.size} bytes); "
                    "the file was not written",
                    written=fetched.size,
                )
            await asyncio.to_thread(self.store.publish, path, model.target, ref.key, fetched.sha256)
            return fetched.size, fetched.sha256
        except SourceError as exc:
            raise ModelFailed(exc.message, retryable=exc.retryable, written=_size(path)) from None
        except OutsideRoot as exc:
            raise ModelFailed(str(exc)) from None
        except OSError as exc:
            written = _size(path)
            if exc.errno in _FULL:
                raise ModelFailed(
                    f"volume full: writing {model.target} failed after {written} bytes "
                    f"({exc.strerror}); grow spec.storage.size, or prune models",
                    retryable=True,
                    written=written,
                ) from None
            raise ModelFailed(
                f"cannot write {model.target}: {exc.strerror or type(exc).__name__}",
                retryable=True,
                written=written,
            ) from None
        finally:
            path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def exit_code(report: SyncReport) -> int:
    if report.error:
        return EXIT_PERMANENT
    failed = report.failed
    if not failed:
        return EXIT_OK
    return EXIT_RETRY if any(model.retryable for model in failed) else EXIT_PERMANENT


def report_writer(path: Path | None) -> Callable[[str], None]:
    """Writes the line in place (the termination-message file is a bind mount: no rename onto it)."""

    def write(line: str) -> None:
        if path is None:
            return
        data = line.encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    return write


def load_manifest(path: Path) -> LibraryManifest:
    return LibraryManifest.model_validate_json(path.read_bytes())


async def run_sync(
    manifest: LibraryManifest, root: Path, settings: CacheSettings, report: Callable[[str], None]
) -> SyncReport:
    """Sync `manifest` into `root` with the settings' egress policy, sources and download options."""
    egress = Egress(settings)
    registry, s3, options = download_sources(settings, egress)
    try:
        sync = Sync(
            manifest,
            LibraryStore(root),
            registry,
            options,
            settings.download_progress_interval_seconds,
            report,
        )
        return await sync.run()
    finally:
        await s3.close()
        await egress.close()


def main(manifest_path: Path, root: Path, report_path: Path | None) -> int:
    """The `sync` subcommand: returns the exit code (see the module docstring)."""
    write = report_writer(report_path)
    try:
        manifest = load_manifest(manifest_path)
        settings = CacheSettings()
    except (OSError, ValueError, ValidationError) as exc:
        message = f"cannot read the library manifest {manifest_path}: {exc}"
        log.error("library: %s", message)
        write(encode(SyncReport("", error=message)))
        return EXIT_PERMANENT
    log.info("library: syncing %d models into %s", len(manifest.models), root)
    report = asyncio.run(run_sync(manifest, root, settings, write))
    ready = sum(1 for model in report.models if model.phase == "Ready")
    log.info("library: %d/%d models ready, %d pruned", ready, len(report.models), report.pruned)
    return exit_code(report)

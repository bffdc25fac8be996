"""The cache on disk: directories, recovery at start, blobs and their metadata, and the links that point at
them.

    blobs/<hash32><ext>        the bytes, named as comfyui-api names them
    blobs/<hash32><ext>.meta   JSON metadata (url without userinfo, sha256, size, authRequired, cachedAt)
    models/<folder>/<name>     relative symlinks to blobs (an extra model path root for ComfyUI)
    tmp/                       downloads in progress (emptied at start)
    extra_model_paths.yaml     written at start
Every path written stays inside the cache, the model folders or the input directory.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from comfyui_sidecar.cache.folders import canonical_folder
from comfyui_sidecar.cache.lru import Entry, LruIndex
from comfyui_sidecar.cache.metadata import META_SUFFIX, entry_from_json, meta_path, read_meta, write_meta
from comfyui_sidecar.cache.upstream import adopt_upstream_files
from comfyui_sidecar.fetching import Fetch, FetchError
from comfyui_sidecar.filenames import safe_basename

log = logging.getLogger(__name__)

MAX_SCAN_ENTRIES = 100_000


def atomic_symlink(target: str, link: Path) -> None:
    """Point `link` at `target`, replacing whatever is there, without a moment where it is missing."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def safe_segments(folder: str) -> list[str]:
    """Split a relative folder into safe segments; refuse traversal and absolute paths."""
    if not folder:
        return []
    parts = folder.replace("\\", "/").split("/")
    if folder.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FetchError(f"invalid folder name: {folder!r}")
    if any(safe_basename(p) != p for p in parts):
        raise FetchError(f"invalid folder name: {folder!r}")
    return parts


class CacheLayout:
    def __init__(
        self,
        root: Path,
        *,
        input_dir: Path,
        model_dir: Path | None,
        folders: tuple[str, ...],
        write_model_paths: Callable[[], object],
    ) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.models_root = root / "models"
        self.input_dir = input_dir
        self.model_dir = model_dir
        self.folders = folders
        self.write_model_paths = write_model_paths
        self.links: dict[str, set[Path]] = {}

    # -- start ---------------------------------------------------------------------------------------------

    def prepare(self, index: LruIndex) -> None:
        """Create the directories, drop partial downloads, adopt files upstream comfyui-api left, rebuild
        `index` and the links from disk, evict what is over budget and write extra_model_paths.yaml."""
        for d in (self.blobs, self.tmp, self.models_root):
            d.mkdir(parents=True, exist_ok=True)
        for folder in self.folders:
            (self.models_root / folder).mkdir(exist_ok=True)
        for stale in self.tmp.iterdir():
            if not stale.is_dir() or stale.is_symlink():
                stale.unlink(missing_ok=True)
        adopt_upstream_files(self.root, self.blobs)
        self._rebuild_index(index)
        self._rebuild_links(index)
        for victim in index.over_budget():
            index.remove(victim.name)
            self.delete_entry_files(victim)
        self.write_model_paths()

    def _rebuild_index(self, index: LruIndex) -> None:
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
            index.add(entry)

    def _rebuild_links(self, index: LruIndex) -> None:
        """Record links into blobs; remove the ones whose blob is gone."""
        blobs_dir = str(self.blobs.resolve())
        scanned = 0
        for root in (self.models_root, self.input_dir):
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                if len(Path(dirpath).relative_to(root).parts) >= 2:
                    dirnames[:] = []
                for fname in filenames + list(dirnames):
                    scanned += 1
                    if scanned > MAX_SCAN_ENTRIES:
                        return
                    path = Path(dirpath) / fname
                    if not path.is_symlink():
                        continue
                    target = os.path.normpath(os.path.join(dirpath, os.readlink(path)))
                    if os.path.dirname(target) != blobs_dir and Path(target).exists():
                        target = str(
                            Path(target).resolve()
                        )  # relative links resolve against the real directory
                    if os.path.dirname(target) != blobs_dir:
                        continue
                    name = os.path.basename(target)
                    if name in index.entries:
                        self.links.setdefault(name, set()).add(path)
                    else:
                        path.unlink(missing_ok=True)

    # -- blobs ---------------------------------------------------------------------------------------------

    def new_part(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def publish(self, part: Path, entry: Entry) -> None:
        """Metadata first, then the rename: a blob is never seen without its metadata."""
        blob = self.blobs / entry.name
        write_meta(blob, entry)
        os.replace(part, blob)

    def touch(self, entry: Entry) -> None:
        with suppress(OSError):
            os.utime(self.blobs / entry.name)

    def delete_entry_files(self, entry: Entry) -> None:
        """Remove an evicted blob, its metadata and every link to it (no dangling links)."""
        self.detach(entry).unlink(missing_ok=True)

    def detach(self, entry: Entry) -> Path:
        """Remove an evicted entry's links and metadata and move its blob into tmp/: cheap, so it can run in
        the event loop; the caller unlinks the returned file (slow for a large file) in a thread."""
        blob = self.blobs / entry.name
        for link in self.links.pop(entry.name, set()):
            with suppress(OSError):
                if link.is_symlink() and os.path.basename(os.readlink(link)) == entry.name:
                    link.unlink()
        meta_path(blob).unlink(missing_ok=True)
        retired = self.tmp / f".{uuid.uuid4().hex}.evicted"
        with suppress(FileNotFoundError):
            os.replace(blob, retired)
        return retired

    # -- folders and links -----------------------------------------------------------------------------------

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

    def model_links(self) -> list[str]:
        """`<folder>/<name>` of every link in the model tree: the downloaded models as ComfyUI sees them."""
        names = {
            f"{link.parent.name}/{link.name}"
            for links in self.links.values()
            for link in links
            if link.parent.parent == self.models_root
        }
        return sorted(names)

    def link_item(self, entry: Entry, item: Fetch) -> str:
        """Link a pinned entry where the prompt input expects it; the value the prompt carries instead."""
        try:
            if item.kind == "model":
                folder = canonical_folder(item.folder)
                if not self.is_model_folder(folder):
                    raise FetchError(f"unknown model folder: {item.folder!r}")
                self.link_model(entry, folder, entry.name)
                return entry.name
            segments = safe_segments(item.folder)
            directory = self.input_dir.joinpath(*segments)
            self._make_link(directory, entry.name, str((self.blobs / entry.name).resolve()), entry)
            return "/".join([*segments, entry.name])
        except FetchError as error:
            error.item = error.item or item
            raise

    def link_model(self, entry: Entry, folder: str, name: str) -> Path:
        segments = safe_segments(folder)
        if len(segments) != 1:
            raise FetchError(f"invalid model folder: {folder!r}")
        directory = self.models_root / segments[0]
        target = os.path.relpath(self.blobs / entry.name, directory)
        return self._make_link(directory, name, target, entry)

    def _make_link(self, directory: Path, name: str, target: str, entry: Entry) -> Path:
        if not name or name != safe_basename(name):
            raise FetchError(f"invalid file name: {name!r}")
        link = directory / name
        if link in self.links.get(entry.name, ()):
            with suppress(OSError):
                if os.readlink(link) == target:
                    return link  # the common cache hit: one syscall
        real_dir = directory.resolve()  # before mkdir, which would follow a symlink out of the root
        roots = (self.models_root.resolve(), self.input_dir.resolve())
        if not any(real_dir == root or root in real_dir.parents for root in roots):
            raise FetchError(f"refusing to write outside the cache and input directories: {name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            current = os.readlink(link) if link.is_symlink() else None
        except OSError:
            current = None
        if current != target:
            atomic_symlink(target, link)
        self.links.setdefault(entry.name, set()).add(link)
        return link

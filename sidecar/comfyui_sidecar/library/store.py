"""The library volume on disk: `<root>/<folder>/<file>` as ComfyUI reads it, plus the sync's own `.sync/`.

    <root>/<folder>/<file>        the models (an instance mounts the volume read-only as its model root)
    <root>/.sync/state.json       what the sync wrote: target -> url, size, mtime_ns, sha256
    <root>/.sync/tmp/             downloads in progress (emptied when a sync starts)

A file is written under `.sync/tmp/`, checked, flushed to disk and renamed to its target (same file system),
then recorded: a target is never seen half-written, and a file whose record matches (same URL, size and mtime,
and the sha256 the manifest asks for) is not downloaded again. Every path stays inside the root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = ".sync"
HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class Record:
    url: str
    size: int
    mtime_ns: int
    sha256: str


class OutsideRoot(Exception):
    pass


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LibraryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / STATE_DIR
        self.tmp = self.state_dir / "tmp"
        self.state_file = self.state_dir / "state.json"
        self.records: dict[str, Record] = {}

    def prepare(self) -> None:
        """Create `.sync/`, drop partial downloads of an earlier run, read the records."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        self.records = self._read_state()

    def _read_state(self) -> dict[str, Record]:
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
            return {target: Record(**fields) for target, fields in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            log.warning("library: ignoring unreadable %s (%s); files are checked again", self.state_file, exc)
            return {}

    def _write_state(self) -> None:
        tmp = self.state_dir / f".state.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(json.dumps({t: asdict(r) for t, r in sorted(self.records.items())}, indent=1))
            os.replace(tmp, self.state_file)
        finally:
            tmp.unlink(missing_ok=True)

    def path(self, target: str) -> Path:
        """The target's path; refuses one whose directory resolves outside the root (a symlinked folder)."""
        path = self.root / target
        real_root = self.root.resolve()
        parent = path.parent.resolve()
        if parent != real_root and real_root not in parent.parents:
            raise OutsideRoot(f"refusing to write {target!r}: its folder leads outside the library volume")
        return path

    def present(self, target: str, url: str, sha256: str | None) -> Record | None:
        """The record of `target` when the file there is the one asked for, else None. A file without a
        record (placed by hand, or renamed just before a crash) is hashed when the manifest gives a sha256."""
        path = self.path(target)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file() or path.is_symlink():
            return None
        record = self.records.get(target)
        if record is not None and (record.url, record.size, record.mtime_ns) == (
            url,
            st.st_size,
            st.st_mtime_ns,
        ):
            return record if sha256 is None or record.sha256 == sha256 else None
        if sha256 is None or file_sha256(path) != sha256:
            return None
        self.records[target] = Record(url, st.st_size, st.st_mtime_ns, sha256)
        self._write_state()
        return self.records[target]

    def new_part(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def free_bytes(self) -> int:
        stats = os.statvfs(self.tmp)
        return stats.f_bavail * stats.f_frsize

    def publish(self, part: Path, target: str, url: str, sha256: str) -> Record:
        """Flush `part` to disk, rename it to `target` (replacing an older file atomically), record it."""
        path = self.path(target)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path(target)  # again: mkdir must not have followed a link out of the root
        os.replace(part, path)
        st = path.stat()
        self.records[target] = Record(url, st.st_size, st.st_mtime_ns, sha256)
        self._write_state()
        return self.records[target]

    def prune(self, keep: set[str]) -> list[str]:
        """Delete the files this sync wrote earlier whose target no model names any more (never a file it did
        not write). Returns the targets removed."""
        removed = []
        for target in sorted(set(self.records) - keep):
            with contextlib.suppress(OutsideRoot, FileNotFoundError):
                self.path(target).unlink()
            del self.records[target]
            removed.append(target)
        if removed:
            self._write_state()
        return removed

"""Uploaded v2 assets of this pod: blobs named by their blake3 hash, asset records over them, a byte budget.

Layout under `<input dir>/.api-v2/` (the input emptyDir ComfyUI reads): `blobs/<hex>` one file per distinct
content, `tmp/` uploads in progress, `<hex>/<name>` a hard link (or copy) of a blob under the name a workflow
uses, so LoadImage-style nodes get `.api-v2/<hex>/<name>`. Records live in memory: a sidecar restart starts
empty (the directory is wiped at start), and its old asset ids read as 404.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import blake3
from comfyui_sidecar.v2 import ids

ROOT_NAME = ".api-v2"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._() -]")


class AssetError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class AssetRecord:
    id: str
    hex: str
    size: int
    content_type: str
    file_path: str
    created: float
    expires: float

    @property
    def hash(self) -> str:
        return f"blake3:{self.hex}"


def check_file_path(value: str) -> str:
    """A relative placement path (e.g. `photo.png`, `input/x.png`); models cannot be placed this way."""
    pure = PurePosixPath(value)
    if (
        not value
        or len(value) > 1024
        or "\\" in value
        or "\x00" in value
        or pure.is_absolute()
        or ".." in pure.parts
        or any(ord(c) < 32 for c in value)
    ):
        raise AssetError(422, "invalid_request", "file_path must be a relative path without '..'")
    if pure.parts[0] == "models":
        raise AssetError(422, "invalid_request", "placing models through assets is not supported")
    return value


def safe_name(file_path: str) -> str:
    name = _SAFE_NAME.sub("_", PurePosixPath(file_path).name).strip(" .")[:200]
    return name or "upload.bin"


class BlobWriter:
    """Streams one upload to a temporary file while hashing it; `finish` moves it into the store."""

    def __init__(self, store: AssetStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.size = 0
        self._hasher = blake3.blake3()
        store.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix="upload-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise AssetError(413, "payload_too_large", f"the file is larger than {self.limit} bytes")
        self._hasher.update(chunk)
        self._file.write(chunk)

    @property
    def hex(self) -> str:
        return str(self._hasher.hexdigest())

    def finish(self) -> bool:
        """Move the bytes to `blobs/<hex>`; False when that blob already existed (the upload is dropped)."""
        self._file.close()
        return self.store.adopt(self.path, self.hex, self.size)

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class AssetStore:
    def __init__(
        self, input_dir: Path, *, owner: str, key: bytes, retention_s: float, max_bytes: int = 0
    ) -> None:
        self.input_dir = input_dir
        self.root = input_dir / ROOT_NAME
        self.blobs_dir = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.owner = owner
        self.key = key
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.records: dict[str, AssetRecord] = {}
        self.blobs: dict[str, int] = {}
        """hex -> size of every blob on disk (uploads and blobs fetched from peers for a job)."""
        self.busy: collections.Counter[str] = collections.Counter()
        """Blobs placed for a submit that has no job record yet: never deleted meanwhile."""

    def reset(self) -> None:
        """Start empty: the records of an earlier process are gone, so are its files."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    @property
    def bytes_held(self) -> int:
        return sum(self.blobs.values())

    def blob_path(self, hex_digest: str) -> Path:
        return self.blobs_dir / hex_digest

    def has_blob(self, hex_digest: str) -> bool:
        return hex_digest in self.blobs

    def writer(self, limit: int) -> BlobWriter:
        return BlobWriter(self, limit)

    def adopt(self, path: Path, hex_digest: str, size: int) -> bool:
        if hex_digest in self.blobs:
            path.unlink(missing_ok=True)
            return False
        os.replace(path, self.blob_path(hex_digest))
        self.blobs[hex_digest] = size
        return True

    def mint(
        self, hex_digest: str, content_type: str, file_path: str, expires_in: int | None = None
    ) -> AssetRecord:
        now = time.time()
        retention = self.retention_s if expires_in is None else max(60, min(expires_in, 604800))
        record = AssetRecord(
            ids.mint(self.key, "asset", self.owner, int(now * 1000)),
            hex_digest,
            self.blobs[hex_digest],
            content_type,
            file_path,
            now,
            now + retention,
        )
        self.records[record.id] = record
        return record

    def find(self, hex_digest: str, file_path: str | None) -> AssetRecord | None:
        """An asset over this blob with this placement path (any when `file_path` is None)."""
        for record in self.records.values():
            if record.hex == hex_digest and (file_path is None or record.file_path == file_path):
                return record
        return None

    def get(self, asset_id: str) -> AssetRecord | None:
        record = self.records.get(asset_id)
        if record is not None and record.expires <= time.time():
            self.delete(record)
            return None
        return record

    def delete(self, record: AssetRecord) -> None:
        self.records.pop(record.id, None)
        if record.hex not in self.busy and not any(
            other.hex == record.hex for other in self.records.values()
        ):
            self._drop_blob(record.hex)

    def _drop_blob(self, hex_digest: str) -> None:
        self.blobs.pop(hex_digest, None)
        self.blob_path(hex_digest).unlink(missing_ok=True)
        shutil.rmtree(self.root / hex_digest, ignore_errors=True)

    def materialize(self, hex_digest: str, file_path: str) -> str:
        """The input-relative name under which ComfyUI finds this blob (linked or copied once)."""
        name = safe_name(file_path)
        target = self.root / hex_digest / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blob_path(hex_digest), target)
            except FileExistsError:
                pass
            except OSError:
                shutil.copyfile(self.blob_path(hex_digest), target)
        return f"{ROOT_NAME}/{hex_digest}/{name}"

    def expire(self, in_use: set[str], now: float | None = None) -> None:
        """Delete assets past retention, and blobs no asset or running job refers to."""
        now = now if now is not None else time.time()
        for record in [r for r in self.records.values() if r.expires <= now and r.id not in in_use]:
            self.delete(record)
        needed = {r.hex for r in self.records.values()} | in_use | set(self.busy)
        for hex_digest in [h for h in self.blobs if h not in needed]:
            self._drop_blob(hex_digest)

    def make_room(self, incoming: int, in_use: set[str]) -> None:
        """Evict the oldest assets no running job uses until `incoming` more bytes fit the budget."""
        if self.max_bytes <= 0:
            return
        if incoming > self.max_bytes:
            message = f"the file is larger than this pod's asset store ({self.max_bytes} bytes)"
            raise AssetError(413, "payload_too_large", message)
        for record in sorted(self.records.values(), key=lambda r: r.created):
            if self.bytes_held + incoming <= self.max_bytes:
                return
            if record.id not in in_use and record.hex not in in_use and record.hex not in self.busy:
                self.delete(record)
        if self.bytes_held + incoming > self.max_bytes:
            raise AssetError(
                413, "payload_too_large", "the asset store of this pod is full (ASSET_MAX_BYTES); retry later"
            )

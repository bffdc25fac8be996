"""Reuse of a cache directory that comfyui-api filled (flat `<CACHE_DIR>/<hash32><ext>` + `.meta`).

comfyui-api keeps its files directly in CACHE_DIR (the same default, `$HOME/.cache/comfyui-api`); this cache
keeps them in `blobs/`. At start, every upstream file that has its `.meta` (written by comfyui-api after a
finished download) and whose name is the hash of the URL in it is moved into `blobs/` with its metadata — a
rename, no copy and no download — and a symlink is left at the old name, so links comfyui-api made into
ComfyUI's model folders keep working. Files without `.meta` (comfyui-api writes no temp files, so they may
be cut), files named by a filename override and URLs that carried credentials (their hash covers the
userinfo, which the `.meta` leaves out) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from comfyui_sidecar.cache.metadata import META_SUFFIX
from comfyui_sidecar.cache.naming import HASH_LENGTH, url_hash

log = logging.getLogger(__name__)


def adopt_upstream_files(root: Path, blobs: Path, limit: int = 100_000) -> int:
    """Move comfyui-api's cache files under `root` into `blobs`; return how many were adopted."""
    adopted = 0
    for count, meta in enumerate(sorted(root.glob(f"*{META_SUFFIX}"))):
        if count >= limit:
            break
        blob = meta.with_name(meta.name[: -len(META_SUFFIX)])
        if not _is_upstream_entry(blob, meta):
            continue
        target = blobs / blob.name
        if target.exists():
            continue
        os.replace(meta, blobs / meta.name)
        os.replace(blob, target)
        blob.symlink_to(target)
        adopted += 1
    if adopted:
        log.info("cache: reused %d files that comfyui-api downloaded into %s", adopted, root)
    return adopted


def _is_upstream_entry(blob: Path, meta: Path) -> bool:
    if blob.is_symlink() or not blob.is_file() or not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    url = data.get("url") if isinstance(data, dict) else None
    return isinstance(url, str) and blob.name[:HASH_LENGTH] == url_hash(url)

"""`<blob>.meta` files: what is known about a cached blob, compatible with comfyui-api's fields
(`authRequired`, `url`, `cachedAt`) plus `sha256` and `size`."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comfyui_sidecar.cache.lru import Entry

META_SUFFIX = ".meta"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def meta_path(blob: Path) -> Path:
    return blob.with_name(blob.name + META_SUFFIX)


def entry_to_json(entry: Entry) -> dict[str, Any]:
    return {
        "authRequired": entry.auth_required,
        "url": entry.url,
        "cachedAt": entry.cached_at,
        "sha256": entry.sha256,
        "size": entry.size,
    }


def entry_from_json(name: str, data: dict[str, Any], size_on_disk: int) -> Entry | None:
    """The entry of a meta file, or None when it is not ours or does not match the blob."""
    try:
        url = str(data["url"])
        size = int(data.get("size", size_on_disk))
        sha = str(data.get("sha256", ""))
    except (KeyError, TypeError, ValueError):
        return None
    if size != size_on_disk:
        return None
    return Entry(
        name=name,
        url=url,
        size=size,
        sha256=sha,
        auth_required=bool(data.get("authRequired", False)),
        cached_at=str(data.get("cachedAt", "")),
    )


def write_meta(blob: Path, entry: Entry) -> None:
    """Write the meta file next to the blob (temp file, then rename)."""
    target = meta_path(blob)
    fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=".meta-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry_to_json(entry), fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(blob: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(meta_path(blob).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

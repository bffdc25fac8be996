"""A CACHE_DIR that comfyui-api filled (flat `<hash32><ext>` + `.meta`) is reused, not downloaded again."""

from __future__ import annotations

import json
from pathlib import Path

from comfyui_sidecar.cache.naming import url_hash
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import ModelCache

URL = "https://models.example.invalid/lora/detail.safetensors"  # unreachable: only the cache can answer


def upstream_file(root: Path, url: str, data: bytes, *, meta: bool = True) -> Path:
    blob = root / f"{url_hash(url)}.safetensors"
    blob.write_bytes(data)
    if meta:
        record = {"authRequired": False, "url": url, "cachedAt": "2025-01-01T00:00:00.000Z"}
        blob.with_name(blob.name + ".meta").write_text(json.dumps(record))
    return blob


async def test_files_comfyui_api_downloaded_are_reused_and_their_old_links_keep_working(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    adopted = upstream_file(root, URL, b"weights")
    cut = upstream_file(root, "https://models.example.invalid/cut.safetensors", b"half", meta=False)
    comfy_link = tmp_path / "ComfyUI-models-loras-detail.safetensors"
    comfy_link.symlink_to(adopted)  # what comfyui-api linked into ComfyUI's model folder
    cache = ModelCache(CacheSettings(cache_dir=root, download_attempts=1), input_dir=tmp_path / "input")
    await cache.start()
    try:
        done = await cache.download(URL, folder="loras", filename="detail.safetensors")
        assert done.entry.size == len(b"weights")
        assert (cache.models_root / "loras" / "detail.safetensors").read_bytes() == b"weights"
        assert (root / "blobs" / adopted.name).is_file()
        assert adopted.is_symlink()
        assert comfy_link.read_bytes() == b"weights"
        assert not cut.is_symlink()  # no .meta: maybe cut, left alone
        assert cut.is_file()
        assert not (root / "blobs" / cut.name).exists()
    finally:
        await cache.close()

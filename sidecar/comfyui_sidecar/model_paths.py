"""The one owner of ComfyUI's model-folder list and of the `extra_model_paths.yaml` ComfyUI reads.

The sidecar writes the file, from its own settings, before ComfyUI starts:
- in Kubernetes the operator runs `comfyui-sidecar --write-model-paths` as a plain init container before the
  ComfyUI container, with the sidecar's environment (so `EXTRA_MODEL_FOLDERS` / `EXTRA_MODEL_LOADERS` from
  `spec.sidecar.env` reach ComfyUI), and passes `--extra-model-paths-config <file>` to ComfyUI;
- in supervise mode the sidecar writes it and adds `--extra-model-paths-config <file>` to `CMD`;
- the cache rewrites it (same text) when it starts.

The file lists two roots, each with every folder: the model root `MODEL_DIR` first (`is_default`, e.g. a
shared read-only volume) unless it is the cache's own root, then `$CACHE_DIR/models`, where downloaded
models are linked. Folders: ComfyUI's own, the configured extras, folders named by `EXTRA_MODEL_LOADERS`,
and the directories found under `MODEL_DIR`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from comfyui_sidecar.cache.settings import CacheSettings

# Folder names registered by ComfyUI (0.3.64, plus the ones newer releases add).
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "vae_approx",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "controlnet",
    "gligen",
    "upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "latent_upscale_models",
)

# Legacy folder names ComfyUI maps onto the current ones.
LEGACY_FOLDERS: dict[str, str] = {
    "unet": "diffusion_models",
    "clip": "text_encoders",
    "t2i_adapter": "controlnet",
}

HEADER = "# Written by comfyui-sidecar (comfyui_sidecar.model_paths): model search roots for ComfyUI.\n"


def canonical_folder(folder: str) -> str:
    return LEGACY_FOLDERS.get(folder, folder)


def known_folders(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """ComfyUI's folder names plus `extra` (legacy names mapped), in a stable order, each once."""
    names = list(MODEL_FOLDERS)
    for name in extra:
        folder = canonical_folder(name)
        if folder not in names:
            names.append(folder)
    return tuple(names)


def configured_folders(settings: CacheSettings) -> tuple[str, ...]:
    """The folders the settings name: ComfyUI's, EXTRA_MODEL_FOLDERS, and those of EXTRA_MODEL_LOADERS."""
    loaders: Any = getattr(settings, "extra_model_loaders", None) or {}
    named = [
        folder
        for inputs in loaders.values()
        if isinstance(inputs, dict)
        for folder in inputs.values()
        if isinstance(folder, str)
    ]
    return known_folders([*settings.extra_model_folders, *named])


def _subdirectories(root: Path | None) -> list[str]:
    if root is None or not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def extra_model_paths_yaml(model_dir: Path | None, cache_models: Path, folders: Iterable[str]) -> str:
    """The file's text: `model_dir` (is_default) unless it is `cache_models`, then `cache_models`."""
    names = list(folders)
    roots: dict[str, dict[str, Any]] = {}
    if model_dir is not None and os.path.abspath(model_dir) != os.path.abspath(cache_models):
        roots["models"] = {"base_path": str(model_dir), "is_default": True}
    roots["cache_models"] = {"base_path": str(cache_models), "is_default": False}
    for root in roots.values():
        root.update({folder: f"{folder}/" for folder in names})
    return HEADER + yaml.safe_dump(roots, sort_keys=False)


def model_paths_text(settings: CacheSettings, model_dir: Path | None) -> str:
    folders = known_folders([*configured_folders(settings), *_subdirectories(model_dir)])
    return extra_model_paths_yaml(model_dir, settings.cache_dir / "models", folders)


def write_model_paths(settings: CacheSettings, model_dir: Path | None) -> Path:
    """Write the file (a temporary file, then a rename) at EXTRA_MODEL_PATHS_FILE; return its path."""
    target = settings.model_paths_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(model_paths_text(settings, model_dir), encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
